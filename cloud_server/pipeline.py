"""The detector loop: machine images of received frames -> YOLO in batches across cameras -> results
stored, then written to the sinks, each frame exactly once (the frame index is the work queue)."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from shared.codec.bitstream import BitstreamError

from .codecs import CloudCodecs
from .detector import YoloDetector
from .frame_index import FrameIndex, FrameRecord
from .jsonl_sink import JsonlSink
from .metrics import CloudMetrics
from .results import Detection, FrameResult
from .subscribers import SubscriberHub

log = logging.getLogger("icmh.cloud.pipeline")


class DetectionPipeline:
    def __init__(self, index: FrameIndex, codecs: CloudCodecs, detector: YoloDetector, hub: SubscriberHub,
                 sink: JsonlSink | None, metrics: CloudMetrics, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError("the detector batch must hold at least one frame")
        self.index, self.codecs, self.detector, self.hub, self.sink = index, codecs, detector, hub, sink
        self.metrics, self.max_batch = metrics, max_batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        """New frames are in the index."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cloud-detector", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, then stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        self.publish_unpublished()
        while not self._stop.is_set():
            try:
                batch = self.index.pending(self.max_batch)
                if batch:
                    self.process(batch)
                    continue
            except Exception:
                log.exception("detector loop failed; retrying")
                self.metrics.errors.labels("pipeline").inc()
                self._stop.wait(1.0)
            self._wake.wait(1.0)
            self._wake.clear()

    def publish_unpublished(self) -> None:
        """After a crash: write results that were stored but may not have reached the sinks."""
        results = self.index.unpublished()
        if not results:
            return
        written = self.sink.reconcile(results) if self.sink else []
        self.index.mark_published([r.key for r in results])
        log.info("recovered %d stored results (%d were missing from the JSONL sink)", len(results), len(written))

    def process(self, batch: list[tuple[FrameRecord, bytes]]) -> list[FrameResult]:
        """Decode, detect, store, write, publish one batch; returns its results in batch order."""
        decoded: list[tuple[FrameRecord, np.ndarray]] = []
        failed: dict[tuple[str, int], str] = {}
        for record, base in batch:
            start = time.perf_counter()
            try:
                decoded.append((record, self.codecs.decode_machine(base, exact_pixels=False)))
            except (BitstreamError, ValueError) as exc:
                log.error("camera %s frame %d: cannot decode: %s", record.camera_id, record.frame_id, exc)
                self.metrics.errors.labels("decode").inc()
                failed[record.key] = f"decode failed: {exc}"
                continue
            self.metrics.decode_seconds.labels("machine").observe(time.perf_counter() - start)
        found = self._detect(decoded, failed)
        now = time.time_ns()
        results = [
            FrameResult(r.camera_id, r.frame_id, r.capture_ns, now, r.width, r.height, found.get(r.key, ()),
                        failed.get(r.key, ""))
            for r, _ in batch
        ]
        self.index.record_results(results)
        if self.sink is not None:
            self.sink.write(results)
        self.index.mark_published([r.key for r in results])
        self.hub.publish(results)
        for r in results:
            self.metrics.end_to_end_seconds.labels(r.camera_id).observe(max(0.0, (now - r.capture_ns) / 1e9))
        return results

    def _detect(self, decoded: list[tuple[FrameRecord, np.ndarray]],
                failed: dict[tuple[str, int], str]) -> dict[tuple[str, int], tuple[Detection, ...]]:
        """Detections per frame key; a detector failure marks every frame of the batch in ``failed``."""
        if not decoded:
            return {}
        start = time.perf_counter()
        try:
            detections = self.detector.detect([image for _, image in decoded])
        except Exception as exc:
            log.exception("detector failed on a batch of %d frames", len(decoded))
            self.metrics.errors.labels("detect").inc()
            failed.update({record.key: f"detector failed: {exc}" for record, _ in decoded})
            return {}
        self.metrics.detect_seconds.observe(time.perf_counter() - start)
        self.metrics.batch_size.observe(len(decoded))
        return {record.key: d for (record, _), d in zip(decoded, detections, strict=True)}
