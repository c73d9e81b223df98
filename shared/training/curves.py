"""Plots of training runs: one run's curves (log.csv, val.csv) to curves.png, and the detector-based
validation of several runs side by side (``python -m icmh.training.curves OUT.png NAME=RUN_DIR ...``)."""

from __future__ import annotations

import csv
import sys
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
    detection = bool(val) and "detection" in val[0]
    fig, axes = plt.subplots(1, 4 if detection else 3, figsize=(20 if detection else 15, 4))
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
    if detection:
        _plot_detection(axes[3], run_dir.name, val)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _plot_detection(ax, name: str, val: list[dict[str, str]]) -> None:  # noqa: ANN001 - matplotlib Axes
    ax.plot([int(r["step"]) for r in val], [float(r["detection"]) for r in val], marker="o", label=name)
    ax.set(title="detection fidelity at 0.1 / 0.2 bpp (held-out)", xlabel="step", ylabel="mAP50-95 vs originals")
    ax.legend()


def compare_detection(runs: dict[str, Path], out: Path) -> Path:
    """Detection fidelity over training of several base runs, and each run's last rate-accuracy points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_rate) = plt.subplots(1, 2, figsize=(12, 4))
    for name, run_dir in runs.items():
        val = [r for r in _read(run_dir / "val.csv") if "detection" in r]
        if not val:
            raise ValueError(f"{run_dir}/val.csv has no detection columns (train with --detector)")
        _plot_detection(by_step, name, val)
        rates = sorted(k.split("@")[1] for k in val[-1] if k.startswith("det_bpp@"))
        by_rate.plot([float(val[-1][f"det_bpp@{r}"]) for r in rates], [float(val[-1][f"det_map@{r}"]) for r in rates],
                     marker="o", label=f"{name} (step {val[-1]['step']})")
    by_rate.set(title="last validation: rate vs detection fidelity", xlabel="bpp", ylabel="mAP50-95 vs originals")
    by_rate.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m icmh.training.curves OUT.png NAME=RUN_DIR [NAME=RUN_DIR ...]")
    pairs = dict(arg.split("=", 1) for arg in sys.argv[2:])
    print(compare_detection({k: Path(v) for k, v in pairs.items()}, Path(sys.argv[1])))
