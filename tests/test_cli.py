"""The ``icmh`` console script: encode, decode, info, and one-line errors on bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from icmh.codec import ScalableCodec

ROOT = Path(__file__).resolve().parents[1]


def icmh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icmh.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def image_file(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("img") / "crop.png"
    cv2.imwrite(str(out), cv2.imread(str(shared_dir / "data" / "kodak" / "05.png"))[:200, :300])
    return out


@pytest.mark.parametrize("mode", ["pr", "fr"])
def test_encode_decode_info(tiny_weights: Path, image_file: Path, tmp_path: Path, mode: str) -> None:
    base, res = tmp_path / "f.base", tmp_path / "f.res"
    out = icmh("encode", str(image_file), "--base", str(base), "--residual", str(res), "--mode", mode,
               "--rate", "0.4", "--weights", str(tiny_weights))
    assert out.returncode == 0, out.stderr
    sizes = json.loads(out.stdout)
    assert sizes["base_bytes"] == base.stat().st_size and sizes["residual_bytes"] == res.stat().st_size

    info = json.loads(icmh("info", str(res)).stdout)
    assert info["kind"] == f"{mode}_residual" and (info["height"], info["width"]) == (200, 300)

    human, machine = tmp_path / "human.png", tmp_path / "machine.png"
    assert icmh("decode", "--base", str(base), "--residual", str(res), "-o", str(human),
                "--weights", str(tiny_weights)).returncode == 0
    assert icmh("decode", "--base", str(base), "-o", str(machine), "--weights", str(tiny_weights)).returncode == 0
    codec = ScalableCodec.from_weights(tiny_weights, mode=mode)
    expected = codec.decode_human(base.read_bytes(), res.read_bytes())
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(human)), cv2.COLOR_BGR2RGB), expected)
    assert cv2.imread(str(machine)).shape == (200, 300, 3)


def test_bad_file_gives_one_line_error(tiny_weights: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.base"
    junk.write_bytes(b"ICMH" + bytes(40))
    for args in (("info", str(junk)), ("decode", "--base", str(junk), "-o", str(tmp_path / "o.png"),
                                       "--weights", str(tiny_weights))):
        out = icmh(*args)
        assert out.returncode != 0
        assert out.stderr.startswith("icmh: error:") and out.stderr.count("\n") == 1, out.stderr
        assert "Traceback" not in out.stderr
    missing = icmh("info", str(tmp_path / "nope.base"))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
