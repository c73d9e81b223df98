"""Speed benchmark: encode and decode time per layer, frames/s, detector time, peak memory and MACs/pixel.

Frames come from the street camera video at 640x360 (native) and are resized for other sizes
(1280x720 is upsampled). Each stage runs once untimed as a warm-up, then once per frame; fps is
1 / mean time. A residual encode starts from a fresh copy of the frame's base encoding, so it
includes what it needs from the base besides its bitstream (the machine image: float32 for PR, exact
for AVIF), as on the edge; a human decode includes decoding the base layer.

Every run also gives each goal stage's median time as a multiple of the detector's median time on
the same frames (yolov8n at the cloud's settings): absolute times vary between machines and loads,
the ratio much less. Issue 10's goals hold at 1280x720 on 2 threads (:data:`GOALS`).

Memory is measured in a separate pass, one frame per stage, so that tracemalloc does not slow the
timed runs: ``tracemalloc_peak_mb`` counts Python and numpy allocations (not torch's),
``peak_rss_mb`` is the process high-water mark during the stage (reset before it through
/proc/self/clear_refs where the kernel allows). MACs per pixel (:mod:`icmh.bench.macs`) are given
per network of every registered architecture and per stage of the loaded codecs.
"""

from __future__ import annotations

import dataclasses
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
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from icmh.codec.api import BaseEncoding
from icmh.detector import YoloDetector
from icmh.service.images import decode_png

from .classical import OPENCV_FORMATS, opencv_encode
from .datasets import TRAFFIC_VIDEO, read_video_frames
from .learned import LearnedCodecs, load_learned
from .lineup import BenchOptions, set_threads
from .macs import model_macs, registry_macs
from .report import run_metadata, save_figure, write_json

