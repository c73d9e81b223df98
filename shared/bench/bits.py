"""Where a PR residual layer's bits go (``icmh bench bits``): per slice, anchors against non-anchors, the
hyper-latent, and what its spatial (checkerboard) context saves.

On the images of a set (default bsds500/val, the training runs' monitor), the base layer at ``--base-rate`` and
the PR layer at each rate run in eval mode, so each checkerboard slice is modelled in the coder's two passes; the
negative log2-likelihoods of the rounded symbols are their ideal code lengths (the range coder writes within ~1 %
of them: ``test_hard_rate_counts_the_bits_the_range_coder_writes``). The transforms run in float arithmetic, as in
training; the shares do not depend on it. The ablation re-runs the same images with the spatial (checkerboard)
context at zero for the non-anchors too, i.e. every symbol modelled as the anchors are (from the hyperprior, the
channel and the machine contexts): its extra bits are what the spatial context contributes. (Zeroing the channel or
machine context instead would feed the slice networks inputs they never saw in training, not "no context".)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from icmh.codec.exact import exact_arithmetic
from icmh.codec.models import ChannelARCodec, ConditionalResidualCodec, machine_side
from icmh.codec.rate import rate_to_index
from icmh.codec.weights import LAYER_FILES, SHIPPED_DIR, load_layer
from icmh.media import read_rgb
from icmh.training.data import load_training_set

from .datasets import list_images, traffic_test_frames
from .report import figure, run_metadata, save_figure, write_json

DATASETS = ("bsds500-val", "kodak", "traffic_cams")
SPATIAL_CONTEXT = "context_prediction"  # the module-path component of the checkerboard context convolutions


def load_images(shared: Path, dataset: str, limit: int | None) -> list[np.ndarray]:
    """RGB images of ``dataset`` (one of :data:`DATASETS`), the first ``limit`` of them."""
    if dataset == "bsds500-val":  # the training runs' monitor images
        return [s.image for s in load_training_set(shared, held_out=True).samples][:limit]
    if dataset == "kodak":
        return [read_rgb(p) for p in list_images(shared / "data" / "kodak", limit)]
    if dataset == "traffic_cams":
        return [image for _, image in traffic_test_frames(shared)][:limit]
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")


@contextlib.contextmanager
def switched_off(model: nn.Module, part: str) -> Iterator[int]:
    """Zero the weights and biases of every convolution under a module path containing ``part`` (its output is then
    the zero tensor the anchors get), restored on exit; yields how many layers it touched."""
    layers = [m for name, m in model.named_modules() if part in name.split(".") and isinstance(m, nn.Conv2d)]
    saved = [[p.detach().clone() for p in layer.parameters()] for layer in layers]
    try:
        with torch.no_grad():
            for layer in layers:
                for p in layer.parameters():
                    p.zero_()
        yield len(layers)
    finally:
        with torch.no_grad():
            for layer, values in zip(layers, saved, strict=True):
                for p, value in zip(layer.parameters(), values, strict=True):
                    p.copy_(value)


def base_side(base: ChannelARCodec, residual: ConditionalResidualCodec, image: np.ndarray,
              base_rate: float) -> tuple[Tensor, tuple[Tensor, ...], int]:
    """What the PR layer codes for ``image`` over the base at ``base_rate``: ``x - x̂_m``, its side inputs (x̂_m,
    ŷ_m) and the pixel count; the same at every residual rate, so computed once per image."""
    h, w = image.shape[0] // 64 * 64, image.shape[1] // 64 * 64  # whole latent positions, as the coder pads
    x = torch.from_numpy(np.ascontiguousarray(image[:h, :w])).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad(), exact_arithmetic(False):
        b = base(x, torch.tensor([rate_to_index(base_rate)]))
    x_m = b["x_hat"].clamp(0, 1)
    return x - x_m, machine_side(residual, x_m, b["y_hat"]), h * w


def symbol_bits(residual: ConditionalResidualCodec, coded: tuple[Tensor, tuple[Tensor, ...], int],
                rate: float) -> dict[str, Any]:
    """Ideal code lengths of one image's PR layer (``coded`` from :func:`base_side`): ``y`` bits per channel and
    position ``(C, H, W)``, ``z`` bits."""
    x_d, side, pixels = coded
    with torch.no_grad(), exact_arithmetic(False):
        likelihoods = residual.likelihoods(x_d, torch.tensor([rate_to_index(rate)]), *side)
    return {"y": -torch.log2(likelihoods["y"][0]), "z": float(-torch.log2(likelihoods["z"]).sum()), "pixels": pixels}


def split(bits: Sequence[dict[str, Any]], slices: int, checkerboard: bool) -> dict[str, Any]:
    """bpp and the share of every slice (its anchors and non-anchors apart with a checkerboard) and of ẑ."""
    parts: dict[str, float] = {}
    for item in bits:
        y = item["y"]
        c, h, w = y.shape
        anchors = ((torch.arange(h)[:, None] + torch.arange(w)[None]) % 2 == 0)  # CompressAI's "even" parity
        for k, part in enumerate(y.split(c // slices)):
            if checkerboard:
                parts[f"slice {k} anchors"] = parts.get(f"slice {k} anchors", 0.0) + float(part[:, anchors].sum())
                parts[f"slice {k} non-anchors"] = parts.get(f"slice {k} non-anchors", 0.0) + float(
                    part[:, ~anchors].sum())
            else:
                parts[f"slice {k}"] = parts.get(f"slice {k}", 0.0) + float(part.sum())
        parts["z"] = parts.get("z", 0.0) + item["z"]
    total, pixels = sum(parts.values()), sum(item["pixels"] for item in bits)
    return {"bpp": round(total / pixels, 5), "share_percent": {k: round(100 * v / total, 2) for k, v in parts.items()}}


def measure(base: ChannelARCodec, residual: ConditionalResidualCodec, images: Sequence[np.ndarray], base_rate: float,
            rates: Sequence[float]) -> dict[str, Any]:
    """The split at every rate and, with a checkerboard, the bpp without the spatial context (and its extra %)."""
    checkerboard = bool(residual.spatial_context)
    coded = [base_side(base, residual, image, base_rate) for image in images]
    rows = {}

    def bpp_split(rate: float) -> dict[str, Any]:
        return split([symbol_bits(residual, c, rate) for c in coded], residual.coded_slices, checkerboard)

    for rate in rates:
        row = bpp_split(rate)
        if checkerboard:
            with switched_off(residual, SPATIAL_CONTEXT):
                bpp = bpp_split(rate)["bpp"]
            row["without_spatial_context"] = {"bpp": bpp, "extra_percent": round(100 * (bpp / row["bpp"] - 1), 2)}
        rows[f"{rate:g}"] = row
        print(f"bits R={rate:g}: {row}", flush=True)
    return rows


def run_bits(shared: Path, out: Path, command: str, weights: Path | None, dataset: str, limit: int | None,
             base_rate: float, rates: Sequence[float], threads: int) -> list[Path]:
    torch.set_num_threads(threads)
    folder = weights or SHIPPED_DIR
    base = load_layer(folder / LAYER_FILES["base"]).model.eval()
    layer = load_layer(folder / LAYER_FILES["pr"])
    if not isinstance(layer.model, ConditionalResidualCodec):
        raise ValueError(f"{folder / LAYER_FILES['pr']} is not a conditional PR layer (pr-icmh-c*)")
    images = load_images(shared, dataset, limit)
    rows = measure(base, layer.model.eval(), images, base_rate, rates)
    payload = {
        "benchmark": "bits",
        "meta": run_metadata(command, len(images), threads, {"dataset": dataset, "base_rate": base_rate,
                                                             "architecture": layer.model_id}),
        "protocol": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        "rates": rows,
    }
    report = f"bits_{dataset.replace('-', '_')}"
    written = [write_json(out, report, payload)]
    fig, (shares, spatial) = figure(2, f"Where the PR layer's bits go ({layer.model_id}, {dataset}, "
                                       f"{len(images)} images, base R = {base_rate:g})")
    names = list(next(iter(rows.values()))["share_percent"])
    bottom = np.zeros(len(rows))
    for name in names:
        values = np.array([row["share_percent"][name] for row in rows.values()])
        shares.bar(list(rows), values, bottom=bottom, label=name)
        bottom += values
    shares.set(xlabel="PR rate R", ylabel="% of the layer's bits", title="share per slice / pass")
    shares.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    spatial.bar(list(rows), [row.get("without_spatial_context", {}).get("extra_percent", 0.0)
                             for row in rows.values()])
    spatial.set(xlabel="PR rate R", ylabel="extra bits (%)",
                title="without the spatial context (every symbol modelled as an anchor)")
    spatial.grid(True, axis="y", alpha=0.3)
    written.append(save_figure(fig, out, report))
    return written
