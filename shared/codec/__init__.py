"""Scalable image codec for machines and humans (SA-ICM base + PR/FR-ICMH residual).

Knows nothing about gRPC: the service layers call :class:`ScalableCodec`.
"""

import warnings

# CompressAI 1.2.8 calls torch.jit.script at import time, which torch >= 2.10 deprecates.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from .api import BaseEncoding, ScalableCodec, inspect  # noqa: E402
from .bitstream import BitstreamError, LayerKind  # noqa: E402
from .models import MODEL_REGISTRY, build_model  # noqa: E402
from .weights import LoadedModel, load_layer, prepare  # noqa: E402

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
