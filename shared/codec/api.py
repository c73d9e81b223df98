"""The codec API shared by the edge node, the cloud server, the CLI and benchmarks.

Images are ``uint8`` arrays of shape (H, W, 3) in RGB order. A frame is coded in
two layers (Tatsumi et al., "Explicit Residual-Based Scalable Image Coding for
Humans and Machines"): the SA-ICM base layer, always sent, decodes to the
machine image x̂_m; the residual layer (PR-ICMH by default, FR-ICMH, or the classical
AVIF baseline of :mod:`icmh.codec.classical_residual`) refines it into the human
image x̂. The optional lossless layer (:mod:`icmh.codec.lossless`) gives back the
captured frame pixel for pixel (the evidence tier).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import classical_residual, lossless
from .bitstream import DIGEST_BYTES, BitstreamError, LayerHeader, LayerKind, digest, layers_digest, pack, unpack
from .exact import exact_arithmetic, exact_synthesis
from .models import ALIGNMENT, FeatureResidualCodec, machine_side
from .rate import rate_to_index
from .weights import LAYER_FILES, SHIPPED_DIR, LoadedModel, load_layer

RESIDUAL_KIND = {"pr": LayerKind.PR_RESIDUAL, "fr": LayerKind.FR_RESIDUAL, "avif": LayerKind.CLASSICAL_RESIDUAL}
MODE_OF_KIND = {kind: mode for mode, kind in RESIDUAL_KIND.items()}
#: modes whose residual layer is a learned model loaded from a weights file
LEARNED_MODES = ("pr", "fr")
LOSSLESS_HASH = bytes(DIGEST_BYTES)


def image_to_tensor(image: np.ndarray) -> tuple[Tensor, int, int]:
    """uint8 HxWx3 -> padded float tensor (replicate padding to the alignment), channels-last.

    The padding is done on the uint8 pixels (``np.pad``, edge mode: the same values as replicate-padding the
    float tensor), which keeps the channels-last layout the analysis transforms run in: at 1280x720 ~2 ms
    instead of ~15 ms for ``F.pad`` and the layout copy after it.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be a uint8 array of shape (H, W, 3)")
    h, w = image.shape[:2]
    pad_h, pad_w = (-h) % ALIGNMENT, (-w) % ALIGNMENT
    if pad_h or pad_w:
        pixels = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    else:  # torch refuses read-only views
        pixels = np.ascontiguousarray(image) if image.flags.writeable else image.copy()
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div_(255.0), pad_h, pad_w


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

    def float_machine(self) -> Tensor:
        """Padded x̂_m from the plain float32 synthesis: within ~0.1 of a level of :attr:`machine` and 2-3x faster.

        What the PR encoder codes its residual against. The decoder adds x̂_d to its own x̂_m; the entropy model
        sees the base latent, never x̂_m, so the difference cannot break a decode, and on Kodak it moved PSNR and
        residual size by < 0.005 dB and < 0.2 % (back to back, R = 0 and 1).
        """
        with torch.no_grad(), exact_arithmetic(False):
            return self.synthesis(self.y_hat.contiguous(memory_format=torch.channels_last)).contiguous()

    def machine_image(self) -> np.ndarray:
        """x̂_m as uint8 HxWx3, what ``decode_machine`` gives."""
        header, _ = unpack(self.data)
        return tensor_to_image(self.machine, header.height, header.width)


@dataclass(frozen=True)
class DecodedBase:
    """A base layer decoded ahead of its residual (:meth:`ScalableCodec.decode_base`): the latent and, for PR and the
    AVIF residual, the padded machine image in the pixels ``exact`` asked for. A cloud decodes it while it waits for
    the edge's residual layer."""

    data: bytes
    header: LayerHeader
    y_hat: Tensor
    machine: Tensor | None
    exact: bool


