"""What every benchmark run records (machine, package and codec-tool versions, commit, command, image count) and
how it is written.

Results go to ``<out>/<name>.json`` (non-finite numbers as ``null``) and ``<out>/<name>.png``. A run records
the commit of the checkout and whether its code had uncommitted changes (``"dirty"``); :func:`check_work_tree`
refuses, before a benchmark starts, to write a report into the checkout (e.g. ``docs/benchmarks``) from such a
tree unless asked to (``--allow-dirty``), so a committed report always names the code that produced it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

from icmh.allocator import allocator_in_use

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout (source tree); not one for an installed package
PACKAGES = ("torch", "compressai", "ultralytics", "opencv-python", "opencv-python-headless", "pillow", "numpy",
            "pytorch-msssim", "scipy")
#: what a benchmark's figures depend on: the code, the shipped weights and the pinned versions (not docs/ or tests/)
CODE_PATHS = ("shared", "edge_node", "cloud_server", "proto", "pyproject.toml", "constraints.txt")
#: shared libraries of the classical anchors (those ffmpeg links on Debian): name -> (library, symbol, the symbol
#: is a ``const char *`` variable or a function returning one)
CODEC_LIBRARIES = {"libx265": ("x265", "x265_version_str", "variable"),
                   "libaom": ("aom", "aom_codec_version_str", "function")}


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


def _library_version(library: str, symbol: str, kind: str) -> str | None:
    """The version string a shared library reports, with the file it came from (None: library not found)."""
    found = ctypes.util.find_library(library)
    if found is None:
        return None
    try:
        lib = ctypes.CDLL(found)
        if kind == "variable":
            value = ctypes.c_char_p.in_dll(lib, symbol).value
        else:
            function = getattr(lib, symbol)
            function.restype, function.argtypes = ctypes.c_char_p, []
            value = function()
    except (OSError, AttributeError, ValueError):  # unloadable library, missing symbol
        return None
    return f"{value.decode(errors='replace')} ({found})" if value else None


def tool_versions() -> dict[str, str]:
    """Versions of the classical codecs' tools and libraries found on this machine (absent ones are left out):
    ffmpeg, libx265, libaom, cjxl, Pillow's libavif."""
    from PIL import features

    versions = {}
    for tool, flag in (("ffmpeg", "-version"), ("cjxl", "--version")):
        if shutil.which(tool):
            out = subprocess.run([tool, flag], capture_output=True, text=True)
            versions[tool] = ((out.stdout or out.stderr).splitlines() or ["?"])[0].strip()
    for name, (library, symbol, kind) in CODEC_LIBRARIES.items():
        version = _library_version(library, symbol, kind)
        if version:
            versions[name] = version
    avif = features.version("avif")
    if avif:
        versions["libavif (Pillow)"] = str(avif)
    return versions


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
    except OSError:  # no git
        return ""
    return done.stdout if done.returncode == 0 else ""


def source_state() -> dict[str, Any]:
    """The code a run uses: ``git_commit`` of the checkout and ``dirty`` (uncommitted or untracked files among
    :data:`CODE_PATHS`, listed in ``dirty_paths``); an installed package has no checkout: its version instead,
    ``dirty`` None."""
    top = _git("rev-parse", "--show-toplevel").strip()
    if not (REPO_ROOT / "pyproject.toml").is_file() or not top or Path(top).resolve() != REPO_ROOT:
        try:
            version = metadata.version("icmh-traffic")
        except metadata.PackageNotFoundError:
            version = "unknown"
        return {"git_commit": "unknown", "dirty": None, "package": f"icmh-traffic {version} (no checkout)"}
    changed = _git("status", "--porcelain", "--", *CODE_PATHS).splitlines()
    state: dict[str, Any] = {"git_commit": _git("rev-parse", "HEAD").strip() or "unknown", "dirty": bool(changed)}
    if changed:
        state["dirty_paths"] = sorted(line[3:] for line in changed)
    return state


def check_work_tree(out: Path, allow_dirty: bool = False) -> None:
    """Refuse (``ValueError``) to record a report inside the checkout while its code has uncommitted changes,
    unless ``allow_dirty`` (the report then says ``"dirty": true``). Reports written elsewhere (a temporary
    folder, a test) are never refused; they carry the same ``dirty`` field."""
    if allow_dirty:
        return
    out = out.resolve()
    if out != REPO_ROOT and REPO_ROOT not in out.parents:
        return
    state = source_state()
    if state["dirty"]:
        paths = state["dirty_paths"]
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        raise ValueError(f"the checkout has uncommitted changes ({shown}): commit them before recording a report "
                         f"in {out}, or pass --allow-dirty (the report then records \"dirty\": true)")


def analysis_precision_in_use() -> str:
    """The encoders' analysis precision of this process (imported here, not at module import: it loads torch)."""
    from icmh.codec.precision import resolved_precision

    return resolved_precision()


def exact_kernel_in_use() -> str:
    """The exact path's kernel of this process (``int8`` or ``float64``, :func:`icmh.codec.exact.default_kernel`)."""
    from icmh.codec.exact import default_kernel

    return default_kernel()


def run_metadata(command: str, image_count: int, threads: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Facts needed to reproduce or compare a run."""
    return {
        "command": command,
        "image_count": image_count,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **source_state(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch_threads": threads,
                    "analysis_precision": analysis_precision_in_use(), "exact_kernel": exact_kernel_in_use(),
                    "allocator": allocator_in_use()},
        "versions": package_versions(),
        "tool_versions": tool_versions(),
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
    max_rate: float | None = None, legend_loc: str | None = "best",
) -> None:
    """``metric`` vs ``rate`` for every curve; horizontal ``references``; for layered curves in
    ``layer_rates`` (curve -> rate key) also the same metric vs that layer's rate, dotted. ``max_rate`` limits
    the rate axis (and the metric axis to the points shown) so that one far point, e.g. a near-lossless one,
    does not squeeze every curve into a corner; the plot says so. ``legend_loc=None`` draws no legend (the caller
    draws one for the figure).
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
    if max_rate is not None:
        shown = [p[metric] for c in curves.values() for p in c["points"] if p[rate] <= max_rate]
        hidden = sum(p[rate] > max_rate for c in curves.values() for p in c["points"])
        ax.set_xlim(0, max_rate)
        if shown:
            pad = 0.05 * (max(shown) - min(shown) or 1.0)
            ax.set_ylim(min(shown) - pad, max(shown) + pad)
        if hidden:
            ax.set_xlabel(f"bits per pixel ({hidden} point(s) beyond {max_rate:.2g} bpp not shown; see the JSON)")
    ax.grid(True, alpha=0.3)
    if legend_loc is not None:
        ax.legend(fontsize=7, loc=legend_loc)


def figure(panels: int, title: str) -> tuple[plt.Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    fig.suptitle(title)
    return fig, list(axes[0])
