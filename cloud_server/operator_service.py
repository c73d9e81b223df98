"""``icmh.v1.Operator``: cameras, stored frames, inspection in machine or human quality, camera config.

With several replicas on one index a call may reach a replica that does not hold the camera's edge stream: the
camera's state comes from its lease, and the layers a HUMAN / ORIGINAL inspection needs (and config pushes) go
through the replica holding the stream (:mod:`icmh.cloud.replica_routing`); authorisation, decoding and the
audit row stay on the replica the operator called.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import grpc

from icmh.codec import lossless
from icmh.codec.bitstream import BitstreamError, unpack
from icmh.codec.rate import RATE_STEPS
from icmh.rpc import common_pb2, operator_pb2, operator_pb2_grpc
from icmh.service.edge_config import config_from_proto, config_to_proto
from icmh.service.images import encode_png
from icmh.service.residual_modes import PROTO_OF_MODE, requested_residual_rate
from icmh.service.timestamps import to_timestamp

from .access import OperatorAccess, abort
from .audit import AuditLog, InspectionGuard, audited, check_ids
from .auth import CameraRegistry, Role
from .codecs import CloudCodecs
from .edge_sessions import EdgeOffline, EdgeSessions, ResidualNotFound
from .frame_index import FrameIndex, FrameRecord
from .metrics import CloudMetrics
from .replica_routing import ReplicaRouter
from .replicas import ReplicaCoordinator

log = logging.getLogger("icmh.cloud.operator")
Quality = operator_pb2.Quality
MAX_LIST = 10_000


class Decoded(NamedTuple):
    """A frame decoded for an operator: its PNG, the bytes of the edge's layers it took, the residual's rate."""

    png: bytes
    residual_bytes: int = 0
    lossless_bytes: int = 0
    residual_rate: float = 0.0


def residual_rate_of(layer: bytes) -> float:
    """The rate R of a residual layer that has decoded, from its header."""
    return unpack(layer)[0].rate_index / RATE_STEPS


CacheKey = tuple[str, int, int, float | None]


class PngCache:
    """Least-recently-used decoded frames: (camera, frame, quality, requested residual rate) -> :class:`Decoded`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[CacheKey, Decoded] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> Decoded | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: CacheKey, value: Decoded) -> None:
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


