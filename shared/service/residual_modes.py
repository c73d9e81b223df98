"""Residual-layer modes of the codec API ("pr", "fr", "avif") and their ``icmh.v1.ResidualMode`` values."""

from __future__ import annotations

from icmh.rpc import common_pb2

PROTO_OF_MODE = {"pr": common_pb2.RESIDUAL_MODE_PR, "fr": common_pb2.RESIDUAL_MODE_FR,
                 "avif": common_pb2.RESIDUAL_MODE_AVIF}
MODE_OF_PROTO = {value: mode for mode, value in PROTO_OF_MODE.items()}
