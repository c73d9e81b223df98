"""Operator calls routed to the replica whose edge stream they need (``icmh.v1.ReplicaLink`` client side).

A HUMAN or ORIGINAL GetFrame, or a ConfigureCamera, reaching a replica that does not hold the camera's edge
stream is served there: the caller is authorised, the frame decoded and the inspection audited on the replica it
reached, and only the edge's layer (or the config push) travels through the replica holding the stream, which
this client calls with the replicas' credential. Failures come back as the errors a local edge stream gives:
:class:`~icmh.cloud.edge_sessions.EdgeOffline` and :class:`~icmh.cloud.edge_sessions.ResidualNotFound`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from icmh.rpc import common_pb2, replica_pb2, replica_pb2_grpc
from icmh.service.grpc_setup import MAX_REPLY_BYTES, open_channel

from .edge_sessions import EdgeOffline, ResidualNotFound
from .leases import Holder
from .metrics import CloudMetrics

log = logging.getLogger("icmh.cloud.routing")
CALL_MARGIN_S = 2.0  # on top of the edge's own timeout: the hop between replicas


@dataclass(frozen=True)
class ReplicaTls:
    """How a replica verifies the others' certificates (and, with mutual TLS, presents its own)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


class ReplicaRouter:
    def __init__(self, token: str, metrics: CloudMetrics, tls: ReplicaTls | None = None) -> None:
        self._token, self.metrics, self.tls = token, metrics, tls
        self._channels: dict[str, tuple[grpc.Channel, replica_pb2_grpc.ReplicaLinkStub]] = {}
        self._lock = threading.Lock()

    def _stub(self, address: str) -> replica_pb2_grpc.ReplicaLinkStub:
        with self._lock:
            if address not in self._channels:
                tls = self.tls
                channel = open_channel(address, ca=tls.ca if tls else None, cert=tls.cert if tls else None,
                                       key=tls.key if tls else None, max_send_bytes=MAX_REPLY_BYTES,
                                       token=self._token)
                self._channels[address] = (channel, replica_pb2_grpc.ReplicaLinkStub(channel))
            return self._channels[address][1]

    def fetch_layer(self, holder: Holder, camera_id: str, frame_id: int, lossless: bool, timeout_s: float,
                    rate: float | None = None) -> bytes:
        """The frame's residual (``lossless``: lossless; ``rate``: at that residual rate) layer from the edge
        streaming to ``holder``."""
        request = replica_pb2.FetchLayerRequest(camera_id=camera_id, frame_id=frame_id, lossless=lossless,
                                                residual_rate=rate)
        try:
            response = self._stub(holder.address).FetchLayer(request, timeout=timeout_s + CALL_MARGIN_S)
        except grpc.RpcError as exc:
            self.metrics.replica_calls.labels("fetch_layer", exc.code().name.lower()).inc()
            where = f"replica {holder.replica_id} ({holder.address})"
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise ResidualNotFound(f"{exc.details()} (via {where})") from None
            raise EdgeOffline(f"camera {camera_id} streams to {where}, which could not fetch the layer: "
                              f"{exc.code().name}: {exc.details()}") from None
        self.metrics.replica_calls.labels("fetch_layer", "ok").inc()
        return response.layer

    def push_config(self, holder: Holder, camera_id: str, config: common_pb2.EdgeConfig) -> bool:
        """Send changed settings to the edge streaming to ``holder``; False when they could not be delivered."""
        try:
            delivered = self._stub(holder.address).PushConfig(
                replica_pb2.PushConfigRequest(camera_id=camera_id, config=config), timeout=CALL_MARGIN_S * 5
            ).delivered
        except grpc.RpcError as exc:
            self.metrics.replica_calls.labels("push_config", exc.code().name.lower()).inc()
            log.warning("camera %s: config not pushed through replica %s: %s", camera_id, holder.replica_id,
                        exc.details())
            return False
        self.metrics.replica_calls.labels("push_config", "ok").inc()
        return delivered

    def relay(self, address: str) -> grpc.Future:
        """The live results stream of the replica at ``address`` (a call to iterate, cancel to end)."""
        return self._stub(address).Relay(replica_pb2.RelayRequest())

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel, _ in channels:
            channel.close()