class OperatorService(operator_pb2_grpc.OperatorServicer):
    def __init__(self, registry: CameraRegistry, index: FrameIndex, sessions: EdgeSessions, codecs: CloudCodecs,
                 metrics: CloudMetrics, residual_timeout_s: float = 5.0, cache_frames: int = 64, *,
                 access: OperatorAccess, audit: AuditLog, replicas: ReplicaCoordinator | None = None,
                 router: ReplicaRouter | None = None, exact_views: bool = False) -> None:
        if (replicas is None) != (router is None):
            raise ValueError("replicas and their router go together")
        self.registry, self.index, self.sessions, self.codecs = registry, index, sessions, codecs
        self.replicas, self.router = replicas, router
        self.metrics, self.residual_timeout_s = metrics, residual_timeout_s
        self.cache = PngCache(cache_frames)
        # machine and human views: float synthesis unless asked (QUALITY_ORIGINAL is always exact)
        self.exact_views = exact_views
        self.access, self.audit = access, audit
        self.inspections = InspectionGuard(access, audit, metrics)  # used by @audited (GetFrame)
        self._base_decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="base-decode")

    def ListCameras(self, request: operator_pb2.ListCamerasRequest,  # noqa: N802 - gRPC method name
                    context: grpc.ServicerContext) -> operator_pb2.ListCamerasResponse:
        caller = self.access.require(context, Role.VIEWER)
        records = {c.camera_id: c for c in self.index.cameras()}
        holders = self.replicas.holders() if self.replicas is not None else {}
        cameras = []
        for camera_id in sorted(c for c in set(self.registry.ids()) | set(records) if caller.may_see(c)):
            session, record, entry = self.sessions.get(camera_id), records.get(camera_id), self.registry.get(camera_id)
            holder = holders.get(camera_id)
            remote = session is None and holder is not None and holder.online  # streaming to another replica
            info = operator_pb2.CameraInfo(
                camera_id=camera_id,
                state=operator_pb2.CAMERA_STATE_ONLINE if session or remote else operator_pb2.CAMERA_STATE_OFFLINE,
                fps=session.fps.rate() if session else holder.fps if remote else 0.0,
                config=config_to_proto({**(entry.config if entry else {}), **(record.config if record else {})}),
            )
            if record is not None:
                info.last_frame_id, info.frames_stored = record.last_frame_id, record.frames_stored
                info.width, info.height = record.width, record.height
                info.residual_mode = PROTO_OF_MODE.get(record.residual_mode, common_pb2.RESIDUAL_MODE_UNSPECIFIED)
                if record.last_capture_ns:
                    info.last_capture_time.CopyFrom(to_timestamp(record.last_capture_ns))
            cameras.append(info)
        return operator_pb2.ListCamerasResponse(cameras=cameras)

    def ListFrames(self, request: operator_pb2.ListFramesRequest,  # noqa: N802
                   context: grpc.ServicerContext) -> operator_pb2.ListFramesResponse:
        if not request.camera_id:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "camera_id is required")
        check_ids(context, request.camera_id, request.min_frame_id, request.max_frame_id)
        self.access.require(context, Role.VIEWER, request.camera_id)
        limit = min(request.limit or 100, MAX_LIST)
        records = self.index.frames(request.camera_id, request.min_frame_id, request.max_frame_id, limit)
        return operator_pb2.ListFramesResponse(frames=[frame_info(r) for r in records])

    @audited  # role and camera checks before the body; HUMAN / ORIGINAL recorded in the audit log
    def GetFrame(self, request: operator_pb2.GetFrameRequest,  # noqa: N802
                 context: grpc.ServicerContext) -> operator_pb2.GetFrameResponse:
        camera_id, frame_id = request.camera_id, request.frame_id
        quality = request.quality or Quality.QUALITY_MACHINE
        if quality not in (Quality.QUALITY_MACHINE, Quality.QUALITY_HUMAN, Quality.QUALITY_ORIGINAL):
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown quality {quality}")
        rate = requested_residual_rate(request)
        if rate is not None and (quality != Quality.QUALITY_HUMAN or not 0.0 <= rate <= 1.0):
            abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                  f"residual_rate must be in [0, 1] and goes with QUALITY_HUMAN only (got {rate:g})")
        record = self.index.frame(camera_id, frame_id)
        base = self.index.base_layer(camera_id, frame_id) if record else None
        if record is None or base is None:
            abort(context, grpc.StatusCode.NOT_FOUND,
                   f"camera {camera_id!r} has no frame {frame_id} in the index (not received, or removed by retention)")
        key = (camera_id, frame_id, quality, rate)
        cached = self.cache.get(key)
        if cached is None:
            cached = self._decode(context, record, base, quality, rate)
            self.cache.put(key, cached)
        pixels = record.width * record.height
        return operator_pb2.GetFrameResponse(
            frame=frame_info(record), quality=quality, png=cached.png,
            detections=[d.to_proto() for d in record.result.detections] if record.result else [],
            base_bytes=record.base_bytes, residual_bytes=cached.residual_bytes, base_bpp=record.base_bpp,
            residual_bpp=8.0 * cached.residual_bytes / pixels, lossless_bytes=cached.lossless_bytes,
            residual_rate=cached.residual_rate,
        )

    def _decode(self, context: grpc.ServicerContext, record: FrameRecord, base: bytes, quality: int,
                rate: float | None = None) -> Decoded:
        """A frame in the requested quality (HUMAN: with the residual at ``rate``, None: as captured); aborts with a
        clear status."""
        if quality == Quality.QUALITY_MACHINE:
            start = time.perf_counter()
            image = self.codecs.decode_machine(base, self.exact_views)
            self.metrics.decode_seconds.labels("machine").observe(time.perf_counter() - start)
            return Decoded(encode_png(image))
        if quality == Quality.QUALITY_ORIGINAL:
            return self._decode_original(context, record, base)
        # the base layer decodes while the edge codes / sends the residual layer (FR needs no machine image)
        camera = self.index.camera(record.camera_id)
        decoding_base = self._base_decoder.submit(self.codecs.decode_base, base, self.exact_views,
                                                  camera is None or camera.residual_mode != "fr")
        try:
            residual = self._fetch_residual(context, record.camera_id, record.frame_id, rate=rate)
        except BaseException:
            decoding_base.cancel()  # only if it has not started; a running decode finishes unused
            raise
        start = time.perf_counter()
        try:
            image = self.codecs.decode_human(base, residual, self.exact_views, decoding_base.result())
        except BitstreamError as exc:
            self.metrics.errors.labels("residual_decode").inc()
            abort(context, grpc.StatusCode.DATA_LOSS, f"residual of frame {record.frame_id} does not decode: {exc}")
        self.metrics.decode_seconds.labels("human").observe(time.perf_counter() - start)
        return Decoded(encode_png(image), len(residual), residual_rate=residual_rate_of(residual))

    def _decode_original(self, context: grpc.ServicerContext, record: FrameRecord, base: bytes) -> Decoded:
        """The captured frame, exactly: the edge's lossless layer (+ its residual layer if that layer refines it)."""
        layer = self._fetch_residual(context, record.camera_id, record.frame_id, lossless_layer=True)
        residual = None
        try:
            if lossless.needs_residual(layer):
                residual = self._fetch_residual(context, record.camera_id, record.frame_id)
            start = time.perf_counter()
            image = self.codecs.decode_original(base, layer, residual)
        except BitstreamError as exc:
            self.metrics.errors.labels("lossless_decode").inc()
            abort(context, grpc.StatusCode.DATA_LOSS,
                   f"lossless layer of frame {record.frame_id} does not decode: {exc}")
        self.metrics.decode_seconds.labels("original").observe(time.perf_counter() - start)
        return Decoded(encode_png(image), len(residual or b""), len(layer),
                       residual_rate_of(residual) if residual else 0.0)

    def _fetch_residual(self, context: grpc.ServicerContext, camera_id: str, frame_id: int,
                        lossless_layer: bool = False, rate: float | None = None) -> bytes:
        """The frame's residual layer (at ``rate`` where the edge can code it) or lossless layer from its edge,
        whichever replica it streams to; aborts when there is none."""
        session = self.sessions.get(camera_id)
        holder = self.replicas.holder(camera_id) if session is None and self.replicas is not None else None
        if session is None and holder is None:
            self.metrics.errors.labels("edge_offline").inc()
            needs = "original quality needs its lossless layer" if lossless_layer else \
                "human quality needs its residual layer"
            abort(context, grpc.StatusCode.UNAVAILABLE, f"edge of camera {camera_id} is offline: {needs}")
        start = time.perf_counter()
        try:
            if session is not None:
                residual = session.request_residual(frame_id, self.residual_timeout_s, lossless_layer, rate)
            else:
                assert self.router is not None and holder is not None
                residual = self.router.fetch_layer(holder, camera_id, frame_id, lossless_layer,
                                                   self.residual_timeout_s, rate)
        except EdgeOffline as exc:
            self.metrics.errors.labels("edge_offline").inc()
            abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except ResidualNotFound as exc:
            self.metrics.errors.labels("residual_not_found").inc()
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        self.metrics.residual_fetch_seconds.observe(time.perf_counter() - start)
        return residual

    def ConfigureCamera(self, request: operator_pb2.ConfigureCameraRequest,  # noqa: N802
                        context: grpc.ServicerContext) -> operator_pb2.ConfigureCameraResponse:
        check_ids(context, request.camera_id)
        self.access.require(context, Role.ADMIN, request.camera_id)
        entry = self.registry.get(request.camera_id)
        if entry is None:
            abort(context, grpc.StatusCode.NOT_FOUND, f"camera {request.camera_id!r} is not registered")
        try:
            changes = config_from_proto(request.config)
        except ValueError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        stored = self.index.set_camera_config(request.camera_id, changes)
        session = self.sessions.get(request.camera_id)
        if session is not None:
            delivered = session.send_config(config_to_proto(changes))
        else:
            holder = self.replicas.holder(request.camera_id) if self.replicas is not None else None
            delivered = holder is not None and self.router is not None and self.router.push_config(
                holder, request.camera_id, config_to_proto(changes))
        log.info("camera %s config %s (%s)", request.camera_id, changes, "sent" if delivered else "on next connect")
        return operator_pb2.ConfigureCameraResponse(config=config_to_proto({**entry.config, **stored}),
                                                    delivered=delivered)

    def ListAudit(self, request: operator_pb2.ListAuditRequest,  # noqa: N802
                  context: grpc.ServicerContext) -> operator_pb2.ListAuditResponse:
        check_ids(context, request.camera_id)
        caller = self.access.require(context, Role.ADMIN, request.camera_id or None)
        since = request.since.ToNanoseconds() if request.HasField("since") else 0
        until = request.until.ToNanoseconds() if request.HasField("until") else 0
        records = self.audit.query(request.camera_id, request.operator, since, until, request.limit or 100)
        return operator_pb2.ListAuditResponse(records=[r.to_proto() for r in records if caller.may_see(r.camera_id)])
