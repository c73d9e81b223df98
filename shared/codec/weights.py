"""Loading and exporting codec weights (compact fp16 files with a JSON manifest).

An exported file holds the architecture name, fp16 parameters and the integer
CDF tables of the entropy models. The tables are computed once at export (from
the fp16-rounded parameters) and loaded as they are, never recomputed, so every
machine range-codes with the same integer tables.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .models import ChannelARCodec, build_model

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"
LAYER_FILES = {
    "base": "sa-icm.pt", "pr": "pr-icmh.pt", "fr": "fr-icmh.pt", "single": "single.pt",
    "pr-small": "pr-icmh-small.pt",  # the width-48 PR-ICMH of session 2: 4x cheaper decoder, lower quality
    "pr-explicit": "pr-icmh-explicit.pt",  # PR-ICMH as published (explicit residual), when the default is not
}


@dataclass(frozen=True)
class LoadedModel:
    """A codec ready to code, with the identity written into every container."""

    model: ChannelARCodec
    model_id: str
    weights_hash: bytes


def fingerprint(model: torch.nn.Module) -> bytes:
    """8-byte hash of a model's parameters and entropy tables (independent of file format)."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.digest()[:8]


def prepare(model: ChannelARCodec, architecture: str) -> LoadedModel:
    model.eval()
    return LoadedModel(model, architecture, fingerprint(model))


def _unpickling_reason(exc: BaseException) -> str:
    """The specific line of torch's long weights-only message (e.g. the refused global)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Check the documentation")]
    return lines[-1] if lines else type(exc).__name__


def load_state(path: str | Path) -> dict[str, Any]:
    """The contents of a weights file or training checkpoint: tensors and plain data only.

    ``torch.load(weights_only=True)`` unpickles nothing but tensors, containers and numbers, so a file that
    carries pickled objects (which could run code) is refused with a ValueError instead of executed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{path} is not a weights file of plain tensors (refused, nothing executed): "
                         f"{_unpickling_reason(exc)}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a weights file: it holds a {type(state).__name__}, not a dict")
    return state


def load_model(path: str | Path) -> tuple[ChannelARCodec, dict[str, Any]]:
    """Load an exported weights file or a training checkpoint (``last.pt``)."""
    state = load_state(path)
    if "architecture" not in state:
        raise ValueError(f"{path} is not a weights file of this codec (no 'architecture')")
    model = build_model(state["architecture"], **state.get("overrides", {}))
    if "state_dict" in state:  # exported
        tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in state["state_dict"].items()}
        model.load_state_dict(tensors)
    else:  # training checkpoint: round like an export would, then build the tables
        model.load_state_dict(state["model"], strict=False)
        _round_fp16(model)
        model.update(force=True)
    skip = ("state_dict", "model", "optimizer", "aux_optimizer")
    return model.eval(), {k: v for k, v in state.items() if k not in skip}


def load_layer(path: str | Path) -> LoadedModel:
    """Load weights for coding: the float32 transforms keep their weights channels-last, which
    oneDNN convolves 2-4x faster on CPU (values, hashes and the exact path are unchanged)."""
    model, meta = load_model(path)
    layer = prepare(model, meta["architecture"])
    for name in ("g_a", "g_s"):
        transform = getattr(model, name, None)
        if transform is not None:
            transform.to(memory_format=torch.channels_last)
    return layer


def _round_fp16(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def save_layer(model: ChannelARCodec, architecture: str, out_path: str | Path) -> Path:
    """Write ``model`` as a compact fp16 weights file (entropy tables included)."""
    _round_fp16(model)
    model.update(force=True)
    state = {k: (v.half() if v.is_floating_point() and not k.endswith("scale_table") else v)
             for k, v in model.state_dict().items()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"architecture": architecture, "state_dict": state}, out_path)
    return out_path


TINY_ARCHITECTURES = {"base": "sa-icm-tiny", "pr": "pr-icmh-tiny", "fr": "fr-icmh-tiny", "single": "sa-icm-tiny"}


def write_random_weights(folder: str | Path, seed: int = 0) -> Path:
    """Tiny randomly initialised codecs as real weight files (tests, pipeline demos)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    for layer, arch in TINY_ARCHITECTURES.items():
        save_layer(build_model(arch), arch, folder / LAYER_FILES[layer])
    return folder


def export_weights(checkpoint: str | Path, out_path: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write compact fp16 weights and ``<name>.json`` manifest; returns the manifest."""
    model, meta = load_model(checkpoint)
    out_path = save_layer(model, meta["architecture"], out_path)
    reloaded = load_layer(out_path)
    full = {
        "architecture": meta["architecture"],
        "file": out_path.name,
        "sha256": hashlib.sha256(out_path.read_bytes()).hexdigest(),
        "weights_hash": reloaded.weights_hash.hex(),
        "bytes": out_path.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": meta.get("step"),
        "train_minutes": round(meta.get("elapsed", 0.0) / 60, 1),
        **manifest,
    }
    out_path.with_suffix(".json").write_text(json.dumps(full, indent=2) + "\n")
    return full
