"""Analysis, synthesis and hyper transforms of the channel-wise autoregressive codecs.

Layout follows Minnen & Singh, "Channel-wise autoregressive entropy models for
learned image compression" (ICIP 2020), the entropy model SA-ICM (Shindo et al.,
ICIP 2024) and the residual codecs of Tatsumi et al. build on, scaled down to
run on two CPU cores. Everything the decoder computes uses the exact layers of
:mod:`icmh.codec.exact`; only the encoder-side analysis transforms are plain
float convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from compressai.layers import GDN
from torch import Tensor

from .exact import ExactCheckerboardConv2d, ExactConv2d, ExactConvTranspose2d


def conv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def exact_conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> ExactConv2d:
    return ExactConv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def exact_deconv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> ExactConvTranspose2d:
    return ExactConvTranspose2d(
        cin, cout, kernel, stride=stride, padding=kernel // 2, output_padding=stride - 1
    )


def analysis_transform(in_ch: int, widths: Sequence[int], latent: int, gdn: bool = False) -> nn.Sequential:
    """g_a: image (or pixel residual) -> latent at 1/16 resolution; ``widths`` of the three hidden stages.

    ``gdn`` uses Ballé's GDN (Ballé et al., ICLR 2017) instead of ReLU; the encoder runs in float, so it
    does not touch the exactness of decoding.
    """
    layers: list[nn.Module] = []
    for cin, cout in zip((in_ch, *widths[:-1]), widths, strict=True):
        layers += [conv(cin, cout), GDN(cout) if gdn else nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, conv(widths[-1], latent))


def synthesis_transform(latent: int, widths: Sequence[int], out_ch: int) -> nn.Sequential:
    """g_s: latent -> image at 16x the latent resolution (exact arithmetic); ``widths`` from coarse to fine."""
    layers: list[nn.Module] = []
    for cin, cout in zip((latent, *widths[:-1]), widths, strict=True):
        layers += [exact_deconv(cin, cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, exact_deconv(widths[-1], out_ch))


def hyper_analysis(latent: int, hyper: int) -> nn.Sequential:
    """h_a: latent -> hyper-latent z at 1/64 resolution."""
    return nn.Sequential(
        conv(latent, hyper, 3, 1), nn.ReLU(inplace=True),
        conv(hyper, hyper), nn.ReLU(inplace=True),
        conv(hyper, hyper),
    )


def _with_block(layers: nn.Sequential, channels: int, block: int) -> nn.Sequential:
    """``layers`` followed, with ``block`` > 0, by a :class:`ResidualBlock` of that hidden width (appended, so the
    existing layers keep their state-dict names; the block starts as the identity)."""
    if block:
        layers.append(ResidualBlock(channels, block))
    return layers


def hyper_synthesis(hyper: int, side: int, block: int = 0) -> nn.Sequential:
    """h_s: decoded z -> side parameters for the slice entropy models (exact); ``block``: see :func:`_with_block`."""
    return _with_block(nn.Sequential(
        exact_deconv(hyper, hyper), nn.ReLU(inplace=True),
        exact_deconv(hyper, side), nn.ReLU(inplace=True),
        exact_conv(side, side),
    ), side, block)


def channel_context(prev_channels: int, width: int, block: int = 0) -> nn.Sequential:
    """Features of the already decoded slices (the 'channel context' of Ch-ARM); ``block``: see :func:`_with_block`."""
    return _with_block(nn.Sequential(
        exact_conv(prev_channels, width), nn.ReLU(inplace=True),
        exact_conv(width, width),
    ), width, block)


def machine_context(latent: int, width: int, block: int = 0) -> nn.Sequential:
    """Features of the decoded base latent ŷ_m (1/16 resolution) for the residual's entropy model (exact);
    ``block``: see :func:`_with_block`."""
    return _with_block(nn.Sequential(
        exact_conv(latent, width), nn.ReLU(inplace=True),
        exact_conv(width, width),
    ), width, block)


def checkerboard_context(slice_channels: int, width: int, kernel: int = 5) -> ExactCheckerboardConv2d:
    """Spatial context of one slice: features of its decoded anchors at the non-anchor positions (the checkerboard
    context of He et al., CVPR 2021, per channel group as in ELIC, He et al., CVPR 2022; exact)."""
    return ExactCheckerboardConv2d(slice_channels, width, kernel, padding=kernel // 2)


def entropy_parameters(in_channels: int, slice_channels: int, extra_channels: int = 0) -> nn.Sequential:
    """1x1 network giving (scales, means) of one slice from its context.

    ``extra_channels`` more inputs (the machine context) widen only the first layer, appended after the others:
    a codec warm-started from one without them keeps every weight's shape but that one's input width.
    """
    hidden = max(2 * slice_channels, in_channels // 2)
    return nn.Sequential(
        exact_conv(in_channels + extra_channels, hidden, 1), nn.ReLU(inplace=True),
        exact_conv(hidden, hidden, 1), nn.ReLU(inplace=True),
        exact_conv(hidden, 2 * slice_channels, 1),
    )


class ResidualBlock(nn.Module):
    """``h + conv(ReLU(conv(h)))``, two exact 3x3 convolutions (He et al., CVPR 2016; the synthesis of Cheng et al.,
    CVPR 2020 has such blocks between its upsampling stages). The second convolution starts at zero, so a block
    inserted into a trained synthesis is the identity until training moves it."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(exact_conv(channels, hidden), nn.ReLU(inplace=True), exact_conv(hidden, channels))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.body(h).add_(h)  # in place on the fresh output: no third full-size tensor


