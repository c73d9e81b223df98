"""The cloud's decoders: the shared base model, a residual model per learned mode (PR, FR), the classical
AVIF residual (needs no weights) and the lossless layer.

Decoding is serialised by one lock: on a few CPU cores parallel decodes only compete.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from icmh.codec import classical_residual
from icmh.codec.api import LEARNED_MODES, MODE_OF_KIND, DecodedBase, ScalableCodec
from icmh.codec.bitstream import BitstreamError, LayerHeader, LayerKind, unpack
from icmh.codec.weights import LAYER_FILES, SHIPPED_DIR, LoadedModel, load_layer
from icmh.rpc import edge_pb2

MODES = ("pr", "fr", "avif")


class CloudCodecs:
    def __init__(self, weights_dir: str | Path | None = None) -> None:
        folder = Path(weights_dir) if weights_dir else SHIPPED_DIR
        self.base = load_layer(folder / LAYER_FILES["base"])
        self._codecs = {"machine": ScalableCodec(self.base, None)}
        for mode in LEARNED_MODES:
            if (folder / LAYER_FILES[mode]).exists():
                self._codecs[mode] = ScalableCodec(self.base, load_layer(folder / LAYER_FILES[mode]), mode)
        if classical_residual.available():
            self._codecs["avif"] = ScalableCodec(self.base, None, "avif")
        self._lock = threading.Lock()

    @property
    def modes(self) -> list[str]:
        return [m for m in MODES if m in self._codecs]

    def incompatibility(self, info: edge_pb2.CodecInfo, mode: str) -> str | None:
        """Why an edge coding with ``info`` in ``mode`` cannot be decoded here (None if it can)."""
        codec = self._codecs.get(mode)
        if codec is None:
            return f"this cloud has no {mode} residual model (it decodes: {', '.join(self.modes) or 'base only'})"
        for layer, model_id, weights_hash, ours in (
            ("base", info.base_model_id, info.base_weights_hash, (self.base.model_id, self.base.weights_hash)),
            ("residual", info.residual_model_id, info.residual_weights_hash, codec.residual_identity),
        ):
            if (model_id, bytes(weights_hash)) != ours:
                return (f"{layer} model {model_id}@{bytes(weights_hash).hex()} differs from the cloud's "
                        f"{ours[0]}@{ours[1].hex()}")
        return None

    def check_base(self, data: bytes, width: int, height: int) -> LayerHeader:
        """Validate a base-layer container without decoding it (raises BitstreamError)."""
        header, _ = unpack(data)
        if header.kind != LayerKind.BASE:
            raise BitstreamError(f"expected a base layer, got {header.kind.name.lower()}")
        if (header.model_id, header.weights_hash) != (self.base.model_id, self.base.weights_hash):
            raise BitstreamError(f"coded with {header.model_id}@{header.weights_hash.hex()}, "
                                 f"the cloud decodes {_identity(self.base)}")
        if (header.width, header.height) != (width, height):
            raise BitstreamError(f"frame size {header.width}x{header.height} differs from the camera's "
                                 f"{width}x{height}")
        return header

    def decode_machine(self, base: bytes, exact_pixels: bool = True) -> np.ndarray:
        """Machine image; ``exact_pixels=False`` (the detector's input, operator views) uses the fast float
        synthesis."""
        with self._lock:
            return self._codecs["machine"].decode_machine(base, exact_pixels)

    def decode_base(self, base: bytes, exact_pixels: bool = True, machine: bool = True) -> DecodedBase:
        """What a human view needs of the base layer alone (:meth:`ScalableCodec.decode_base`), decoded while the
        residual layer is on its way."""
        with self._lock:
            return self._codecs["machine"].decode_base(base, exact_pixels, machine)

    def decode_human(self, base: bytes, residual: bytes, exact_pixels: bool = True,
                     decoded_base: DecodedBase | None = None) -> np.ndarray:
        """Human image from a base layer and its residual layer (PR, FR or AVIF, as the residual says);
        ``exact_pixels=False``: float synthesis (an operator's view); ``decoded_base`` from :meth:`decode_base`."""
        codec = self._residual_codec(residual)
        with self._lock:
            return codec.decode_human(base, residual, exact_pixels, decoded_base)

    def decode_original(self, base: bytes, lossless: bytes, residual: bytes | None = None) -> np.ndarray:
        """The captured frame from its lossless layer (and the residual layer, when that layer refines it)."""
        codec = self._residual_codec(residual) if residual is not None else self._codecs["machine"]
        with self._lock:
            return codec.decode_original(base, lossless, residual)

    def _residual_codec(self, residual: bytes) -> ScalableCodec:
        kind = unpack(residual)[0].kind
        mode = MODE_OF_KIND.get(kind)
        codec = self._codecs.get(mode or "")
        if codec is None:
            raise BitstreamError(f"no decoder here for a {kind.name.lower()} layer")
        return codec


def _identity(model: LoadedModel) -> str:
    return f"{model.model_id}@{model.weights_hash.hex()}"
