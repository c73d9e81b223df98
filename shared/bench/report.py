"""What every benchmark run records (machine, versions, commit, command, image count) and how it is written.

Results go to ``<out>/<name>.json`` (non-finite numbers as ``null``) and ``<out>/<name>.png``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "compressai", "ultralytics", "opencv-python", "opencv-python-headless", "pillow", "numpy",
            "pytorch-msssim", "scipy")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """HEAD of the project repository, with ``+dirty`` when the work tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_metadata(command: str, image_count: int, threads: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Facts needed to reproduce or compare a run."""
    return {
        "command": command,
        "image_count": image_count,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch_threads": threads},
        "versions": package_versions(),
        **(extra or {}),
    }


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(out_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(_finite_or_none(payload), indent=2, allow_nan=False) + "\n")
    return path


def save_figure(fig: plt.Figure, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_rate_curves(
    ax: plt.Axes, curves: dict[str, dict], metric: str, ylabel: str, rate: str = "bpp",
    references: Sequence[tuple[str, float]] = (), layer_rates: dict[str, str] | None = None,
) -> None:
    """``metric`` vs ``rate`` for every curve; horizontal ``references``; for layered curves in
    ``layer_rates`` (curve -> rate key) also the same metric vs that layer's rate, dotted.
    """
    for name, curve in curves.items():
        points = sorted(curve["points"], key=lambda p: p[rate])
        ys = [p[metric] for p in points]
        line = ax.plot([p[rate] for p in points], ys, marker="o", markersize=3, label=curve["label"])[0]
        if layer_rates and name in layer_rates:
            key = layer_rates[name]
            ax.plot([p[key] for p in points], ys, linestyle=":", marker=".", color=line.get_color(),
                    label=f"{curve['label']} ({key.removesuffix('_bpp')} layer only)")
    for label, value in references:
        if value is not None and math.isfinite(value):
            ax.axhline(value, color="black", linestyle="--", linewidth=1, label=label)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def figure(panels: int, title: str) -> tuple[plt.Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    fig.suptitle(title)
    return fig, list(axes[0])
