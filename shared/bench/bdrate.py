"""Bjøntegaard delta rate: average rate difference between two rate-quality curves at equal quality.

G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves", ITU-T VCEG-M33,
Austin, 2001. The log-rate is interpolated as a function of quality on each curve, both
interpolants are integrated over the quality range the curves share, and the mean log-rate
difference is turned into a percentage. Two interpolations are offered:

* ``"pchip"`` (default): piecewise cubic Hermite interpolation, as in the JCT-VC / JVET common
  test conditions sheets (JCTVC-L1100, JVET-T2010); stable for curves of any shape.
* ``"cubic"``: the third-order polynomial fit of the original VCEG-M33 implementation.

Quality can be anything where higher is better (PSNR, MS-SSIM, mAP).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

METHODS = ("pchip", "cubic")


def rate_quality_envelope(rates: Sequence[float], qualities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Points of a curve sorted by rate, keeping only those that raise quality over every cheaper point.

    A dominated point (more rate for no better quality) would make log-rate a non-function of
    quality; on monotone curves this returns the points unchanged.
    """
    r = np.asarray(rates, dtype=np.float64)
    q = np.asarray(qualities, dtype=np.float64)
    if r.shape != q.shape or r.ndim != 1:
        raise ValueError("rates and qualities must be 1-D sequences of the same length")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
        raise ValueError("rates and qualities must be finite")
    if np.any(r <= 0):
        raise ValueError("rates must be positive")
    order = np.lexsort((-q, r))  # by rate, best quality first among equal rates
    keep: list[int] = []
    for i in order:
        if not keep or q[i] > q[keep[-1]]:
            keep.append(int(i))
    return r[keep], q[keep]


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
    method: str = "pchip",
    rate_window: tuple[float, float] | None = None,
) -> float:
    """Rate change of ``test`` against ``anchor`` at equal quality, in percent (negative: test saves rate).

    ``rate_window = (low, high)`` limits the comparison to the qualities both curves reach inside that rate range
    (each curve's quality at the window's ends, interpolated monotonically in log-rate): a goal stated over a rate
    range, e.g. "0.3-1.5 bpp", is judged there and not on points outside it.

    Raises ``ValueError`` when a curve has too few points (2 for pchip, 4 for cubic) or the
    quality ranges of the two curves do not overlap (inside the window, if one is given).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    min_points = 4 if method == "cubic" else 2
    curves = []
    for name, rates, quality in (("anchor", anchor_rates, anchor_quality), ("test", test_rates, test_quality)):
        r, q = rate_quality_envelope(rates, quality)
        if len(r) < min_points:
            raise ValueError(f"{name} curve has {len(r)} usable point(s), {method} needs at least {min_points}")
        curves.append((np.log(r), q))
    spans = [_quality_span(log_r, q, rate_window) for log_r, q in curves]
    low = max(span[0] for span in spans)
    high = min(span[1] for span in spans)
    if not high > low:
        where = f" inside rates {rate_window[0]:g}-{rate_window[1]:g}" if rate_window else ""
        raise ValueError(f"the quality ranges of the two curves do not overlap{where}")
    integrals = [_integrate_log_rate(log_r, q, low, high, method) for log_r, q in curves]
    mean_log_ratio = (integrals[1] - integrals[0]) / (high - low)
    return float((np.exp(mean_log_ratio) - 1.0) * 100.0)


def _integrate_log_rate(log_rate: np.ndarray, quality: np.ndarray, low: float, high: float, method: str) -> float:
    """Integral of interpolated log-rate over quality in [low, high]."""
    if method == "pchip":
        return float(PchipInterpolator(quality, log_rate).integrate(low, high))
    antiderivative = np.polyint(np.polyfit(quality, log_rate, 3))
    return float(np.polyval(antiderivative, high) - np.polyval(antiderivative, low))


def _quality_span(
    log_rate: np.ndarray, quality: np.ndarray, rate_window: tuple[float, float] | None
) -> tuple[float, float]:
    """The qualities a curve (sorted, increasing) reaches at its ends, or at the ends of ``rate_window`` clipped to
    the curve's rates (quality interpolated by pchip in log-rate, which keeps it monotone)."""
    if rate_window is None:
        return float(quality[0]), float(quality[-1])
    low, high = (float(np.clip(np.log(r), log_rate[0], log_rate[-1])) for r in rate_window)
    if not high > low:
        return float("inf"), float("-inf")  # no point of the curve inside the window
    at = PchipInterpolator(log_rate, quality)
    return float(at(low)), float(at(high))
