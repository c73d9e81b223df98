"""A non-editable install works: the wheel of this checkout, installed into a throwaway virtual environment (its
dependencies taken from this interpreter's site-packages), runs its console scripts from another folder, finds
the shipped weights and the web page as package data, and puts no data path inside site-packages."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("shared", "edge_node", "cloud_server", "pyproject.toml", "README.md")
SCRIPTS = ("icmh", "icmh-cloud", "icmh-edge", "icmh-operator", "icmh-web")

PROBE = """
import json, sys, sysconfig
from pathlib import Path
import icmh, icmh.paths
from icmh.bench.report import source_state
from icmh.cli import build_parser
from icmh.cloud.cli import build_parser as cloud_parser
from icmh.cloud.web.app import STATIC
from icmh.codec.weights import LAYER_FILES, SHIPPED_DIR, load_layer
train = build_parser().parse_args(["train", "base", "--out", "run"])
cloud = cloud_parser().parse_args([])
print(json.dumps({
    "package": icmh.__file__, "site": sysconfig.get_paths()["purelib"], "weights": str(SHIPPED_DIR),
    "hash": load_layer(SHIPPED_DIR / LAYER_FILES["base"]).weights_hash.hex(),
    "static": sorted(p.name for p in STATIC.iterdir()),
    "data_paths": [str(icmh.paths.data_root()), str(icmh.paths.default_detector()), train.shared, str(cloud.detector)],
    "source": source_state(),
}))
"""


def build_backend_installed() -> bool:
    """setuptools >= 68 here (pyproject's build requirement): build without fetching it into an isolated env."""
    try:
        from importlib.metadata import version

        return int(version("setuptools").split(".")[0]) >= 68
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with this checkout's wheel (built from a copy: the checkout gets no build/ folder)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp / "wheels"
    isolation = ["--no-build-isolation"] if build_backend_installed() else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = wheels.glob("icmh_traffic-*.whl")
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True, timeout=120)
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return env


def clean_env(folder: Path) -> dict[str, str]:
    """No data-root override and nothing on PYTHONPATH: only the installed package can answer."""
    return {k: v for k, v in os.environ.items() if k not in ("ICMH_DATA", "PYTHONPATH")} | {"HOME": str(folder)}


@pytest.mark.slow
def test_installed_wheel_runs_from_another_folder(venv: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    for script in SCRIPTS:
        run = subprocess.run([str(venv / "bin" / script), "--help"], capture_output=True, text=True,
                             cwd=elsewhere, env=clean_env(tmp_path), timeout=300)
        assert run.returncode == 0 and run.stdout.startswith("usage:"), (script, run.stderr)
    run = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE], capture_output=True, text=True,
                         cwd=elsewhere, env=clean_env(tmp_path), timeout=300, check=True)
    found = json.loads(run.stdout)
    site = Path(found["site"]).resolve()
    assert Path(found["package"]).resolve().is_relative_to(site), found["package"]  # not the checkout
    assert Path(found["weights"]).resolve() == site / "icmh" / "weights"
    manifest = json.loads((ROOT / "shared" / "weights" / "sa-icm.json").read_text())
    assert found["hash"] == manifest["weights_hash"]
    assert {"index.html", "app.js", "style.css"} <= set(found["static"])
    for path in found["data_paths"]:  # ../shared of the working folder, never inside the environment
        assert Path(path).resolve().is_relative_to(elsewhere.parent), path
        assert not Path(path).resolve().is_relative_to(venv.resolve()), path
    assert found["source"]["dirty"] is None and "no checkout" in found["source"]["package"]


def test_deployment_files_start_console_scripts_the_package_installs() -> None:
    """systemd units and the container start the new script names (``icmh-cloud``, ``icmh-edge``), which
    ``pyproject.toml`` installs; the old names are aliases only."""
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    started = [Path(line.split()[0].removeprefix("ExecStart=")).name
               for unit in sorted((ROOT / "deploy" / "systemd").glob("*.service"))
               for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    started.append(json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))[0])
    assert sorted(started) == ["icmh-cloud", "icmh-cloud", "icmh-edge"]
    assert all(name in scripts for name in started)
    assert scripts["edge-node"] == scripts["icmh-edge"] and scripts["cloud-server"] == scripts["icmh-cloud"]
