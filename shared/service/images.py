"""PNG coding of RGB frames and PSNR, for inspection replies, the operator CLI and the demo."""

from __future__ import annotations

import cv2
import numpy as np


def encode_png(image_rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 RGB HxWx3; ValueError for anything that is not a colour image."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
