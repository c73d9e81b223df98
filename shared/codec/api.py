"""The codec API shared by the edge node, the cloud server, the CLI and benchmarks.

Images are ``uint8`` arrays of shape (H, W, 3) in RGB order. A frame is coded in
two layers (Tatsumi et al., "Explicit Residual-Based Scalable Image Coding for
Humans and Machines"): the SA-ICM base layer, always sent, decodes to the
machine image x̂_m; the residual layer (PR-ICMH by default, FR-ICMH optionally)
refines it into the human image x̂.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .bitstream import BitstreamError, LayerHeader, LayerKind, digest, pack, unpack
from .exact import exact_arithmetic
from .models import ALIGNMENT, FeatureResidualCodec
from .rate import rate_to_index
from .weights import LAYER_FILES, SHIPPED_DIR, LoadedModel, load_layer

RESIDUAL_KIND = {"pr": LayerKind.PR_RESIDUAL, "fr": LayerKind.FR_RESIDUAL}


def image_to_tensor(image: np.ndarray) -> tuple[Tensor, int, int]:
    """uint8 HxWx3 -> padded float tensor (replicate padding to the alignment)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be a uint8 array of shape (H, W, 3)")
    h, w = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div_(255.0)
    pad_h, pad_w = (-h) % ALIGNMENT, (-w) % ALIGNMENT
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x, pad_h, pad_w


def tensor_to_image(x: Tensor, height: int, width: int) -> np.ndarray:
    """Crop, clamp and round a decoded tensor to uint8 HxWx3."""
    x = x[0, :, :height, :width].clamp(0.0, 1.0).mul(255.0).round()
    return x.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


@dataclass
class BaseEncoding:
    """A coded base layer with the encoder's own decoded latent (and, on demand, machine image)."""

    data: bytes
    y_hat: Tensor
    synthesis: torch.nn.Module
    _machine: Tensor | None = None

    @property
    def machine(self) -> Tensor:
        """Padded float x̂_m, identical to what any decoder produces (computed once, when first needed)."""
        if self._machine is None:
            with torch.no_grad(), exact_arithmetic(True):
                self._machine = self.synthesis(self.y_hat)
        return self._machine


