"""Scalable image codec for machines and humans (SA-ICM base + PR/FR-ICMH residual).

Knows nothing about gRPC: the service layers call :class:`ScalableCodec`.
"""

from .api import BaseEncoding, ScalableCodec, inspect
from .bitstream import BitstreamError, LayerKind
from .models import MODEL_REGISTRY, build_model
from .weights import LoadedModel, load_layer, prepare

__all__ = [
    "MODEL_REGISTRY",
    "BaseEncoding",
    "BitstreamError",
    "LayerKind",
    "LoadedModel",
    "ScalableCodec",
    "build_model",
    "inspect",
    "load_layer",
    "prepare",
]