RESIDUAL_CODECS = ("pr-icmh", "fr-icmh", "pr-avif")
SPEED_CODECS = ("sa-icm", *RESIDUAL_CODECS, "single")
CLASSICAL_QUALITY = 75
DEFAULT_SIZES = ((640, 360), (1280, 720))
BASE_ENCODE, MACHINE_DECODE = "sa-icm encode (base)", "sa-icm decode (machine)"
RESIDUAL_ENCODE, HUMAN_DECODE = "{} encode (residual)", "{} decode (human: base + residual)"
#: the same decodes with float synthesis (``exact_pixels=False``): the detector's input and operator views
MACHINE_VIEW, HUMAN_VIEW = "sa-icm decode (machine, float pixels)", "{} decode (human view, float pixels)"
DETECTOR_STAGE = "yolov8n detect (on machine image)"
#: issue 10: goal -> (stage-name template, at most this multiple of the detector's time on the same frames)
GOALS = {
    "base encode": (BASE_ENCODE, 1.6),
    "exact machine decode": (MACHINE_DECODE, 4.0),
    "residual encode": (RESIDUAL_ENCODE, 2.0),
    "human decode": (HUMAN_DECODE, 8.0),
    "human view decode": (HUMAN_VIEW, 8.0),
}
GOAL_SIZE, GOAL_THREADS = "1280x720", 2
RATIO_TICKS = (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
GOAL_NOTES = {"residual encode": "or the edge runs the lazy residual policy (residual coded only on request)",
              "human view decode": "what an operator's QUALITY_HUMAN view costs: float synthesis (the cloud's "
                                   "default; --exact-views for exact pixels); the latents decode exactly"}


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


def _fresh(base: BaseEncoding) -> BaseEncoding:
    """``base`` without its cached machine image: a residual encode computes it, as on the edge."""
    return dataclasses.replace(base, _machine=None)


def _stages(frames: list[np.ndarray], learned: LearnedCodecs, rate: float, detector: YoloDetector) -> list[Stage]:
    """Stages in dependency order; a stage reads the outputs of earlier ones from ``results``."""
    results: dict[str, list[Any]] = {}
    base = learned.codec("sa-icm")
    stages = [
        Stage(BASE_ENCODE, lambda i: base.encode_base(frames[i], rate), encodes=True),
        Stage(MACHINE_DECODE, lambda i: base.decode_machine(results[BASE_ENCODE][i].data)),
        Stage(MACHINE_VIEW, lambda i: base.decode_machine(results[BASE_ENCODE][i].data, exact_pixels=False)),
    ]
    for name in RESIDUAL_CODECS:
        if (codec := learned.codec(name)) is None:
            continue
        enc, dec = RESIDUAL_ENCODE.format(name), HUMAN_DECODE.format(name)
        stages.append(Stage(enc, lambda i, c=codec: c.encode_residual(frames[i], _fresh(results[BASE_ENCODE][i]),
                                                                      rate), True))
        stages.append(Stage(dec, lambda i, c=codec, e=enc: c.decode_human(results[BASE_ENCODE][i].data,
                                                                          results[e][i])))
        stages.append(Stage(HUMAN_VIEW.format(name), lambda i, c=codec, e=enc: c.decode_human(
            results[BASE_ENCODE][i].data, results[e][i], exact_pixels=False)))
    if (single := learned.codec("single")) is not None:
        stages.append(Stage("single encode", lambda i: single.encode_base(frames[i], rate), encodes=True))
        stages.append(Stage("single decode", lambda i: single.decode_machine(results["single encode"][i].data)))
    for name in OPENCV_FORMATS:
        enc = f"{name} encode q{CLASSICAL_QUALITY}"
        stages.append(Stage(enc, lambda i, n=name: opencv_encode(frames[i], n, CLASSICAL_QUALITY), encodes=True))
        stages.append(Stage(f"{name} decode q{CLASSICAL_QUALITY}", lambda i, e=enc: decode_png(results[e][i])))
    stages.append(Stage(DETECTOR_STAGE, lambda i: detector.detect(results[MACHINE_DECODE][i])))
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
    machine = stages.get(MACHINE_DECODE)
    for name in ("pr-icmh", "pr-avif"):  # FR-ICMH's human decode skips the base synthesis: no such difference
        human = stages.get(HUMAN_DECODE.format(name))
        if machine and human:
            stages[f"{name} decode (residual layer only, derived)"] = {
                "ms_mean": round(human["ms_mean"] - machine["ms_mean"], 3),
                "note": "human decode minus machine decode (decode_human decodes the base again)",
            }
    return stages


def goal_ratios(stages: dict[str, dict], size: str, threads: int) -> dict[str, Any]:
    """Each goal stage's median time as a multiple of the detector's median time on the same frames."""
    reference = stages.get(DETECTOR_STAGE, {}).get("ms_median")
    rows = {}
    for goal, (template, limit) in GOALS.items():
        for codec in RESIDUAL_CODECS if "{}" in template else (None,):
            stage = stages.get(name := template.format(codec))
            if stage is None or not reference:
                continue
            ratio = stage["ms_median"] / reference
            rows[name] = {"goal": goal, "ratio": round(ratio, 4),
                          "ratio_of_means": round(stage["ms_mean"] / stages[DETECTOR_STAGE]["ms_mean"], 4),
                          "at_most": limit, "met": ratio <= limit}
    return {"reference": DETECTOR_STAGE, "reference_ms_median": reference,
            "goals_apply": size == GOAL_SIZE and threads == GOAL_THREADS, "stages": rows}


def stage_macs(learned: LearnedCodecs) -> dict[str, float]:
    """MACs per pixel of the networks each learned stage runs (the AVIF codec's own work is not counted)."""
    nets = {layer: model_macs(loaded.model) for layer, loaded in learned.layers.items()}
    base = nets["base"]
    out = {BASE_ENCODE: base["encoder"], MACHINE_DECODE: base["decoder"], MACHINE_VIEW: base["decoder"]}
    # residual -> (its weights layer, base work its encode needs, base work its human decode needs)
    needs = {"pr-icmh": ("pr", base["synthesis"], base["decoder"]),
             "fr-icmh": ("fr", 0.0, base["decoder"] - base["synthesis"]),
             "pr-avif": (None, base["synthesis"], base["decoder"])}
    for name, (layer, encode_base, decode_base) in needs.items():
        if learned.codec(name) is None:
            continue
        own = nets[layer] if layer else {"encoder": 0.0, "decoder": 0.0}
        out[RESIDUAL_ENCODE.format(name)] = encode_base + own["encoder"]
        out[HUMAN_DECODE.format(name)] = out[HUMAN_VIEW.format(name)] = decode_base + own["decoder"]
    if "single" in nets:
        out["single encode"], out["single decode"] = nets["single"]["encoder"], nets["single"]["decoder"]
    return out


def run_speed(
    options: BenchOptions, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, frames: int = 10,
    detector_path: Path | None = None,
) -> list[Path]:
    """Time every stage at each frame size and rate; returns the JSON and PNG files written."""
    if frames < 1:
        raise ValueError(f"--frames must be at least 1, got {frames}")
    set_threads(options.threads)
    learned = load_learned(options.weights, SPEED_CODECS)
    detector = YoloDetector(detector_path or options.shared / "models" / "yolov8n.pt")  # the cloud's settings
    source = read_video_frames(options.shared / TRAFFIC_VIDEO, frames)
    runs = []
    for width, height in sizes:
        resized = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA if width < f.shape[1]
                              else cv2.INTER_LINEAR) for f in source]
        for rate in options.rates:
            stages = benchmark_size(resized, learned, rate, detector)
            size = f"{width}x{height}"
            runs.append({"size": size, "rate": rate, "stages": stages,
                         "vs_detector": goal_ratios(stages, size, options.threads)})
    payload = {
        "benchmark": "speed",
        "meta": run_metadata(options.command, len(source), options.threads, {
            "weights": learned.describe(), "video": str(options.shared / TRAFFIC_VIDEO),
            "detector": {"checkpoint": str(detector.checkpoint), **detector.predict_args},
        }),
        "protocol": f"{len(source)} frames per size, one untimed warm-up per stage, torch and OpenCV threads = "
                    f"{options.threads}; JPEG/WebP via OpenCV at quality {CLASSICAL_QUALITY}, RGB in and out like "
                    "the learned codecs (colour conversion included); residual encode times exclude the base "
                    "encode but include the machine image PR (float32) and AVIF (exact) residuals are coded "
                    "against; human decode times include decoding the base; 'float pixels' stages decode the same "
                    "latents with float synthesis (bfloat16 where native); vs_detector ratios are medians over the "
                    "same frames",
        "goals": {"size": GOAL_SIZE, "threads": GOAL_THREADS, "reference": DETECTOR_STAGE,
                  "at_most": {goal: limit for goal, (_, limit) in GOALS.items()}, "notes": GOAL_NOTES},
        "runs": runs,
        "macs_per_pixel": {
            "counting": "forward hooks on Conv2d / ConvTranspose2d / Linear / GDN (icmh.bench.macs), per input "
                        "pixel; encoder = analysis + hyper-analysis + hyper-synthesis + slice context + entropy "
                        "parameters, decoder = the same without the analyses, with the synthesis",
            "architectures": registry_macs(),
            "codecs": {layer: loaded.model_id for layer, loaded in learned.layers.items()},
            "stages": stage_macs(learned),
        },
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "skipped": {layer: note for layer, note in learned.notes.items()},
    }
    written = [write_json(options.out, "speed", payload)]
    written.append(save_figure(_plot(runs, options.threads), options.out, "speed"))
    return written


