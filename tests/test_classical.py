"""Classical anchor codecs: real bytes, decoded images of the input size, quality rising with the setting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from icmh.bench import classical
from icmh.bench.classical import CLASSICAL_CODECS, select_codecs
from icmh.metrics import psnr


def _test_image(height: int = 45, width: int = 67) -> np.ndarray:
    """Smooth colour gradients with an edge: odd size on purpose (4:2:0 padding)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin(x / 5)], axis=2)
    image[height // 3 : height // 2, width // 4 : width // 2] = (20, 200, 40)
    return image.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(CLASSICAL_CODECS))
def test_round_trip(name: str) -> None:
    codec = CLASSICAL_CODECS[name]
    if not codec.is_available():
        pytest.skip(f"{name} needs {codec.requirement}")
    image = _test_image()
    low_bytes, low = codec.encode_decode(image, codec.settings[0])
    high_bytes, high = codec.encode_decode(image, codec.settings[-1])
    for decoded in (low, high):
        assert decoded.shape == image.shape and decoded.dtype == np.uint8
    assert 0 < len(low_bytes) < len(high_bytes)
    assert psnr(image, high) > max(psnr(image, low), 25.0)


def test_webp_is_lossy_at_every_setting() -> None:
    image = _test_image()
    for quality in CLASSICAL_CODECS["webp"].settings:
        assert psnr(image, CLASSICAL_CODECS["webp"].encode_decode(image, quality)[1]) < 60


def test_missing_codec_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(CLASSICAL_CODECS["hevc"], is_available=lambda: False)
    monkeypatch.setitem(classical.CLASSICAL_CODECS, "hevc", missing)
    chosen, skipped = select_codecs(["jpeg", "hevc"])
    assert [c.name for c in chosen] == ["jpeg"]
    assert "hevc" in skipped and "libx265" in skipped["hevc"]
