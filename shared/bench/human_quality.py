"""Human-quality benchmark: PSNR (RGB) and MS-SSIM vs bits per pixel on Kodak or traffic-camera frames.

Curves: the SA-ICM base alone (machine image), PR-ICMH, FR-ICMH and the classical AVIF residual
(``pr-avif``: x - x̂_m + 128 coded by AVIF, R -> quality) with the base fixed at one rate and the
residual swept (total = base + residual, and the residual layer alone, as in Fig. 6 of Tatsumi
et al.), the single-layer reference and the classical codecs; BD-rate of
every curve (total rate) against WebP and JPEG.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from icmh.metrics import msssim, psnr

from ..media import read_rgb
from .curves import Evaluate, bd_rate_table, measure_curve
from .datasets import KODAK, TRAFFIC_CAMS, list_images, traffic_test_frames
from .lineup import BenchOptions, build_lineup, set_threads
from .report import figure, plot_rate_curves, run_metadata, save_figure, write_json

HUMAN_CODECS = ("sa-icm", "pr-icmh", "pr-icmh-explicit", "pr-icmh-small", "fr-icmh", "pr-avif", "single")
RESIDUAL_CODECS = ("pr-icmh", "pr-icmh-explicit", "pr-icmh-small", "fr-icmh", "pr-avif")
HUMAN_DATASETS = ("kodak", TRAFFIC_CAMS)
ANCHORS = ("webp", "jpeg")
#: the BD-rate tables' anchors: the classical codecs, and the single-layer reference (what scalability costs)
BD_ANCHORS = (*ANCHORS, "single")
#: total bpp over which the human layer is judged against the classical codecs (issue 8: "over 0.3-1.5 bpp total")
JUDGED_RATES = (0.3, 1.5)
METRICS = {"psnr": "PSNR RGB (dB)", "ms_ssim": "MS-SSIM"}



def quality_evaluator(paths: list[Path]) -> Evaluate:
    """Mean PSNR and MS-SSIM of decoded images against the originals (read once, then kept)."""
    references: dict[int, np.ndarray] = {}

    def evaluate(decoded: Iterator[tuple[int, np.ndarray]]) -> dict[str, float]:
        scores: dict[str, list[float]] = {"psnr": [], "ms_ssim": []}
        for index, image in decoded:
            if index not in references:
                references[index] = read_rgb(paths[index])
            reference = references[index]
            scores["psnr"].append(psnr(reference, image))
            scores["ms_ssim"].append(msssim(reference, image))
        return {k: float(np.mean(v)) for k, v in scores.items()}

    return evaluate


def dataset_images(options: BenchOptions, dataset: str, folder: Path) -> tuple[list[Path], str]:
    """Image files of ``dataset`` (traffic test frames are written as PNG into ``folder``) and their source."""
    if dataset == "kodak":
        return list_images(options.shared / KODAK, options.limit), str(options.shared / KODAK)
    if dataset != TRAFFIC_CAMS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {HUMAN_DATASETS}")
    frames = traffic_test_frames(options.shared)
    if options.limit:  # spread the frames over both videos
        frames = [frames[round(i * (len(frames) - 1) / max(options.limit - 1, 1))] for i in range(options.limit)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, image in frames:
        path = folder / (key.replace("/", "_").replace("#", "_") + ".png")
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths, "test frames of ../shared/data/traffic/*.mp4 (shared/splits.py)"


def run_human(options: BenchOptions, base_rate: float, dataset: str = "kodak") -> list[Path]:
    """Run the benchmark on ``dataset``; returns the JSON and PNG files written."""
    set_threads(options.threads)
    lineup = build_lineup(options, HUMAN_CODECS, base_rate)
    with tempfile.TemporaryDirectory(prefix="icmh-human-") as tmp:
        paths, source = dataset_images(options, dataset, Path(tmp))
        evaluate = quality_evaluator(paths)
        curves = {s.name: measure_curve(s, paths, evaluate, f"human {dataset}") for s in lineup.sweeps}
    name = f"human_{dataset}"
    payload = {
        "benchmark": "human",
        "dataset": dataset,
        "meta": run_metadata(options.command, len(paths), options.threads, {
            "weights": lineup.learned.describe(), "images": source,
        }),
        "metric": "mean over images of per-image PSNR (RGB, 8 bit) and MS-SSIM (pytorch_msssim, data range 255)",
        "residual_base_rate": base_rate,
        "curves": curves,
        "bd_rate": {
            "method": options.bd_method,
            "definition": "rate change (%) of the row's codec (total bpp) against the anchor at equal quality; "
                          "negative = fewer bits",
            **{m: bd_rate_table(curves, m, BD_ANCHORS, list(curves), options.bd_method) for m in METRICS},
        },
        "bd_rate_judged_rates": {
            "bpp": list(JUDGED_RATES),
            "definition": "as bd_rate, on the qualities both curves reach between these total bpp",
            **{m: bd_rate_table(curves, m, BD_ANCHORS, list(curves), options.bd_method, rate_window=JUDGED_RATES)
               for m in METRICS},
        },
        "skipped": lineup.skipped,
    }
    written = [write_json(options.out, name, payload)]
    title = "Kodak" if dataset == "kodak" else "Traffic cameras"
    fig, axes = figure(len(METRICS), f"{title}: human-oriented quality ({len(paths)} images)")
    residual_rates = {n: "residual_bpp" for n in RESIDUAL_CODECS}
    # the rate axis spans the classical anchors' sweep (a near-lossless residual point would flatten every curve)
    anchor_rates = [p["bpp"] for a in ANCHORS if a in curves for p in curves[a]["points"]]
    anchor_span = 1.15 * max(anchor_rates) if anchor_rates else None
    for ax, (metric, label) in zip(axes, METRICS.items(), strict=True):
        plot_rate_curves(ax, curves, metric, label, layer_rates=residual_rates, max_rate=anchor_span, legend_loc=None)
    # one legend below both panels: inside either it hides the curves it names
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=3,
               fontsize=8)
    written.append(save_figure(fig, options.out, name))
    return written
