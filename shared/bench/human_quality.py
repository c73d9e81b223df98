"""Human-quality benchmark: PSNR (RGB) and MS-SSIM vs bits per pixel on Kodak.

Curves: the SA-ICM base alone (machine image), PR-ICMH and FR-ICMH with the base fixed at one
rate and the residual swept (total = base + residual, and the residual layer alone, as in
Fig. 6 of Tatsumi et al.), the single-layer reference and the classical codecs; BD-rate of
every curve (total rate) against WebP and JPEG.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from pytorch_msssim import ms_ssim

from shared.service.images import psnr

from .curves import Evaluate, bd_rate_table, measure_curve
from .datasets import KODAK, list_images, read_rgb
from .lineup import BenchOptions, build_lineup, set_threads
from .report import figure, plot_rate_curves, run_metadata, save_figure, write_json

HUMAN_CODECS = ("sa-icm", "pr-icmh", "fr-icmh", "single")
RESIDUAL_CODECS = ("pr-icmh", "fr-icmh")
ANCHORS = ("webp", "jpeg")
METRICS = {"psnr": "PSNR RGB (dB)", "ms_ssim": "MS-SSIM"}



def msssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM (pytorch_msssim, 5 scales, data range 255) of two uint8 RGB images."""
    def to_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()

    with torch.no_grad():
        return float(ms_ssim(to_tensor(reference), to_tensor(decoded), data_range=255.0))


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


def run_human(options: BenchOptions, base_rate: float) -> list[Path]:
    """Run the benchmark on Kodak; returns the JSON and PNG files written."""
    set_threads(options.threads)
    lineup = build_lineup(options, HUMAN_CODECS, base_rate)
    paths = list_images(options.shared / KODAK, options.limit)
    evaluate = quality_evaluator(paths)
    curves = {s.name: measure_curve(s, paths, evaluate, "human kodak") for s in lineup.sweeps}
    name = "human_kodak"
    payload = {
        "benchmark": "human",
        "dataset": "kodak",
        "meta": run_metadata(options.command, len(paths), options.threads, {
            "weights": lineup.learned.describe(), "images": str(options.shared / KODAK),
        }),
        "metric": "mean over images of per-image PSNR (RGB, 8 bit) and MS-SSIM (pytorch_msssim, data range 255)",
        "residual_base_rate": base_rate,
        "curves": curves,
        "bd_rate": {
            "method": options.bd_method,
            "definition": "rate change (%) of the row's codec (total bpp) against the anchor at equal quality; "
                          "negative = fewer bits",
            **{m: bd_rate_table(curves, m, ANCHORS, list(curves), options.bd_method) for m in METRICS},
        },
        "skipped": lineup.skipped,
    }
    written = [write_json(options.out, name, payload)]
    fig, axes = figure(len(METRICS), f"Kodak: human-oriented quality ({len(paths)} images)")
    residual_rates = {n: "residual_bpp" for n in RESIDUAL_CODECS}
    for ax, (metric, label) in zip(axes, METRICS.items(), strict=True):
        plot_rate_curves(ax, curves, metric, label, layer_rates=residual_rates)
    written.append(save_figure(fig, options.out, name))
    return written
