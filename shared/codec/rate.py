"""Variable rate from one set of weights: interpolated gain / inverse-gain vectors.

Beyond the papers (which train one model per lambda): following the gain units
of Cui et al., "Asymmetric Gained Deep Image Compression With Continuous Rate
Adaptation" (CVPR 2021), the latent is multiplied channel-wise by a gain vector
before quantisation and by an inverse gain before synthesis. ``levels`` vectors
are learned for log-spaced lambdas; a rate index ``q`` in 0..255 (the byte stored
in the bitstream) interpolates linearly between neighbours. The interpolation is
done in float64 from float32 parameters, which is exact, so encoder and decoder
agree on every bit of the gains.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

RATE_STEPS = 255  # rate index q in 0..255; R = q / 255


def rate_to_index(rate: float) -> int:
    """Map a rate parameter R in [0, 1] to the stored byte q."""
    if not (0.0 <= rate <= 1.0) or math.isnan(rate):
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    return int(round(rate * RATE_STEPS))


class GainUnit(nn.Module):
    """Channel-wise gain and inverse gain for a rate index ``q`` (per sample)."""

    def __init__(self, channels: int, levels: int = 6, span: float = 4.0) -> None:
        super().__init__()
        self.levels = levels
        init = torch.exp(torch.linspace(-math.log(span), math.log(span), levels))
        self.gain = nn.Parameter(init[:, None].repeat(1, channels))
        self.inverse_gain = nn.Parameter((1.0 / init)[:, None].repeat(1, channels))

    def _interpolate(self, table: Tensor, q: Tensor) -> Tensor:
        pos = q.long() * (self.levels - 1)
        lower = torch.clamp(pos // RATE_STEPS, max=self.levels - 2)
        frac = ((pos - lower * RATE_STEPS).double() / RATE_STEPS)[:, None]
        t64 = table.double().abs()
        value = t64[lower] * (1.0 - frac) + t64[lower + 1] * frac
        return value.float()[:, :, None, None]

    def scale(self, y: Tensor, q: Tensor) -> Tensor:
        return y * self._interpolate(self.gain, q)

    def unscale(self, y_hat: Tensor, q: Tensor) -> Tensor:
        return y_hat * self._interpolate(self.inverse_gain, q)


def lambda_for_index(q: Tensor, lam_min: float, lam_max: float) -> Tensor:
    """Training lambda for rate index q: log-linear from lam_min (q=0) to lam_max (q=255)."""
    t = q.double() / RATE_STEPS
    return torch.exp(math.log(lam_min) + t * (math.log(lam_max) - math.log(lam_min))).float()
