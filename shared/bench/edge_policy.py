"""Edge throughput and residual policies: sustained capture fps, CPU per frame, storage per hour, inspection latency.

Per camera resolution and policy, frames of the traffic videos (``data/traffic/*.mp4``, taken in
turn, resized) go through the edge's own capture code into a real :class:`icmh.edge.store.EdgeStore`
in a temporary folder. Policies: ``base-only`` codes the base layer alone and keeps nothing for
inspection (the floor of any edge); ``lazy`` and ``eager`` are :meth:`icmh.edge.capture.CaptureLoop.code`
(base layer + lossless kept frame, and the residual layer too under eager). Capture time = coding +
the store's SQLite transaction; sustained fps = 1 / its mean (one more frame first, untimed, as a
warm-up); CPU per frame = the process's CPU time (all threads, ``time.process_time``) over the same
span, so CPU / wall time says how many cores a camera keeps busy. Storage = bytes the inspection
store keeps per frame (kept frame + its base layer, + the residual layer under eager), and per hour
at 1 fps and at the sustained fps. Inspection latency (first ``inspect`` frames) = the edge's answer
to a layer request (:class:`icmh.edge.layers.InspectionLayers`: a store read, or coding the residual
under lazy) plus the cloud's decode of the frame (HUMAN: the view's float synthesis, the cloud's default;
ORIGINAL: exact); network time is not included.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from icmh.codec.api import ScalableCodec
from icmh.edge.capture import RESIDUAL_POLICIES, CaptureLoop
from icmh.edge.layers import InspectionLayers
from icmh.edge.metrics import EdgeMetrics
from icmh.edge.store import EdgeStore, StoreLimits

from .datasets import read_video_frames
from .lineup import set_threads
from .report import figure, run_metadata, save_figure, write_json

GIB = 1024**3
BASE_ONLY = "base-only"
POLICIES = (BASE_ONLY, *RESIDUAL_POLICIES)
TRAFFIC_VIDEOS = "data/traffic"
DEFAULT_SIZES = ((640, 360), (1280, 720), (1920, 1080))
Coder = Callable[[np.ndarray, float, float], tuple[dict[str, bytes], dict[str, float]]]


def _timed(call) -> tuple[Any, float]:
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {"mean_ms": 1000 * statistics.fmean(values), "max_ms": 1000 * max(values)}


def traffic_frames(shared: Path, count: int) -> tuple[list[np.ndarray], list[Path]]:
    """``count`` RGB frames from the videos of ``data/traffic`` (first frames of each, taken in turn)."""
    videos = sorted((shared / TRAFFIC_VIDEOS).glob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"no .mp4 videos in {shared / TRAFFIC_VIDEOS}")
    per_video = [read_video_frames(v, -(-count // len(videos))) for v in videos]
    frames = [f for group in zip(*per_video, strict=False) for f in group][:count]
    if len(frames) < count:
        raise ValueError(f"the videos in {shared / TRAFFIC_VIDEOS} give {len(frames)} frames, {count} needed")
    return frames, videos


def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if width < frame.shape[1]
                      else cv2.INTER_LINEAR)


def _coder(codec: ScalableCodec, store: EdgeStore, metrics: EdgeMetrics, policy: str) -> Coder:
    """What the edge codes at capture under ``policy``: the capture loop's own code, or the base layer alone."""
    if policy != BASE_ONLY:
        return CaptureLoop(None, codec, store, None, metrics, lambda: None, policy).code  # type: ignore[arg-type]

    def base_only(image: np.ndarray, base_rate: float, _residual_rate: float) -> tuple[dict, dict]:
        data, seconds = _timed(lambda: codec.encode_base(image, base_rate).data)
        return {"base": data}, {"base": seconds}

    return base_only


def _inspect(codec: ScalableCodec, store: EdgeStore, metrics: EdgeMetrics, ids: list[int]) -> dict[str, Any]:
    """HUMAN and ORIGINAL requests for each of ``ids``: the edge's answer, then the cloud's decode."""
    layers = InspectionLayers(codec, store, metrics)
    human, original = [], []
    for frame_id in ids:
        residual, edge_s = _timed(lambda f=frame_id: layers.residual(f))
        base = store.frame(frame_id).base
        _, decode_s = _timed(lambda b=base, r=residual: codec.decode_human(b, r, exact_pixels=False))
        human.append((edge_s, decode_s))
        layer, edge_s = _timed(lambda f=frame_id: layers.lossless(f))
        _, decode_s = _timed(lambda b=base, f=layer: codec.decode_original(b, f))
        original.append((edge_s, decode_s))
    return {
        quality: {"frames": len(rows), "edge": _ms([e for e, _ in rows]), "cloud_decode": _ms([d for _, d in rows]),
                  "total": _ms([e + d for e, d in rows])}
        for quality, rows in (("human", human), ("original", original))
    }


