"""Image fidelity metrics of every job that scores decoded images (training validation, benchmarks, the demo)."""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images of equal shape (inf when equal)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def msssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM (pytorch_msssim, 5 scales, data range 255) of two uint8 RGB images (needs the bench extra)."""
    import torch
    from pytorch_msssim import ms_ssim

    def to_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()

    with torch.no_grad():
        return float(ms_ssim(to_tensor(reference), to_tensor(decoded), data_range=255.0))
