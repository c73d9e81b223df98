"""Residual-layer modes of the codec API ("pr", "fr", "avif") and their ``icmh.v1.ResidualMode`` values; the residual
rate a request asks for."""

from __future__ import annotations

from google.protobuf.message import Message

from icmh.rpc import common_pb2

PROTO_OF_MODE = {"pr": common_pb2.RESIDUAL_MODE_PR, "fr": common_pb2.RESIDUAL_MODE_FR,
                 "avif": common_pb2.RESIDUAL_MODE_AVIF}
MODE_OF_PROTO = {value: mode for mode, value in PROTO_OF_MODE.items()}


def requested_residual_rate(request: Message) -> float | None:
    """The ``optional float residual_rate`` of a ``GetFrameRequest``, ``ResidualRequest`` or ``FetchLayerRequest``:
    the residual rate asked for, None when unset (the rate of capture)."""
    return request.residual_rate if request.HasField("residual_rate") else None  # type: ignore[attr-defined]
