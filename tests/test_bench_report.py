"""What a benchmark report records about its code and tools, and the refusal to record one from a dirty checkout
(on a real throwaway git repository standing in for the checkout)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from icmh.bench import report
from icmh.bench.cli import main as bench_main


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed checkout layout (pyproject.toml, shared/, docs/benchmarks/) that ``report`` takes as its own."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "checkout"
    (repo / "shared").mkdir(parents=True)
    (repo / "docs" / "benchmarks").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (repo / "shared" / "codec.py").write_text("RATE = 1\n")
    (repo / "docs" / "benchmarks" / "speed.json").write_text("{}\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    monkeypatch.setattr(report, "REPO_ROOT", repo.resolve())
    return repo


def test_clean_checkout_records_its_commit(checkout: Path) -> None:
    state = report.source_state()
    assert state == {"git_commit": git(checkout, "rev-parse", "HEAD").strip(), "dirty": False}
    report.check_work_tree(checkout / "docs" / "benchmarks")
    (checkout / "docs" / "benchmarks" / "speed.json").write_text('{"new": 1}\n')  # a fresh report is not code
    assert report.source_state()["dirty"] is False


def test_uncommitted_code_is_recorded_and_refused_in_the_checkout(checkout: Path, tmp_path: Path) -> None:
    (checkout / "shared" / "codec.py").write_text("RATE = 2\n")
    (checkout / "shared" / "new.py").write_text("")  # untracked code counts too
    state = report.source_state()
    assert state["dirty"] is True and state["dirty_paths"] == ["shared/codec.py", "shared/new.py"]
    with pytest.raises(ValueError, match=r"uncommitted changes \(shared/codec.py, shared/new.py\).*--allow-dirty"):
        report.check_work_tree(checkout / "docs" / "benchmarks")
    report.check_work_tree(checkout / "docs" / "benchmarks", allow_dirty=True)
    report.check_work_tree(tmp_path / "elsewhere")  # not a report of the checkout: recorded with "dirty": true
    meta = report.run_metadata("icmh bench speed", 1, 1)
    assert meta["dirty"] is True and meta["dirty_paths"] == state["dirty_paths"]


def test_bench_cli_refuses_before_running(checkout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (checkout / "shared" / "codec.py").write_text("RATE = 3\n")
    out = checkout / "docs" / "benchmarks"
    assert bench_main(["speed", "--out", str(out), "--shared", str(checkout / "no-data")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bench: error: the checkout has uncommitted changes (shared/codec.py)"), err
    assert sorted(p.name for p in out.iterdir()) == ["speed.json"]  # nothing written


def test_metadata_names_the_codec_tools() -> None:
    meta = report.run_metadata("icmh bench human", 3, 2)
    tools = meta["tool_versions"]
    assert all(isinstance(v, str) and v for v in tools.values())
    if shutil.which("ffmpeg"):
        assert tools["ffmpeg"].startswith("ffmpeg version")
    from PIL import features

    if features.check("avif"):
        assert tools["libavif (Pillow)"] == features.version("avif")
    assert "pillow" in meta["versions"] and meta["git_commit"]
