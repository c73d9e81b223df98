"""Integer kernels of the exact layers: the int8 GEMM path and the float64 reference give the same bits."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icmh.codec import ScalableCodec
from icmh.codec import int_kernels as ik
from icmh.codec.exact import (
    ACT_LIMIT,
    ACT_PARTS,
    WEIGHT_PARTS,
    ExactCheckerboardConv2d,
    ExactConv2d,
    ExactConvTranspose2d,
    activation_scale,
    exact_arithmetic,
    exact_kernel,
    quantize_weight,
)
from icmh.codec.models import MODEL_REGISTRY, build_model
from tests.test_codec import synthetic_photo

ROOT = Path(__file__).resolve().parents[1]
Layer = ExactConv2d | ExactConvTranspose2d


@cache
def registry_layers() -> list[tuple]:
    """(kind, cin, cout, kernel, stride, padding, output_padding) of every exact layer of the registered models."""
    configs = set()
    for architecture in MODEL_REGISTRY:
        for m in build_model(architecture).modules():
            if isinstance(m, ExactConvTranspose2d):
                configs.add(("deconv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0],
                             m.output_padding[0]))
            elif isinstance(m, ExactConv2d):
                configs.add(("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], 0))
    return sorted(configs)


def make_layer(kind: str, cin: int, cout: int, k: int, s: int, p: int, op: int, seed: int = 0) -> Layer:
    torch.manual_seed(seed)
    if kind == "deconv":
        layer: Layer = ExactConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op)
    else:
        layer = ExactConv2d(cin, cout, k, stride=s, padding=p)
    with torch.no_grad():
        layer.weight.mul_(0.5)
        layer.bias.uniform_(-0.1, 0.1)
    return layer.eval()


def both_kernels(layer: Layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 kernel, float64 kernel) outputs of ``layer``; :func:`torch_convolution_of_the_integers` is the reference
    that shares no code with either."""
    with torch.no_grad():
        with exact_kernel("int8"):
            fast = layer(x)
        with exact_kernel("float64"):
            reference = layer(x)
    return fast, reference


