"""Speed benchmark: encode and decode time per layer, frames/s, detector time and peak memory on traffic frames.

Frames come from the street camera video at 640x360 (native) and are resized for other sizes
(1280x720 is upsampled). Each stage runs once untimed as a warm-up, then once per frame; fps is
1 / mean time. Memory is measured in a separate pass, one frame per stage, so that tracemalloc
does not slow the timed runs: ``tracemalloc_peak_mb`` counts Python and numpy allocations (not
torch's), ``peak_rss_mb`` is the process high-water mark during the stage (reset before it
through /proc/self/clear_refs where the kernel allows).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from icmh.detector import EVALUATION_ARGS, YoloDetector
from icmh.service.images import decode_png

from .classical import OPENCV_FORMATS, opencv_encode
from .datasets import TRAFFIC_VIDEO, read_video_frames
from .learned import LearnedCodecs, load_learned
from .lineup import BenchOptions, set_threads
from .report import figure, run_metadata, save_figure, write_json

SPEED_CODECS = ("sa-icm", "pr-icmh", "fr-icmh", "single")
CLASSICAL_QUALITY = 75
DEFAULT_SIZES = ((640, 360), (1280, 720))


@dataclass
class Stage:
    """A timed step: ``run(frame_index)`` returns the step's output (kept for the stages that need it)."""

    name: str
    run: Callable[[int], Any]
    encodes: bool = False  # the output is a coded stream (``bytes`` or an object with ``.data``)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_memory(run: Callable[[], Any]) -> dict[str, float | None]:
    """Peak traced (Python/numpy) allocation and peak process RSS while ``run`` executes."""
    reset = _reset_peak_rss()
    rss_before = _status_kb("VmRSS")
    tracemalloc.start()
    try:
        run()
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    peak = _status_kb("VmHWM") if reset else None
    return {
        "tracemalloc_peak_mb": round(traced_peak / 2**20, 2),
        "rss_before_mb": round(rss_before / 1024, 1) if rss_before else None,
        "peak_rss_mb": round(peak / 1024, 1) if peak else None,
        "rss_growth_mb": round((peak - rss_before) / 1024, 1) if peak and rss_before else None,
    }


def time_stage(stage: Stage, count: int) -> tuple[list[Any], dict[str, float]]:
    """Run ``stage`` on frames 0..count-1 after one warm-up; outputs and timing summary."""
    stage.run(0)
    outputs, seconds = [], []
    for i in range(count):
        start = time.perf_counter()
        outputs.append(stage.run(i))
        seconds.append(time.perf_counter() - start)
    mean = statistics.fmean(seconds)
    return outputs, {"ms_mean": round(1000 * mean, 3), "ms_median": round(1000 * statistics.median(seconds), 3),
                     "fps": round(1.0 / mean, 3) if mean > 0 else None}


def _stages(frames: list[np.ndarray], learned: LearnedCodecs, rate: float, detector: YoloDetector) -> list[Stage]:
    """Stages in dependency order; a stage reads the outputs of earlier ones from ``results``."""
    results: dict[str, list[Any]] = {}
    base = learned.codec("sa-icm")
    base_enc, machine_dec = "sa-icm encode (base)", "sa-icm decode (machine)"
    stages = [
        Stage(base_enc, lambda i: base.encode_base(frames[i], rate), encodes=True),
        Stage(machine_dec, lambda i: base.decode_machine(results[base_enc][i].data)),
    ]
    for name in ("pr-icmh", "fr-icmh"):
        if (codec := learned.codec(name)) is None:
            continue
        enc, dec = f"{name} encode (residual)", f"{name} decode (human: base + residual)"
        stages.append(Stage(enc, lambda i, c=codec: c.encode_residual(frames[i], results[base_enc][i], rate), True))
        stages.append(Stage(dec, lambda i, c=codec, e=enc: c.decode_human(results[base_enc][i].data, results[e][i])))
    if (single := learned.codec("single")) is not None:
        stages.append(Stage("single encode", lambda i: single.encode_base(frames[i], rate), encodes=True))
        stages.append(Stage("single decode", lambda i: single.decode_machine(results["single encode"][i].data)))
    for name in OPENCV_FORMATS:
        enc = f"{name} encode q{CLASSICAL_QUALITY}"
        stages.append(Stage(enc, lambda i, n=name: opencv_encode(frames[i], n, CLASSICAL_QUALITY), encodes=True))
        stages.append(Stage(f"{name} decode q{CLASSICAL_QUALITY}", lambda i, e=enc: decode_png(results[e][i])))
    stages.append(Stage("yolov8n detect (on machine image)", lambda i: detector.detect(results[machine_dec][i])))
    return [_recording(stage, results) for stage in stages]


