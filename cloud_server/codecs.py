"""The cloud's decoders: the shared base model and a residual model per mode (PR, FR).

Decoding is serialised by one lock: on a few CPU cores parallel decodes only compete.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from shared.codec.api import ScalableCodec
from shared.codec.bitstream import BitstreamError, LayerHeader, LayerKind, unpack
from shared.codec.weights import LAYER_FILES, SHIPPED_DIR, LoadedModel, load_layer
from shared.rpc import edge_pb2

MODES = ("pr", "fr")
RESIDUAL_MODES = {LayerKind.PR_RESIDUAL: "pr", LayerKind.FR_RESIDUAL: "fr"}


class CloudCodecs:
    def __init__(self, weights_dir: str | Path | None = None) -> None:
        folder = Path(weights_dir) if weights_dir else SHIPPED_DIR
        self.base = load_layer(folder / LAYER_FILES["base"])
        self._codecs = {"machine": ScalableCodec(self.base, None)}
        for mode in MODES:
            if (folder / LAYER_FILES[mode]).exists():
                self._codecs[mode] = ScalableCodec(self.base, load_layer(folder / LAYER_FILES[mode]), mode)
        self._lock = threading.Lock()

    @property
    def modes(self) -> list[str]:
        return [m for m in MODES if m in self._codecs]

    def incompatibility(self, info: edge_pb2.CodecInfo, mode: str) -> str | None:
        """Why an edge coding with ``info`` in ``mode`` cannot be decoded here (None if it can)."""
        codec = self._codecs.get(mode)
        if codec is None:
            return f"this cloud has no {mode} residual model (it decodes: {', '.join(self.modes) or 'base only'})"
        residual = codec.residual
        assert residual is not None
        for layer, model_id, weights_hash, ours in (
            ("base", info.base_model_id, info.base_weights_hash, self.base),
            ("residual", info.residual_model_id, info.residual_weights_hash, residual),
        ):
            if (model_id, bytes(weights_hash)) != (ours.model_id, ours.weights_hash):
                return (f"{layer} model {model_id}@{bytes(weights_hash).hex()} differs from the cloud's "
                        f"{_identity(ours)}")
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
        """Machine image; ``exact_pixels=False`` (the detector's input) uses the fast float32 synthesis."""
        with self._lock:
            return self._codecs["machine"].decode_machine(base, exact_pixels)

    def decode_human(self, base: bytes, residual: bytes) -> np.ndarray:
        """Human image from a base layer and its residual layer (PR or FR, as the residual says)."""
        mode = RESIDUAL_MODES.get(unpack(residual)[0].kind)
        codec = self._codecs.get(mode or "")
        if codec is None:
            raise BitstreamError(f"no decoder here for a residual layer of mode {mode}")
        with self._lock:
            return codec.decode_human(base, residual)


def _identity(model: LoadedModel) -> str:
    return f"{model.model_id}@{model.weights_hash.hex()}"
