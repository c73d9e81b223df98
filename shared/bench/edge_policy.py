"""Edge residual policies, lazy vs eager: sustained capture fps, storage per hour, inspection latency.

Per frame size and policy, the first ``frames`` frames of the street camera video (resized) go
through the edge's own capture code (:meth:`icmh.edge.capture.CaptureLoop.code`) into a real
:class:`icmh.edge.store.EdgeStore` in a temporary folder. Capture time = coding + the store's
SQLite transaction; sustained fps = 1 / its mean (one more frame first, untimed, as a warm-up).
Storage = bytes the inspection store keeps per frame (kept frame + its base layer, + the residual
layer under eager), and per hour at 1 fps and at the sustained fps. Inspection latency = the edge's
answer to a layer request (:class:`icmh.edge.layers.InspectionLayers`: a store read, or coding the
residual under lazy) plus the cloud's exact decode of the frame; network time is not included.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from icmh.codec.api import ScalableCodec
from icmh.edge.capture import RESIDUAL_POLICIES, CaptureLoop
from icmh.edge.layers import InspectionLayers
from icmh.edge.metrics import EdgeMetrics
from icmh.edge.store import EdgeStore, StoreLimits

from .datasets import TRAFFIC_VIDEO, read_video_frames
from .lineup import set_threads
from .report import figure, run_metadata, save_figure, write_json

GIB = 1024**3


def _timed(call) -> tuple[Any, float]:
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {"mean_ms": 1000 * statistics.fmean(values), "max_ms": 1000 * max(values)}


def measure_policy(codec: ScalableCodec, frames: list[np.ndarray], policy: str, base_rate: float,
                   residual_rate: float, folder: Path) -> dict[str, Any]:
    """Capture ``frames`` under ``policy`` into a fresh store, then inspect each one once (HUMAN, ORIGINAL)."""
    store = EdgeStore(folder / f"{policy}.db", StoreLimits(residual_bytes=64 * GIB))
    metrics = EdgeMetrics()
    loop = CaptureLoop(None, codec, store, None, metrics, lambda: None, policy)  # type: ignore[arg-type]
    layers = InspectionLayers(codec, store, metrics)
    loop.code(frames[0], base_rate, residual_rate)  # warm-up
    capture, stages, ids = [], {}, []
    for image in frames[1:]:
        start = time.perf_counter()
        coded, seconds = loop.code(image, base_rate, residual_rate)
        ids.append(store.add_frame(0, base_rate, coded["base"], coded.get("residual"), coded["frame"], residual_rate))
        capture.append(time.perf_counter() - start)
        for name, value in seconds.items():
            stages.setdefault(name, []).append(value)
        for name, data in coded.items():
            stages.setdefault(f"{name}_bytes", []).append(len(data))
        store.acknowledge(ids[-1])  # the outbox drains as it would with the cloud up
    kept = (store.frame_usage().bytes + store.residual_usage().bytes) / len(ids)
    human, original = [], []
    for frame_id in ids:
        residual, edge_s = _timed(lambda f=frame_id: layers.residual(f))
        base = store.frame(frame_id).base
        _, decode_s = _timed(lambda b=base, r=residual: codec.decode_human(b, r))
        human.append((edge_s, decode_s))
        layer, edge_s = _timed(lambda f=frame_id: layers.lossless(f))
        _, decode_s = _timed(lambda b=base, f=layer: codec.decode_original(b, f))
        original.append((edge_s, decode_s))
    store.close()
    fps = 1.0 / statistics.fmean(capture)
    return {
        "capture": {**_ms(capture), "fps": fps},
        "stages_ms": {k: 1000 * statistics.fmean(v) for k, v in stages.items() if not k.endswith("_bytes")},
        "bytes_per_frame": {k.removesuffix("_bytes"): statistics.fmean(v) for k, v in stages.items()
                            if k.endswith("_bytes")},
        "kept_bytes_per_frame": kept,
        "storage_gb_per_hour_at_1fps": kept * 3600 / 1e9,
        "storage_gb_per_hour_at_sustained_fps": kept * fps * 3600 / 1e9,
        "inspection": {
            quality: {"edge": _ms([e for e, _ in rows]), "cloud_decode": _ms([d for _, d in rows]),
                      "total": _ms([e + d for e, d in rows])}
            for quality, rows in (("human", human), ("original", original))
        },
    }


def run_edge_policy(shared: Path, out: Path, weights: Path | None, mode: str, sizes: Sequence[tuple[int, int]],
                    frames: int, base_rate: float, residual_rate: float, threads: int, command: str) -> list[Path]:
    """Run the benchmark; returns the JSON and PNG files written."""
    set_threads(threads)
    codec = ScalableCodec.from_weights(weights, mode=mode)
    video = read_video_frames(shared / TRAFFIC_VIDEO, frames + 1)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="icmh-edge-bench-") as tmp:
        for width, height in sizes:
            resized = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA if width < f.shape[1]
                                  else cv2.INTER_LINEAR) for f in video]
            key = f"{width}x{height}"
            results[key] = {}
            for policy in RESIDUAL_POLICIES:
                print(f"edge {key} {policy}", flush=True)
                results[key][policy] = measure_policy(codec, resized, policy, base_rate, residual_rate, Path(tmp))
    payload = {
        "benchmark": "edge",
        "meta": run_metadata(command, frames, threads, {
            "video": str(shared / TRAFFIC_VIDEO), "mode": mode, "base_rate": base_rate,
            "residual_rate": residual_rate,
            "weights": {"base": codec.base.model_id, "residual": codec.residual_identity[0]},
        }),
        "protocol": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        "results": results,
    }
    written = [write_json(out, "edge", payload)]
    written.append(_plot(results, out))
    return written


def _plot(results: dict[str, dict[str, Any]], out: Path) -> Path:
    fig, axes = figure(3, "Edge residual policies (lazy: residual coded on request)")
    sizes = list(results)
    x = np.arange(len(sizes))
    width = 0.38
    panels = (
        ("sustained capture fps", lambda r: r["capture"]["fps"]),
        ("inspection store, GB per hour at 1 fps", lambda r: r["storage_gb_per_hour_at_1fps"]),
        ("HUMAN inspection latency, ms (edge + cloud decode)", lambda r: r["inspection"]["human"]["total"]["mean_ms"]),
    )
    for ax, (label, value) in zip(axes, panels, strict=True):
        for i, policy in enumerate(RESIDUAL_POLICIES):
            values = [value(results[s][policy]) for s in sizes]
            bars = ax.bar(x + (i - 0.5) * width, values, width, label=policy)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(x, sizes)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out, "edge")
