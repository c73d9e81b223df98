"""Delivery of detection results to the sinks, each from its own cursor in the frame index.

A sink's worker thread takes the results due to it (oldest first, in batches), hands them to its publisher and
advances the cursor only once the sink holds them. When a sink is down (broker outage, disk error) its results
wait in the index and the worker retries with backoff; the other sinks go on. After a restart, or after any
failed attempt, the next batch is delivered in ``recovering`` mode: the publisher skips what the sink already has
(JSON Lines: the file's tail; NATS: the stream's last message per camera and JetStream's message ids) or, for
MQTT QoS 1, sends it again (at-least-once). Inline sinks (the JSON Lines file) are also drained by the detector
thread right after each batch, so they hold a result before live subscribers see it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from ..frame_index import FrameIndex
from ..metrics import CloudMetrics
from .base import Publisher, PublishError

log = logging.getLogger("icmh.cloud.delivery")
CameraStatus = Callable[[], Mapping[str, bool]]  # camera id -> online


class _Sink:
    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.name = publisher.name
        self.lock = threading.Lock()  # one delivery attempt at a time (worker and detector thread)
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.recovering = True  # the previous process may have stopped in the middle of a delivery
        self.down_since: float | None = None


class Delivery:
    def __init__(self, index: FrameIndex, publishers: Sequence[Publisher], metrics: CloudMetrics,
                 camera_status: CameraStatus | None = None, batch: int = 64, poll_s: float = 1.0,
                 retry_min_s: float = 0.5, retry_max_s: float = 10.0) -> None:
        self.index, self.metrics, self.camera_status = index, metrics, camera_status
        self.batch, self.poll_s, self.retry_min_s, self.retry_max_s = batch, poll_s, retry_min_s, retry_max_s
        self.sinks = [_Sink(p) for p in publishers]
        dropped = index.configure_sinks([s.name for s in self.sinks])
        if dropped:
            log.warning("dropped %d deliveries owed to sinks that are no longer configured", dropped)
        for sink in self.sinks:  # every series exists from the start (0), for rates and dashboards
            metrics.sink_up.labels(sink.name).set(1)
            for counter in (metrics.sink_outages, metrics.sink_outage_seconds, metrics.published,
                            metrics.publish_duplicates, metrics.publish_failures, metrics.sink_pending):
                counter.labels(sink.name)
        self._stop = threading.Event()

    def start(self) -> None:
        for sink in self.sinks:
            sink.thread = threading.Thread(target=self._work, args=(sink,), name=f"deliver-{sink.name}", daemon=True)
            sink.thread.start()

    def wake(self) -> None:
        """New results are due."""
        for sink in self.sinks:
            sink.wake.set()

    def deliver_inline(self) -> None:
        """Drain the inline sinks now (in the caller's thread)."""
        for sink in self.sinks:
            if sink.publisher.inline:
                self._drain(sink)

    def stop(self, timeout: float = 30.0) -> None:
        """One last delivery attempt per sink, then stop the workers (what is left stays due in the index)."""
        self._stop.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for sink in self.sinks:
            if sink.thread is not None:
                sink.thread.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        for sink in self.sinks:
            sink.publisher.close()

    def _work(self, sink: _Sink) -> None:
        delay = self.retry_min_s
        while True:
            try:
                ok = self._drain(sink)
            except Exception:  # the index itself failed: retry like a sink outage
                log.exception("delivery to %s failed", sink.name)
                self.metrics.errors.labels("delivery").inc()
                ok = False
            if self._stop.is_set():
                return
            if ok and not sink.publisher.available():
                self._mark_down(sink, "not connected")
            self._send_status(sink)
            if ok:
                delay = self.retry_min_s
                sink.wake.wait(self.poll_s)
                sink.wake.clear()
            else:
                self._stop.wait(delay)
                delay = min(2 * delay, self.retry_max_s)

    def _drain(self, sink: _Sink) -> bool:
        """Deliver everything due to ``sink``; False when it failed (the rest stays due)."""
        with sink.lock:
            while True:
                results = self.index.deliveries(sink.name, self.batch)
                if not results:
                    self.metrics.sink_pending.labels(sink.name).set(0)
                    if sink.publisher.available():
                        self._mark_up(sink)
                    return True
                recovering, sink.recovering = sink.recovering, True
                start = time.perf_counter()
                try:
                    already = sink.publisher.publish(results, recovering)
                except (PublishError, OSError) as exc:
                    self.metrics.publish_failures.labels(sink.name).inc()
                    self._mark_down(sink, str(exc) or type(exc).__name__)
                    return False
                self.index.delivered(sink.name, [r.key for r in results])
                sink.recovering = False
                self.metrics.publish_seconds.labels(sink.name).observe(time.perf_counter() - start)
                self.metrics.published.labels(sink.name).inc(len(results))
                if already:
                    self.metrics.publish_duplicates.labels(sink.name).inc(already)
                    log.info("%s already had %d of %d re-sent results", sink.name, already, len(results))
                self._mark_up(sink)

    def _mark_down(self, sink: _Sink, reason: str) -> None:
        if sink.down_since is None:
            sink.down_since = time.monotonic()
            self.metrics.sink_outages.labels(sink.name).inc()
            self.metrics.sink_up.labels(sink.name).set(0)
            log.warning("sink %s is down (%s): its results wait in the index", sink.name, reason)
        self.metrics.sink_pending.labels(sink.name).set(self.index.backlog().get(sink.name, 0))

    def _mark_up(self, sink: _Sink) -> None:
        if sink.down_since is not None:
            seconds = time.monotonic() - sink.down_since
            sink.down_since = None
            self.metrics.sink_outage_seconds.labels(sink.name).inc(seconds)
            self.metrics.sink_up.labels(sink.name).set(1)
            log.info("sink %s is back after %.1f s", sink.name, seconds)

    def _send_status(self, sink: _Sink) -> None:
        if self.camera_status is None:
            return
        try:
            sink.publisher.publish_status(self.camera_status())
        except Exception as exc:  # best effort: the next round tries again
            log.debug("camera status to %s failed: %s", sink.name, exc)