def _plot(runs: list[dict], threads: int) -> plt.Figure:
    """Top row: frames/s of every stage per run; bottom row: the goal stages as multiples of the detector."""
    fig, axes = plt.subplots(2, len(runs), figsize=(6.5 * len(runs), 10), squeeze=False)
    fig.suptitle(f"speed (torch/OpenCV threads: {threads}); goals at {GOAL_SIZE} on {GOAL_THREADS} threads")
    for (fps_ax, ratio_ax), run in zip(axes.T, runs, strict=True):
        timed = {k: v["fps"] for k, v in run["stages"].items() if v.get("fps")}
        fps_ax.barh(list(timed), list(timed.values()))
        fps_ax.set(xscale="log", xlabel="frames / s (log)", title=f"{run['size']}, R={run['rate']:g}")
        fps_ax.invert_yaxis()
        fps_ax.tick_params(axis="y", labelsize=7)
        rows = run["vs_detector"]["stages"]
        names = list(rows)
        ratio_ax.barh(names, [rows[n]["ratio"] for n in names],
                      color=["tab:green" if rows[n]["met"] else "tab:red" for n in names])
        ratio_ax.scatter([rows[n]["at_most"] for n in names], names, marker="|", s=400, color="black", zorder=3,
                         label="goal (at most)")
        for y, name in enumerate(names):
            ratio_ax.annotate(f"{rows[name]['ratio']:.2f}x", (rows[name]["ratio"], y), fontsize=7,
                              xytext=(3, -3), textcoords="offset points")
        applies = "" if run["vs_detector"]["goals_apply"] else " (goals not defined here)"
        ratio_ax.set(xscale="log", xlabel="median time / yolov8n median time (log)",
                     title=f"{run['size']}: multiple of yolov8n{applies}")
        ratio_ax.set_xlim(right=1.5 * max([rows[n][k] for n in names for k in ("ratio", "at_most")], default=8))
        ratio_ax.xaxis.set_major_locator(FixedLocator(RATIO_TICKS))
        ratio_ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ratio_ax.xaxis.set_minor_formatter(NullFormatter())
        ratio_ax.invert_yaxis()
        ratio_ax.tick_params(axis="y", labelsize=7)
        ratio_ax.grid(True, axis="x", alpha=0.3)
        ratio_ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
