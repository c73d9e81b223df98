"""The detector loop: machine images of received frames -> YOLO in batches across cameras -> results
stored, then delivered to the sinks, each frame exactly once per sink (the frame index is the work queue
and holds each sink's cursor, :mod:`icmh.cloud.publishers.delivery`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from icmh.codec.bitstream import BitstreamError
from icmh.detector import YoloDetector

from .codecs import CloudCodecs
from .frame_index import FrameIndex, FrameRecord
from .metrics import CloudMetrics
from .publishers.base import Publisher
from .publishers.delivery import CameraStatus, Delivery
from .results import Detection, FrameResult, detections_from_boxes
from .subscribers import SubscriberHub

log = logging.getLogger("icmh.cloud.pipeline")


class DetectionPipeline:
    def __init__(self, index: FrameIndex, codecs: CloudCodecs, detector: YoloDetector, hub: SubscriberHub,
                 sinks: Publisher | Sequence[Publisher] | None, metrics: CloudMetrics, max_batch: int = 8,
                 camera_status: CameraStatus | None = None) -> None:
        if max_batch < 1:
            raise ValueError("the detector batch must hold at least one frame")
        self.index, self.codecs, self.detector, self.hub = index, codecs, detector, hub
        self.metrics, self.max_batch = metrics, max_batch
        publishers = [] if sinks is None else [sinks] if isinstance(sinks, Publisher) else list(sinks)
        self.delivery = Delivery(index, publishers, metrics, camera_status)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        """New frames are in the index."""
        self._wake.set()

    def start(self) -> None:
        self.delivery.start()
        self._thread = threading.Thread(target=self._run, name="cloud-detector", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, try once more to deliver what is due, then stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.delivery.stop(timeout)

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
        """After a crash: deliver results that were stored but may not have reached every sink."""
        backlog = {sink: n for sink, n in self.index.backlog().items() if n}
        if backlog:
            log.info("results due from before the restart: %s",
                     ", ".join(f"{n} to {sink}" for sink, n in backlog.items()))
        self.delivery.deliver_inline()
        self.delivery.wake()

    def process(self, batch: list[tuple[FrameRecord, bytes]]) -> list[FrameResult]:
        """Decode, detect, store, deliver (inline sinks now, the others by their workers), publish live one
        batch; returns its results in batch order."""
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
        stored = self.index.record_results(results)  # another replica may have stored some first
        self.delivery.deliver_inline()
        self.delivery.wake()
        self.hub.publish(stored)
        for r in stored:
            self.metrics.end_to_end_seconds.labels(r.camera_id).observe(max(0.0, (now - r.capture_ns) / 1e9))
        return results

    def _detect(self, decoded: list[tuple[FrameRecord, np.ndarray]],
                failed: dict[tuple[str, int], str]) -> dict[tuple[str, int], tuple[Detection, ...]]:
        """Detections per frame key; a detector failure marks every frame of the batch in ``failed``."""
        if not decoded:
            return {}
        start = time.perf_counter()
        try:
            detections = [detections_from_boxes(boxes, self.detector.names)
                          for boxes in self.detector.detect_batch([image for _, image in decoded])]
        except Exception as exc:
            log.exception("detector failed on a batch of %d frames", len(decoded))
            self.metrics.errors.labels("detect").inc()
            failed.update({record.key: f"detector failed: {exc}" for record, _ in decoded})
            return {}
        self.metrics.detect_seconds.observe(time.perf_counter() - start)
        self.metrics.batch_size.observe(len(decoded))
        return {record.key: d for (record, _), d in zip(decoded, detections, strict=True)}
