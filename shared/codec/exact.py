"""Exact, machine-independent convolution for the decoder-side networks.

CompressAI users see garbage decodes when encoder and decoder run on different
hardware (CompressAI issues #279, #309): the entropy parameters (means, scales)
come out of float convolutions whose last bits depend on the summation order,
the SIMD width, FMA use and the thread count. Here every layer whose output the
decoder must reproduce bit for bit runs as *fixed-point integer arithmetic*:

* inputs are quantised to ``ACT_FRAC_BITS`` fractional bits (``round(x * 2^F)``),
* weights to 15 significant bits with a per-layer power-of-two scale,
* the convolution runs on these integer-valued tensors in float64.

Every product and every partial sum is then an integer below 2**53, so float64
represents it exactly and the result is the same whatever the order of the
additions, the vector width or the number of threads. Rounding, ReLU, and
multiplication by powers of two are exact IEEE operations too. Training uses the
ordinary float32 path; the exact path is used whenever the module is in eval
mode (and :func:`exact_arithmetic` has not switched it off).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

ACT_FRAC_BITS = 12  # activations are multiples of 2**-12
ACT_INT_LIMIT = 2**23  # |activation| <= 2048 after quantisation
WEIGHT_BITS = 14  # |weight integer| <= 2**14
EXACT_LIMIT = 2**53  # float64 represents every integer below this exactly


class _ExactSwitch(threading.local):
    """Per-thread switch: one thread's fast float32 decode must never change another thread's pixels."""

    enabled = True


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


def quantize_activation(x: Tensor) -> Tensor:
    """Integer-valued float64 tensor: ``clamp(round(x * 2^F))``."""
    scaled = torch.round(x.double() * (2.0**ACT_FRAC_BITS))
    return scaled.clamp_(-ACT_INT_LIMIT, ACT_INT_LIMIT)


def weight_exponent(weight: Tensor) -> int:
    """Power-of-two exponent so that ``round(w * 2^e)`` fits in WEIGHT_BITS bits."""
    peak = float(weight.detach().abs().max())
    if peak == 0.0:
        return 0
    _, exp2 = math.frexp(peak)  # peak = m * 2**exp2 with 0.5 <= m < 1
    return WEIGHT_BITS - exp2


class _ExactMixin:
    """Shared fixed-point machinery of :class:`ExactConv2d` and :class:`ExactConvTranspose2d`."""

    weight: Tensor
    bias: Tensor | None
    training: bool

    def _check_bound(self, fan_in: int) -> None:
        worst = fan_in * ACT_INT_LIMIT * 2**WEIGHT_BITS
        if worst >= EXACT_LIMIT // 2:
            raise ValueError(f"fan-in {fan_in} too large for exact float64 accumulation")

    def _use_exact(self) -> bool:
        return not self.training and _switch.enabled

    def _integer_operands(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None, float]:
        exponent = weight_exponent(self.weight)
        w_int = torch.round(self.weight.detach().double() * (2.0**exponent))
        out_scale = 2.0 ** -(exponent + ACT_FRAC_BITS)
        b_int = None
        if self.bias is not None:
            b_int = torch.round(self.bias.detach().double() / out_scale)
        return quantize_activation(x), w_int, b_int, out_scale


class ExactConv2d(_ExactMixin, nn.Conv2d):
    """``nn.Conv2d`` whose eval-mode output is bit-identical on every machine."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_bound(self.in_channels // self.groups * math.prod(self.kernel_size))

    def forward(self, x: Tensor) -> Tensor:
        if not self._use_exact():
            return super().forward(x)
        x_int, w_int, b_int, scale = self._integer_operands(x)
        acc = F.conv2d(x_int, w_int, b_int, self.stride, self.padding, self.dilation, self.groups)
        return (acc * scale).to(x.dtype)


class ExactConvTranspose2d(_ExactMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose eval-mode output is bit-identical on every machine."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_bound(self.in_channels * math.prod(self.kernel_size))

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if not self._use_exact():
            return super().forward(x, output_size)
        x_int, w_int, b_int, scale = self._integer_operands(x)
        acc = F.conv_transpose2d(
            x_int, w_int, b_int, self.stride, self.padding, self.output_padding,
            self.groups, self.dilation,
        )
        return (acc * scale).to(x.dtype)
