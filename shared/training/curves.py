"""Plot of a training run's curves (log.csv and val.csv) to curves.png."""

from __future__ import annotations

import csv
from pathlib import Path


def _read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def plot_training_curves(run_dir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log, val = _read(run_dir / "log.csv"), _read(run_dir / "val.csv")
    if not log:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [int(r["step"]) for r in log]
    axes[0].plot(steps, [float(r["loss"]) for r in log], lw=0.6)
    axes[0].set(title="training loss (random rate per sample)", xlabel="step", yscale="log")
    axes[1].plot(steps, [float(r["bpp"]) for r in log], lw=0.6, label="bpp")
    axes[1].set(title="training rate (bpp, estimated)", xlabel="step")
    if val:
        vsteps = [int(r["step"]) for r in val]
        for rate in ("0.0", "0.5", "1.0"):
            axes[2].plot(vsteps, [float(r[f"psnr@{rate}"]) for r in val], marker="o", label=f"R={rate}")
            held_bpp = [float(r[f"bpp@{rate}"]) for r in val]
            axes[1].plot(vsteps, held_bpp, marker="o", ls="--", label=f"held-out R={rate}")
        axes[2].set(title="held-out PSNR (real bitstreams)", xlabel="step", ylabel="dB")
        axes[2].legend()
    axes[1].legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
