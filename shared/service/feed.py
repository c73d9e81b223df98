"""A live ``Detections.Subscribe`` feed read in a background thread, with the local arrival time of each result."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import grpc

from icmh.rpc import common_pb2, detections_pb2, detections_pb2_grpc

from .grpc_setup import channel_options, with_token
from .local import LOOPBACK


class DetectionFeed:
    """Results of the cloud on ``host:port`` (filtered by camera and class) as they are published.

    ``results[i]`` arrived at ``arrivals_ns[i]`` (this machine's wall clock, ns since the epoch);
    ``on_result`` is called for each in the reading thread; ``token``: the operator token to subscribe with.
    """

    def __init__(self, port: int, camera_ids: Sequence[str] = (), class_names: Sequence[str] = (),
                 host: str = LOOPBACK,
                 on_result: Callable[[common_pb2.DetectionResult], None] | None = None,
                 token: str | None = None) -> None:
        self.channel = with_token(grpc.insecure_channel(f"{host}:{port}", options=channel_options()), token)
        request = detections_pb2.SubscribeRequest(camera_ids=list(camera_ids), class_names=list(class_names))
        self.call = detections_pb2_grpc.DetectionsStub(self.channel).Subscribe(request)
        self.results: list[common_pb2.DetectionResult] = []
        self.arrivals_ns: list[int] = []
        self.error: grpc.RpcError | None = None
        self._on_result = on_result
        self._thread = threading.Thread(target=self._collect, name="detection-feed", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        try:
            for result in self.call:
                self.arrivals_ns.append(time.time_ns())
                self.results.append(result)
                if self._on_result is not None:
                    self._on_result(result)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc

    def ids(self, camera_id: str) -> list[int]:
        """Frame ids of one camera's results, in arrival order."""
        return [r.frame_id for r in self.results if r.camera_id == camera_id]

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()
        self._thread.join(5)
