"""The layer rule of docs/architecture.md, checked on the source: codec <- service <- edge / cloud; bench and
training on top; one import name (``icmh``) and every package of the tree installed under it."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"shared": "icmh", "edge_node": "icmh.edge", "cloud_server": "icmh.cloud"}
# (module prefix, layer); the first match wins, anything else under icmh is the codec core
LAYERS = [("icmh.bench", "tools"), ("icmh.training", "tools"), ("icmh.cli", "tools"), ("icmh.edge", "app"),
          ("icmh.cloud", "app"), ("icmh.service", "service"), ("icmh.rpc", "service")]
ALLOWED = {"core": {"core"}, "service": {"core", "service"}, "app": {"core", "service", "app"},
           "tools": {"core", "service", "app", "tools"}}


def modules() -> dict[str, Path]:
    found = {}
    for folder, name in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([name, *parts])] = path
    return found


def layer(module: str) -> str:
    return next((name for prefix, name in LAYERS if module == prefix or module.startswith(prefix + ".")), "core")


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            names |= {target, *(f"{target}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names & known


def test_no_layer_imports_a_layer_above_it() -> None:
    found = modules()
    wrong = [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, path in found.items()
             for d in sorted(imported(m, path, set(found))) if layer(d) not in ALLOWED[layer(m)]]
    assert not wrong, "\n".join(wrong)


def test_old_top_level_names_are_gone() -> None:
    old = ("shared", "edge_node", "cloud_server")
    found = modules()
    stray = [f"{m}: {name}" for m, path in found.items() for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0)
             for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
             if name.split(".")[0] in old]
    assert not stray, stray


def test_every_package_folder_is_installed_under_icmh() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {name: folder for folder, name in FOLDERS.items()}
    expected = {m for m, path in modules().items() if path.name == "__init__.py"}
    assert set(config["packages"]) == expected