def measure_policy(codec: ScalableCodec, frames: list[np.ndarray], policy: str, base_rate: float,
                   residual_rate: float, folder: Path, inspect: int | None = None) -> dict[str, Any]:
    """Capture ``frames`` under ``policy`` into a fresh store, then inspect the first ``inspect`` of them once
    (HUMAN, ORIGINAL; None: all; base-only keeps nothing to inspect). ``frames[0]`` is the warm-up."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if len(frames) < 2:
        raise ValueError("need at least 2 frames: one warm-up and one timed")
    path = folder / f"{policy}.db"
    if path.exists():
        raise ValueError(f"{path} exists: each measurement needs a fresh store")
    folder.mkdir(parents=True, exist_ok=True)
    store = EdgeStore(path, StoreLimits(residual_bytes=64 * GIB))
    metrics = EdgeMetrics()
    code = _coder(codec, store, metrics, policy)
    code(frames[0], base_rate, residual_rate)  # warm-up
    wall, cpu, stages, ids = [], [], {}, []
    for image in frames[1:]:
        start, cpu_start = time.perf_counter(), time.process_time()
        coded, seconds = code(image, base_rate, residual_rate)
        ids.append(store.add_frame(0, base_rate, coded["base"], coded.get("residual"), coded.get("frame"),
                                   residual_rate))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        for name, value in seconds.items():
            stages.setdefault(name, []).append(value)
        for name, data in coded.items():
            stages.setdefault(f"{name}_bytes", []).append(len(data))
        store.acknowledge(ids[-1])  # the outbox drains as it would with the cloud up
    kept = (store.frame_usage().bytes + store.residual_usage().bytes) / len(ids)
    inspected = [] if policy == BASE_ONLY else ids[:inspect]
    inspection = _inspect(codec, store, metrics, inspected) if inspected else None
    store.close()
    fps, cpu_s = 1.0 / statistics.fmean(wall), statistics.fmean(cpu)
    return {
        "capture": {**_ms(wall), "fps": fps, "cpu_s_per_frame": cpu_s, "cores_busy": sum(cpu) / sum(wall),
                    "fps_per_core": 1.0 / cpu_s if cpu_s > 0 else None},
        "stages_ms": {k: 1000 * statistics.fmean(v) for k, v in stages.items() if not k.endswith("_bytes")},
        "bytes_per_frame": {k.removesuffix("_bytes"): statistics.fmean(v) for k, v in stages.items()
                            if k.endswith("_bytes")},
        "kept_bytes_per_frame": kept,
        "storage_gb_per_hour_at_1fps": kept * 3600 / 1e9,
        "storage_gb_per_hour_at_sustained_fps": kept * fps * 3600 / 1e9,
        "inspection": inspection,
    }


def run_edge_policy(shared: Path, out: Path, weights: Path | None, mode: str, sizes: Sequence[tuple[int, int]],
                    frames: int, base_rate: float, residual_rate: float, threads: int, command: str,
                    inspect: int | None = None) -> list[Path]:
    """Run the benchmark; returns the JSON and PNG files written."""
    if frames < 1 or (inspect is not None and inspect < 0):
        raise ValueError(f"--frames must be at least 1 and --inspect at least 0, got {frames} and {inspect}")
    set_threads(threads)
    codec = ScalableCodec.from_weights(weights, mode=mode)
    video, videos = traffic_frames(shared, frames + 1)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="icmh-edge-bench-") as tmp:
        for width, height in sizes:
            resized = [resize(f, width, height) for f in video]
            key = f"{width}x{height}"
            results[key] = {}
            for policy in POLICIES:
                print(f"edge {key} {policy}", flush=True)
                results[key][policy] = measure_policy(codec, resized, policy, base_rate, residual_rate,
                                                      Path(tmp) / key, inspect)
    payload = {
        "benchmark": "edge",
        "meta": run_metadata(command, frames, threads, {
            "videos": [str(v) for v in videos], "mode": mode, "base_rate": base_rate,
            "residual_rate": residual_rate, "inspect": inspect,
            "weights": {"base": codec.base.model_id, "residual": codec.residual_identity[0]},
        }),
        "protocol": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        "results": results,
    }
    written = [write_json(out, "edge", payload)]
    written.append(_plot(results, out, mode))
    return written


def _plot(results: dict[str, dict[str, Any]], out: Path, mode: str) -> Path:
    fig, axes = figure(4, f"Edge throughput per camera resolution ({mode} residual; lazy: coded on request)")
    sizes = list(results)
    x = np.arange(len(sizes))
    width = 0.8 / len(POLICIES)

    def human_ms(r: dict) -> float:
        return r["inspection"]["human"]["total"]["mean_ms"] if r["inspection"] else float("nan")

    panels = (
        ("sustained capture fps", lambda r: r["capture"]["fps"]),
        ("CPU seconds per frame (all threads)", lambda r: r["capture"]["cpu_s_per_frame"]),
        ("inspection store, GB per hour at 1 fps", lambda r: r["storage_gb_per_hour_at_1fps"]),
        ("HUMAN inspection latency, ms (edge + cloud decode)", human_ms),
    )
    for ax, (label, value) in zip(axes, panels, strict=True):
        for i, policy in enumerate(POLICIES):
            values = [value(results[s][policy]) for s in sizes]
            bars = ax.bar(x + (i - (len(POLICIES) - 1) / 2) * width, values, width, label=policy)
            ax.bar_label(bars, [f"{v:.3g}" if math.isfinite(v) else "" for v in values], fontsize=7)
        ax.set_xticks(x, sizes)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out, "edge")
