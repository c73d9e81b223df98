"""Scalable image codec for machines and humans (SA-ICM base + PR/FR-ICMH residual).

Knows nothing about gRPC: the service layers call :class:`ScalableCodec`. The names below load on first use, so
that ``icmh.codec.bitstream`` (a container parser the services need everywhere) does not pull in torch.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

# CompressAI 1.2.8 calls torch.jit.script at import time, which torch >= 2.10 deprecates.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

_EXPORTS = {
    "BaseEncoding": "api", "ScalableCodec": "api", "inspect": "api",
    "BitstreamError": "bitstream", "LayerKind": "bitstream",
    "MODEL_REGISTRY": "models", "build_model": "models",
    "LoadedModel": "weights", "load_layer": "weights", "prepare": "weights",
}
__all__ = [
    "MODEL_REGISTRY", "BaseEncoding", "BitstreamError", "LayerKind", "LoadedModel", "ScalableCodec", "build_model",
    "inspect", "load_layer", "prepare",
]

if TYPE_CHECKING:
    from .api import BaseEncoding, ScalableCodec, inspect
    from .bitstream import BitstreamError, LayerKind
    from .models import MODEL_REGISTRY, build_model
    from .weights import LoadedModel, load_layer, prepare


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
