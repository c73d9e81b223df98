"""Lossless evidence tier: the payloads of the LOSSLESS layer (libwebp's lossless mode through Pillow).

Two methods, named by the layer's model id:

* ``webp-ll-frame``: the captured frame itself as lossless WebP. Needs no lower layer to decode
  (the container still names the base layer it belongs to).
* ``webp-ll-residual``: ``(x - x̂ + 128) mod 256`` as lossless WebP, ``x̂`` the exact human image of
  base + residual; ``x = (x̂ + w - 128) mod 256``. The wrap is exact: no clipping.

Measured on Kodak and the traffic frames with the shipped models (human images at 27-29 dB), the
residual costs about twice the bytes of the frame (12-13 vs 6-10 bpp; see docs/service.md), so the
encoders use the frame method unless told otherwise. Every payload carries an 8-byte digest of the
frame it must reproduce; the decoder checks it, so a reconstruction is either exact or refused.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from .bitstream import DIGEST_BYTES, BitstreamError, LayerKind, unpack
from .pillow_image import decode_rgb

FRAME = "webp-ll-frame"
RESIDUAL = "webp-ll-residual"
METHODS = (FRAME, RESIDUAL)
#: libwebp lossless effort: (method 0..6, quality 0..100); "fast" is the edge store's, "small" the CLI's
EFFORT = {"fast": (0, 0), "small": (1, 50)}


def frame_digest(image: np.ndarray) -> bytes:
    """8-byte digest of a frame's pixels and shape."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.digest()


def webp_lossless(image: np.ndarray, effort: str = "small") -> bytes:
    """Lossless WebP file of an RGB uint8 image."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be a uint8 array of shape (H, W, 3)")
    method, quality = EFFORT[effort]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", lossless=True, method=method, quality=quality, exact=True)
    return buf.getvalue()


def read_webp(data: bytes, height: int, width: int) -> np.ndarray:
    """RGB pixels of a WebP file of the given size; BitstreamError otherwise."""
    return decode_rgb(data, "WEBP", height, width, "WebP payload")


def wrap_residual(image: np.ndarray, approx: np.ndarray) -> np.ndarray:
    """``(x - x̂ + 128) mod 256`` as uint8 (invertible given x̂)."""
    return ((image.astype(np.int16) - approx + 128) & 0xFF).astype(np.uint8)


def unwrap_residual(approx: np.ndarray, wrapped: np.ndarray) -> np.ndarray:
    """``(x̂ + w - 128) mod 256``: the frame ``wrap_residual`` was computed from."""
    return ((approx.astype(np.int16) + wrapped - 128) & 0xFF).astype(np.uint8)


def check(image: np.ndarray, expected_digest: bytes) -> np.ndarray:
    """``image`` if its digest is the one the layer carries; BitstreamError otherwise."""
    if frame_digest(image) != expected_digest:
        raise BitstreamError("lossless layer does not reproduce the captured frame (wrong lower layers?)")
    return image


def needs_residual(layer: bytes) -> bool:
    """Whether a lossless layer refines the human image (so decoding it needs the residual layer)."""
    header, _ = unpack(layer)
    if header.kind != LayerKind.LOSSLESS:
        raise BitstreamError(f"expected a lossless layer, got {header.kind.name.lower()}")
    return header.model_id == RESIDUAL