def _recording(stage: Stage, results: dict[str, list[Any]]) -> Stage:
    """Wrap a stage so its outputs for each frame stay in ``results`` for later stages."""
    def run(i: int) -> Any:
        out = stage.run(i)
        outputs = results.setdefault(stage.name, [])
        outputs[i:i + 1] = [out]
        return out

    return Stage(stage.name, run, stage.encodes)


def benchmark_size(frames: list[np.ndarray], learned: LearnedCodecs, rate: float, detector: YoloDetector) -> dict:
    """Timing, coded size and memory of every stage on ``frames`` (all of one size) at ``rate``."""
    stages = {}
    for stage in _stages(frames, learned, rate, detector):
        outputs, timing = time_stage(stage, len(frames))
        if stage.encodes:
            nbytes = statistics.fmean(len(getattr(out, "data", out)) for out in outputs)
            timing["bytes_mean"] = round(nbytes, 1)
            timing["bpp"] = round(8 * nbytes / (frames[0].shape[0] * frames[0].shape[1]), 4)
        timing |= measure_memory(lambda s=stage: s.run(0))
        stages[stage.name] = timing
        print(f"[speed {frames[0].shape[1]}x{frames[0].shape[0]}] {stage.name}: {timing['ms_mean']:.1f} ms",
              file=sys.stderr)
    machine = stages.get("sa-icm decode (machine)")
    for name in ("pr-icmh", "fr-icmh"):
        human = stages.get(f"{name} decode (human: base + residual)")
        if machine and human:
            stages[f"{name} decode (residual layer only, derived)"] = {
                "ms_mean": round(human["ms_mean"] - machine["ms_mean"], 3),
                "note": "human decode minus machine decode (decode_human decodes the base again)",
            }
    return stages


def run_speed(
    options: BenchOptions, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, frames: int = 10,
    detector_path: Path | None = None,
) -> list[Path]:
    """Time every stage at each frame size and rate; returns the JSON and PNG files written."""
    set_threads(options.threads)
    learned = load_learned(options.weights, SPEED_CODECS)
    detector = YoloDetector.for_evaluation(detector_path or options.shared / "models" / "yolov8n.pt")
    source = read_video_frames(options.shared / TRAFFIC_VIDEO, frames)
    runs = []
    for width, height in sizes:
        resized = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA if width < f.shape[1]
                              else cv2.INTER_LINEAR) for f in source]
        for rate in options.rates:
            runs.append({"size": f"{width}x{height}", "rate": rate,
                         "stages": benchmark_size(resized, learned, rate, detector)})
    name = "speed"
    payload = {
        "benchmark": "speed",
        "meta": run_metadata(options.command, len(source), options.threads, {
            "weights": learned.describe(), "video": str(options.shared / TRAFFIC_VIDEO),
            "detector": {"checkpoint": str(detector.checkpoint), **EVALUATION_ARGS},
        }),
        "protocol": f"{len(source)} frames per size, one untimed warm-up per stage, torch and OpenCV threads = "
                    f"{options.threads}; JPEG/WebP via OpenCV at quality {CLASSICAL_QUALITY}, RGB in and out like "
                    "the learned codecs (colour conversion included); residual encode times exclude the base "
                    "layer they need, human decode times include decoding it",
        "runs": runs,
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "skipped": {layer: note for layer, note in learned.notes.items()},
    }
    written = [write_json(options.out, name, payload)]
    fig, axes = figure(len(runs), f"frames per second (torch/OpenCV threads: {options.threads})")
    for ax, run in zip(axes, runs, strict=True):
        timed = {k: v["fps"] for k, v in run["stages"].items() if v.get("fps")}
        ax.barh(list(timed), list(timed.values()))
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("frames / s (log)")
        ax.set_title(f"{run['size']}, R={run['rate']:g}")
        ax.tick_params(axis="y", labelsize=7)
    written.append(save_figure(fig, options.out, name))
    return written
