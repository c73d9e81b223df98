"""The project's codecs as rate sweeps: SA-ICM base, PR-/FR-ICMH residual layers, single-layer reference, and the
classical AVIF residual on the SA-ICM base (``pr-avif``, the human layer's baseline).

Every point goes through the real bitstream: the bytes are the layer containers and the
image is what a decoder makes of them (``decode_machine`` / ``decode_human``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from icmh.codec import classical_residual
from icmh.codec.api import BaseEncoding, ScalableCodec
from icmh.codec.weights import LAYER_FILES, SHIPPED_DIR, LoadedModel, load_layer

from .curves import Coded, RateSweep

#: sweep name -> (weights layer, label)
LEARNED = {
    "sa-icm": ("base", "SA-ICM base (ours)"),
    "single": ("single", "single-layer reference"),
    "pr-icmh": ("pr", "PR-ICMH, shipped (ours)"),
    "pr-icmh-explicit": ("pr-explicit", "PR-ICMH, explicit residual as published"),
    "pr-icmh-small": ("pr-small", "PR-ICMH, small decoder (session 2)"),
    "fr-icmh": ("fr", "FR-ICMH (ours)"),
    "pr-avif": ("avif", "AVIF residual on SA-ICM (classical baseline)"),
}
#: layers that need no weights file (classical residual codecs)
CLASSICAL_LAYERS = {"avif": classical_residual.available}


@dataclass
class LearnedCodecs:
    """Codecs loaded from one weights folder; ``notes`` says why a layer is missing."""

    folder: Path
    layers: dict[str, LoadedModel] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, dict[str, str]]:
        return {
            layer: {"file": str(self.folder / LAYER_FILES[layer]), "model_id": m.model_id,
                    "weights_hash": m.weights_hash.hex()}
            for layer, m in self.layers.items()
        }

    def codec(self, name: str) -> ScalableCodec | None:
        """The codec behind sweep ``name``, or None when its weights (or its classical codec) are missing."""
        layer = LEARNED[name][0]
        if layer not in self.layers and (layer not in CLASSICAL_LAYERS or layer in self.notes):
            return None
        if layer in ("base", "single"):
            return ScalableCodec(self.layers[layer])
        if layer in CLASSICAL_LAYERS:
            return ScalableCodec(self.layers["base"], None, mode=layer)
        mode = "pr" if layer.startswith("pr") else layer
        return ScalableCodec(self.layers["base"], self.layers[layer], mode=mode)


def load_learned(weights: str | Path | None, names: Sequence[str]) -> LearnedCodecs:
    """Load the layers needed by ``names`` from ``weights`` (default: shipped).

    The base layer is required when any of ``names`` uses it; a missing single-layer or
    residual file only leaves that codec out, with a note.
    """
    folder = Path(weights) if weights else SHIPPED_DIR
    loaded = LearnedCodecs(folder)
    needed = {LEARNED[n][0] for n in names if n in LEARNED}
    if needed - {"single"}:
        needed.add("base")
    for layer in needed & set(CLASSICAL_LAYERS):
        needed.discard(layer)
        if not CLASSICAL_LAYERS[layer]():
            loaded.notes[layer] = f"skipped: this Pillow has no {layer.upper()} support"
    for layer in sorted(needed, key=list(LAYER_FILES).index):
        path = folder / LAYER_FILES[layer]
        if path.exists():
            loaded.layers[layer] = load_layer(path)
        elif layer == "base":
            raise FileNotFoundError(f"base-layer weights not found: {path}")
        else:
            loaded.notes[layer] = f"skipped: {path} not found"
    return loaded


def machine_layer_sweep(name: str, codec: ScalableCodec, rates: Sequence[float]) -> RateSweep:
    """A single image codec (SA-ICM base or single-layer reference): encode_base at R -> decode_machine."""

    def code(image: np.ndarray, rate: float) -> Coded:
        data = codec.encode_base(image, rate).data
        return Coded(codec.decode_machine(data), {"total": len(data)})

    return RateSweep(name, LEARNED[name][1], "R", tuple(rates), code)


class _ResidualCoder:
    """Residual layer at R on a base layer coded once per image (at a fixed rate) and kept for all R."""

    def __init__(self, codec: ScalableCodec, base_rate: float) -> None:
        self.codec = codec
        self.base_rate = base_rate
        self._bases: dict[tuple[tuple[int, ...], bytes], BaseEncoding] = {}

    def __call__(self, image: np.ndarray, rate: float) -> Coded:
        key = (image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        if key not in self._bases:
            self._bases[key] = self.codec.encode_base(image, self.base_rate)
        base = self._bases[key]
        residual = self.codec.encode_residual(image, base, rate)
        decoded = self.codec.decode_human(base.data, residual)
        return Coded(decoded, {"base": len(base.data), "residual": len(residual)})


def residual_sweep(name: str, codec: ScalableCodec, base_rate: float, rates: Sequence[float]) -> RateSweep:
    """PR-/FR-ICMH human image: base at ``base_rate`` (fixed, as in Tatsumi et al.) + residual at each R."""
    label = f"{LEARNED[name][1]}, base R={base_rate:g}"
    return RateSweep(name, label, "R", tuple(rates), _ResidualCoder(codec, base_rate))


def learned_sweeps(
    learned: LearnedCodecs, names: Sequence[str], rates: Sequence[float], base_rate: float | None = None
) -> list[RateSweep]:
    """Sweeps for the learned codecs among ``names`` whose weights are loaded (residuals need ``base_rate``)."""
    sweeps = []
    for name in names:
        if name not in LEARNED or (codec := learned.codec(name)) is None:
            continue
        if LEARNED[name][0] in ("base", "single"):
            sweeps.append(machine_layer_sweep(name, codec, rates))
        elif base_rate is not None:
            sweeps.append(residual_sweep(name, codec, base_rate, rates))
    return sweeps
