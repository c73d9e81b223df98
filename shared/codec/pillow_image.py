"""Decoding a Pillow-coded payload (AVIF, WebP) of a layer container, with validation."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .bitstream import BitstreamError


def decode_rgb(data: bytes, image_format: str, height: int, width: int, what: str) -> np.ndarray:
    """RGB pixels of an ``image_format`` file of the given size; BitstreamError for anything else."""
    try:
        with Image.open(io.BytesIO(data), formats=[image_format]) as img:
            if img.size != (width, height):
                raise BitstreamError(f"{what} is {img.size[0]}x{img.size[1]}, the frame {width}x{height}")
            pixels = np.array(img.convert("RGB"))  # writable: torch.from_numpy takes it
    except BitstreamError:
        raise
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError... on corrupt files
        raise BitstreamError(f"{what} does not decode: {exc}") from None
    return pixels
