"""Regenerate the Python gRPC code in ``shared/rpc`` from ``proto/icmh/v1/*.proto``.

``python -m icmh.rpc.generate`` rewrites the generated modules; ``--check`` only
reports whether they are stale (exit status 1). Needs ``grpcio-tools`` (dev extra).
Imports between generated modules are rewritten to ``icmh.rpc.xxx_pb2``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

RPC_DIR = Path(__file__).resolve().parent
PROTO_ROOT = RPC_DIR.parent.parent / "proto"
PROTO_PACKAGE = "icmh/v1"
_IMPORT = re.compile(r"^from icmh\.v1 import ", re.MULTILINE)


def proto_files() -> list[Path]:
    files = sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    if not files:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT / PROTO_PACKAGE}")
    return files


def generate_sources() -> dict[str, str]:
    """Run protoc on the contract; returns ``{module file name: source}``."""
    from importlib.resources import files as resource_files

    from grpc_tools import protoc

    well_known = str(resource_files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
            *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed (see the messages above)")
        out = {}
        for path in sorted((Path(tmp) / PROTO_PACKAGE).glob("*.py")):
            source = path.read_text()
            if path.name.endswith("_pb2_grpc.py") and "class " not in source:
                continue  # a .proto without services
            out[path.name] = _IMPORT.sub("from icmh.rpc import ", source)
    return out


def stale_files(target: Path = RPC_DIR) -> list[str]:
    """Generated modules in ``target`` that differ from a fresh generation (or are missing / extra)."""
    fresh = generate_sources()
    present = {p.name for p in target.glob("*_pb2*.py")}
    return sorted(
        name for name in fresh.keys() | present
        if name not in fresh or name not in present or (target / name).read_text() != fresh[name]
    )


def write(target: Path = RPC_DIR) -> list[str]:
    """Write the generated modules into ``target`` (removing outdated ones); returns their names."""
    fresh = generate_sources()
    for old in target.glob("*_pb2*.py"):
        if old.name not in fresh:
            old.unlink()
    for name, source in fresh.items():
        (target / name).write_text(source)
    return sorted(fresh)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icmh.rpc.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale generated code (exit 1)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: shared/rpc/{name}")
        if stale:
            print("run: python -m icmh.rpc.generate", file=sys.stderr)
        return 1 if stale else 0
    for name in write():
        print(f"wrote shared/rpc/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
