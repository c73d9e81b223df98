"""Conversions between nanoseconds since the epoch and ``google.protobuf.Timestamp``."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp


def to_timestamp(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(ns))
    return ts


def from_timestamp(ts: Timestamp) -> int:
    return ts.ToNanoseconds()
