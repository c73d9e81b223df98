"""The committed gRPC code in shared/rpc matches proto/icmh/v1 (regenerate: python -m icmh.rpc.generate)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) generates the gRPC code")

from icmh.rpc import generate  # noqa: E402


def test_generated_code_is_current() -> None:
    stale = generate.stale_files()
    assert not stale, f"stale generated code {stale}: run `python -m icmh.rpc.generate` and commit shared/rpc"


def test_generated_modules_import_each_other_as_shared_rpc() -> None:
    for path in Path(generate.RPC_DIR).glob("*_pb2*.py"):
        text = path.read_text()
        assert "from icmh.v1 import" not in text, path.name
    from icmh.rpc import edge_pb2, operator_pb2

    assert edge_pb2.DESCRIPTOR.package == operator_pb2.DESCRIPTOR.package == "icmh.v1"


def test_stale_code_is_detected(tmp_path: Path) -> None:
    for path in Path(generate.RPC_DIR).glob("*_pb2*.py"):
        (tmp_path / path.name).write_text(path.read_text())
    assert generate.stale_files(tmp_path) == []
    edited = tmp_path / "edge_pb2.py"
    edited.write_text(edited.read_text() + "# edited\n")
    (tmp_path / "old_pb2.py").write_text("")
    assert generate.stale_files(tmp_path) == ["edge_pb2.py", "old_pb2.py"]
