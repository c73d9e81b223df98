"""The edge's answers to the cloud's layer requests: residual layers (stored, or coded on request) and lossless layers.

Under the lazy residual policy the capture loop keeps only the base layer and the captured
frame (lossless WebP); the residual is coded here the first time the cloud asks, then kept in
the store. It is the same bytes the eager policy would have coded at capture: the residual is
coded against the stored base layer's decoded latent, which is bit for bit the latent the
encoder had (the decoder networks are exact), at the residual rate that was due at capture.

An operator may ask for another residual rate (a sharper view of one frame): while the captured frame is kept, the
residual is coded at that rate for the request and not kept (the store holds the capture-time layer, which the
lossless layer refines); without the captured frame the stored layer is the answer.
"""

from __future__ import annotations

import time

from icmh.codec import lossless
from icmh.codec.api import ScalableCodec
from icmh.codec.bitstream import unpack
from icmh.codec.rate import rate_to_index

from .metrics import EdgeMetrics
from .store import EdgeStore, StoredFrame


class InspectionLayers:
    def __init__(self, codec: ScalableCodec, store: EdgeStore, metrics: EdgeMetrics) -> None:
        self.codec, self.store, self.metrics = codec, store, metrics

    def residual(self, frame_id: int, rate: float | None = None) -> bytes | None:
        """The frame's residual layer (coded now if the frame was kept without one); None if evicted.

        ``rate``: the residual rate the operator asked for, coded now if the captured frame is kept and the stored
        layer has another rate (``ValueError`` outside [0, 1]); None: the capture-time rate.
        """
        wanted = None if rate is None else rate_to_index(rate)
        data = self.store.residual(frame_id)
        if data is not None and (wanted is None or unpack(data)[0].rate_index == wanted):
            return data
        kept = self.store.frame(frame_id)
        if kept is None:
            return data  # the layer coded at capture, or None
        at_capture = wanted is None or wanted == rate_to_index(kept.residual_rate)
        start = time.perf_counter()
        coded = self.code_residual(kept, None if at_capture else rate)
        label = "residual_on_request" if at_capture else "residual_at_requested_rate"
        self.metrics.encode_seconds.labels(label).observe(time.perf_counter() - start)
        if at_capture:
            self.store.put_residual(frame_id, coded)
        return coded

    def code_residual(self, kept: StoredFrame, rate: float | None = None) -> bytes:
        """The residual layer of a kept frame at ``rate`` (None: the rate due at capture, identical to what the
        capture loop would have coded)."""
        header, _ = unpack(kept.base)
        image = lossless.read_webp(kept.image, header.height, header.width)
        due = kept.residual_rate if rate is None else rate
        return self.codec.encode_residual(image, self.codec.open_base(kept.base), due)

    def lossless(self, frame_id: int) -> bytes | None:
        """The frame's lossless layer (the kept frame, bound to its base layer); None if evicted."""
        kept = self.store.frame(frame_id)
        if kept is None:
            return None
        return self.codec.lossless_from_webp(kept.image, kept.base)
