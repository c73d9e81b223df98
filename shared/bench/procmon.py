"""CPU time and resident memory of running processes, sampled in a background thread (psutil).

CPU is given in percent of one core (200 % = both cores of a 2-core machine busy), from the change in the
processes' user + system time between samples; memory is the RSS (MiB), summed over the processes asked for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

MIB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    time_ns: int  # wall clock, ns since the epoch (comparable with capture times)
    cpu_s: dict[str, float]  # name -> user + system seconds so far
    rss_mb: dict[str, float]


class ProcessMonitor:
    """Samples the watched processes every ``interval`` s between :meth:`start` and :meth:`stop`."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[Sample] = []
        self._processes: dict[str, psutil.Process] = {}
        self._last: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-monitor", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self._processes[name] = psutil.Process(pid)

    def start(self) -> ProcessMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        """Take one sample now (a process that has exited keeps its last values)."""
        with self._lock:
            for name, process in self._processes.items():
                try:
                    with process.oneshot():
                        times = process.cpu_times()
                        self._last[name] = (times.user + times.system, process.memory_info().rss / MIB)
                except psutil.Error:
                    pass
            self.samples.append(Sample(time.time_ns(), {k: v[0] for k, v in self._last.items()},
                                       {k: v[1] for k, v in self._last.items()}))

    def summary(self, names: Sequence[str], start_ns: int | None = None, end_ns: int | None = None) -> dict:
        """CPU % (mean over the period and highest between two samples) and RSS (mean, peak) of ``names`` together,
        over the samples in [start_ns, end_ns] (all samples when fewer than two fall inside)."""
        samples = [s for s in self.samples if (start_ns is None or s.time_ns >= start_ns)
                   and (end_ns is None or s.time_ns <= end_ns)]
        if len(samples) < 2:
            samples = self.samples
        if len(samples) < 2:
            return {"cpu_percent_mean": None, "cpu_percent_max": None, "cpu_seconds": None, "rss_mb_mean": None,
                    "rss_mb_peak": None, "seconds": 0.0, "samples": len(samples)}
        cpu = [sum(s.cpu_s.get(n, 0.0) for n in names) for s in samples]
        rss = [sum(s.rss_mb.get(n, 0.0) for n in names) for s in samples]
        times = [s.time_ns / 1e9 for s in samples]
        rates = [100 * (c1 - c0) / (t1 - t0) for c0, c1, t0, t1 in zip(cpu, cpu[1:], times, times[1:], strict=False)
                 if t1 > t0]
        return {
            "cpu_percent_mean": round(100 * (cpu[-1] - cpu[0]) / (times[-1] - times[0]), 1),
            "cpu_percent_max": round(max(rates), 1) if rates else None,
            "cpu_seconds": round(cpu[-1] - cpu[0], 2),
            "rss_mb_mean": round(sum(rss) / len(rss), 1),
            "rss_mb_peak": round(max(rss), 1),
            "seconds": round(times[-1] - times[0], 2),
            "samples": len(samples),
        }
