"""``icmh bench bits``: the PR layer's ideal code lengths match what the range coder writes, the split covers every
bit, and the spatial-context ablation changes the non-anchors' bits and restores the layer afterwards."""

from __future__ import annotations

import math

import torch

from icmh.bench.bits import SPATIAL_CONTEXT, base_side, measure, switched_off, symbol_bits
from icmh.codec.models import build_model, machine_side
from icmh.codec.rate import rate_to_index
from tests.test_codec import synthetic_photo


def test_bits_split_matches_the_coder_and_the_ablation_restores_the_layer() -> None:
    torch.manual_seed(3)
    base, residual = build_model("sa-icm-tiny").eval(), build_model("pr-icmh-cb4-tiny").eval()
    for model in (base, residual):
        model.update(force=True)
    image = synthetic_photo(256, 320)
    coded_residual = base_side(base, residual, image, 0.5)
    ideal = symbol_bits(residual, coded_residual, 0.5)
    x, q = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, torch.tensor([rate_to_index(0.5)])
    with torch.no_grad():
        coded = base.compress(x, q)
        decoded = base.decompress(coded["strings"], coded["shape"], q)
        x_m = decoded["x_hat"].clamp(0, 1)
        strings = residual.compress(x - x_m, q, *machine_side(residual, x_m, decoded["y_hat"]))["strings"]
    written = 8 * sum(len(s) for group in strings for s in group)
    assert math.isclose(written, float(ideal["y"].sum()) + ideal["z"], rel_tol=0.05, abs_tol=64 * len(strings))

    before = {k: v.clone() for k, v in residual.state_dict().items()}
    rows = measure(base, residual, [image], 0.5, [0.5])["0.5"]
    assert math.isclose(sum(rows["share_percent"].values()), 100.0, abs_tol=0.1)
    assert {f"slice {k} {p}" for k in range(4) for p in ("anchors", "non-anchors")} < set(rows["share_percent"])
    assert rows["without_spatial_context"]["bpp"] != rows["bpp"]
    with switched_off(residual, SPATIAL_CONTEXT) as touched:
        assert touched == residual.coded_slices
        without = symbol_bits(residual, coded_residual, 0.5)["y"]
    anchors = (torch.arange(without.shape[1])[:, None] + torch.arange(without.shape[2])[None]) % 2 == 0
    first = residual.slice_channels  # the first slice's anchors see no spatial context (later slices see its ŷ)
    assert torch.equal(without[:first, anchors], ideal["y"][:first, anchors])
    assert not torch.equal(without[:first, ~anchors], ideal["y"][:first, ~anchors])
    assert all(torch.equal(v, before[k]) for k, v in residual.state_dict().items())
