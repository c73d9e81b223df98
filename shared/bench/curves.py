"""Rate curves: code a set of images at each setting of a codec, measure, and compare curves by BD-rate."""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..media import read_rgb
from .bdrate import bd_rate
from .classical import ClassicalCodec


@dataclass
class Coded:
    """A decoded image and the bytes of each coded layer (one entry, ``total``, for single-layer codecs)."""

    decoded: np.ndarray
    layer_bytes: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.layer_bytes.values())


CodeFn = Callable[[np.ndarray, float], Coded]
#: consumes (image index, decoded image) pairs of one rate point, returns its metrics
Evaluate = Callable[[Iterator[tuple[int, np.ndarray]]], dict[str, float]]


@dataclass(frozen=True)
class RateSweep:
    """A codec and the settings that trace its rate curve."""

    name: str
    label: str
    parameter: str
    settings: tuple[float, ...]
    code: CodeFn


def classical_sweep(codec: ClassicalCodec) -> RateSweep:
    def code(image: np.ndarray, setting: float) -> Coded:
        data, decoded = codec.encode_decode(image, setting)
        return Coded(decoded, {"total": len(data)})

    return RateSweep(codec.name, codec.label, codec.parameter, codec.settings, code)


def bits_per_pixel(nbytes: int, image: np.ndarray) -> float:
    return 8.0 * nbytes / (image.shape[0] * image.shape[1])


def _code_images(
    sweep: RateSweep, paths: Sequence[Path], setting: float, rates: dict[str, list[float]]
) -> Iterator[tuple[int, np.ndarray]]:
    """Decoded images of ``paths`` coded at ``setting``; appends each image's bpp (and per-layer bpp) to ``rates``."""
    for index, path in enumerate(paths):
        image = read_rgb(path)
        coded = sweep.code(image, setting)
        rates["bpp"].append(bits_per_pixel(coded.total_bytes, image))
        if len(coded.layer_bytes) > 1:
            for layer, nbytes in coded.layer_bytes.items():
                rates[f"{layer}_bpp"].append(bits_per_pixel(nbytes, image))
        yield index, coded.decoded


def measure_curve(sweep: RateSweep, paths: Sequence[Path], evaluate: Evaluate, tag: str = "") -> dict[str, object]:
    """Code every image at every setting of ``sweep``; one point per setting with mean bpp and metrics.

    Layered codecs also get the mean bpp of each layer (``base_bpp``, ``residual_bpp``).
    Images are read from disk for each setting so only one is held in memory at a time.
    """
    points = []
    for setting in sweep.settings:
        start = time.perf_counter()
        rates: dict[str, list[float]] = defaultdict(list)
        metrics = evaluate(_code_images(sweep, paths, setting, rates))
        point = {"setting": setting, **{k: float(np.mean(v)) for k, v in rates.items()}, **metrics}
        point["seconds"] = round(time.perf_counter() - start, 3)
        points.append(point)
        shown = " ".join(f"{k} {v:.4g}" for k, v in point.items() if k not in ("setting", "seconds"))
        where = f"[{tag}] {sweep.name} {sweep.parameter}={setting:g}"
        print(f"{where}: {shown} ({point['seconds']:.1f} s)", file=sys.stderr)
    return {"label": sweep.label, "parameter": sweep.parameter, "points": points}


def bd_rate_table(
    curves: dict[str, dict], quality: str, anchors: Sequence[str], tests: Sequence[str], method: str = "pchip",
    rate: str = "bpp", rate_window: tuple[float, float] | None = None,
) -> dict[str, dict[str, float | str]]:
    """BD-rate (%) of each test curve against each anchor on ``quality`` vs ``rate`` (inside ``rate_window``, see
    :func:`~icmh.bench.bdrate.bd_rate`).

    A pair that cannot be compared (too few points, no common quality range) gets the reason
    as a string instead of a number.
    """
    table: dict[str, dict[str, float | str]] = {}
    for anchor in anchors:
        if anchor not in curves:
            continue
        row: dict[str, float | str] = {}
        for test in tests:
            if test == anchor or test not in curves:
                continue
            a, t = curves[anchor]["points"], curves[test]["points"]
            try:
                value = bd_rate([p[rate] for p in a], [p[quality] for p in a],
                                [p[rate] for p in t], [p[quality] for p in t], method, rate_window)
                row[test] = round(value, 3) if math.isfinite(value) else "not finite"
            except ValueError as exc:
                row[test] = f"n/a: {exc}"
        table[anchor] = row
    return table