class ScalableCodec:
    """Scalable codec: SA-ICM base + a residual layer (PR-/FR-ICMH or classical AVIF) + optional lossless layer."""

    def __init__(self, base: LoadedModel, residual: LoadedModel | None = None, mode: str = "pr") -> None:
        if mode not in RESIDUAL_KIND:
            raise ValueError(f"mode must be one of {', '.join(RESIDUAL_KIND)}, got {mode!r}")
        if residual is not None and mode not in LEARNED_MODES:
            raise ValueError(f"mode {mode} codes its residual with a classical codec: no residual model")
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
        if with_residual and mode in LEARNED_MODES:
            residual = load_layer(residual_path or folder / LAYER_FILES[mode])
        return cls(base, residual, mode)

    @property
    def residual_identity(self) -> tuple[str, bytes]:
        """(model id, weights hash) written into this codec's residual layers."""
        if self.mode not in LEARNED_MODES:
            return classical_residual.MODEL_ID, classical_residual.IDENTITY_HASH
        residual = self._require_residual()
        return residual.model_id, residual.weights_hash

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

    def open_base(self, data: bytes) -> BaseEncoding:
        """A received or stored base layer as a :class:`BaseEncoding` (its latent decoded, bit-exact)."""
        _, y_hat, _ = self._decode_base(data, pixels=None)
        return BaseEncoding(bytes(data), y_hat, self.base.model.g_s)

    @torch.no_grad()
    def encode_residual(self, image: np.ndarray, base: BaseEncoding, rate: float = 0.5) -> bytes:
        """Code the human layer of ``image`` on top of ``base`` (from :meth:`encode_base`).

        PR codes ``x - x̂_m`` with x̂_m from the float synthesis (:meth:`BaseEncoding.float_machine`); the AVIF
        residual is coded against the exact machine image, since it is rounded to pixels before coding.
        """
        x, pad_h, pad_w = image_to_tensor(image)
        q_index = rate_to_index(rate)
        model_id, weights_hash = self.residual_identity
        if self.mode == "avif":
            strings = [classical_residual.encode(
                classical_residual.offset_residual(image, base.machine_image()), q_index)]
        else:
            model = self._require_residual().model
            q = torch.tensor([q_index])
            with exact_arithmetic(True):
                if self.mode == "pr":
                    x_m = base.float_machine().clamp(0.0, 1.0)
                    out = model.compress(x - x_m, q, *machine_side(model, x_m, base.y_hat))
                else:
                    out = model.compress(x, q, base.y_hat)
            strings = [s[0] for s in out["strings"]]
        header = LayerHeader(
            RESIDUAL_KIND[self.mode], model_id, weights_hash, q_index,
            image.shape[0], image.shape[1], pad_h, pad_w, digest(base.data),
        )
        return pack(header, strings)

    def encode(self, image: np.ndarray, rate: float = 0.5, residual_rate: float | None = None) -> tuple[bytes, bytes]:
        """Both layers of a frame: (base container, residual container)."""
        base = self.encode_base(image, rate)
        return base.data, self.encode_residual(image, base, rate if residual_rate is None else residual_rate)

    def encode_lossless(self, image: np.ndarray, base: bytes, residual: bytes | None = None,
                        method: str = lossless.FRAME, effort: str = "small") -> bytes:
        """The lossless layer of ``image`` over its base layer (and, for the residual method, its residual layer)."""
        if method == lossless.FRAME:
            return self._lossless_layer(lossless.webp_lossless(image, effort), image, base)
        if method != lossless.RESIDUAL:
            raise ValueError(f"lossless method must be one of {', '.join(lossless.METHODS)}, got {method!r}")
        if residual is None:
            raise ValueError(f"the {method} method needs the residual layer")
        approx = self.decode_human(base, residual)
        if approx.shape != image.shape:
            raise ValueError(f"image is {image.shape}, the layers code {approx.shape}")
        payload = lossless.webp_lossless(lossless.wrap_residual(image, approx), effort)
        return self._lossless_layer(payload, image, base, residual, method)

    def lossless_from_webp(self, webp: bytes, base: bytes) -> bytes:
        """Wrap a lossless WebP of the frame (e.g. the edge's stored copy) as the lossless layer of ``base``."""
        b_header, _ = unpack(base)
        image = lossless.read_webp(webp, b_header.height, b_header.width)
        return self._lossless_layer(webp, image, base)

    def _lossless_layer(self, payload: bytes, image: np.ndarray, base: bytes, residual: bytes | None = None,
                        method: str = lossless.FRAME) -> bytes:
        b_header, _ = unpack(base)
        if image.shape != (b_header.height, b_header.width, 3):
            raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, the base layer codes "
                             f"{b_header.width}x{b_header.height}")
        refined = (base,) if residual is None else (base, residual)
        header = LayerHeader(LayerKind.LOSSLESS, method, LOSSLESS_HASH, 0, b_header.height, b_header.width,
                             b_header.pad_h, b_header.pad_w, layers_digest(*refined))
        return pack(header, [payload, lossless.frame_digest(image)])

    # -- decoding ------------------------------------------------------------------------
    @staticmethod
    def _parse(data: bytes, kinds: tuple[LayerKind, ...], identity: tuple[str, bytes],
               n_strings: int) -> tuple[LayerHeader, list[bytes]]:
        header, strings = unpack(data)
        if header.kind not in kinds:
            wanted = "/".join(k.name.lower() for k in kinds)
            raise BitstreamError(f"expected a {wanted} layer, got {header.kind.name.lower()}")
        model_id, weights_hash = identity
        if header.model_id != model_id or header.weights_hash != weights_hash:
            raise BitstreamError(
                f"layer was coded with {header.model_id}@{header.weights_hash.hex()}, "
                f"this decoder has {model_id}@{weights_hash.hex()}"
            )
        if len(strings) != n_strings:
            raise BitstreamError(f"layer has {len(strings)} strings, model expects {n_strings}")
        return header, strings

    @torch.no_grad()
    def _decode_base(self, data: bytes, pixels: str | None = "exact") -> tuple[LayerHeader, Tensor, Tensor | None]:
        """Header, latent and (``pixels`` "exact" / "fast"; None: not computed) the padded machine image."""
        layer = self.base
        header, strings = self._parse(data, (LayerKind.BASE,), (layer.model_id, layer.weights_hash),
                                      layer.model.num_strings())
        model = layer.model
        shape = model.decoder_shape(header.height + header.pad_h, header.width + header.pad_w)
        q = torch.tensor([header.rate_index])
        with exact_arithmetic(True):  # the entropy-parameter path is always exact
            y_hat = model.decompress_latent([[s] for s in strings], shape, q)
            machine = None
            if pixels is not None:
                with exact_synthesis(pixels == "exact"):
                    machine = model.synthesis(y_hat)
        return header, y_hat, machine

    def decode_machine(self, base: bytes, exact_pixels: bool = True) -> np.ndarray:
        """Machine-oriented image x̂_m from the base layer alone.

        ``exact_pixels=False`` runs the synthesis transform in float arithmetic (:func:`exact_synthesis`; about 3-4x
        faster): the latent is still decoded bit-exactly, but pixels may differ by a level between machines —
        fine for a detector or a view, not for an archive.
        """
        header, _, machine = self._decode_base(base, "exact" if exact_pixels else "fast")
        return tensor_to_image(machine, header.height, header.width)

    @torch.no_grad()
    def decode_base(self, base: bytes, exact_pixels: bool = True, machine: bool = True) -> DecodedBase:
        """The part of :meth:`decode_human` that needs only the base layer: its latent and (``machine``) its machine
        image; FR-ICMH's decode needs no machine image."""
        header, y_hat, x_m = self._decode_base(base, ("exact" if exact_pixels else "fast") if machine else None)
        return DecodedBase(bytes(base), header, y_hat, x_m, exact_pixels)

    @torch.no_grad()
    def decode_human(self, base: bytes, residual: bytes, exact_pixels: bool = True,
                     decoded_base: DecodedBase | None = None) -> np.ndarray:
        """Human-oriented image x̂ from the base layer and its residual layer.

        ``exact_pixels=False`` runs both synthesis transforms in float arithmetic (:func:`exact_synthesis`): the
        latents decode bit-exactly as always, the image is within a level or two of the exact one (PR-ICMH at
        1280x720 on 2 threads: 3.6x faster in the speed benchmark): an operator's view, not the reference the
        lossless tier refines. ``decoded_base`` (:meth:`decode_base` of the same base layer, same pixels) saves
        decoding the base again; one that does not fit (another layer, other pixels, no machine image where one is
        needed) is ignored.
        """
        if self.mode not in LEARNED_MODES:
            n_strings = 1
        else:
            n_strings = self._require_residual().model.num_strings()
        header, strings = self._parse(residual, (RESIDUAL_KIND[self.mode],), self.residual_identity, n_strings)
        # FR-ICMH fuses latents before its own synthesis: the base's synthesis would be wasted work
        pixels = None if self.mode == "fr" else "exact" if exact_pixels else "fast"
        usable = decoded_base is not None and decoded_base.data == bytes(base) and (
            pixels is None or (decoded_base.machine is not None and decoded_base.exact == exact_pixels))
        if usable:
            b_header, y_hat, machine = decoded_base.header, decoded_base.y_hat, decoded_base.machine
        else:
            b_header, y_hat, machine = self._decode_base(base, pixels)
        if header.base_digest != digest(bytes(base)):
            raise BitstreamError("residual layer belongs to a different base layer")
        if (header.height, header.width) != (b_header.height, b_header.width):
            raise BitstreamError("residual and base layers differ in frame size")
        if self.mode == "avif":
            offset = classical_residual.decode(strings[0], header.height, header.width)
            return classical_residual.apply_residual(tensor_to_image(machine, header.height, header.width), offset)
        model = self._require_residual().model
        shape = model.decoder_shape(header.height + header.pad_h, header.width + header.pad_w)
        q = torch.tensor([header.rate_index])
        with exact_arithmetic(True), exact_synthesis(exact_pixels):
            if self.mode == "pr":
                x_m = machine.clamp(0.0, 1.0)
                side = machine_side(model, x_m, y_hat)
                x_hat = x_m + model.decompress([[s] for s in strings], shape, q, *side)["x_hat"]
            else:
                x_hat = model.decompress([[s] for s in strings], shape, q, y_hat)["x_hat"]
        return tensor_to_image(x_hat, header.height, header.width)

    def decode_original(self, base: bytes, lossless_layer: bytes, residual: bytes | None = None) -> np.ndarray:
        """The captured frame, pixel for pixel, from the lossless layer and the layers it refines."""
        header, strings = unpack(lossless_layer)
        if header.kind != LayerKind.LOSSLESS:
            raise BitstreamError(f"expected a lossless layer, got {header.kind.name.lower()}")
        if header.model_id not in lossless.METHODS or header.weights_hash != LOSSLESS_HASH:
            raise BitstreamError(f"unknown lossless method {header.model_id}@{header.weights_hash.hex()}")
        if len(strings) != 2 or len(strings[1]) != DIGEST_BYTES:
            raise BitstreamError("lossless layer needs a payload and an 8-byte frame digest")
        b_header, _ = unpack(base)
        if b_header.kind != LayerKind.BASE:
            raise BitstreamError(f"expected a base layer, got {b_header.kind.name.lower()}")
        if (header.height, header.width) != (b_header.height, b_header.width):
            raise BitstreamError("lossless and base layers differ in frame size")
        if header.model_id == lossless.FRAME:
            if header.base_digest != layers_digest(base):
                raise BitstreamError("lossless layer belongs to a different base layer")
            image = lossless.read_webp(strings[0], header.height, header.width)
        else:
            if residual is None:
                raise BitstreamError(f"a {header.model_id} lossless layer needs its residual layer")
            if header.base_digest != layers_digest(base, residual):
                raise BitstreamError("lossless layer belongs to other base / residual layers")
            wrapped = lossless.read_webp(strings[0], header.height, header.width)
            image = lossless.unwrap_residual(self.decode_human(base, residual), wrapped)
        return lossless.check(image, strings[1])

    def _require_residual(self) -> LoadedModel:
        if self.residual is None:
            raise ValueError("this codec was loaded without a residual model")
        return self.residual


def inspect(data: bytes) -> dict[str, object]:
    """Header fields of a layer container (validated, not decoded)."""
    header, strings = unpack(data)
    return {**header.describe(), "bytes": len(data), "string_bytes": [len(s) for s in strings]}
