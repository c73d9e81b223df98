"""``icmh.v1.ReplicaLink``: what the other replicas of a shared index ask of this one: layers and config for the
edge streams open here, and the live results it detects.

Every call must carry the replicas' credential (``authorization: Bearer REPLICA_TOKEN``, compared in constant
time); the operator behind a forwarded call was authorised and is audited by the replica that received it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

import grpc

from icmh.rpc import common_pb2, replica_pb2, replica_pb2_grpc
from icmh.service.edge_config import config_from_proto
from icmh.service.grpc_setup import bearer_token
from icmh.service.residual_modes import requested_residual_rate

from .access import abort
from .audit import check_ids
from .edge_sessions import EdgeOffline, EdgeSessions, ResidualNotFound
from .metrics import CloudMetrics
from .subscribers import ResultFilter, SubscriberHub

REPLICA_LINK = replica_pb2.DESCRIPTOR.services_by_name["ReplicaLink"].full_name


class ReplicaLinkService(replica_pb2_grpc.ReplicaLinkServicer):
    def __init__(self, token: str, replica_id: str, sessions: EdgeSessions, metrics: CloudMetrics,
                 residual_timeout_s: float, results: SubscriberHub) -> None:
        self._token = token.encode()
        self.replica_id, self.sessions, self.metrics = replica_id, sessions, metrics
        self.residual_timeout_s, self.results = residual_timeout_s, results  # results: this replica's own

    def _authenticate(self, context: grpc.ServicerContext) -> None:
        values = [str(v) for k, v in context.invocation_metadata() if k == "authorization"]
        token = bearer_token(values[0]) if len(values) == 1 else None
        if token is None or not hmac.compare_digest(token.encode(), self._token):
            self.metrics.auth_refusals.labels("unauthenticated").inc()
            abort(context, grpc.StatusCode.UNAUTHENTICATED, "ReplicaLink needs the replicas' credential")

    def FetchLayer(self, request: replica_pb2.FetchLayerRequest,  # noqa: N802 - gRPC method name
                   context: grpc.ServicerContext) -> replica_pb2.FetchLayerResponse:
        self._authenticate(context)
        check_ids(context, request.camera_id, request.frame_id)
        session = self.sessions.get(request.camera_id)
        if session is None:
            abort(context, grpc.StatusCode.UNAVAILABLE,
                   f"edge of camera {request.camera_id} is not connected to replica {self.replica_id}")
        try:
            layer = session.request_residual(request.frame_id, self.residual_timeout_s, request.lossless,
                                             requested_residual_rate(request))
        except EdgeOffline as exc:
            abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except ResidualNotFound as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        return replica_pb2.FetchLayerResponse(layer=layer)

    def PushConfig(self, request: replica_pb2.PushConfigRequest,  # noqa: N802
                   context: grpc.ServicerContext) -> replica_pb2.PushConfigResponse:
        self._authenticate(context)
        check_ids(context, request.camera_id)
        try:
            config_from_proto(request.config)
        except ValueError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        session = self.sessions.get(request.camera_id)
        return replica_pb2.PushConfigResponse(delivered=session is not None and session.send_config(request.config))

    def Relay(self, request: replica_pb2.RelayRequest,  # noqa: N802
              context: grpc.ServicerContext) -> Iterator[common_pb2.DetectionResult]:
        self._authenticate(context)
        subscription = self.results.subscribe(ResultFilter())
        context.add_callback(subscription.end)
        try:
            while (result := subscription.queue.get()) is not None:
                yield result.to_proto()
        finally:
            self.results.unsubscribe(subscription)
        if subscription.overflowed:
            abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "the relaying replica fell behind")
