"""The ``icmh`` console script: encode, decode, info, one-line errors on bad files, and the training defaults."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from icmh.cli import build_parser, main
from icmh.codec import ScalableCodec
from icmh.training.config import TrainConfig
from tests.test_codec import synthetic_photo


def icmh(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``icmh ARGS`` in this process: exit status, stdout, stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("img") / "crop.png"
    cv2.imwrite(str(out), cv2.cvtColor(synthetic_photo(200, 300, seed=5), cv2.COLOR_RGB2BGR))
    return out


@pytest.mark.parametrize("mode", ["pr", "fr"])
def test_encode_decode_info(tiny_weights: Path, image_file: Path, tmp_path: Path, mode: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    base, res = tmp_path / "f.base", tmp_path / "f.res"
    code, out, err = icmh(capsys, "encode", str(image_file), "--base", str(base), "--residual", str(res),
                          "--mode", mode, "--rate", "0.4", "--weights", str(tiny_weights))
    assert code == 0, err
    sizes = json.loads(out)
    assert sizes["base_bytes"] == base.stat().st_size and sizes["residual_bytes"] == res.stat().st_size

    info = json.loads(icmh(capsys, "info", str(res))[1])
    assert info["kind"] == f"{mode}_residual" and (info["height"], info["width"]) == (200, 300)

    human, machine = tmp_path / "human.png", tmp_path / "machine.png"
    assert icmh(capsys, "decode", "--base", str(base), "--residual", str(res), "-o", str(human),
                "--weights", str(tiny_weights))[0] == 0
    assert icmh(capsys, "decode", "--base", str(base), "-o", str(machine), "--weights", str(tiny_weights))[0] == 0
    codec = ScalableCodec.from_weights(tiny_weights, mode=mode)
    expected = codec.decode_human(base.read_bytes(), res.read_bytes())
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(human)), cv2.COLOR_BGR2RGB), expected)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(machine)), cv2.COLOR_BGR2RGB),
                                  codec.decode_machine(base.read_bytes()))


def test_bad_file_gives_one_line_error(tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.base"
    junk.write_bytes(b"ICMH" + bytes(40))
    for args in (("info", str(junk)), ("decode", "--base", str(junk), "-o", str(tmp_path / "o.png"),
                                       "--weights", str(tiny_weights)), ("info", str(tmp_path / "nope.base"))):
        code, _, err = icmh(capsys, *args)
        assert code == 1 and err.startswith("icmh: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.slow
def test_console_module_runs_as_a_process(tiny_weights: Path, image_file: Path, tmp_path: Path) -> None:
    """``python -m icmh.cli`` from another folder: the package, not the working directory, provides the code."""
    base = tmp_path / "f.base"
    run = subprocess.run([sys.executable, "-m", "icmh.cli", "encode", str(image_file), "--base", str(base),
                          "--weights", str(tiny_weights)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["base_bytes"] == base.stat().st_size
    bad = subprocess.run([sys.executable, "-m", "icmh.cli", "info", str(tmp_path / "nope.base")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith("icmh: error:") and "Traceback" not in bad.stderr


def test_train_flags_default_to_the_train_config() -> None:
    """``icmh train`` without flags builds exactly ``TrainConfig``'s defaults (one source of defaults)."""
    args = build_parser().parse_args(["train", "base", "--out", "runs/x"])
    flag_of = {"shared_dir": "shared", "mask_provider": "masks"}
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("kind", "out_dir"):
            continue
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        value = getattr(args, flag_of.get(field.name, field.name))  # every field has its flag
        assert (Path(value) if isinstance(default, Path) else value) == default, field.name


def _field_defaults(cls: type) -> dict[str, object]:
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


def test_cloud_and_edge_flags_default_to_their_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``icmh-cloud`` / ``icmh-edge`` without flags configure exactly the settings' defaults (one source)."""
    from icmh.cloud import cli as cloud_cli
    from icmh.cloud.settings import CloudSettings
    from icmh.edge import cli as edge_cli
    from icmh.edge.settings import EdgeSettings

    for name in ("ICMH_PUBLISH", "ICMH_INDEX", "ICMH_REPLICA_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cloud = cloud_cli.settings_from_args(cloud_cli.build_parser().parse_args(["--camera", "cam=t"]))
    edge = edge_cli.settings_from_args(edge_cli.build_parser().parse_args(
        ["--camera-id", "cam", "--token", "t", "--cloud", "127.0.0.1:1", "--source", "video.mp4"]))
    for settings, cls in ((cloud, CloudSettings), (edge, EdgeSettings)):
        defaults = _field_defaults(cls)
        assert len(defaults) > 10
        for name, default in defaults.items():
            value = getattr(settings, name)
            if name in ("operators", "cameras"):
                assert len(value) == len(default), name
            else:
                assert value == default, name
    assert cloud_cli.settings_from_args(cloud_cli.build_parser().parse_args(["--camera", "cam=t", "--exact-views"]))\
        .exact_views


def test_service_command_lines_load_without_torch() -> None:
    """``--help`` of the cloud and edge commands is instant: the codec (torch) loads with the server / node only."""
    code = "import sys, icmh.cloud.cli, icmh.edge.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
