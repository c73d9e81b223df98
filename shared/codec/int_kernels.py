"""Integer GEMM kernels of the exact decoder layers: int8 x int8 -> int32 products (``torch._int_mm``).

Operands are integers written in base 128 with digits in ``[-64, 64]`` (:func:`quantize`, :func:`weight_digits`);
each digit plane is an int8 GEMM operand and the digit products are summed with their weights ``128^(i+j)``,
exactly, in int32 or float64 (:func:`check_bound` proves the ranges). Integer sums do not depend on the order of the
additions, the vector width or the thread count, so neither does the result, as long as nothing overflows:

* one digit product sums ``fan_in`` terms of at most ``64 * 64``: far below 2**31, the GEMM's int32 accumulator;
* ``|digit| <= 64`` keeps the int16 pair sums of ``vpmaddubsw`` (x86 without VNNI) in range although oneDNN's
  s8 x s8 GEMM adds 128 to one operand there: ``2 * (64 + 128) * 64 = 24576 < 32767``. Digits in ``[0, 127]`` x
  ``[-127, 127]`` do saturate on such CPUs (measured with ``ONEDNN_MAX_CPU_ISA=AVX2``).

A layer runs as a :class:`GemmPlan`: im2col of int8 NHWC digit planes, tiled over output rows so memory stays
bounded, then GEMMs on column ranges of it. A transposed convolution is a sub-pixel (polyphase) convolution: output
phase ``(a, b)`` of a stride-``s`` transposed convolution is an ordinary stride-1 convolution of the input with a
sub-kernel; all phases share one im2col window, whose taps are ordered so that each phase's taps are contiguous,
and each phase gets a GEMM over just its taps. Each tile's exact sums go to the caller's ``epilogue``, which writes
output values in place; the float64 reference kernel of :mod:`icmh.codec.exact` applies the same epilogue to the
same integers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

DIGIT_BITS = 7
DIGIT_BASE = 2**DIGIT_BITS
DIGIT_MAX = DIGIT_BASE // 2  # every int8 GEMM operand lies in [-64, 64]
INT32_LIMIT = 2**31
EXACT_FLOAT64 = 2**53
COLUMN_BYTES = 4 * 2**20  # im2col budget of one row tile (int8 columns of all activation digits)
PRODUCT_BYTES = 2 * 2**20  # budget of one row tile's int32 digit products
FLOAT64_BUDGET = 2  # the float64 kernel's tiles may take twice the bytes (2-core AMD EPYC, 1280x720, the last two
# layers of sa-icm's synthesis: 4 MB 286 / 127 ms, 8 MB 163 / 114 ms, 16 MB 162 / 162 ms, medians of 5)
MERGE_BELOW = 16  # transposed convolutions with fewer output channels run all sub-pixel phases in one GEMM
CHUNK_VALUES = 2**18  # values per step of the digit split: 1 MB float32 buffers; smaller steps cost more in
# per-operation overhead than they gain in cache hits (1280x720 machine decode: 2**14 374 ms, 2**18 320 ms)
_ROUND = 1.5 * 2**23  # float32 v + _ROUND rounds v (|v| < 2**22) to an integer held in the low mantissa bits
_ROUND_BITS = 0x4B400000  # the bit pattern of float32 _ROUND

#: epilogue(sums, n, out): writes the output values of sample n's exact integer sums (any leading shape, output
#: channels last) into ``out``, a float32 view of the same shape; elementwise per output channel
Epilogue = Callable[[Tensor, int, Tensor], None]


def digit_limit(parts: int) -> int:
    """Largest |x| that :func:`quantize` writes in ``parts`` digits (the top one in [-64, 64], the others in
    [-64, 63])."""
    return DIGIT_MAX * DIGIT_BASE ** (parts - 1)


def _digit_sum_bound(fan_in: int, act_parts: int, weight_parts: int) -> int:
    """Bound of ``sum_{i, j} P_ij 128^(i+j)`` over digit products ``|P_ij| <= fan_in * 64 * 64``."""
    weights = sum(DIGIT_BASE ** (i + j) for i in range(act_parts) for j in range(weight_parts))
    return fan_in * DIGIT_MAX * DIGIT_MAX * weights


def check_bound(fan_in: int, act_parts: int, weight_parts: int) -> None:
    """Prove that no sum of the kernels overflows, for ``fan_in`` products per output.

    A digit product (one int8 GEMM) is at most ``fan_in * 64 * 64``: it must stay below 2**31, the int32
    accumulator. :func:`_combine` adds the digit products with their weights ``128^(i+j)`` in int32 while the
    bound of what it sums stays below 2**31, then in float64; every partial sum is at most
    :func:`_digit_sum_bound`, which must stay below 2**53 so that float64 (and the reference kernel) is exact.
    """
    if fan_in * DIGIT_MAX * DIGIT_MAX >= INT32_LIMIT:
        raise ValueError(f"fan-in {fan_in} overflows the int32 accumulator of an int8 GEMM")
    if _digit_sum_bound(fan_in, act_parts, weight_parts) >= EXACT_FLOAT64:
        raise ValueError(f"fan-in {fan_in} with {act_parts} x {weight_parts} digits exceeds exact float64 sums")


def _split(q: Tensor, parts: int, out: Tensor, spare: Tensor | None = None) -> None:
    """Digits of integer int32 ``q`` into ``out[0 .. parts-1]`` (lowest first); overwrites ``q`` and ``spare``
    (an int32 buffer of ``q``'s shape)."""
    spare = torch.empty_like(q) if spare is None else spare
    for j in range(parts - 1):
        top = torch.add(q, DIGIT_MAX, out=spare).bitwise_right_shift_(DIGIT_BITS)  # floor((q + 64) / 128)
        out[j] = q.sub_(top, alpha=DIGIT_BASE)  # q - 128 top lies in [-64, 63]
        q, spare = top, q
    out[parts - 1] = q


def quantize(x: Tensor, scale: Tensor, parts: int, pads: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Tensor:
    """Digits of ``clamp(round(x * scale[n]), -L, L)``, ``L = digit_limit(parts)``, of a float32 NHWC tensor.

    Returns int8 ``[parts, N, H + top + bottom, W + left + right, C]``, lowest digit first, with a zero border
    ``pads = (top, bottom, left, right)``. The product and the rounding (half to even) are IEEE float32 operations,
    the same on every machine; the work runs in cache-sized chunks of rows.
    """
    if parts * DIGIT_BITS > 22:
        raise ValueError("the float32 rounding covers at most 3 digits")
    top, bottom, left, right = pads
    n, h, w, c = x.shape
    out = _bordered((parts, n, h, w, c), pads, torch.int8)
    spare = torch.empty((min(_chunk_rows(w, c), h), w, c), dtype=torch.int32)
    for i, rows, q in _clamped_rows(x, scale, float(digit_limit(parts))):
        _split(q.add_(_ROUND).view(torch.int32).sub_(_ROUND_BITS), parts,
               out[:, i, top + rows.start : top + rows.stop, left : left + w], spare[: rows.stop - rows.start])
    return out


def quantize_float64(x: Tensor, scale: Tensor, parts: int, pads: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Tensor:
    """The integers :func:`quantize` writes in digits, as one float64 plane ``[1, N, H + top + bottom,
    W + left + right, C]`` (the operand of the float64 kernel): the same float32 product and round-half-to-even."""
    top, bottom, left, right = pads
    n, h, w, c = x.shape
    out = _bordered((1, n, h, w, c), pads, torch.float64)
    for i, rows, q in _clamped_rows(x, scale, float(digit_limit(parts))):
        out[0, i, top + rows.start : top + rows.stop, left : left + w].copy_(q.round_())
    return out


def _bordered(shape: tuple[int, int, int, int, int], pads: tuple[int, int, int, int], dtype: torch.dtype) -> Tensor:
    """An uninitialised ``[P, N, H + top + bottom, W + left + right, C]`` tensor whose border ``pads`` is zero."""
    parts, n, h, w, c = shape
    top, bottom, left, right = pads
    out = torch.empty((parts, n, h + top + bottom, w + left + right, c), dtype=dtype)
    out[:, :, :top] = 0
    out[:, :, top + h :] = 0
    out[:, :, top : top + h, :left] = 0
    out[:, :, top : top + h, left + w :] = 0
    return out


def _chunk_rows(w: int, c: int) -> int:
    """Rows of a ``W x C`` image in one cache-sized step of the quantisation (:data:`CHUNK_VALUES`)."""
    return max(1, CHUNK_VALUES // max(1, w * c))


def _clamped_rows(x: Tensor, scale: Tensor, limit: float) -> Iterator[tuple[int, slice, Tensor]]:
    """``clamp(x * scale[n], -limit, limit)`` of a float32 NHWC ``x`` in cache-sized steps of rows: (sample, its
    rows, their values in a float32 buffer that the next step overwrites)."""
    n, h, w, c = x.shape
    step = _chunk_rows(w, c)
    buf = torch.empty((min(step, h), w, c))
    for i in range(n):
        for r0 in range(0, h, step):
            r1 = min(h, r0 + step)
            yield i, slice(r0, r1), torch.mul(x[i, r0:r1], scale[i], out=buf[: r1 - r0]).clamp_(-limit, limit)


def compose(digits: Tensor) -> Tensor:
    """The float64 integers ``sum_j d_j 128^j`` of digit planes ``[parts, ...]`` (exact)."""
    total = digits[-1].double()
    for d in reversed(digits[:-1]):
        total = total.mul_(DIGIT_BASE).add_(d.double())
    return total


def weight_digits(w_mat: Tensor, parts: int) -> Tensor:
    """int8 GEMM operand ``[K, parts * Cout]`` of an integer weight matrix ``[K, Cout]`` (digit j in block j)."""
    digits = torch.empty((parts, *w_mat.shape), dtype=torch.int8)
    _split(w_mat.to(torch.int32), parts, digits)
    return torch.cat(list(digits), dim=1).contiguous()


def _combine(products: Tensor, fan_in: int, rows: Tensor, wide: Tensor) -> Tensor:
    """Exact ``sum_{i, j} products[i, :, j, :] 128^(i+j)`` of digit products ``[act_parts, m, weight_parts, cout]``.

    Sums per activation digit in int32 into ``rows`` ``[act_parts, m, cout]`` (``add`` with an integer ``alpha`` is
    exact), then, if the bound (:func:`_digit_sum_bound`) leaves int32, in float64 in ``wide`` ``[2, m, cout]``;
    every partial result is an exact integer. Returns a view of ``rows`` or ``wide``.
    """
    act_parts, _, weight_parts, _ = products.shape
    for i in range(act_parts):
        if weight_parts == 1:
            rows[i].copy_(products[i, :, 0])
        else:
            torch.add(products[i, :, weight_parts - 2], products[i, :, weight_parts - 1], alpha=DIGIT_BASE,
                      out=rows[i])
        for j in reversed(range(weight_parts - 2)):
            torch.add(products[i, :, j], rows[i], alpha=DIGIT_BASE, out=rows[i])
    if _digit_sum_bound(fan_in, act_parts, weight_parts) < INT32_LIMIT:
        for i in reversed(range(act_parts - 1)):
            torch.add(rows[i], rows[i + 1], alpha=DIGIT_BASE, out=rows[i])
        return rows[0]
    total, term = wide[0].copy_(rows[act_parts - 1]), wide[1]
    for i in reversed(range(act_parts - 1)):
        total.mul_(DIGIT_BASE).add_(term.copy_(rows[i]))
    return total


@dataclass(frozen=True)
class Phase:
    """One GEMM of a plan: taps ``start:stop`` of the im2col columns times the weights of output phases ``outputs``
    (column blocks of ``weight_parts * Cout``, one per phase ``(a, b)``)."""

    outputs: tuple[tuple[int, int], ...]
    start: int
    stop: int
    weights: Tensor  # int8 digits [(stop - start) * Cin, len(outputs) * weight_parts * Cout]


@dataclass(frozen=True)
class GemmPlan:
    """How a layer runs as int8 GEMMs: im2col taps ``(jy, jx)`` of a stride-``stride`` window, then the GEMMs of
    ``phases`` on contiguous ranges of those taps. Output pixel ``(subpixel * m + a, subpixel * w + b)`` (phase
    ``(a, b)``) sums the window at ``(m * stride + jy, w * stride + jx)`` of the padded input.
    """

    taps: list[tuple[int, int]]
    stride: int
    subpixel: int  # output phases per axis: 1 for a convolution, the stride of a transposed convolution
    phases: list[Phase]
    weight_parts: int


def _gemm_operand(w_mat: Tensor, parts: int | None) -> Tensor:
    """The GEMM operand of an integer weight matrix ``[K, Cout]``: int8 digits (:func:`weight_digits`) or, with
    ``parts=None``, the float64 integers themselves (the float64 kernel)."""
    return w_mat.double().contiguous() if parts is None else weight_digits(w_mat, parts)


def _phase_gemm(taps: list[tuple[int, int]], phases: dict[tuple[int, int], dict[tuple[int, int], Tensor]],
                cin: int, cout: int, parts: int | None) -> Phase:
    """One GEMM for ``phases`` ((a, b) -> used tap -> [Cin, Cout] weights) over the smallest tap range covering
    their taps; taps in the range that a phase does not use get zero weights."""
    positions = [i for i, tap in enumerate(taps) if any(tap in used for used in phases.values())]
    start, stop = positions[0], positions[-1] + 1
    blocks = []
    for used in phases.values():
        w_mat = torch.zeros((stop - start, cin, cout), dtype=torch.float64)
        for i in range(start, stop):
            if taps[i] in used:
                w_mat[i - start] = used[taps[i]]
        blocks.append(_gemm_operand(w_mat.view(-1, cout), parts))
    return Phase(tuple(phases), start, stop, torch.cat(blocks, dim=1).contiguous())


def conv_plan(w_int: Tensor, stride: int, parts: int | None, taps: list[tuple[int, int]] | None = None) -> GemmPlan:
    """Plan of a correlation with integer weights ``[Cout, Cin, k, k]``: one phase over ``taps`` (default: all, in
    row-major order). Taps left out must have zero weights (a masked convolution): im2col and the GEMM skip them.
    ``parts`` digits per weight for the int8 kernel, ``None`` for float64 operands."""
    cout, cin, k, _ = w_int.shape
    taps = [(jy, jx) for jy in range(k) for jx in range(k)] if taps is None else taps
    used = {(jy, jx): w_int[:, :, jy, jx].t() for jy, jx in taps}
    return GemmPlan(taps, stride, 1, [_phase_gemm(taps, {(0, 0): used}, cin, cout, parts)], parts or 1)


def polyphase(kernel: int, stride: int, padding: int) -> tuple[int, list[list[tuple[int, int]]]]:
    """Sub-pixel form of a 1-D transposed convolution: ``(first, taps)``.

    Output ``o = stride * m + a`` is the sum of ``x[m + first + j] * w[t]`` over ``(j, t)`` in ``taps[a]``.
    """
    phases = []
    for a in range(stride):
        r = (a + padding) % stride
        c = (a + padding - r) // stride
        phases.append([(c - t, r + stride * t) for t in range(math.ceil((kernel - r) / stride))])
    first = min(off for taps in phases for off, _ in taps)
    return first, [[(off - first, ky) for off, ky in taps] for taps in phases]


def polyphase_window(kernel: int, stride: int, padding: int) -> int:
    """Inputs per axis that every sub-pixel phase of a transposed convolution reads."""
    _, taps = polyphase(kernel, stride, padding)
    return 1 + max(j for phase in taps for j, _ in phase)


def _tap_order(window: int, sets: list[set[int]]) -> list[tuple[int, int]]:
    """im2col tap order in which every phase's taps ``sets[a] x sets[b]`` are contiguous when that is simple.

    With two nested 1-D tap sets ``small <= big`` (stride 2, odd kernels) the order ``D x small, small x small,
    small x D, D x D`` (``D = big - small``) makes all four products contiguous; otherwise row-major order,
    where a phase's range may include taps it does not use (zero weights).
    """
    row_major = [(jy, jx) for jy in range(window) for jx in range(window)]
    if len(sets) != 2:
        return row_major
    small, big = sorted(sets, key=len)
    if not small <= big:
        return row_major
    rest, inner = sorted(big - small), sorted(small)
    blocks = [(rest, inner), (inner, inner), (inner, rest), (rest, rest)]
    order = [(jy, jx) for ys, xs in blocks for jy in ys for jx in xs]
    return order + [tap for tap in row_major if tap not in order]


def transposed_plan(w_int: Tensor, stride: int, padding: int, parts: int | None) -> GemmPlan:
    """Plan of a transposed convolution with integer weights ``[Cin, Cout, k, k]``: ``stride**2`` ordinary
    stride-1 convolutions (sub-pixel phases) sharing one im2col window.

    Each phase gets its own GEMM over just its taps, unless the layer has fewer than ``MERGE_BELOW`` output
    channels: then one GEMM computes all phases (zero weights for the taps a phase does not use), since GEMMs a
    few columns wide run far below the int8 peak.
    """
    cin, cout, k, _ = w_int.shape
    _, taps_1d = polyphase(k, stride, padding)
    order = _tap_order(polyphase_window(k, stride, padding), [{j for j, _ in phase} for phase in taps_1d])
    taps = {}
    for a, phase_y in enumerate(taps_1d):
        for b, phase_x in enumerate(taps_1d):
            taps[a, b] = {(jy, jx): w_int[:, :, ky, kx] for jy, ky in phase_y for jx, kx in phase_x}
            if not taps[a, b]:
                raise ValueError("transposed convolutions with a kernel smaller than the stride are not supported")
    groups = [taps] if cout < MERGE_BELOW else [{ab: used} for ab, used in taps.items()]
    return GemmPlan(order, 1, stride, [_phase_gemm(order, group, cin, cout, parts) for group in groups], parts or 1)


def polyphase_input(size: int, out_size: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int, int]:
    """``(start, stop, pad_before, pad_after)``: the input rows a transposed convolution's phases read."""
    first, _ = polyphase(kernel, stride, padding)
    need = -(-out_size // stride) - 1 + polyphase_window(kernel, stride, padding)
    start = max(0, first)
    stop = min(size, first + need)
    before = start - first
    return start, stop, before, need - before - (stop - start)


def run(x_digits: Tensor, plan: GemmPlan, epilogue: Epilogue, out: Tensor) -> None:
    """Run ``plan`` on padded digit planes ``[P, N, Hp, Wp, C]``; writes ``out`` ``[N, Ho, Wo, Cout]`` by row tiles.

    Phases that ``out`` does not cover entirely (``Ho`` or ``Wo`` not a multiple of the phase count) go through a
    padded buffer. All per-tile work happens in buffers allocated once per call. float64 operands (one plane of
    integer values, a plan made with ``parts=None``) run as float64 GEMMs, exact while the sums stay below 2**53
    (:func:`check_bound`): the same integers as the int8 digits.
    """
    parts, n_batch, _, _, channels = x_digits.shape
    exact_float = x_digits.dtype == torch.float64
    if exact_float != (plan.phases[0].weights.dtype == torch.float64) or (exact_float and parts != 1):
        raise ValueError("float64 operands need a float64 plan (parts=None) and one plane")
    gemm = torch.mm if exact_float else torch._int_mm
    item = x_digits.element_size()
    product_item = 8 if exact_float else 4
    n, ho, wo, cout = out.shape
    s = plan.subpixel
    hm, wm = -(-ho // s), -(-wo // s)
    full = out if (hm * s, wm * s) == (ho, wo) else out.new_zeros((n, hm * s, wm * s, cout))
    grid = full.view(n, hm, s, wm, s, cout)
    window = 1 + max(max(t) for t in plan.taps)
    stride = plan.stride
    k = len(plan.taps) * channels
    widest = max(ph.weights.shape[1] for ph in plan.phases)
    budget = FLOAT64_BUDGET if exact_float else 1
    rows = max(1, min(hm, budget * COLUMN_BYTES // max(1, item * parts * wm * k),
                      budget * PRODUCT_BYTES // max(1, product_item * parts * wm * widest)))
    cols_buf = torch.empty((parts, rows, wm, len(plan.taps), channels), dtype=x_digits.dtype)
    products = torch.empty((parts, rows * wm * widest), dtype=torch.float64 if exact_float else torch.int32)
    if not exact_float:  # the int8 kernel's buffers for combining digit products (float64 GEMMs give the sums)
        row_sums = torch.empty((parts, rows * wm * cout), dtype=torch.int32)
        wide = torch.empty((2, rows * wm * cout), dtype=torch.float64)
    for i in range(n_batch):
        for r0 in range(0, hm, rows):
            r1 = min(hm, r0 + rows)
            m = (r1 - r0) * wm
            block = x_digits[:, i, r0 * stride : (r1 - 1) * stride + window]
            if window == 1 and stride == 1:
                cols = block.reshape(parts, m, k)
            else:
                span_y, span_x = stride * (r1 - r0 - 1) + 1, stride * (wm - 1) + 1
                cols = torch.stack([block[:, jy : jy + span_y : stride, jx : jx + span_x : stride]
                                    for jy, jx in plan.taps], dim=3, out=cols_buf[:, : r1 - r0]).view(parts, m, k)
            for ph in plan.phases:
                ncol = ph.weights.shape[1]
                prod = products[:, : m * ncol].view(parts, m, ncol)
                for p in range(parts):
                    gemm(cols[p, :, ph.start * channels : ph.stop * channels], ph.weights, out=prod[p])
                by_output = prod.view(parts, m, len(ph.outputs), plan.weight_parts, cout)
                for o, (a, b) in enumerate(ph.outputs):
                    target = grid[i, r0:r1, a, :, b]
                    if exact_float:
                        sums = by_output[0, :, o, 0]
                    else:
                        sums = _combine(by_output[:, :, o], (ph.stop - ph.start) * channels,
                                        row_sums[:, : m * cout].view(parts, m, cout),
                                        wide[:, : m * cout].view(2, m, cout))
                    epilogue(sums.view(target.shape), i, target)
    if full is not out:
        out.copy_(full[:, :ho, :wo])
