"""The coding settings a cloud pushes to an edge (``icmh.v1.EdgeConfig``), as a validated dict."""

from __future__ import annotations

import math
from typing import Any

from icmh.rpc import common_pb2

CONFIG_FIELDS = ("base_rate", "residual_rate", "target_kbps")


def check_rate(value: float, name: str) -> float:
    if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def check_target(kbps: float) -> float:
    if not isinstance(kbps, (int, float)) or math.isnan(kbps) or kbps < 0:
        raise ValueError(f"target kbps must be >= 0, got {kbps!r}")
    return float(kbps)


def validate_config(config: dict[str, Any]) -> dict[str, float]:
    """Check names and ranges; returns the config with float values."""
    unknown = set(config) - set(CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"unknown config fields {sorted(unknown)}; known: {list(CONFIG_FIELDS)}")
    out = {}
    for name, value in config.items():
        out[name] = check_target(value) if name == "target_kbps" else check_rate(value, name.replace("_", " "))
    return out


def config_to_proto(config: dict[str, float]) -> common_pb2.EdgeConfig:
    return common_pb2.EdgeConfig(**config)


def config_from_proto(message: common_pb2.EdgeConfig) -> dict[str, float]:
    """The set fields of ``message`` (validated)."""
    return validate_config({name: getattr(message, name) for name in CONFIG_FIELDS if message.HasField(name)})
