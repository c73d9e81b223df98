"""``icmh.v1.Operator``: cameras, stored frames, inspection in machine or human quality, camera config."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import NoReturn

import grpc

from shared.codec.bitstream import BitstreamError
from shared.rpc import common_pb2, operator_pb2, operator_pb2_grpc
from shared.service.edge_config import config_from_proto, config_to_proto
from shared.service.images import encode_png
from shared.service.timestamps import to_timestamp

from .auth import CameraRegistry
from .codecs import CloudCodecs
from .edge_sessions import EdgeOffline, EdgeSessions, ResidualNotFound
from .frame_index import FrameIndex, FrameRecord
from .metrics import CloudMetrics

log = logging.getLogger("icmh.cloud.operator")
MODES = {"pr": common_pb2.RESIDUAL_MODE_PR, "fr": common_pb2.RESIDUAL_MODE_FR}
Quality = operator_pb2.Quality
MAX_LIST = 10_000


class PngCache:
    """Least-recently-used decoded frames: (camera, frame, quality) -> (PNG, residual bytes used)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[tuple[str, int, int], tuple[bytes, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> tuple[bytes, int] | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: tuple[str, int, int], value: tuple[bytes, int]) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


def frame_info(record: FrameRecord) -> operator_pb2.FrameInfo:
    return operator_pb2.FrameInfo(
        camera_id=record.camera_id, frame_id=record.frame_id, capture_time=to_timestamp(record.capture_ns),
        receive_time=to_timestamp(record.receive_ns), width=record.width, height=record.height,
        base_rate=record.rate, base_bytes=record.base_bytes, residual_bytes=record.residual_bytes,
        base_bpp=record.base_bpp, detected=record.result is not None,
        detection_count=len(record.result.detections) if record.result else 0,
    )


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


class OperatorService(operator_pb2_grpc.OperatorServicer):
    def __init__(self, registry: CameraRegistry, index: FrameIndex, sessions: EdgeSessions, codecs: CloudCodecs,
                 metrics: CloudMetrics, residual_timeout_s: float = 5.0, cache_frames: int = 64) -> None:
        self.registry, self.index, self.sessions, self.codecs = registry, index, sessions, codecs
        self.metrics, self.residual_timeout_s = metrics, residual_timeout_s
        self.cache = PngCache(cache_frames)

    def ListCameras(self, request: operator_pb2.ListCamerasRequest,  # noqa: N802 - gRPC method name
                    context: grpc.ServicerContext) -> operator_pb2.ListCamerasResponse:
        records = {c.camera_id: c for c in self.index.cameras()}
        cameras = []
        for camera_id in sorted(set(self.registry.ids()) | set(records)):
            session, record, entry = self.sessions.get(camera_id), records.get(camera_id), self.registry.get(camera_id)
            info = operator_pb2.CameraInfo(
                camera_id=camera_id,
                state=operator_pb2.CAMERA_STATE_ONLINE if session else operator_pb2.CAMERA_STATE_OFFLINE,
                fps=session.fps.rate() if session else 0.0,
                config=config_to_proto({**(entry.config if entry else {}), **(record.config if record else {})}),
            )
            if record is not None:
                info.last_frame_id, info.frames_stored = record.last_frame_id, record.frames_stored
                info.width, info.height = record.width, record.height
                info.residual_mode = MODES.get(record.residual_mode, common_pb2.RESIDUAL_MODE_UNSPECIFIED)
                if record.last_capture_ns:
                    info.last_capture_time.CopyFrom(to_timestamp(record.last_capture_ns))
            cameras.append(info)
        return operator_pb2.ListCamerasResponse(cameras=cameras)

    def ListFrames(self, request: operator_pb2.ListFramesRequest,  # noqa: N802
                   context: grpc.ServicerContext) -> operator_pb2.ListFramesResponse:
        if not request.camera_id:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "camera_id is required")
        limit = min(request.limit or 100, MAX_LIST)
        records = self.index.frames(request.camera_id, request.min_frame_id, request.max_frame_id, limit)
        return operator_pb2.ListFramesResponse(frames=[frame_info(r) for r in records])

    def GetFrame(self, request: operator_pb2.GetFrameRequest,  # noqa: N802
                 context: grpc.ServicerContext) -> operator_pb2.GetFrameResponse:
        camera_id, frame_id = request.camera_id, request.frame_id
        quality = request.quality or Quality.QUALITY_MACHINE
        if quality not in (Quality.QUALITY_MACHINE, Quality.QUALITY_HUMAN):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown quality {quality}")
        record = self.index.frame(camera_id, frame_id)
        base = self.index.base_layer(camera_id, frame_id) if record else None
        if record is None or base is None:
            _abort(context, grpc.StatusCode.NOT_FOUND,
                   f"camera {camera_id!r} has no frame {frame_id} in the index (not received, or removed by retention)")
        key = (camera_id, frame_id, quality)
        cached = self.cache.get(key)
        if cached is None:
            cached = self._decode(context, record, base, quality)
            self.cache.put(key, cached)
        png, residual_bytes = cached
        pixels = record.width * record.height
        return operator_pb2.GetFrameResponse(
            frame=frame_info(record), quality=quality, png=png,
            detections=[d.to_proto() for d in record.result.detections] if record.result else [],
            base_bytes=record.base_bytes, residual_bytes=residual_bytes, base_bpp=record.base_bpp,
            residual_bpp=8.0 * residual_bytes / pixels,
        )

    def _decode(self, context: grpc.ServicerContext, record: FrameRecord, base: bytes,
                quality: int) -> tuple[bytes, int]:
        """(PNG, residual bytes used) of a frame in the requested quality; aborts with a clear status."""
        if quality == Quality.QUALITY_MACHINE:
            start = time.perf_counter()
            image = self.codecs.decode_machine(base)
            self.metrics.decode_seconds.labels("machine").observe(time.perf_counter() - start)
            return encode_png(image), 0
        residual = self._fetch_residual(context, record.camera_id, record.frame_id)
        start = time.perf_counter()
        try:
            image = self.codecs.decode_human(base, residual)
        except BitstreamError as exc:
            self.metrics.errors.labels("residual_decode").inc()
            _abort(context, grpc.StatusCode.DATA_LOSS, f"residual of frame {record.frame_id} does not decode: {exc}")
        self.metrics.decode_seconds.labels("human").observe(time.perf_counter() - start)
        return encode_png(image), len(residual)

    def _fetch_residual(self, context: grpc.ServicerContext, camera_id: str, frame_id: int) -> bytes:
        session = self.sessions.get(camera_id)
        if session is None:
            self.metrics.errors.labels("edge_offline").inc()
            _abort(context, grpc.StatusCode.UNAVAILABLE,
                   f"edge of camera {camera_id} is offline: human quality needs its residual layer")
        start = time.perf_counter()
        try:
            residual = session.request_residual(frame_id, self.residual_timeout_s)
        except EdgeOffline as exc:
            self.metrics.errors.labels("edge_offline").inc()
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except ResidualNotFound as exc:
            self.metrics.errors.labels("residual_not_found").inc()
            _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        self.metrics.residual_fetch_seconds.observe(time.perf_counter() - start)
        return residual

    def ConfigureCamera(self, request: operator_pb2.ConfigureCameraRequest,  # noqa: N802
                        context: grpc.ServicerContext) -> operator_pb2.ConfigureCameraResponse:
        entry = self.registry.get(request.camera_id)
        if entry is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"camera {request.camera_id!r} is not registered")
        try:
            changes = config_from_proto(request.config)
        except ValueError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        stored = self.index.set_camera_config(request.camera_id, changes)
        session = self.sessions.get(request.camera_id)
        delivered = session is not None and session.send_config(config_to_proto(changes))
        log.info("camera %s config %s (%s)", request.camera_id, changes, "sent" if delivered else "on next connect")
        return operator_pb2.ConfigureCameraResponse(config=config_to_proto({**entry.config, **stored}),
                                                    delivered=delivered)