class ScalableCodec:
    """Two-layer codec: SA-ICM base + PR-/FR-ICMH residual."""

    def __init__(self, base: LoadedModel, residual: LoadedModel | None = None, mode: str = "pr") -> None:
        if mode not in RESIDUAL_KIND:
            raise ValueError(f"mode must be 'pr' or 'fr', got {mode!r}")
        if residual is not None and (mode == "fr") != isinstance(residual.model, FeatureResidualCodec):
            raise ValueError(f"residual model {residual.model_id} does not fit mode {mode}")
        self.base = base
        self.residual = residual
        self.mode = mode

    @classmethod
    def from_weights(
        cls,
        weights_dir: str | Path | None = None,
        mode: str = "pr",
        base_path: str | Path | None = None,
        residual_path: str | Path | None = None,
        with_residual: bool = True,
    ) -> ScalableCodec:
        """Load the shipped weights (or files from ``weights_dir`` / explicit paths)."""
        folder = Path(weights_dir) if weights_dir else SHIPPED_DIR
        base = load_layer(base_path or folder / LAYER_FILES["base"])
        residual = None
        if with_residual:
            residual = load_layer(residual_path or folder / LAYER_FILES[mode])
        return cls(base, residual, mode)

    # -- encoding ------------------------------------------------------------------------
    @torch.no_grad()
    def encode_base(self, image: np.ndarray, rate: float = 0.5) -> BaseEncoding:
        """Code the machine layer of ``image`` at rate parameter ``rate`` in [0, 1]."""
        x, pad_h, pad_w = image_to_tensor(image)
        q_index = rate_to_index(rate)
        q = torch.tensor([q_index])
        with exact_arithmetic(True):
            out = self.base.model.compress(x, q)
        header = LayerHeader(
            LayerKind.BASE, self.base.model_id, self.base.weights_hash, q_index,
            image.shape[0], image.shape[1], pad_h, pad_w,
        )
        data = pack(header, [s[0] for s in out["strings"]])
        return BaseEncoding(data, out["y_hat"], self.base.model.g_s)

    @torch.no_grad()
    def encode_residual(self, image: np.ndarray, base: BaseEncoding, rate: float = 0.5) -> bytes:
        """Code the human layer of ``image`` on top of ``base`` (from :meth:`encode_base`)."""
        residual = self._require_residual()
        x, pad_h, pad_w = image_to_tensor(image)
        q_index = rate_to_index(rate)
        q = torch.tensor([q_index])
        with exact_arithmetic(True):
            if self.mode == "pr":
                out = residual.model.compress(x - base.machine.clamp(0.0, 1.0), q)
            else:
                out = residual.model.compress(x, q, base.y_hat)
        header = LayerHeader(
            RESIDUAL_KIND[self.mode], residual.model_id, residual.weights_hash, q_index,
            image.shape[0], image.shape[1], pad_h, pad_w, digest(base.data),
        )
        return pack(header, [s[0] for s in out["strings"]])

    def encode(self, image: np.ndarray, rate: float = 0.5, residual_rate: float | None = None) -> tuple[bytes, bytes]:
        """Both layers of a frame: (base container, residual container)."""
        base = self.encode_base(image, rate)
        return base.data, self.encode_residual(image, base, rate if residual_rate is None else residual_rate)

    # -- decoding ------------------------------------------------------------------------
    def _parse(
        self, data: bytes, kinds: tuple[LayerKind, ...], layer: LoadedModel
    ) -> tuple[LayerHeader, list[bytes]]:
        header, strings = unpack(data)
        if header.kind not in kinds:
            wanted = "/".join(k.name.lower() for k in kinds)
            raise BitstreamError(f"expected a {wanted} layer, got {header.kind.name.lower()}")
        if header.model_id != layer.model_id or header.weights_hash != layer.weights_hash:
            raise BitstreamError(
                f"layer was coded with {header.model_id}@{header.weights_hash.hex()}, "
                f"this decoder has {layer.model_id}@{layer.weights_hash.hex()}"
            )
        if len(strings) != layer.model.num_strings():
            raise BitstreamError(f"layer has {len(strings)} strings, model expects {layer.model.num_strings()}")
        return header, strings

    @torch.no_grad()
    def _decode_base(self, data: bytes, exact_pixels: bool = True) -> tuple[LayerHeader, Tensor, Tensor]:
        header, strings = self._parse(data, (LayerKind.BASE,), self.base)
        model = self.base.model
        shape = model.decoder_shape(header.height + header.pad_h, header.width + header.pad_w)
        q = torch.tensor([header.rate_index])
        with exact_arithmetic(True):  # the entropy-parameter path is always exact
            y_hat = model.decompress_latent([[s] for s in strings], shape, q)
        with exact_arithmetic(exact_pixels):
            machine = model.g_s(y_hat)
        return header, y_hat, machine

    def decode_machine(self, base: bytes, exact_pixels: bool = True) -> np.ndarray:
        """Machine-oriented image x̂_m from the base layer alone.

        ``exact_pixels=False`` runs the synthesis transform in plain float32 (about 3-4x faster): the
        latent is still decoded bit-exactly, but pixels may differ by one level between machines —
        fine for a detector, not for an archive.
        """
        header, _, machine = self._decode_base(base, exact_pixels)
        return tensor_to_image(machine, header.height, header.width)

    @torch.no_grad()
    def decode_human(self, base: bytes, residual: bytes) -> np.ndarray:
        """Human-oriented image x̂ from the base layer and its residual layer."""
        layer = self._require_residual()
        b_header, y_hat, machine = self._decode_base(base)
        header, strings = self._parse(residual, (RESIDUAL_KIND[self.mode],), layer)
        if header.base_digest != digest(bytes(base)):
            raise BitstreamError("residual layer belongs to a different base layer")
        if (header.height, header.width) != (b_header.height, b_header.width):
            raise BitstreamError("residual and base layers differ in frame size")
        shape = layer.model.decoder_shape(header.height + header.pad_h, header.width + header.pad_w)
        q = torch.tensor([header.rate_index])
        with exact_arithmetic(True):
            if self.mode == "pr":
                x_d = layer.model.decompress([[s] for s in strings], shape, q)["x_hat"]
                x_hat = machine.clamp(0.0, 1.0) + x_d
            else:
                x_hat = layer.model.decompress([[s] for s in strings], shape, q, y_hat)["x_hat"]
        return tensor_to_image(x_hat, header.height, header.width)

    def _require_residual(self) -> LoadedModel:
        if self.residual is None:
            raise ValueError("this codec was loaded without a residual model")
        return self.residual


def inspect(data: bytes) -> dict[str, object]:
    """Header fields of a layer container (validated, not decoded)."""
    header, strings = unpack(data)
    return {**header.describe(), "bytes": len(data), "string_bytes": [len(s) for s in strings]}
