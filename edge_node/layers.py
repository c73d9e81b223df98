"""The edge's answers to the cloud's layer requests: residual layers (stored, or coded on request) and lossless layers.

Under the lazy residual policy the capture loop keeps only the base layer and the captured
frame (lossless WebP); the residual is coded here the first time the cloud asks, then kept in
the store. It is the same bytes the eager policy would have coded at capture: the residual is
coded against the stored base layer's decoded latent, which is bit for bit the latent the
encoder had (the decoder networks are exact), at the residual rate that was due at capture.
"""

from __future__ import annotations

import time

from icmh.codec import lossless
from icmh.codec.api import ScalableCodec
from icmh.codec.bitstream import unpack

from .metrics import EdgeMetrics
from .store import EdgeStore, StoredFrame


class InspectionLayers:
    def __init__(self, codec: ScalableCodec, store: EdgeStore, metrics: EdgeMetrics) -> None:
        self.codec, self.store, self.metrics = codec, store, metrics

    def residual(self, frame_id: int) -> bytes | None:
        """The frame's residual layer (coded now if the frame was kept without one); None if evicted."""
        data = self.store.residual(frame_id)
        if data is not None:
            return data
        kept = self.store.frame(frame_id)
        if kept is None:
            return None
        start = time.perf_counter()
        data = self.code_residual(kept)
        self.metrics.encode_seconds.labels("residual_on_request").observe(time.perf_counter() - start)
        self.store.put_residual(frame_id, data)
        return data

    def code_residual(self, kept: StoredFrame) -> bytes:
        """The residual layer of a kept frame, identical to what the capture loop would have coded."""
        header, _ = unpack(kept.base)
        image = lossless.read_webp(kept.image, header.height, header.width)
        return self.codec.encode_residual(image, self.codec.open_base(kept.base), kept.residual_rate)

    def lossless(self, frame_id: int) -> bytes | None:
        """The frame's lossless layer (the kept frame, bound to its base layer); None if evicted."""
        kept = self.store.frame(frame_id)
        if kept is None:
            return None
        return self.codec.lossless_from_webp(kept.image, kept.base)
