"""The capture loop: source frames -> both codec layers -> the edge store."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from shared.codec.api import ScalableCodec

from .metrics import EdgeMetrics
from .rate_control import RateControl
from .source import FrameSource
from .store import EdgeStore, OutboxFull

log = logging.getLogger("icmh.edge.capture")


class CaptureLoop:
    """Codes every frame of ``source`` at the current rates and keeps both layers in ``store``.

    While the outbox is full (cloud unreachable for long) frames are not coded: they are
    counted as dropped before they get a sequence number, so no numbered frame is lost.
    """

    def __init__(self, source: FrameSource, codec: ScalableCodec, store: EdgeStore, rates: RateControl,
                 metrics: EdgeMetrics, on_stored: Callable[[], None]) -> None:
        self.source, self.codec, self.store, self.rates = source, codec, store, rates
        self.metrics, self.on_stored = metrics, on_stored
        self._outbox_full = False

    def run(self, stop: threading.Event) -> None:
        for frame in self.source.frames(stop):
            self.metrics.frames_captured.inc()
            if not self.store.has_room():
                self._note_full(True)
                self.metrics.frames_dropped.labels("outbox_full").inc()
                continue
            self._note_full(False)
            rates = self.rates.current
            t0 = time.perf_counter()
            base = self.codec.encode_base(frame.image, rates.base)
            t1 = time.perf_counter()
            residual = self.codec.encode_residual(frame.image, base, rates.residual)
            t2 = time.perf_counter()
            try:
                self.store.add_frame(frame.capture_ns, rates.base, base.data, residual)
            except OutboxFull:
                self.metrics.frames_dropped.labels("outbox_full").inc()
                continue
            self.rates.observe(len(base.data), frame.capture_ns)
            self._account(frame.image.shape[0] * frame.image.shape[1], len(base.data), len(residual), t1 - t0, t2 - t1)
            self.on_stored()

    def _account(self, pixels: int, base_bytes: int, residual_bytes: int, base_s: float, residual_s: float) -> None:
        m = self.metrics
        m.frames_encoded.inc()
        for layer, size, seconds in (("base", base_bytes, base_s), ("residual", residual_bytes, residual_s)):
            m.layer_bytes.labels(layer).inc(size)
            m.bpp.labels(layer).observe(8.0 * size / pixels)
            m.encode_seconds.labels(layer).observe(seconds)

    def _note_full(self, full: bool) -> None:
        if full != self._outbox_full:
            self._outbox_full = full
            if full:
                log.warning("outbox full (cloud not acknowledging): frames are skipped until it drains")
            else:
                log.info("outbox has room again: coding frames")
