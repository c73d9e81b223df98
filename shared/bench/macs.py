"""Multiply-accumulates (MACs) per input pixel of every network of a codec, counted with forward hooks.

One forward pass on a small probe image (a multiple of the codecs' 64-pixel alignment, so every stage's
output is exactly 1/stride of its input and the count per pixel holds at any frame size) records, per layer:

* ``Conv2d``: output elements x in_channels / groups x kernel area;
* ``ConvTranspose2d``: input elements x out_channels / groups x kernel area (each input value is multiplied
  into a kernel-sized patch of every output channel, as ptflops and fvcore count it);
* ``Linear``: output elements x in_features;
* GDN: output elements x channels (its 1x1 normalisation convolution).

The exact layers of the decoder are subclasses of ``Conv2d`` / ``ConvTranspose2d`` and are counted as such,
whatever kernel computes them. Elementwise work (activations, gain, rounding) and range coding are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from compressai.layers import GDN
from torch import Tensor, nn

from icmh.codec.models import MODEL_REGISTRY, ChannelARCodec, FeatureResidualCodec, build_model, machine_side
from icmh.codec.rate import rate_to_index

COUNTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, GDN)
#: network -> the module-path component that names it in a ChannelARCodec
NETWORKS = {
    "analysis": "g_a", "hyper_analysis": "h_a", "hyper_synthesis": "h_s",
    "slice_context": "channel_context", "spatial_context": "context_prediction",
    "entropy_parameters": "entropy_parameters", "machine_context": "machine_context", "synthesis": "g_s",
}
#: networks each side runs: the encoder needs the side parameters and slice contexts to code the slices
ENCODER = ("analysis", "hyper_analysis", "hyper_synthesis", "slice_context", "spatial_context", "entropy_parameters",
           "machine_context")
DECODER = ("hyper_synthesis", "slice_context", "spatial_context", "entropy_parameters", "machine_context", "synthesis")
PROBE_SIZE = (128, 128)


def layer_macs(layer: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> int:
    """MACs of one call of a counted layer (see the module docstring)."""
    if isinstance(layer, nn.ConvTranspose2d):
        return inputs[0].numel() * (layer.out_channels // layer.groups) * math.prod(layer.kernel_size)
    if isinstance(layer, nn.Conv2d):
        return output.numel() * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
    if isinstance(layer, nn.Linear):
        return output.numel() * layer.in_features
    if isinstance(layer, GDN):
        return output.numel() * output.shape[1]
    raise TypeError(f"no MAC count for {type(layer).__name__}")


def count_macs(module: nn.Module, *inputs: Any) -> dict[str, int]:
    """MACs of every counted layer of ``module`` (keyed by its name in ``module``) in one ``module(*inputs)``."""
    counts: dict[str, int] = {}
    handles = []
    for name, layer in module.named_modules():
        if isinstance(layer, COUNTED):
            def hook(layer: nn.Module, args: tuple[Any, ...], output: Tensor, name: str = name) -> None:
                counts[name] = counts.get(name, 0) + layer_macs(layer, args, output)

            handles.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def network_of(name: str) -> str:
    """The network a layer of a ChannelARCodec belongs to, from its module path ("other" if none)."""
    parts = name.split(".")
    return next((network for network, part in NETWORKS.items() if part in parts), "other")


def _sum(values: dict[str, float], keys: Iterable[str]) -> float:
    return sum(values[k] for k in keys)


def model_macs(model: ChannelARCodec, size: tuple[int, int] = PROBE_SIZE) -> dict[str, float]:
    """MACs per input pixel of each network of ``model``, and of its ``encoder`` and ``decoder`` sides."""
    height, width = size
    generator = torch.Generator().manual_seed(0)
    base_latent = torch.zeros(1, model.machine_latent, height // 16, width // 16)  # ŷ_m (conditional entropy)
    args: list[Tensor] = [torch.rand(1, 3, height, width, generator=generator), torch.tensor([rate_to_index(0.5)]),
                          *machine_side(model, torch.rand(1, 3, height, width, generator=generator), base_latent)]
    if isinstance(model, FeatureResidualCodec):  # the base latent it refines
        args.append(torch.zeros(1, model.num_slices * model.slice_channels, height // 16, width // 16))
    training = model.training
    model.eval()
    try:
        counts = count_macs(model, *args)
    finally:
        model.train(training)
    per_pixel = dict.fromkeys(NETWORKS, 0.0)
    for name, macs in counts.items():
        network = network_of(name)
        per_pixel[network] = per_pixel.get(network, 0.0) + macs / (height * width)
    return {**per_pixel, "encoder": _sum(per_pixel, ENCODER), "decoder": _sum(per_pixel, DECODER)}


def registry_macs(architectures: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """:func:`model_macs` of every registered architecture (randomly initialised: counts need no weights)."""
    table = {}
    for architecture in architectures or MODEL_REGISTRY:
        with torch.random.fork_rng():  # leave the caller's random stream as it was
            table[architecture] = model_macs(build_model(architecture))
    return table
