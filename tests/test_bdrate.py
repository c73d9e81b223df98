"""Bjøntegaard delta rate on curves with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icmh.bench.bdrate import METHODS, bd_rate, rate_quality_envelope

RATES = [0.1, 0.25, 0.5, 1.0, 2.0]
PSNR = [27.0, 30.0, 33.5, 36.0, 38.0]


@pytest.mark.parametrize("method", METHODS)
def test_identical_curves_give_zero(method: str) -> None:
    assert bd_rate(RATES, PSNR, RATES, PSNR, method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_ten_percent_less_rate_gives_minus_ten(method: str) -> None:
    cheaper = [0.9 * r for r in RATES]
    assert bd_rate(RATES, PSNR, cheaper, PSNR, method) == pytest.approx(-10.0, abs=1e-9)
    assert bd_rate(cheaper, PSNR, RATES, PSNR, method) == pytest.approx(100.0 / 9.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_hand_computed_quality_shift(method: str) -> None:
    # anchor: rate doubles every 3 dB; test reaches each rate with 1 dB more, so on the shared
    # range [31, 39] dB its log-rate is ln(2)/3 lower everywhere: BD-rate = 2^(-1/3) - 1.
    rates = [1.0, 2.0, 4.0, 8.0]
    assert bd_rate(rates, [30, 33, 36, 39], rates, [31, 34, 37, 40], method) == pytest.approx(
        (2 ** (-1 / 3) - 1) * 100, abs=1e-9
    )


@pytest.mark.parametrize("method", METHODS)
def test_hand_computed_growing_gap(method: str) -> None:
    # anchor ln R = Q/10, test ln R = Q/10 - (Q-30)/50 on Q in [30, 40]:
    # mean log-ratio = -(1/10) * integral_0^10 t/50 dt = -0.1, BD-rate = e^-0.1 - 1.
    q = np.linspace(30, 40, 5)
    anchor = np.exp(q / 10)
    test = np.exp(q / 10 - (q - 30) / 50)
    assert bd_rate(anchor, q, test, q, method) == pytest.approx((math.exp(-0.1) - 1) * 100, abs=1e-9)


def test_methods_differ_on_curved_data() -> None:
    test_rates = [0.12, 0.3, 0.45, 1.1, 1.8]
    values = [bd_rate(RATES, PSNR, test_rates, [27.5, 30.2, 33.0, 36.4, 38.3], m) for m in METHODS]
    assert all(math.isfinite(v) for v in values)
    assert values[0] != pytest.approx(values[1], abs=1e-6)


def test_map_like_quality_and_unsorted_points() -> None:
    rates = [0.8, 0.05, 0.4, 0.1, 0.2]
    quality = [0.40, 0.10, 0.35, 0.20, 0.28]
    shifted = [0.5 * r for r in rates]
    assert bd_rate(rates, quality, shifted, quality) == pytest.approx(-50.0, abs=1e-9)


def test_envelope_drops_dominated_points() -> None:
    r, q = rate_quality_envelope([0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.25, 0.35])
    assert r.tolist() == [0.1, 0.2, 0.4]
    assert q.tolist() == [0.2, 0.3, 0.35]


def test_errors() -> None:
    with pytest.raises(ValueError, match="overlap"):
        bd_rate([1, 2], [30, 31], [1, 2], [32, 33])
    with pytest.raises(ValueError, match="at least 4"):
        bd_rate([1, 2, 3], [30, 31, 32], [1, 2, 3], [30, 31, 32], "cubic")
    with pytest.raises(ValueError, match="positive"):
        bd_rate([0, 2], [30, 31], [1, 2], [30, 31])
    with pytest.raises(ValueError, match="method"):
        bd_rate(RATES, PSNR, RATES, PSNR, "akima")


def test_rate_window_judges_only_the_rates_inside_it() -> None:
    """Two curves that agree up to 2 bpp and part above it: 0 % inside a window that ends at 1 bpp (pchip's
    segments there do not see the last point), worse for the test over all of it; a window one curve never reaches
    cannot be compared."""
    rates = [0.25, 0.5, 1.0, 2.0, 4.0]
    anchor, test = [30.0, 33.0, 36.0, 39.0, 42.0], [30.0, 33.0, 36.0, 39.0, 40.0]
    assert bd_rate(rates, anchor, rates, test) > 0.5
    assert bd_rate(rates, anchor, rates, test, rate_window=(0.3, 1.0)) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(rates, anchor, [0.9 * r for r in rates], test, rate_window=(0.1, 1.0)) == pytest.approx(
        -10.0, abs=1e-9)
    with pytest.raises(ValueError, match="inside rates 5-6"):
        bd_rate(rates, anchor, rates, test, rate_window=(5.0, 6.0))
