"""``icmh.v1.Detections``: live detection results, filtered per subscriber (and by the caller's cameras)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from icmh.rpc import common_pb2, detections_pb2, detections_pb2_grpc

from .access import OperatorAccess
from .auth import Role
from .metrics import CloudMetrics
from .subscribers import ResultFilter, SubscriberHub


class DetectionsService(detections_pb2_grpc.DetectionsServicer):
    def __init__(self, hub: SubscriberHub, metrics: CloudMetrics, access: OperatorAccess) -> None:
        self.hub, self.metrics, self.access = hub, metrics, access

    def Subscribe(self, request: detections_pb2.SubscribeRequest,  # noqa: N802 - gRPC method name
                  context: grpc.ServicerContext) -> Iterator[common_pb2.DetectionResult]:
        if not 0.0 <= request.min_confidence <= 1.0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "min_confidence must be in [0, 1]")
        caller = self.access.require(context, Role.VIEWER)
        cameras = frozenset(request.camera_ids)
        for camera_id in sorted(cameras):
            self.access.require(context, Role.VIEWER, camera_id)
        if caller.cameras is not None and not cameras:  # "every camera" of an operator with a camera list
            cameras = caller.cameras
        subscription = self.hub.subscribe(ResultFilter(cameras, frozenset(request.class_names),
                                                       request.min_confidence))
        context.add_callback(subscription.end)
        self.metrics.subscribers.set(self.hub.count)
        try:
            while (result := subscription.queue.get()) is not None:
                yield result.to_proto()
        finally:
            self.hub.unsubscribe(subscription)
            self.metrics.subscribers.set(self.hub.count)
        if subscription.overflowed:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"subscriber fell {self.hub.capacity} results behind and was dropped")
