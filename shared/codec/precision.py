"""Arithmetic of the float transforms: the encoders' analysis transforms (g_a) and the fast synthesis.

The analysis transform runs only at the encoder, in float, and nothing downstream has to reproduce it: the
entropy parameters and the decoded latent come from the exact integer path (:mod:`icmh.codec.exact`), so a
stream coded from a bfloat16 g_a decodes bit for bit like any other. bfloat16 changes the latent by a few
hundredths (a fraction of a per cent of the coded symbols move by one step) and, on CPUs with native bfloat16
dot products (AVX512-BF16, AMX), runs faster: at 1280x720 on 2 cores of an Intel Xeon with AMX, base encode
204 -> 174 ms and PR residual encode 711 -> 525 ms (``docs/benchmarks/speed.json`` against
``speed_fp32_analysis.json``). Training has its own setting (``icmh train --precision``).

The same setting governs the synthesis transforms when a decoder asks for fast rather than exact pixels
(:func:`icmh.codec.exact.exact_synthesis`: the cloud's detector input and operator views): at 1280x720 on one
thread the PR layer's synthesis took ~0.36 s in bfloat16 against ~3 s exact (back to back, the cores shared with a
training run), 0.013 dB lower PSNR on a Kodak image, pixels within a level or two.

``auto`` (the default, or ``ICMH_ANALYSIS_PRECISION``) takes bfloat16 where oneDNN reports native support and
float32 elsewhere; :func:`set_default_precision` sets it for the process, :func:`analysis_precision` for the
calling thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "bf16", "fp32")
ENV_VARIABLE = "ICMH_ANALYSIS_PRECISION"


def _checked(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"analysis precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


_default = _checked(os.environ.get(ENV_VARIABLE, "auto"))


class _Setting(threading.local):
    def __init__(self) -> None:
        self.name = _default


_setting = _Setting()


def set_default_precision(name: str) -> None:
    """The precision of every thread that has not chosen one (a process setting, e.g. ``icmh-edge`` flags)."""
    global _default
    _default = _setting.name = _checked(name)


def native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolved_precision() -> str:
    """``bf16`` or ``fp32``: what the calling thread's setting means on this machine."""
    if _setting.name == "auto":
        return "bf16" if native_bf16() else "fp32"
    return _setting.name


@contextlib.contextmanager
def analysis_precision(name: str) -> Iterator[None]:
    """Run the analysis transforms of the calling thread in ``name`` (``auto``, ``bf16`` or ``fp32``)."""
    previous = _setting.name
    _setting.name = _checked(name)
    try:
        yield
    finally:
        _setting.name = previous


def bf16_autocast(enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on the CPU when ``enabled``, else a context that changes nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def float_autocast() -> contextlib.AbstractContextManager:
    """The context a float transform runs in (an encoder's g_a, a fast synthesis): bfloat16 autocast, or nothing
    for float32."""
    return bf16_autocast(resolved_precision() == "bf16")
