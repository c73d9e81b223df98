"""Detector-feature distortion for the machine layer (an option beyond SA-ICM).

SA-ICM trains with a masked pixel MSE only, so what the detector needs (contrast, colour, the texture
cues of a vehicle) is kept only as far as pixel MSE happens to keep it. With ``--feature-weight`` the
base also matches the frozen detector's backbone features: the distance between the P3 (stride 8)
and P4 (stride 16) feature maps of YOLOv8's backbone on ``x̂`` and on ``x``, as in feature-space
losses of task-aware image coding for machines (e.g. Chamain et al., "End-to-end optimized image
compression for machines", 2021).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

FEATURE_LAYERS = (4, 6)  # YOLOv8 backbone: outputs of the C2f blocks at stride 8 and 16


class DetectorFeatureLoss(nn.Module):
    """Mean squared distance of the detector's backbone features, per sample (frozen detector)."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__()
        from ..detector import load_yolo

        layers = load_yolo(checkpoint).model.model
        if any(getattr(layer, "f", -1) != -1 for layer in layers[: max(FEATURE_LAYERS) + 1]):
            raise ValueError(f"{checkpoint}: backbone is not a plain chain of layers")
        self.backbone = nn.ModuleList(layers[: max(FEATURE_LAYERS) + 1]).float().eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> DetectorFeatureLoss:
        return super().train(False)  # batch-norm statistics stay the detector's

    def features(self, x: Tensor) -> list[Tensor]:
        out = []
        for index, layer in enumerate(self.backbone):
            x = layer(x)
            if index in FEATURE_LAYERS:
                out.append(x)
        return out

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        with torch.no_grad():
            targets = self.features(x)
        return sum((a - b).pow(2).flatten(1).mean(1) for a, b in zip(self.features(x_hat), targets, strict=True))
