"""Classical (AVIF) residual layer and the layer plumbing of ScalableCodec: round trips, validation, no wasted work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from icmh.codec import BitstreamError, ScalableCodec, inspect
from icmh.codec import classical_residual as avif
from icmh.codec.bitstream import LayerKind, pack, unpack
from icmh.metrics import psnr
from tests.test_codec import synthetic_photo

pytestmark = pytest.mark.skipif(not avif.available(), reason="Pillow without AVIF support")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return synthetic_photo(200, 301, seed=23)


@pytest.fixture(scope="module")
def codec(tiny_weights: Path) -> ScalableCodec:
    return ScalableCodec.from_weights(tiny_weights, mode="avif")


def test_avif_mode_loads_no_residual_model(codec: ScalableCodec, tiny_weights: Path) -> None:
    assert codec.residual is None and codec.residual_identity == (avif.MODEL_ID, avif.IDENTITY_HASH)
    learned = ScalableCodec.from_weights(tiny_weights, mode="pr").residual
    with pytest.raises(ValueError, match="no residual model"):
        ScalableCodec(codec.base, learned, mode="avif")
    with pytest.raises(ValueError, match="mode must be one of"):
        ScalableCodec(codec.base, None, mode="jpeg")


def test_avif_residual_round_trip_refines_the_machine_image(codec: ScalableCodec, photo: np.ndarray) -> None:
    base = codec.encode_base(photo, 0.5)
    machine = codec.decode_machine(base.data)
    qualities = []
    for rate in (0.2, 0.6, 0.9):
        residual = codec.encode_residual(photo, base, rate)
        header, strings = unpack(residual)
        assert header.kind == LayerKind.CLASSICAL_RESIDUAL and len(strings) == 1
        assert inspect(residual)["model_id"] == avif.MODEL_ID
        human = codec.decode_human(base.data, residual)
        expected = avif.apply_residual(machine, avif.decode(strings[0], *photo.shape[:2]))
        np.testing.assert_array_equal(human, expected)
        np.testing.assert_array_equal(codec.decode_human(base.data, residual), human)  # deterministic
        qualities.append((len(residual), psnr(photo, human)))
    sizes, scores = zip(*qualities, strict=True)
    assert sizes[0] < sizes[1] < sizes[2] and scores[0] < scores[1] < scores[2]
    assert scores[0] > psnr(photo, machine)  # the tiny random base is noise: any residual improves on it


def test_offset_mapping_clips_and_inverts() -> None:
    image = np.array([[[0, 255, 100]]], np.uint8)
    machine = np.array([[[200, 10, 90]]], np.uint8)
    offset = avif.offset_residual(image, machine)
    assert offset.tolist() == [[[0, 255, 138]]]  # -200 and +245 clip to -128 / +127
    assert avif.apply_residual(machine, offset).tolist() == [[[72, 137, 100]]]
    assert (avif.quality(0), avif.quality(128), avif.quality(255)) == (0, 50, 100)


def test_corrupt_avif_payload_raises_bitstream_error(codec: ScalableCodec, photo: np.ndarray) -> None:
    base = codec.encode_base(photo, 0.5)
    residual = codec.encode_residual(photo, base, 0.5)
    header, (payload,) = unpack(residual)
    rng = np.random.default_rng(0)
    broken = [payload[: len(payload) // 2], b"\0" * len(payload), b"not an avif", payload[:40] + bytes(
        rng.integers(0, 256, len(payload) - 40, dtype=np.uint8))]
    for bad in broken:
        with pytest.raises(BitstreamError):
            codec.decode_human(base.data, pack(header, [bad]))  # valid container, CRC resealed by pack
    other = codec.encode_residual(photo[:100, :100], codec.encode_base(photo[:100, :100]), 0.5)
    with pytest.raises(BitstreamError, match="100x100"):
        codec.decode_human(base.data, pack(header, unpack(other)[1]))
    with pytest.raises(BitstreamError, match="different base"):
        codec.decode_human(codec.encode_base(photo, 0.9).data, residual)
    with pytest.raises(BitstreamError, match="checksum"):
        codec.decode_human(base.data, residual[:-5] + bytes([residual[-5] ^ 1]) + residual[-4:])


def test_layer_kinds_of_other_modes_are_refused(tiny_weights: Path, codec: ScalableCodec, photo: np.ndarray) -> None:
    pr = ScalableCodec.from_weights(tiny_weights, mode="pr")
    base = codec.encode_base(photo, 0.5)
    with pytest.raises(BitstreamError, match="expected a classical_residual layer"):
        codec.decode_human(base.data, pr.encode_residual(photo, base, 0.5))
    with pytest.raises(BitstreamError, match="expected a pr_residual layer"):
        pr.decode_human(base.data, codec.encode_residual(photo, base, 0.5))


def test_open_base_gives_the_encoders_latent(tiny_weights: Path, photo: np.ndarray) -> None:
    """A stored base layer opened later codes the same residual bytes as the encoder's own encoding."""
    for mode in ("pr", "fr", "avif"):
        codec = ScalableCodec.from_weights(tiny_weights, mode=mode)
        base = codec.encode_base(photo, 0.4)
        opened = codec.open_base(base.data)
        assert codec.encode_residual(photo, opened, 0.7) == codec.encode_residual(photo, base, 0.7), mode


def test_fr_human_decode_skips_the_base_synthesis(tiny_weights: Path, photo: np.ndarray) -> None:
    """FR-ICMH fuses latents before its own synthesis: the base's g_s must not run (PR needs it)."""
    calls = {"n": 0}
    for mode, expected_calls in (("fr", 0), ("pr", 1)):
        codec = ScalableCodec.from_weights(tiny_weights, mode=mode)
        base, residual = codec.encode(photo, 0.5)
        calls["n"] = 0
        hook = codec.base.model.g_s.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        try:
            codec.decode_human(base, residual)
        finally:
            hook.remove()
        assert calls["n"] == expected_calls, mode
