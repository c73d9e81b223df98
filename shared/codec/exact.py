"""Exact, machine-independent convolution for the decoder-side networks.

CompressAI users see garbage decodes when encoder and decoder run on different
hardware (CompressAI issues #279, #309): the entropy parameters (means, scales)
come out of float convolutions whose last bits depend on the summation order,
the SIMD width, FMA use and the thread count. Here every layer whose output the
decoder must reproduce bit for bit runs on *integers*:

* its input is quantised per sample to 14-bit integers: ``round(x * s)`` with ``s = ACT_LIMIT / max|x|``, one
  float32 multiplication and rounding per value;
* its weights per output channel to 14-bit integers, the same way (``WEIGHT_LIMIT``);
* the convolution of these integers is computed exactly, as GEMMs over an im2col of the input (a transposed
  convolution as sub-pixel phases; :mod:`icmh.codec.int_kernels`), by one of two kernels that give the same
  integers (:func:`exact_kernel`): ``int8`` (base-128 digits, int8 GEMMs with int32 accumulation) or ``float64``
  (GEMMs of the integer values themselves, exact below 2**53). Which one is faster depends on the CPU: with VNNI
  / AMX int8 GEMMs win; on an AVX2-only AMD EPYC ``torch._int_mm`` ran ~30x slower than a float32 GEMM of the
  same shape. By default each process times both once (:func:`default_kernel`); ``ICMH_EXACT_KERNEL`` fixes it;
* the epilogue ``float32(sum) * (1 / (s_x s_w)) + bias`` is three IEEE float32 operations per value.

Maxima, rounding, ReLU and single IEEE multiplications and additions are exact or correctly rounded on every
machine, so the result is the same whatever the order of the additions, the vector width or the number of
threads. Training uses the ordinary float32 path; the exact path is used whenever the module is in eval mode
(and :func:`exact_arithmetic` has not switched it off). The decoder has no GDN / IGDN layers (GDN is only in the
encoder's analysis transform, which runs in float32).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
from torch import Tensor

from . import int_kernels
from .int_kernels import check_bound, digit_limit

ACT_PARTS = 2  # base-128 digits of an activation: |x| <= 8192
WEIGHT_PARTS = 2  # base-128 digits of a weight: |w| <= 8192, scaled per output channel
ACT_LIMIT = digit_limit(ACT_PARTS)
WEIGHT_LIMIT = digit_limit(WEIGHT_PARTS)
MIN_PEAK = 2.0**-30  # smaller maxima count as this: scales stay below 2**43, no epilogue product is subnormal
KERNELS = ("int8", "float64")
KERNEL_ENV = "ICMH_EXACT_KERNEL"  # int8 | float64 | auto (the default: the faster one, measured once per process)


class _ExactSwitch(threading.local):
    """Per-thread settings: one thread's fast float32 decode must never change another thread's pixels."""

    enabled = True
    kernel: str | None = None  # None: the process's default_kernel()
    pixels = True


_switch = _ExactSwitch()


@contextlib.contextmanager
def exact_arithmetic(enabled: bool) -> Iterator[None]:
    """Enable or disable the exact path in the calling thread (e.g. frozen models in training)."""
    previous = _switch.enabled
    _switch.enabled = enabled
    try:
        yield
    finally:
        _switch.enabled = previous


@contextlib.contextmanager
def exact_synthesis(enabled: bool) -> Iterator[None]:
    """Whether the synthesis transforms (the pixels) take the exact path in the calling thread.

    Off, they run in float arithmetic (bfloat16 where the CPU has it natively, :mod:`icmh.codec.precision`): several
    times faster, within a level or two of the exact pixels, but machine-dependent. Only pixels change: the latents
    and everything the entropy decoding needs stay exact, so every layer still decodes.
    """
    previous = _switch.pixels
    _switch.pixels = enabled
    try:
        yield
    finally:
        _switch.pixels = previous


def fast_synthesis_requested() -> bool:
    """Whether the calling thread asked for float pixels (:func:`exact_synthesis`) while the exact path is on."""
    return _switch.enabled and not _switch.pixels


@contextlib.contextmanager
def exact_kernel(name: str) -> Iterator[None]:
    """Select the kernel of the exact path in the calling thread: ``int8`` or ``float64``.

    Both compute the same integers, so the choice changes speed, never a bit of the output.
    """
    previous = _switch.kernel
    _switch.kernel = _checked_kernel(name)
    try:
        yield
    finally:
        _switch.kernel = previous


def _checked_kernel(name: str) -> str:
    if name not in KERNELS:
        raise ValueError(f"exact kernel must be one of {', '.join(KERNELS)}, got {name!r}")
    return name


@functools.cache
def default_kernel() -> str:
    """The kernel of threads that chose none: ``ICMH_EXACT_KERNEL``, or (unset / ``auto``) the faster of the two on
    this CPU, timed once on a 1x1 layer like the entropy networks' (both give the same integers, so the choice can
    only change speed)."""
    name = os.environ.get(KERNEL_ENV, "auto")
    if name != "auto":
        return _checked_kernel(name)
    layer = ExactConv2d(128, 128, 1).eval()
    x = torch.linspace(-1.0, 1.0, 128 * 16 * 24).view(1, 128, 16, 24)
    times = {}
    with torch.no_grad():
        for kernel in KERNELS:
            with exact_kernel(kernel):
                layer(x)
                runs = []
                for _ in range(3):  # the best of three: a busy machine's hiccups do not decide
                    start = time.perf_counter()
                    layer(x)
                    runs.append(time.perf_counter() - start)
                times[kernel] = min(runs)
    return min(times, key=times.__getitem__)


def kernel_description() -> str:
    """The process's exact kernel and where the choice came from, for a service's start-up log."""
    source = KERNEL_ENV if os.environ.get(KERNEL_ENV, "auto") != "auto" else "the faster one on this CPU"
    return f"{default_kernel()} ({source})"


def _scale(peak: Tensor, limit: int) -> Tensor:
    """float32 factors ``limit / max(peak, MIN_PEAK)`` from exact maxima; refuses non-finite values."""
    if not bool(torch.isfinite(peak).all()):
        raise ValueError("exact convolution got non-finite values")
    return (limit / peak.double().clamp(min=MIN_PEAK)).float()


def _dense(sample: Tensor) -> Tensor:
    """The values of a CHW ``sample`` as a flat view when its memory is NCHW- or channels-last-dense (no copy)."""
    for order in ((0, 1, 2), (1, 2, 0)):
        view = sample.permute(order)
        if view.is_contiguous():
            return view.view(-1)
    return sample.reshape(-1)


def activation_scale(x: Tensor) -> Tensor:
    """Per-sample factors ``s`` [N] of an NCHW layer input: ``round(x * s)`` spans ``|.| <= ACT_LIMIT``."""
    peaks = [torch.aminmax(_dense(sample)) for sample in x]
    return _scale(torch.stack([torch.maximum(hi, -lo) for lo, hi in peaks]), ACT_LIMIT)


def quantize_weight(weight: Tensor, out_dim: int) -> tuple[Tensor, Tensor]:
    """Integer-valued float64 weights ``round(w * s_o)`` (|.| <= WEIGHT_LIMIT) and the factors ``s_o`` [Cout]."""
    w = weight.detach().float()
    dims = tuple(d for d in range(w.dim()) if d != out_dim)
    scale = _scale(w.abs().amax(dim=dims), WEIGHT_LIMIT)
    shape = [1] * w.dim()
    shape[out_dim] = -1
    w_int = torch.round(w * scale.view(shape)).clamp_(-WEIGHT_LIMIT, WEIGHT_LIMIT)
    return w_int.double(), scale


class _Operands:
    """A layer's integer weights, its GEMM plan per kernel (made when first used) and its per-channel epilogue terms
    (cached per weight version)."""

    def __init__(self, key: tuple, w_int: Tensor, planner: Callable[[Tensor, int | None], int_kernels.GemmPlan],
                 scale: Tensor, bias: Tensor) -> None:
        self.key = key
        self.w_int = w_int  # float64, nn layout
        self.planner = planner
        self.plans: dict[str, int_kernels.GemmPlan] = {}
        self.scale = scale  # float32 [Cout]
        self.bias = bias  # float32 [Cout]

    def plan(self, kernel: str) -> int_kernels.GemmPlan:
        """int8 digits (``int8``) or float64 integers (``float64``) in GEMM order."""
        if kernel not in self.plans:
            self.plans[kernel] = self.planner(self.w_int, WEIGHT_PARTS if kernel == "int8" else None)
        return self.plans[kernel]


class _ExactMixin:
    """Shared fixed-point machinery of :class:`ExactConv2d` and :class:`ExactConvTranspose2d`."""

    weight: Tensor
    bias: Tensor | None
    training: bool
    groups: int
    dilation: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    kernel_size: tuple[int, ...]
    padding_mode: str
    out_channels: int
    _out_dim = 0
    _cached: _Operands | None = None

    def _check_layer(self, fan_in: int) -> None:
        """Refuse what the integer kernels do not implement; prove the accumulator bounds for ``fan_in``."""
        if self.groups != 1 or set(self.dilation) != {1} or self.padding_mode != "zeros":
            raise ValueError("exact convolutions support groups=1, dilation=1 and zero padding only")
        if isinstance(self.padding, str) or len({*self.stride}) != 1 or len({*self.padding}) != 1:
            raise ValueError("exact convolutions need the same integer stride and padding in both dimensions")
        if len({*self.kernel_size}) != 1:
            raise ValueError("exact convolutions need a square kernel")
        check_bound(fan_in, ACT_PARTS, WEIGHT_PARTS)

    def _use_exact(self) -> bool:
        return not self.training and _switch.enabled

    def _effective_weight(self) -> Tensor:
        """The weight the layer computes with (a masked convolution zeroes some of its taps)."""
        return self.weight

    def _plan(self, w_int: Tensor, parts: int | None) -> int_kernels.GemmPlan:
        """The GEMM plan of the integer weights: ``parts`` digits each (int8 kernel) or float64 (``None``)."""
        raise NotImplementedError

    def _operands(self) -> _Operands:
        bias = self.bias
        key = (self.weight.data_ptr(), self.weight._version, None if bias is None else (bias.data_ptr(), bias._version))
        cached = self._cached
        if cached is not None and cached.key == key:
            return cached
        w_int, scale = quantize_weight(self._effective_weight(), self._out_dim)
        b = torch.zeros(self.out_channels) if bias is None else bias.detach().float()
        cached = _Operands(key, w_int, self._plan, scale, b)
        self._cached = cached
        return cached

    def _run(self, x: Tensor, out_size: tuple[int, int], crop: tuple[int, int, int, int],
             border: tuple[int, int, int, int]) -> Tensor:
        """Quantise ``x``, run the selected kernel with the shared epilogue, return NCHW float32.

        The kernels read input rows ``crop[0]:crop[1]`` and columns ``crop[2]:crop[3]`` with a zero ``border``
        (top, bottom, left, right).
        """
        ops = self._operands()
        kernel = _switch.kernel or default_kernel()
        x = x.detach().float()
        nhwc = x.permute(0, 2, 3, 1)
        x_scale = activation_scale(x)
        factors = (1.0 / (x_scale[:, None].double() * ops.scale[None, :].double())).float()

        def epilogue(sums: Tensor, n: int, target: Tensor) -> None:
            """``float32(sums) * (1 / (s_x s_w)) + bias``: three IEEE float32 operations per value."""
            target.copy_(sums).mul_(factors[n]).add_(ops.bias)

        out = torch.empty((x.shape[0], *out_size, self.out_channels))
        y0, y1, x0, x1 = crop
        quantize = int_kernels.quantize_float64 if kernel == "float64" else int_kernels.quantize
        operand = quantize(nhwc[:, y0:y1, x0:x1], x_scale, ACT_PARTS, border)
        int_kernels.run(operand, ops.plan(kernel), epilogue, out)
        return out.permute(0, 3, 1, 2)


class ExactConv2d(_ExactMixin, nn.Conv2d):
    """``nn.Conv2d`` whose eval-mode output is bit-identical on every machine (im2col int8 GEMMs)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_layer(self.in_channels * math.prod(self.kernel_size))

    def _plan(self, w_int: Tensor, parts: int | None) -> int_kernels.GemmPlan:
        return int_kernels.conv_plan(w_int, self.stride[0], parts)

    def forward(self, x: Tensor) -> Tensor:
        if not self._use_exact():
            return super().forward(x)
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        h, w = x.shape[2:]
        out_size = ((h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        return self._run(x, out_size, (0, h, 0, w), (p, p, p, p))


class ExactCheckerboardConv2d(ExactConv2d):
    """Checkerboard-masked :class:`ExactConv2d` (He et al., "Checkerboard context model for efficient learned image
    compression", CVPR 2021; CompressAI's ``CheckerboardMaskedConv2d``, mask type A): only taps at an odd offset
    ``(i + j)`` from the centre, i.e. the anchors around a non-anchor position, count. The exact path quantises the
    masked weight, so masked taps are exact zeros whatever the stored weight holds."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        mask = torch.ones_like(self.weight)
        mask[:, :, 0::2, 0::2] = 0
        mask[:, :, 1::2, 1::2] = 0
        self.register_buffer("mask", mask, persistent=False)

    def _effective_weight(self) -> Tensor:
        return self.weight * self.mask

    def _plan(self, w_int: Tensor, parts: int | None) -> int_kernels.GemmPlan:
        """The kernels gather and multiply only the unmasked taps (about half of them)."""
        k = self.kernel_size[0]
        taps = [(jy, jx) for jy in range(k) for jx in range(k) if self.mask[0, 0, jy, jx]]
        return int_kernels.conv_plan(w_int, self.stride[0], parts, taps)

    def forward(self, x: Tensor) -> Tensor:
        if not self._use_exact():
            return self._conv_forward(x, self._effective_weight(), self.bias)
        return super().forward(x)


class ExactConvTranspose2d(_ExactMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose eval-mode output is bit-identical on every machine (sub-pixel int8 GEMMs)."""

    _out_dim = 1

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        window = int_kernels.polyphase_window(self.kernel_size[0], self.stride[0], self.padding[0])
        self._check_layer(self.in_channels * window**2)

    def _plan(self, w_int: Tensor, parts: int | None) -> int_kernels.GemmPlan:
        return int_kernels.transposed_plan(w_int, self.stride[0], self.padding[0], parts)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if not self._use_exact():
            return super().forward(x, output_size)
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation  # type: ignore[arg-type]
        )
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        h, w = x.shape[2:]
        ho, wo = ((size - 1) * s - 2 * p + k + op for size, op in zip((h, w), output_padding, strict=True))
        y0, y1, top, bottom = int_kernels.polyphase_input(h, ho, k, s, p)
        x0, x1, left, right = int_kernels.polyphase_input(w, wo, k, s, p)
        return self._run(x, (ho, wo), (y0, y1, x0, x1), (top, bottom, left, right))
