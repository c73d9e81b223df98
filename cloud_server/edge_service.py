"""``icmh.v1.EdgeLink``: the cloud's end of the edges' streams.

Per stream: check the Hello (camera, token, codec, frame size), then one reader thread
admits base packets in order (validate -> commit to the frame index -> ack) and hands
residual answers to the waiting operator requests, while the handler sends acks,
residual requests and config changes back. One of several replicas on a shared index
first claims the camera's lease (:mod:`icmh.cloud.replicas`) and sends an edge whose camera
another replica holds to that replica (``UNAVAILABLE`` with the redirect metadata of
:mod:`icmh.service.replica_redirect`), also when it loses the lease of a connected camera.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

import grpc

from icmh.codec.bitstream import MAX_SIDE, BitstreamError
from icmh.codec.rate import RATE_STEPS
from icmh.rpc import edge_pb2, edge_pb2_grpc
from icmh.service.edge_config import config_to_proto
from icmh.service.replica_redirect import redirect_metadata
from icmh.service.residual_modes import MODE_OF_PROTO
from icmh.service.timestamps import from_timestamp

from .auth import AuthError, CameraRegistry
from .codecs import CloudCodecs
from .edge_sessions import EdgeSession, EdgeSessions
from .frame_index import Admission, FrameIndex
from .leases import Holder
from .metrics import CloudMetrics
from .replicas import ReplicaCoordinator

log = logging.getLogger("icmh.cloud.edges")
Ack = edge_pb2.Ack


class EdgeLinkService(edge_pb2_grpc.EdgeLinkServicer):
    def __init__(self, registry: CameraRegistry, codecs: CloudCodecs, index: FrameIndex, sessions: EdgeSessions,
                 metrics: CloudMetrics, on_frame: Callable[[], None], max_packet_bytes: int,
                 replicas: ReplicaCoordinator | None = None) -> None:
        self.registry, self.codecs, self.index, self.sessions = registry, codecs, index, sessions
        self.metrics, self.on_frame, self.max_packet_bytes = metrics, on_frame, max_packet_bytes
        self.replicas = replicas  # None: the only server of its index

    def Connect(self, request_iterator: Iterator[edge_pb2.EdgeMessage],  # noqa: N802 - gRPC method name
                context: grpc.ServicerContext) -> Iterator[edge_pb2.CloudMessage]:
        session, welcome = self._open(request_iterator, context)
        if not context.add_callback(lambda: self._close(session)):
            self._close(session)  # the call ended already
            return
        session.send(edge_pb2.CloudMessage(welcome=welcome))
        threading.Thread(target=self._read, args=(session, request_iterator), name=f"edge-{session.camera_id}",
                         daemon=True).start()
        try:
            while (message := session.outgoing.get()) is not None:
                yield message
            holder = self.replicas.lost(session.camera_id) if self.replicas is not None else None
            if holder is not None:
                self._redirect(context, session.camera_id, holder, "this replica lost its lease")
        finally:
            self._close(session)

    def _open(self, requests: Iterator[edge_pb2.EdgeMessage],
              context: grpc.ServicerContext) -> tuple[EdgeSession, edge_pb2.Welcome]:
        """Check the Hello and register the session; aborts the call when the edge is refused."""
        try:
            first = next(requests, None)
        except grpc.RpcError:  # cancelled before saying anything
            first = None
        if first is None or first.WhichOneof("kind") != "hello":
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "the first message of a stream must be a Hello")
        hello = first.hello
        try:
            entry = self.registry.authenticate(hello.camera_id, hello.token)
        except AuthError as exc:
            self._refuse(context, exc.code, str(exc), kind="auth")
        mode = MODE_OF_PROTO.get(hello.residual_mode)
        if mode is None:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "Hello has no residual mode")
        if not (1 <= hello.frame_width <= MAX_SIDE and 1 <= hello.frame_height <= MAX_SIDE):
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"frame size {hello.frame_width}x{hello.frame_height} outside 1..{MAX_SIDE}")
        reason = self.codecs.incompatibility(hello.codec, mode)
        if reason:
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, f"camera {hello.camera_id}: {reason}")
        if self.replicas is not None:
            holder = self.replicas.claim(hello.camera_id)
            if holder is not None:
                self._redirect(context, hello.camera_id, holder, "another replica holds it")
        camera = self.index.register_camera(hello.camera_id, hello.frame_width, hello.frame_height, mode)
        session = EdgeSession(hello.camera_id, mode, hello.frame_width, hello.frame_height)
        if self.sessions.open(session) is not None:
            log.info("camera %s reconnected: previous stream closed", session.camera_id)
        self.metrics.edges_connected.set(self.sessions.count())
        log.info("camera %s connected from %s (%dx%d, %s residual, session %s)", session.camera_id, context.peer(),
                 session.width, session.height, mode, session.session_id)
        return session, edge_pb2.Welcome(
            session_id=session.session_id, last_frame_id=camera.last_frame_id, max_packet_bytes=self.max_packet_bytes,
            config=config_to_proto({**entry.config, **camera.config}),
        )

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str,
                kind: str = "bad_hello") -> NoReturn:
        self.metrics.errors.labels(kind).inc()
        log.warning("refused %s: %s", context.peer(), message)
        context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    def _redirect(self, context: grpc.ServicerContext, camera_id: str, holder: Holder, why: str) -> NoReturn:
        """End the call with UNAVAILABLE, naming the replica that holds the camera's lease (if known)."""
        if holder.address:
            context.set_trailing_metadata(redirect_metadata(holder.address, holder.replica_id, holder.remaining_s))
            message = (f"camera {camera_id} streams to replica {holder.replica_id} at {holder.address} ({why}; "
                       f"lease valid for {holder.remaining_s:.1f} s more): connect there")
        else:
            message = f"camera {camera_id}: {why}; try another replica"
        log.info("%s", message)
        context.abort(grpc.StatusCode.UNAVAILABLE, message)
        raise AssertionError("unreachable: abort raises")

    def _close(self, session: EdgeSession) -> None:
        if self.sessions.close(session):
            log.info("camera %s: stream %s closed", session.camera_id, session.session_id)
        self.metrics.edges_connected.set(self.sessions.count())

    def _read(self, session: EdgeSession, requests: Iterator[edge_pb2.EdgeMessage]) -> None:
        try:
            for message in requests:
                kind = message.WhichOneof("kind")
                if kind == "base":
                    session.send(edge_pb2.CloudMessage(ack=self._admit(session, message.base)))
                elif kind == "residual":
                    if not session.resolve(message.residual):
                        log.info("camera %s: late residual answer for frame %d", session.camera_id,
                                 message.residual.frame_id)
                else:
                    self.metrics.errors.labels("protocol").inc()
                    log.warning("camera %s: unexpected %s message ignored", session.camera_id, kind)
        except grpc.RpcError:
            pass  # the stream ended (edge gone, or replaced)
        except Exception:
            log.exception("camera %s: stream failed; the edge will resend what was not acked", session.camera_id)
            self.metrics.errors.labels("stream").inc()
        finally:
            self._close(session)

    def _admit(self, session: EdgeSession, packet: edge_pb2.BasePacket) -> edge_pb2.Ack:
        """Validate a base packet and commit it to the frame index (before the ack is sent)."""
        camera, size = session.camera_id, len(packet.base_layer)
        if size > self.max_packet_bytes:
            return self._reject(session, packet, "oversized_packet",
                                f"base layer of {size} bytes exceeds the limit of {self.max_packet_bytes}")
        if packet.frame_id == 0:
            return self._reject(session, packet, "bad_packet", "frame ids start at 1")
        try:
            header = self.codecs.check_base(packet.base_layer, session.width, session.height)
        except BitstreamError as exc:
            return self._reject(session, packet, "corrupt_packet", f"corrupt base layer: {exc}")
        capture_ns = from_timestamp(packet.capture_time) if packet.HasField("capture_time") else time.time_ns()
        admission = self.index.add_frame(camera, packet.frame_id, capture_ns, header.rate_index / RATE_STEPS,
                                         packet.base_layer, session.width, session.height, packet.residual_bytes)
        if admission is Admission.CONFLICT:
            return self._reject(session, packet, "frame_id_conflict",
                                "frame id already holds a different base layer (was the edge's store reset?)")
        self.metrics.packets.labels(camera, admission.value).inc()
        if admission is Admission.ACCEPTED:
            self.on_frame()
            session.fps.add()
            self.metrics.camera_fps.labels(camera).set(session.fps.rate())
            pixels = session.width * session.height
            for layer, layer_bytes in (("base", size), ("residual", packet.residual_bytes)):
                self.metrics.layer_bytes.labels(camera, layer).inc(layer_bytes)
                self.metrics.bpp.labels(camera, layer).observe(8.0 * layer_bytes / pixels)
            return Ack(frame_id=packet.frame_id, status=Ack.STATUS_ACCEPTED)
        return Ack(frame_id=packet.frame_id, status=Ack.STATUS_DUPLICATE)

    def _reject(self, session: EdgeSession, packet: edge_pb2.BasePacket, kind: str, reason: str) -> edge_pb2.Ack:
        self.metrics.errors.labels(kind).inc()
        self.metrics.packets.labels(session.camera_id, "rejected").inc()
        log.warning("camera %s frame %d rejected: %s", session.camera_id, packet.frame_id, reason)
        return Ack(frame_id=packet.frame_id, status=Ack.STATUS_REJECTED, reason=reason)
