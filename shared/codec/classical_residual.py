"""Classical residual layer: the pixel residual ``x - x̂_m`` coded by AVIF (Pillow's libavif plugin).

The baseline and fallback beside the learned PR-/FR-ICMH layers. The residual is signed; it is
mapped to ``uint8`` as ``clip(x - x̂_m + 128, 0, 255)`` and coded as an RGB AVIF image (4:4:4, full
range), so residuals below -128 or above +127 are clipped (the human image then misses that part
of the correction; at the base rates used here fewer than 0.1 % of the samples are). The decoder
computes ``x̂ = clip(x̂_m + r - 128, 0, 255)`` on the exact machine image ``x̂_m``.

The rate parameter R in [0, 1] (stored as the byte q = round(255 R)) maps to AVIF quality
``round(100 q / 255)``. AV1 decoding is specified bit-exactly; the YUV -> RGB conversion is
libavif's.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, features

from .bitstream import DIGEST_BYTES, BitstreamError
from .pillow_image import decode_rgb
from .rate import RATE_STEPS

OFFSET = 128
MODEL_ID = "avif-444-offset128"
#: stands in for a weights hash in the layer header: names the mapping and the codec settings
IDENTITY_HASH = hashlib.blake2b(f"{MODEL_ID}/speed6/full-range/v1".encode(), digest_size=DIGEST_BYTES).digest()
SPEED = 6


def available() -> bool:
    """Whether this Pillow has AVIF support (Pillow >= 11 wheels do)."""
    return bool(features.check("avif"))


def quality(rate_index: int) -> int:
    """AVIF quality 0..100 of a stored rate index 0..255."""
    return round(100 * rate_index / RATE_STEPS)


def offset_residual(image: np.ndarray, machine: np.ndarray) -> np.ndarray:
    """``clip(x - x̂_m + 128, 0, 255)`` as uint8."""
    return np.clip(image.astype(np.int16) - machine + OFFSET, 0, 255).astype(np.uint8)


def apply_residual(machine: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """The human image ``clip(x̂_m + r - 128, 0, 255)``."""
    return np.clip(machine.astype(np.int16) + residual - OFFSET, 0, 255).astype(np.uint8)


def encode(residual: np.ndarray, rate_index: int) -> bytes:
    """AVIF file of an offset residual image (uint8 HxWx3)."""
    if not available():
        raise RuntimeError("this Pillow has no AVIF support (install Pillow >= 11)")
    buf = io.BytesIO()
    Image.fromarray(residual).save(buf, format="AVIF", quality=quality(rate_index), speed=SPEED,
                                   subsampling="4:4:4", range="full", max_threads=1)
    return buf.getvalue()


def decode(data: bytes, height: int, width: int) -> np.ndarray:
    """Offset residual image from an AVIF file; BitstreamError if it is not a valid AVIF of that size."""
    if not available():
        raise BitstreamError("this decoder has no AVIF support (install Pillow >= 11)")
    return decode_rgb(data, "AVIF", height, width, "AVIF residual")
