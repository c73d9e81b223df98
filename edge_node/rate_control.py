"""Coding rates of the edge, changeable at run time by the cloud or adapted to a bandwidth target."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from icmh.service.edge_config import check_rate, check_target


@dataclass(frozen=True)
class Rates:
    base: float
    residual: float
    target_kbps: float  # 0: fixed base rate


class RateControl:
    """Current rates, thread-safe. With a kbps target, the base rate follows the measured base bitrate.

    The controller is proportional in the log domain: after every frame it moves the
    base rate by ``gain * log(target / measured)`` (at most ``max_step``), where the
    measured bitrate is an exponential average of base bits per frame times frame rate.
    """

    def __init__(self, base_rate: float = 0.5, residual_rate: float = 0.5, target_kbps: float = 0.0,
                 gain: float = 0.1, max_step: float = 0.05, smoothing: float = 0.3) -> None:
        self._lock = threading.Lock()
        self._rates = Rates(
            check_rate(base_rate, "base rate"), check_rate(residual_rate, "residual rate"), check_target(target_kbps)
        )
        self.gain, self.max_step, self.smoothing = gain, max_step, smoothing
        self._bits: float | None = None
        self._interval: float | None = None
        self._last_capture_ns: int | None = None

    @property
    def current(self) -> Rates:
        with self._lock:
            return self._rates

    def apply(self, base_rate: float | None = None, residual_rate: float | None = None,
              target_kbps: float | None = None) -> Rates:
        """Change the given settings (validated all before any is applied); returns the new rates."""
        base = None if base_rate is None else check_rate(base_rate, "base rate")
        residual = None if residual_rate is None else check_rate(residual_rate, "residual rate")
        target = None if target_kbps is None else check_target(target_kbps)
        with self._lock:
            r = self._rates
            self._rates = Rates(
                r.base if base is None else base,
                r.residual if residual is None else residual,
                r.target_kbps if target is None else target,
            )
            return self._rates

    def measured_kbps(self) -> float | None:
        with self._lock:
            if self._bits is None or not self._interval:
                return None
            return self._bits / self._interval / 1000.0

    def observe(self, base_bytes: int, capture_ns: int) -> None:
        """Account one coded base layer; adjusts the base rate when a target is set."""
        with self._lock:
            a = self.smoothing
            bits = 8.0 * base_bytes
            self._bits = bits if self._bits is None else (1 - a) * self._bits + a * bits
            if self._last_capture_ns is not None and capture_ns > self._last_capture_ns:
                dt = (capture_ns - self._last_capture_ns) / 1e9
                self._interval = dt if self._interval is None else (1 - a) * self._interval + a * dt
            self._last_capture_ns = capture_ns
            r = self._rates
            if not r.target_kbps or not self._interval or not self._bits:
                return
            measured = self._bits / self._interval / 1000.0
            step = max(-self.max_step, min(self.max_step, self.gain * math.log(r.target_kbps / measured)))
            self._rates = Rates(min(1.0, max(0.0, r.base + step)), r.residual, r.target_kbps)
