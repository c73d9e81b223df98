"""Codec library: exact round trips, malformed input, determinism across processes, sizes, rate."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from icmh.codec import BitstreamError, ScalableCodec, inspect
from icmh.codec.api import image_to_tensor, tensor_to_image
from icmh.codec.bitstream import LayerHeader, LayerKind, pack, unpack
from icmh.codec.exact import exact_arithmetic, exact_kernel
from icmh.codec.models import build_model
from icmh.codec.weights import prepare
from icmh.metrics import psnr
from tests.conftest import make_tiny_weights


def kodak(shared_dir: Path, name: str = "01.png") -> np.ndarray:
    """A Kodak image of the data root (tests that need real photographs take the skipping ``shared_dir``)."""
    return cv2.cvtColor(cv2.imread(str(shared_dir / "data" / "kodak" / name)), cv2.COLOR_BGR2RGB)


def synthetic_photo(height: int = 257, width: int = 333, seed: int = 0) -> np.ndarray:
    """A photo-like RGB test image without any data set: smooth colour gradients, flat objects with sharp edges
    (rectangles and ellipses), a slight blur and sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        image[..., c] = 128 + 60 * np.sin(2 * np.pi * (fx * x / width + fy * y / height) + phase)
    for _ in range(8):
        colour = rng.integers(0, 256, 3).tolist()
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 12 + 1, width // 3 + 2)), int(rng.integers(height // 12 + 1, height // 3 + 2))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), colour, -1)
        else:
            cv2.ellipse(image, (x0, y0), (w // 2 + 1, h // 2 + 1), float(rng.uniform(0, 180)), 0, 360, colour, -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.2)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return synthetic_photo()  # odd size on purpose


def conditional_codec(tiny_weights: Path, architecture: str = "pr-icmh-c-tiny") -> ScalableCodec:
    """The tiny base with a conditional PR residual codec whose x̂_m (and ŷ_m) branches are not zero (as after
    training)."""
    base = ScalableCodec.from_weights(tiny_weights, mode="pr").base
    torch.manual_seed(4)
    model = build_model(architecture)
    layers = [model.g_s.machine_half, model.g_s.refine[-1]]
    if model.spatial_context:  # the spatial context's weights into the entropy parameters start at zero
        layers += [codec.entropy_parameters[0] for codec in model.latent_codec.latent_codec["y"].latent_codec.values()]
    for layer in layers:
        torch.nn.init.normal_(layer.weight, std=0.05)
    model.update(force=True)
    return ScalableCodec(base, prepare(model, architecture), mode="pr")


@pytest.fixture(scope="module", params=["pr", "fr", "pr-conditional", "pr-conditional-entropy", "pr-checkerboard"])
def codec(request: pytest.FixtureRequest, tiny_weights: Path) -> ScalableCodec:
    if request.param == "pr-conditional":
        return conditional_codec(tiny_weights)
    if request.param == "pr-conditional-entropy":
        return conditional_codec(tiny_weights, "pr-icmh-ce-tiny")
    if request.param == "pr-checkerboard":
        return conditional_codec(tiny_weights, "pr-icmh-cb4-tiny")
    return ScalableCodec.from_weights(tiny_weights, mode=request.param)


def test_base_round_trip_equals_encoder_reconstruction(codec: ScalableCodec, photo: np.ndarray) -> None:
    enc = codec.encode_base(photo, 0.5)
    decoded = codec.decode_machine(enc.data)
    assert decoded.shape == photo.shape and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, tensor_to_image(enc.machine, *photo.shape[:2]))


def test_eval_forward_equals_bitstream_path(codec: ScalableCodec, photo: np.ndarray) -> None:
    """The quantised forward path and the real range-coded path give the same pixels."""
    x, _, _ = image_to_tensor(photo)
    q = torch.tensor([200])
    with torch.no_grad():
        forward = codec.base.model(x, q)["x_hat"]
    enc = codec.encode_base(photo, 200 / 255)
    np.testing.assert_array_equal(codec.decode_machine(enc.data), tensor_to_image(forward, *photo.shape[:2]))


def test_human_round_trip_is_deterministic(codec: ScalableCodec, photo: np.ndarray) -> None:
    base, residual = codec.encode(photo, 0.3, 0.7)
    first = codec.decode_human(base, residual)
    again = codec.decode_human(base, residual)
    assert first.shape == photo.shape
    np.testing.assert_array_equal(first, again)
    assert inspect(residual)["kind"] == f"{codec.mode}_residual"
    assert inspect(base)["rate_index"] == round(0.3 * 255)


def test_base_decoded_ahead_of_its_residual_gives_the_same_human_image(codec: ScalableCodec,
                                                                       photo: np.ndarray) -> None:
    """The cloud decodes the base layer while it waits for the residual (``decode_base``): the human image is the
    same, exact or fast; a decoded base of another layer, or with other pixels, is ignored rather than used."""
    base, residual = codec.encode(photo, 0.3, 0.7)
    other_base = codec.encode_base(photo, 0.6).data
    for exact in (True, False):
        alone = codec.decode_human(base, residual, exact)
        ahead = codec.decode_base(base, exact, machine=codec.mode != "fr")
        assert (ahead.machine is None) == (codec.mode == "fr")
        np.testing.assert_array_equal(codec.decode_human(base, residual, exact, ahead), alone)
        for unfit in (codec.decode_base(other_base, exact), codec.decode_base(base, not exact),
                      codec.decode_base(base, exact, machine=False)):
            np.testing.assert_array_equal(codec.decode_human(base, residual, exact, unfit), alone)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (65, 64), (333, 257)])
