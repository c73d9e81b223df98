"""The capture loop: source frames -> base layer (+ residual layer, eager policy) + kept frame -> the edge store."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from icmh.codec.api import ScalableCodec
from icmh.codec.lossless import webp_lossless

from .metrics import EdgeMetrics
from .rate_control import RateControl
from .source import FrameSource
from .store import EdgeStore, OutboxFull

log = logging.getLogger("icmh.edge.capture")


RESIDUAL_POLICIES = ("lazy", "eager")


class CaptureLoop:
    """Codes every frame of ``source`` at the current rates and keeps its layers in ``store``.

    Every frame's base layer goes to the outbox and the frame itself (lossless WebP, libwebp's
    fastest setting) to the inspection store. The ``eager`` policy also codes the residual layer
    now; ``lazy`` leaves it to the first request (:class:`icmh.edge.layers.InspectionLayers`).

    While the outbox is full (cloud unreachable for long) frames are not coded: they are
    counted as dropped before they get a sequence number, so no numbered frame is lost.
    """

    def __init__(self, source: FrameSource, codec: ScalableCodec, store: EdgeStore, rates: RateControl,
                 metrics: EdgeMetrics, on_stored: Callable[[], None], policy: str = "lazy") -> None:
        if policy not in RESIDUAL_POLICIES:
            raise ValueError(f"residual policy must be one of {', '.join(RESIDUAL_POLICIES)}, got {policy!r}")
        self.source, self.codec, self.store, self.rates = source, codec, store, rates
        self.metrics, self.on_stored, self.policy = metrics, on_stored, policy
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
            layers, seconds = self.code(frame.image, rates.base, rates.residual)
            base, residual, image = layers["base"], layers.get("residual"), layers["frame"]
            try:
                self.store.add_frame(frame.capture_ns, rates.base, base, residual, image, rates.residual)
            except OutboxFull:
                self.metrics.frames_dropped.labels("outbox_full").inc()
                continue
            self.rates.observe(len(base), frame.capture_ns)
            self._account(frame.image.shape[0] * frame.image.shape[1], layers, seconds)
            self.on_stored()

    def code(self, image: np.ndarray, base_rate: float,
             residual_rate: float) -> tuple[dict[str, bytes], dict[str, float]]:
        """What the policy codes at capture: {"base", "frame"[, "residual"]} bytes and seconds per layer."""
        t0 = time.perf_counter()
        encoding = self.codec.encode_base(image, base_rate)
        layers, seconds = {"base": encoding.data}, {"base": time.perf_counter() - t0}
        if self.policy == "eager":
            t0 = time.perf_counter()
            layers["residual"] = self.codec.encode_residual(image, encoding, residual_rate)
            seconds["residual"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        layers["frame"] = webp_lossless(image, "fast")
        seconds["frame"] = time.perf_counter() - t0
        return layers, seconds

    def _account(self, pixels: int, layers: dict[str, bytes], seconds: dict[str, float]) -> None:
        m = self.metrics
        m.frames_encoded.inc()
        for layer, data in layers.items():
            m.layer_bytes.labels(layer).inc(len(data))
            m.bpp.labels(layer).observe(8.0 * len(data) / pixels)
            m.encode_seconds.labels(layer).observe(seconds[layer])

    def _note_full(self, full: bool) -> None:
        if full != self._outbox_full:
            self._outbox_full = full
            if full:
                log.warning("outbox full (cloud not acknowledging): frames are skipped until it drains")
            else:
                log.info("outbox has room again: coding frames")
