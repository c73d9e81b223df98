"""MAC counting of the speed report (icmh.bench.macs) against counts worked out by hand."""

from __future__ import annotations

import torch
from torch import nn

from icmh.bench.macs import DECODER, ENCODER, NETWORKS, count_macs, model_macs, registry_macs
from icmh.codec.models import MODEL_REGISTRY, build_model


def test_one_conv2d() -> None:
    conv = nn.Conv2d(3, 8, 5, stride=2, padding=2)  # 32x32 -> 16x16: 256 outputs x 8 channels x 3 x 25 taps
    assert count_macs(conv, torch.zeros(1, 3, 32, 32)) == {"": 16 * 16 * 8 * 3 * 25}


def test_transposed_grouped_linear_and_repeated_layers() -> None:
    net = nn.Sequential(
        nn.ConvTranspose2d(4, 2, 5, stride=2, padding=2, output_padding=1),  # 8x8x4 inputs -> 2 x 25 each
        nn.Conv2d(2, 4, 3, padding=1, groups=2),  # 16x16x4 outputs x 1 input channel x 9
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 10),
    )
    assert count_macs(net, torch.zeros(1, 4, 8, 8)) == {"0": 8 * 8 * 4 * 2 * 25, "1": 16 * 16 * 4 * 9,
                                                       "3": 10 * 1024}
    twice = nn.Conv2d(1, 1, 1)
    assert count_macs(nn.Sequential(twice, twice), torch.zeros(2, 1, 4, 4)) == {"0": 2 * 2 * 16}


def test_networks_of_a_registered_codec() -> None:
    model = build_model("sa-icm-tiny").train()
    macs = model_macs(model)
    assert model.training  # left as it was
    # g_a: 5x5 stride-2 convs 3->8, 8->8, 8->8, 8->40, outputs at 1/4, 1/16, 1/64, 1/256 of the pixels
    assert macs["analysis"] == 8 * 3 * 25 / 4 + 8 * 8 * 25 / 16 + 8 * 8 * 25 / 64 + 40 * 8 * 25 / 256
    # g_s mirrors it with transposed convs, counted on their inputs: 40->8 at 1/256, 8->8 at 1/64, 1/16, 8->3 at 1/4
    assert macs["synthesis"] == 40 * 8 * 25 / 256 + 8 * 8 * 25 / 64 + 8 * 8 * 25 / 16 + 8 * 3 * 25 / 4
    # h_a: 3x3 conv 40->8 at 1/256, then 5x5 stride-2 convs 8->8 at 1/1024 and 1/4096
    assert macs["hyper_analysis"] == 8 * 40 * 9 / 256 + 8 * 8 * 25 / 1024 + 8 * 8 * 25 / 4096
    assert set(macs) == {*NETWORKS, "encoder", "decoder"}
    optional = ("machine_context", "spatial_context")
    assert all(macs[n] > 0 for n in NETWORKS if n not in optional) and not any(macs[n] for n in optional)
    # the conditional-entropy residual codec's c(ŷ_m): 3x3 convs 40->8 and 8->8 at 1/256 of the pixels
    assert model_macs(build_model("pr-icmh-ce-tiny"))["machine_context"] == (8 * 40 * 9 + 8 * 8 * 9) / 256
    # the checkerboard slices' context: a 5x5 conv 8->8 per slice over the whole latent (masked taps included),
    # once per decode (the anchors' context is zero)
    assert model_macs(build_model("pr-icmh-cb-tiny"))["spatial_context"] == 3 * 8 * 8 * 25 / 256
    assert macs["encoder"] == sum(macs[n] for n in ENCODER) and macs["decoder"] == sum(macs[n] for n in DECODER)
    assert model_macs(model, (64, 192)) == macs  # per pixel, whatever the (aligned) size


def test_registry_and_random_stream() -> None:
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    table = registry_macs(["fr-icmh-tiny", "pr-icmh-tiny"])
    assert torch.equal(torch.rand(1), expected)  # building the models took nothing from the caller's stream
    fr, pr = table["fr-icmh-tiny"], table["pr-icmh-tiny"]
    assert fr["analysis"] == pr["analysis"]  # same 24-channel analysis; FR's synthesis takes all 40 channels
    assert fr["synthesis"] > pr["synthesis"]
    assert set(registry_macs()) == set(MODEL_REGISTRY)
