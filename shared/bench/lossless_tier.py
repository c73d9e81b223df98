"""Lossless evidence layer: its size against PNG and lossless WebP of the original, on Kodak and traffic frames.

Per image: the base layer at ``base_rate`` and each residual layer (PR, FR, AVIF) at R; then the
lossless layer by both methods of :mod:`icmh.codec.lossless` (``webp-ll-frame``: the frame
itself; ``webp-ll-residual``: the wrapped residual to the human image of that mode), every one
decoded back and checked pixel for pixel. Anchors: PNG of the frame (OpenCV, compression 9) and
lossless WebP of the frame at three libwebp efforts (fast = the edge store's, small = the
lossless layer's, max = method 6 quality 100). Traffic frames: evenly spaced frames of both
demo videos (evaluation only, as every figure here).
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from icmh.codec import classical_residual, lossless
from icmh.codec.api import ScalableCodec
from icmh.codec.weights import LAYER_FILES, SHIPPED_DIR, load_layer

from ..media import iter_video_frames, read_rgb
from .datasets import KODAK, TRAFFIC_VIDEO, list_images
from .lineup import BenchOptions, set_threads
from .report import figure, run_metadata, save_figure, write_json

OTHER_VIDEO = "data/traffic/ozlu_road.mp4"


def webp_max(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", lossless=True, method=6, quality=100, exact=True)
    return buf.getvalue()


def anchors(image: np.ndarray) -> dict[str, int]:
    """Bytes of the frame coded losslessly by the anchors."""
    png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]
    return {"png": len(png), "webp_ll_fast": len(lossless.webp_lossless(image, "fast")),
            "webp_ll_small": len(lossless.webp_lossless(image, "small")), "webp_ll_max": len(webp_max(image))}


def codecs(weights: Path | None) -> dict[str, ScalableCodec]:
    folder = weights or SHIPPED_DIR
    base = load_layer(folder / LAYER_FILES["base"])
    out = {m: ScalableCodec(base, load_layer(folder / LAYER_FILES[m]), m) for m in ("pr", "fr")
           if (folder / LAYER_FILES[m]).exists()}
    if classical_residual.available():
        out["avif"] = ScalableCodec(base, None, "avif")
    return out


def measure(image: np.ndarray, coders: dict[str, ScalableCodec], base_rate: float, rate: float) -> dict[str, Any]:
    """Sizes (bytes) of every layer and anchor for one image; raises if a lossless decode is not exact."""
    row: dict[str, Any] = {"pixels": image.shape[0] * image.shape[1], **anchors(image)}
    any_codec = next(iter(coders.values()))
    base = any_codec.encode_base(image, base_rate)
    row["base"] = len(base.data)
    frame_layer = any_codec.encode_lossless(image, base.data)
    row["lossless_frame"] = len(frame_layer)
    checks = [any_codec.decode_original(base.data, frame_layer)]
    for mode, codec in coders.items():
        residual = codec.encode_residual(image, base, rate)
        layer = codec.encode_lossless(image, base.data, residual, lossless.RESIDUAL)
        row[f"{mode}_residual"] = len(residual)
        row[f"{mode}_lossless_residual"] = len(layer)
        checks.append(codec.decode_original(base.data, layer, residual))
    if not all(np.array_equal(c, image) for c in checks):
        raise AssertionError("a lossless layer did not reproduce its frame")
    return row


def traffic_frames(shared: Path, per_video: int) -> list[np.ndarray]:
    frames = []
    for video in (TRAFFIC_VIDEO, OTHER_VIDEO):
        frames += list(itertools.islice(iter_video_frames(shared / video), 0, 100 * per_video, 100))
    return frames


def summarise(rows: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    def bpp(key: str) -> float:
        return statistics.fmean(8 * r[key] / r["pixels"] for r in rows)

    keys = ["png", "webp_ll_fast", "webp_ll_small", "webp_ll_max", "base", "lossless_frame",
            *(f"{m}_{k}" for m in modes for k in ("residual", "lossless_residual"))]
    out: dict[str, Any] = {"images": len(rows), "mean_bpp": {k: bpp(k) for k in keys}}
    mean = out["mean_bpp"]
    out["lossless_layer_vs_png"] = mean["lossless_frame"] / mean["png"]
    out["lossless_layer_vs_webp_ll_max"] = mean["lossless_frame"] / mean["webp_ll_max"]
    out["all_layers_total_bpp"] = {
        m: {"frame_method": mean["base"] + mean[f"{m}_residual"] + mean["lossless_frame"],
            "residual_method": mean["base"] + mean[f"{m}_residual"] + mean[f"{m}_lossless_residual"]}
        for m in modes
    }
    return out


def run_lossless(options: BenchOptions, base_rate: float, per_video: int) -> list[Path]:
    set_threads(options.threads)
    coders = codecs(options.weights)
    rate = options.rates[0]
    sets = {"kodak": [read_rgb(p) for p in list_images(options.shared / KODAK, options.limit)],
            "traffic": traffic_frames(options.shared, per_video)}
    results = {}
    for name, images in sets.items():
        rows = []
        for i, image in enumerate(images):
            print(f"lossless {name} {i + 1}/{len(images)}", flush=True)
            rows.append(measure(image, coders, base_rate, rate))
        results[name] = {"summary": summarise(rows, list(coders)), "per_image": rows}
    payload = {
        "benchmark": "lossless",
        "meta": run_metadata(options.command, sum(len(v) for v in sets.values()), options.threads,
                             {"base_rate": base_rate, "residual_rate": rate, "modes": list(coders)}),
        "protocol": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        "results": results,
    }
    written = [write_json(options.out, "lossless", payload)]
    fig, axes = figure(len(results), "Lossless evidence layer vs lossless anchors (mean bits per pixel)")
    for ax, (name, result) in zip(axes, results.items(), strict=True):
        mean = result["summary"]["mean_bpp"]
        labels = ["png", "webp_ll_fast", "webp_ll_max", "lossless_frame", *(f"{m}_lossless_residual" for m in coders)]
        bars = ax.bar(range(len(labels)), [mean[k] for k in labels])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{name} ({result['summary']['images']} images)")
        ax.set_ylabel("bpp")
        ax.grid(True, axis="y", alpha=0.3)
    written.append(save_figure(fig, options.out, "lossless"))
    return written