class ConditionalSynthesis(nn.Module):
    """g_s of the conditional residual codec: a plain synthesis (``plain``), with the machine image x̂_m joined in.

    ``x̂_d = r + refine([r, x̂_m, f])`` with ``[r, f] = plain(ŷ_d)`` whose last hidden (half-resolution) features
    receive ``machine_half(x̂_m)``; ``r`` has the 3 pixel channels, ``f`` the ``features`` full-resolution feature
    channels that the last layer of ``plain`` gives beyond them (0: none). The layers of ``plain`` keep their names
    (``0`` .. ``2k``), so an explicit PR-ICMH checkpoint loads into it; ``machine_half`` and the last layer of
    ``refine`` start at zero, which makes the conditional codec start as exactly that PR-ICMH. ``block_widths``
    (coarse to fine, one entry per hidden stage: a hidden width, 0 for none, or a tuple of widths for several
    blocks) put :class:`ResidualBlock` s after a stage (after ``machine_half`` joins the last one), and
    ``latent_block`` one on ŷ_d before the first layer: starting as the identity, they deepen a trained synthesis
    without changing what it decodes; so do ``features`` added to a trained one (``refine`` ignores them until
    training moves its zero weights). Every layer is exact (decoder side).
    """

    def __init__(
        self, plain: nn.Sequential, refine_width: int = 24, block_widths: Sequence[int | Sequence[int]] = (),
        latent_block: int = 0, features: int = 0,
    ) -> None:
        super().__init__()
        self.layers = len(plain)
        for name, layer in plain.named_children():
            self.add_module(name, layer)
        stages = [layer.out_channels for layer in plain if isinstance(layer, nn.ConvTranspose2d)][:-1]
        if len(block_widths) > len(stages):
            raise ValueError(f"{len(block_widths)} block widths for {len(stages)} hidden stages")
        self.blocks = nn.ModuleDict()
        self.stage_blocks: dict[int, list[str]] = {}  # names of each stage's blocks, in order
        for i, hidden in enumerate(block_widths):
            for j, width in enumerate((hidden,) if isinstance(hidden, int) else hidden):
                if width:  # the first block of stage i is named "i" (as before several blocks per stage existed)
                    name = f"{i}_{j}" if j else str(i)
                    self.blocks[name] = ResidualBlock(stages[i], width)
                    self.stage_blocks.setdefault(i, []).append(name)
        self.latent_block = ResidualBlock(plain[0].in_channels, latent_block) if latent_block else None
        last = plain[-1]
        self.features = features
        pixels = last.out_channels - features
        self.machine_half = exact_conv(3, last.in_channels, 5, stride=2)
        self.refine = nn.Sequential(
            exact_conv(last.out_channels + 3, refine_width), nn.ReLU(inplace=True),
            exact_conv(refine_width, pixels),
        )
        for zero in (self.machine_half, self.refine[-1]):
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    def forward(self, y: Tensor, x_m: Tensor) -> Tensor:
        h = y if self.latent_block is None else self.latent_block(y)
        for i in range(self.layers - 1):
            h = self._modules[str(i)](h)
            if i % 2 == 0:  # a transposed convolution; its ReLU follows
                continue
            if i == self.layers - 2:
                h = self.machine_half(x_m).add_(h)
            for name in self.stage_blocks.get(i // 2, ()):
                h = self.blocks[name](h)
        out = self._modules[str(self.layers - 1)](h)
        if not self.features:
            return self.refine(torch.cat([out, x_m], dim=1)).add_(out)
        r, f = out[:, : -self.features], out[:, -self.features :]
        return self.refine(torch.cat([r, x_m, f], dim=1)).add_(r)