def float_output(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    w, b, x = layer.weight.double(), layer.bias.double(), x.double()
    if isinstance(layer, ExactConvTranspose2d):
        return F.conv_transpose2d(x, w, b, layer.stride, layer.padding, layer.output_padding)
    return F.conv2d(x, w, b, layer.stride, layer.padding)


@pytest.mark.parametrize("config", registry_layers(), ids=lambda c: "-".join(map(str, c)))
def test_int8_kernel_equals_float64_reference_for_every_registered_layer(config: tuple) -> None:
    layer = make_layer(*config)
    for size in ((1, 1), (2, 3), (5, 4)):
        x = torch.randn(2, config[1], *size, generator=torch.Generator().manual_seed(sum(size)))
        x[0] = x[0].relu()  # one post-ReLU sample, one signed sample: per-sample scales
        fast, reference = both_kernels(layer, x)
        exact = float_output(layer, x)
        assert fast.dtype == torch.float32 and fast.shape == exact.shape
        assert torch.equal(fast, reference), (config, size)
        assert (fast.double() - exact).abs().max() <= 2e-3 * exact.abs().max() + 1e-6  # 14-bit operands


def torch_convolution_of_the_integers(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """What the exact path must give, from PyTorch's float64 convolutions of the quantised integers (exact below
    2**53) and the epilogue ``float32(sum) * (1 / (s_x s_w)) + bias``: a reference sharing no code with the
    kernels' im2col, sub-pixel phases or GEMMs."""
    x_scale = activation_scale(x)
    w_int, w_scale = quantize_weight(layer._effective_weight(), layer._out_dim)
    x_int = torch.mul(x, x_scale.view(-1, 1, 1, 1)).clamp_(-ACT_LIMIT, ACT_LIMIT).round_().double()
    if isinstance(layer, ExactConvTranspose2d):
        sums = F.conv_transpose2d(x_int, w_int, None, layer.stride, layer.padding, layer.output_padding)
    else:
        sums = F.conv2d(x_int, w_int, None, layer.stride, layer.padding)
    factors = (1.0 / (x_scale[:, None].double() * w_scale[None, :].double())).float()
    return sums.float() * factors[:, :, None, None] + layer.bias.detach()[None, :, None, None]


@pytest.mark.parametrize("config", registry_layers(), ids=lambda c: "-".join(map(str, c)))
def test_both_kernels_equal_torch_convolutions_of_the_integers(config: tuple) -> None:
    layer = make_layer(*config)
    x = torch.randn(2, config[1], 5, 4, generator=torch.Generator().manual_seed(config[1]))
    x[1] = x[1].relu()
    fast, reference = both_kernels(layer, x)
    expected = torch_convolution_of_the_integers(layer, x)
    assert torch.equal(fast, expected) and torch.equal(reference, expected), config


def test_checkerboard_kernels_equal_torch_convolution_of_the_masked_integers() -> None:
    layer = ExactCheckerboardConv2d(16, 24, 5, padding=2).eval()
    x = torch.randn(1, 16, 7, 6)
    fast, reference = both_kernels(layer, x)
    expected = torch_convolution_of_the_integers(layer, x)
    assert torch.equal(fast, expected) and torch.equal(reference, expected)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_input_layout_and_batch_do_not_change_the_output(layout: str) -> None:
    layer = make_layer("deconv", 12, 20, 5, 2, 2, 1)
    x = torch.randn(3, 12, 8, 6)[:, :, ::2] if layout == "strided" else torch.randn(3, 12, 4, 6)
    alone = both_kernels(layer, x[1:2].contiguous())[0]
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    fast, reference = both_kernels(layer, x)
    assert torch.equal(fast, reference)
    assert torch.equal(fast[1:2], alone)  # each sample is quantised on its own


def test_zero_constant_tiny_and_huge_inputs() -> None:
    layer = make_layer("conv", 8, 16, 3, 1, 1, 0)
    with torch.no_grad():
        layer.weight[3] = 0.0  # an output channel without weights
    for x in (torch.zeros(1, 8, 3, 3), torch.full((1, 8, 3, 3), -7.0), torch.randn(1, 8, 3, 3) * 1e-12,
              torch.randn(1, 8, 3, 3) * 1e6):
        fast, reference = both_kernels(layer, x)
        assert torch.equal(fast, reference)
        assert torch.isfinite(fast).all()
    with pytest.raises(ValueError, match="non-finite"), torch.no_grad():
        layer(torch.full((1, 8, 3, 3), float("nan")))


def test_digits_cover_the_integer_range_exactly() -> None:
    """Every integer |x| <= ACT_LIMIT splits into digits in [-64, 64] that compose back to it."""
    values = torch.arange(-ACT_LIMIT, ACT_LIMIT + 1, dtype=torch.float32).view(1, 1, -1, 1)
    digits = ik.quantize(values, torch.ones(1), ACT_PARTS)
    assert digits.abs().max() <= ik.DIGIT_MAX
    assert torch.equal(ik.compose(digits), values.double())
    clamped = ik.quantize(values * 3.0, torch.ones(1), ACT_PARTS)  # out of range: clamped, never wrapped
    assert ik.compose(clamped).abs().max() == ACT_LIMIT


def worst_case_digits(shape: tuple[int, ...], parts: int, generator: torch.Generator) -> torch.Tensor:
    """Digit planes at the extremes: -64 or 63 (lower digits), -64 or 64 (top digit)."""
    planes = [torch.where(torch.rand(shape, generator=generator) < 0.5, -64, 63) for _ in range(parts - 1)]
    planes.append(torch.where(torch.rand(shape, generator=generator) < 0.5, -64, 64))
    return torch.stack(planes).to(torch.int8)


#: the registered models' largest fan-in: pr-icmh-cb4's first synthesis layer (256 latent channels x a 3 x 3
#: polyphase window)
LARGEST_FAN_IN = 256 * 9


def worst_case_sums_are_exact(cin: int = LARGEST_FAN_IN // 9, cout: int = 64, k: int = 3) -> bool:
    """A fan-in ``cin * k * k`` convolution of extreme digits: int8 kernel sums == float64 sums of the integers."""
    g = torch.Generator().manual_seed(0)
    x_digits = worst_case_digits((1, 9, 11, cin), 2, g)
    w_int = ik.compose(worst_case_digits((cout, cin, k, k), 2, g))
    out = torch.empty(1, 9 - k + 1, 11 - k + 1, cout, dtype=torch.float64)
    ik.run(x_digits, ik.conv_plan(w_int, 1, 2), lambda sums, n, target: target.copy_(sums), out)
    reference = F.conv2d(ik.compose(x_digits).permute(0, 3, 1, 2), w_int).permute(0, 2, 3, 1)
    return torch.equal(out, reference)


WORST_CASE_SCRIPT = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from tests.test_exact_kernels import worst_case_sums_are_exact
print(worst_case_sums_are_exact())
"""


def test_worst_case_digits_sum_exactly_at_the_largest_fan_in() -> None:
    """All GEMM operands at their extremes: the int32 accumulators stay exact at the models' largest fan-in."""
    def fan_in(kind: str, cin: int, cout: int, k: int, s: int, p: int, op: int) -> int:
        return cin * ik.polyphase_window(k, s, p) ** 2 if kind == "deconv" else cin * k * k

    assert max(fan_in(*config) for config in registry_layers()) == LARGEST_FAN_IN
    assert worst_case_sums_are_exact()


@pytest.mark.slow  # fresh Python processes
@pytest.mark.parametrize("isa", ["AVX2", "AVX512_CORE", "SSE41"])
def test_worst_case_digits_are_exact_on_cpus_without_vnni(isa: str) -> None:
    """oneDNN's s8 x s8 GEMM without VNNI adds 128 to one operand and sums pairs in int16 (``vpmaddubsw``):
    digits of at most 64 keep those pairs below 2**15, so the sums stay exact on such CPUs too."""
    for threads in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", WORST_CASE_SCRIPT, threads], capture_output=True, text=True,
                             env={**os.environ, "ONEDNN_MAX_CPU_ISA": isa}, check=True, timeout=300, cwd=ROOT)
        assert out.stdout.split() == ["True"], (isa, threads, out.stderr[-500:])


def test_accumulator_bound_is_checked() -> None:
    ik.check_bound(LARGEST_FAN_IN, ACT_PARTS, WEIGHT_PARTS)
    with pytest.raises(ValueError, match="fan-in"):
        ik.check_bound(2**19, 1, 1)  # 2**19 * 64 * 64 = 2**31: one int8 GEMM would overflow int32
    with pytest.raises(ValueError, match="fan-in"):
        ExactConv2d(2**19, 1, 1)
    for bad in ({"groups": 2}, {"dilation": 2}, {"padding_mode": "reflect"}):
        with pytest.raises(ValueError, match="exact convolutions"):
            ExactConv2d(4, 4, 3, padding=1, **bad)


def test_threads_do_not_change_the_output() -> None:
    layer = make_layer("deconv", 96, 64, 5, 2, 2, 1)
    x = torch.randn(1, 96, 24, 40).relu()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = both_kernels(layer, x)[0]
        torch.set_num_threads(2)
        two = both_kernels(layer, x)[0]
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two)


def test_kernel_choice_is_per_thread() -> None:
    with pytest.raises(ValueError, match="exact kernel"), exact_kernel("float32"):
        pass
    layer = make_layer("conv", 4, 6, 3, 1, 1, 0)
    x = torch.randn(1, 4, 5, 5)
    seen: list[bool] = []

    def other_thread() -> None:
        with torch.no_grad(), exact_kernel("float64"):
            seen.append(torch.equal(layer(x), both_kernels(layer, x)[1]))

    worker = threading.Thread(target=other_thread)
    with exact_kernel("int8"):
        worker.start()
        worker.join()
    assert seen == [True]


def test_training_and_disabled_exact_path_are_plain_float32() -> None:
    layer = make_layer("conv", 4, 6, 3, 1, 1, 0)
    x = torch.randn(1, 4, 5, 5)
    plain = F.conv2d(x, layer.weight, layer.bias, 1, 1)
    with torch.no_grad(), exact_arithmetic(False):
        assert torch.equal(layer(x), plain)
    assert torch.equal(layer.train()(x), plain)


def test_checkerboard_conv_ignores_its_masked_taps_in_both_kernels() -> None:
    """The spatial context of the checkerboard slices: whatever the stored weight holds at the masked taps (the
    centre and even offsets), both kernels compute the masked convolution, the same integers, as training does."""
    torch.manual_seed(3)
    layer = ExactCheckerboardConv2d(6, 5, 5, padding=2).eval()
    x = torch.randn(1, 6, 7, 8)
    before = both_kernels(layer, x)
    with torch.no_grad():
        layer.weight.add_(100.0 * (1 - layer.mask))  # only the masked taps change
    fast, reference = both_kernels(layer, x)
    assert torch.equal(fast, reference) and torch.equal(fast, before[0])
    masked = F.conv2d(x.double(), (layer.weight * layer.mask).double(), layer.bias.double(), 1, 2)
    assert (fast.double() - masked).abs().max() <= 2e-3 * masked.abs().max()
    assert torch.equal(layer.train()(x), F.conv2d(x, layer.weight * layer.mask, layer.bias, 1, 2))
    assert layer.mask[:, :, 2, 2].sum() == 0 and layer.mask[:, :, 1, 2].all() and not layer.mask[:, :, 0, 0].any()


def test_weight_changes_refresh_the_integer_operands() -> None:
    layer = make_layer("conv", 4, 6, 3, 1, 1, 0)
    x = torch.randn(1, 4, 5, 5)
    before = both_kernels(layer, x)[0]
    with torch.no_grad():
        layer.weight.mul_(2.0)
        layer.bias.mul_(2.0)
    after, reference = both_kernels(layer, x)
    assert torch.equal(after, reference)
    assert torch.allclose(after, 2 * before, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mode", ["pr", "fr"])
def test_codec_round_trip_is_identical_with_both_kernels(tiny_weights: Path, mode: str) -> None:
    """Encoding with either kernel writes the same bytes; decoding with either gives the same images."""
    codec = ScalableCodec.from_weights(tiny_weights, mode=mode)
    photo = synthetic_photo(130, 200, seed=4)
    with exact_kernel("int8"):
        base, residual = codec.encode(photo, 0.6, 0.4)
        images = (codec.decode_machine(base), codec.decode_human(base, residual))
    with exact_kernel("float64"):
        assert codec.encode(photo, 0.6, 0.4) == (base, residual)
        reference = (codec.decode_machine(base), codec.decode_human(base, residual))
    for image, ref in zip(images, reference, strict=True):
        np.testing.assert_array_equal(image, ref)


@pytest.mark.parametrize("setting", ["int8", "float64", "auto", "float16"])
def test_process_kernel_comes_from_the_environment_or_is_measured(setting: str) -> None:
    """``ICMH_EXACT_KERNEL`` fixes the kernel of threads that chose none; ``auto`` takes the faster one on this CPU
    (either is right: both give the same integers); an unknown name is refused with the known ones."""
    script = "from icmh.codec.exact import default_kernel, kernel_description as d; print(default_kernel()); print(d())"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "ICMH_EXACT_KERNEL": setting})
    if setting == "float16":
        assert run.returncode != 0 and "exact kernel must be one of int8, float64" in run.stderr
    else:
        assert run.returncode == 0, run.stderr
        kernel, description = run.stdout.splitlines()
        assert kernel == setting if setting != "auto" else kernel in ("int8", "float64")
        source = "the faster one on this CPU" if setting == "auto" else "ICMH_EXACT_KERNEL"
        assert description == f"{kernel} ({source})"
