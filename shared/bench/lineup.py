"""Settings shared by the benchmarks and the line-up of codecs a rate-curve benchmark compares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .classical import CLASSICAL_CODECS, select_codecs
from .curves import RateSweep, classical_sweep
from .learned import LEARNED, LearnedCodecs, learned_sweeps, load_learned


@dataclass(frozen=True)
class BenchOptions:
    """Flags every benchmark takes (see :mod:`icmh.bench.cli`)."""

    weights: Path | None
    shared: Path
    out: Path
    limit: int | None
    rates: tuple[float, ...]
    threads: int
    command: str
    codecs: tuple[str, ...] | None = None  # None: every codec the benchmark knows
    bd_method: str = "pchip"


@dataclass
class Lineup:
    """Rate sweeps to run, the loaded learned codecs, and why any requested codec is left out."""

    sweeps: list[RateSweep]
    learned: LearnedCodecs
    skipped: dict[str, str]

    @property
    def classical_names(self) -> list[str]:
        return [s.name for s in self.sweeps if s.name in CLASSICAL_CODECS]


def set_threads(threads: int) -> None:
    import cv2

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def build_lineup(options: BenchOptions, learned_names: Sequence[str], base_rate: float | None = None) -> Lineup:
    """Learned codecs among ``learned_names`` and installed classical codecs, filtered by ``options.codecs``."""
    known = [*learned_names, *CLASSICAL_CODECS]
    requested = list(options.codecs) if options.codecs else known
    unknown = [n for n in requested if n not in known]
    if unknown:
        raise ValueError(f"unknown codec(s) {unknown}; this benchmark knows {known}")
    mine = [n for n in requested if n in LEARNED]
    learned = load_learned(options.weights, mine)
    skipped = {n: learned.notes[LEARNED[n][0]] for n in mine if LEARNED[n][0] in learned.notes}
    classical, not_installed = select_codecs([n for n in requested if n in CLASSICAL_CODECS])
    skipped |= not_installed
    sweeps = learned_sweeps(learned, mine, options.rates, base_rate) + [classical_sweep(c) for c in classical]
    return Lineup(sweeps, learned, skipped)