def test_any_frame_size(tiny_weights: Path, size: tuple[int, int]) -> None:
    codec = ScalableCodec.from_weights(tiny_weights)
    image = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    base, residual = codec.encode(image)
    assert codec.decode_machine(base).shape == image.shape
    assert codec.decode_human(base, residual).shape == image.shape


def test_invalid_images_and_rates_are_refused(tiny_weights: Path) -> None:
    codec = ScalableCodec.from_weights(tiny_weights)
    with pytest.raises(ValueError, match="uint8"):
        codec.encode_base(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="rate"):
        codec.encode_base(np.zeros((8, 8, 3), np.uint8), 1.5)


# -- malformed input ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def layers(tiny_weights: Path, photo: np.ndarray) -> tuple[ScalableCodec, bytes, bytes]:
    codec = ScalableCodec.from_weights(tiny_weights)
    base, residual = codec.encode(photo)
    return codec, base, residual


def _reseal(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def test_truncated_layers_raise(layers: tuple[ScalableCodec, bytes, bytes]) -> None:
    codec, base, _ = layers
    for cut in (0, 3, 10, len(base) // 2, len(base) - 1):
        with pytest.raises(BitstreamError):
            codec.decode_machine(base[:cut])


def test_bit_flips_in_header_and_payload_raise(layers: tuple[ScalableCodec, bytes, bytes]) -> None:
    codec, base, _ = layers
    positions = list(range(min(64, len(base)))) + list(range(64, len(base), max(1, len(base) // 40)))
    for pos in positions:
        for bit in (0, 7):
            corrupt = bytearray(base)
            corrupt[pos] ^= 1 << bit
            with pytest.raises(BitstreamError):
                codec.decode_machine(bytes(corrupt))


def test_header_errors_have_clear_messages(layers: tuple[ScalableCodec, bytes, bytes]) -> None:
    codec, base, residual = layers
    with pytest.raises(BitstreamError, match="magic"):
        codec.decode_machine(b"JUNK" + base[4:])
    with pytest.raises(BitstreamError, match="version"):
        codec.decode_machine(_reseal(base[:4] + bytes([9]) + base[5:-4]))
    with pytest.raises(BitstreamError, match="version 1 is no longer decoded"):  # the float64 format before v2
        codec.decode_machine(_reseal(base[:4] + bytes([1]) + base[5:-4]))
    with pytest.raises(BitstreamError, match="expected a base layer"):
        codec.decode_machine(residual)
    with pytest.raises(BitstreamError, match="bytes"):
        codec.decode_machine("not bytes")  # type: ignore[arg-type]


def test_absurd_dimensions_are_refused_before_decoding(layers: tuple[ScalableCodec, bytes, bytes]) -> None:
    codec, base, _ = layers
    header, strings = unpack(base)
    id_len = len(header.model_id)
    dims_at = 8 + id_len + 8
    body = bytearray(base[:-4])
    struct.pack_into(">HH", body, dims_at, 60000, 60000)
    with pytest.raises(BitstreamError, match="outside"):
        codec.decode_machine(_reseal(bytes(body)))
    struct.pack_into(">HHBB", body, dims_at, 100, 100, 0, 0)  # padding no longer aligns
    with pytest.raises(BitstreamError, match="padding"):
        codec.decode_machine(_reseal(bytes(body)))


def test_string_table_inconsistent_with_payload(layers: tuple[ScalableCodec, bytes, bytes]) -> None:
    codec, base, _ = layers
    header, strings = unpack(base)
    with pytest.raises(BitstreamError, match="strings"):
        codec.decode_machine(pack(header, strings[:-1]))
    with pytest.raises(BitstreamError):
        codec.decode_machine(pack(header, strings) + b"extra")


def test_residual_paired_with_wrong_base(layers: tuple[ScalableCodec, bytes, bytes], photo: np.ndarray) -> None:
    codec, base, residual = layers
    other_base = codec.encode_base(photo, 0.9).data
    with pytest.raises(BitstreamError, match="different base"):
        codec.decode_human(other_base, residual)


def test_wrong_model_weights_are_detected(layers: tuple[ScalableCodec, bytes, bytes], tmp_path: Path) -> None:
    _, base, residual = layers
    other = ScalableCodec.from_weights(make_tiny_weights(tmp_path, seed=7))
    with pytest.raises(BitstreamError, match="coded with"):
        other.decode_machine(base)
    with pytest.raises(BitstreamError, match="coded with"):
        other.decode_human(base, residual)


def test_pack_refuses_bad_headers() -> None:
    good = LayerHeader(LayerKind.BASE, "m", bytes(8), 0, 10, 10, 54, 54)
    assert unpack(pack(good, [b"a"]))[0] == good
    with pytest.raises(BitstreamError):
        pack(LayerHeader(LayerKind.BASE, "m", bytes(8), 0, 0, 10, 0, 54), [b"a"])
    with pytest.raises(BitstreamError):
        pack(good, [])


# -- determinism across processes and CPU kernels -------------------------------------------
DECODE_SCRIPT = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from icmh.codec import ScalableCodec
codec = ScalableCodec.from_weights(sys.argv[2], mode=sys.argv[4])
base = open(sys.argv[3] + '.base', 'rb').read()
res = open(sys.argv[3] + '.res', 'rb').read()
print(hashlib.sha256(codec.decode_machine(base).tobytes()).hexdigest(),
      hashlib.sha256(codec.decode_human(base, res).tobytes()).hexdigest())
"""


#: (torch threads, environment) of the other processes: another thread count, ATen's scalar kernels, and oneDNN's
#: int8 GEMM without VNNI (the int16 pair sums of vpmaddubsw, as on CPUs before AVX-512 VNNI / AVX-VNNI)
OTHER_PROCESSES = (("2", {}), ("1", {"ATEN_CPU_CAPABILITY": "default"}), ("1", {"ONEDNN_MAX_CPU_ISA": "AVX2"}))


def run_in_other_processes(script: str, *args: str) -> list[tuple[str, str]]:
    """Run ``script`` (``sys.argv[1]`` = torch threads, then ``args``) in a fresh process per OTHER_PROCESSES
    setting; returns (setting, stdout) per run."""
    runs = []
    for threads, settings in OTHER_PROCESSES:
        out = subprocess.run([sys.executable, "-c", script, threads, *args], capture_output=True, text=True,
                             env={**os.environ, **settings}, check=True, timeout=300)
        runs.append((f"threads={threads} {settings}", out.stdout))
    return runs


@pytest.mark.slow  # two fresh Python processes per mode
@pytest.mark.parametrize("mode", ["pr", "fr", "avif"])
def test_decode_identical_in_other_process_threads_and_cpu_capability(
    tiny_weights: Path, photo: np.ndarray, tmp_path: Path, mode: str
) -> None:
    codec = ScalableCodec.from_weights(tiny_weights, mode=mode)
    base, residual = codec.encode(photo, 0.6, 0.6)
    (tmp_path / "f.base").write_bytes(base)
    (tmp_path / "f.res").write_bytes(residual)
    expected = " ".join(
        hashlib.sha256(img.tobytes()).hexdigest()
        for img in (codec.decode_machine(base), codec.decode_human(base, residual))
    )
    for setting, stdout in run_in_other_processes(DECODE_SCRIPT, str(tiny_weights), str(tmp_path / "f"), mode):
        assert stdout.split()[-2:] == expected.split(), setting


def test_shipped_weights_rate_increases_stream_size() -> None:
    """Higher R gives more bytes in both layers, with the weights the product ships."""
    codec = ScalableCodec.from_weights()
    image = synthetic_photo(256, 384, seed=3)
    encodings = [codec.encode_base(image, r) for r in (0.0, 0.5, 1.0)]
    base_sizes = [len(e.data) for e in encodings]
    assert base_sizes[0] < base_sizes[1] < base_sizes[2]
    residual_sizes = [len(codec.encode_residual(image, encodings[1], r)) for r in (0.0, 0.5, 1.0)]
    assert residual_sizes[0] < residual_sizes[1] < residual_sizes[2]


def test_fast_pixels_decode_the_same_latent_and_nearly_the_same_image() -> None:
    """The detector's float32 synthesis differs from the exact one by at most a level or two."""
    codec = ScalableCodec.from_weights(with_residual=False)
    image = synthetic_photo(200, 300, seed=19)
    data = codec.encode_base(image, 0.5).data
    exact, fast = codec.decode_machine(data), codec.decode_machine(data, exact_pixels=False)
    assert np.abs(exact.astype(int) - fast.astype(int)).max() <= 2


def test_pr_residual_coded_against_the_float_machine_image_decodes_as_well(shared_dir: Path) -> None:
    """Shipped weights: the PR encoder's float32 x̂_m is within a fraction of a level of the exact one, and the
    human image decoded with the exact x̂_m is as good as if the encoder had used that one."""
    codec = ScalableCodec.from_weights()
    image = kodak(shared_dir, "05.png")[:192, :256]
    base = codec.encode_base(image, 0.5)
    assert float((base.float_machine() - base.machine).abs().max()) * 255 < 0.5
    residual = codec.encode_residual(image, base, 0.8)
    exact_reference = dataclasses.replace(base)
    exact_reference.float_machine = lambda: exact_reference.machine  # type: ignore[method-assign]
    reference = codec.encode_residual(image, exact_reference, 0.8)
    assert residual != reference  # the encoder did take the float image
    quality, ideal = (psnr(image, codec.decode_human(base.data, r)) for r in (residual, reference))
    assert abs(quality - ideal) < 0.05 and quality > psnr(image, codec.decode_machine(base.data)) + 3


@pytest.mark.parametrize("mode", ["pr", "fr"])
def test_fast_human_view_is_the_exact_image_within_two_levels(mode: str) -> None:
    """Shipped weights: the float synthesis of a view moves pixels by a level or two, never the decoded latents."""
    codec = ScalableCodec.from_weights(mode=mode)
    image = synthetic_photo(128, 192, seed=23)
    base, residual = codec.encode(image, 0.5, 0.8)
    exact = codec.decode_human(base, residual)
    fast = codec.decode_human(base, residual, exact_pixels=False)
    assert np.abs(fast.astype(int) - exact.astype(int)).max() <= 2
    assert psnr(image, fast) > psnr(image, exact) - 0.1
    np.testing.assert_array_equal(codec.decode_human(base, residual), exact)  # the switch ends with the call


def test_fast_decode_in_one_thread_leaves_exact_decode_in_another(codec: ScalableCodec, photo: np.ndarray) -> None:
    """The exact/fast switch is per thread: the cloud's detector thread cannot change an operator's pixels."""
    data = codec.encode_base(photo, 0.5).data
    reference = codec.decode_machine(data)
    stop = threading.Event()

    def keep_switching_to_fast() -> None:
        while not stop.is_set():
            with exact_arithmetic(False):
                stop.wait(0.001)

    switcher = threading.Thread(target=keep_switching_to_fast)
    switcher.start()
    try:
        for _ in range(3):
            np.testing.assert_array_equal(codec.decode_machine(data), reference)
    finally:
        stop.set()
        switcher.join()



def test_conditional_residual_uses_the_machine_image_and_decodes_alike_with_both_kernels(
        tiny_weights: Path, photo: np.ndarray) -> None:
    codec = conditional_codec(tiny_weights)
    base, residual = codec.encode(photo, 0.4, 0.8)
    with exact_kernel("int8"):
        human = codec.decode_human(base, residual)
    with exact_kernel("float64"):
        np.testing.assert_array_equal(codec.decode_human(base, residual), human)
    model = codec.residual.model
    with torch.no_grad():  # the synthesis depends on x̂_m: another side image changes the pixels
        y = torch.zeros(1, 24, 4, 4)
        x_m = torch.rand(1, 3, 64, 64)
        assert not torch.equal(model.g_s(y, x_m), model.g_s(y, x_m.flip(-1)))


def test_table_index_gaussian_conditional_gives_compressais_indexes() -> None:
    """The binary-search scale indexes equal CompressAI's loop over the table, also on and next to its entries."""
    from compressai.entropy_models import GaussianConditional
    from compressai.models.google import get_scale_table

    from icmh.codec.models import TableIndexGaussianConditional

    reference, fast = GaussianConditional(None), TableIndexGaussianConditional(None)
    for model in (reference, fast):
        model.update_scale_table(get_scale_table())
    table = reference.scale_table
    scales = torch.cat([torch.rand(20000) * 40, table, table.nextafter(table - 1), table.nextafter(table + 1),
                        torch.tensor([0.0, -3.0, 1e9, 7.0])]).view(2, 1, -1, 1)
    indexes = fast.build_indexes(scales)
    assert torch.equal(indexes, reference.build_indexes(scales)) and indexes.dtype == torch.int32
    assert set(indexes.unique().tolist()) == set(range(len(table)))


def test_table_index_coding_matches_compressai() -> None:
    """The same strings as CompressAI's ``compress``; the numpy conversion of decoded symbols gives CompressAI's
    tensor, means and all, for every sample; the cached coder tables follow a new scale table."""
    from compressai.entropy_models import GaussianConditional
    from compressai.models.google import get_scale_table

    from icmh.codec.models import TableIndexGaussianConditional

    reference, fast = GaussianConditional(None), TableIndexGaussianConditional(None)
    for model in (reference, fast):
        model.update_scale_table(get_scale_table())
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(2, 4, 9, 7, generator=generator) * 6
    scales = torch.rand(2, 4, 9, 7, generator=generator) * 8
    means = torch.randn(2, 4, 9, 7, generator=generator)
    indexes = fast.build_indexes(scales)
    strings = reference.compress(values, indexes, means)
    assert fast.compress(values, indexes, means) == strings
    decoded = fast.decompress(strings, indexes, means=means)
    assert torch.equal(decoded, reference.decompress(strings, indexes, means=means))
    assert torch.equal(decoded, torch.round(values - means) + means)
    with pytest.raises(ValueError):
        fast.decompress(strings[:1], indexes)
    with pytest.raises(ValueError):
        fast.compress(values, indexes[:1], means)
    for model in (reference, fast):  # a coarser table: other CDFs, so the cache must not serve the old ones
        model.update_scale_table(get_scale_table(min=0.5, levels=16), force=True)
    indexes = fast.build_indexes(scales)
    assert fast.compress(values, indexes, means) == reference.compress(values, indexes, means)
