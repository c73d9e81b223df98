"""The edge's end of the ``EdgeLink.Connect`` stream.

One session = one stream: Hello, then base packets in frame-id order with at most
``window`` unacknowledged; a frame leaves the outbox only on the cloud's ack, so after
a reconnect every unacknowledged frame is sent again (the cloud answers DUPLICATE for
those it already holds). Residual requests are answered on the same stream. Lost
links are retried with exponential backoff; refusals (bad token, unknown camera,
codec mismatch) end the link with :class:`LinkRefused`, and so does, with TLS on, a cloud whose certificate
does not verify against the configured CA or does not match the expected server name (``tls_server_name``,
else the host of the address connected to): the edge never talks to such a cloud.

Several cloud replicas: ``target`` may list several addresses (comma separated); the edge starts at the one its
camera id hashes to (so cameras with the same list spread over it) and moves to the next when one cannot be
reached. A replica that does not hold the camera redirects the edge to the one that does
(:mod:`icmh.service.replica_redirect`); when that one was just unreachable (it died), the edge waits for its
lease to run out and asks again, and the replica it asks then takes the camera over.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from icmh.rpc import common_pb2, edge_pb2, edge_pb2_grpc
from icmh.service.edge_config import config_from_proto
from icmh.service.grpc_setup import MAX_REPLY_BYTES, open_channel
from icmh.service.replica_redirect import Redirect, parse_redirect
from icmh.service.residual_modes import requested_residual_rate
from icmh.service.timestamps import to_timestamp

from .metrics import EdgeMetrics
from .rate_control import RateControl
from .store import EdgeStore

if TYPE_CHECKING:  # the codec (torch) loads with the node, not with the command line
    from .layers import InspectionLayers

log = logging.getLogger("icmh.edge.link")

REFUSAL_CODES = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
}
_ACK_NAMES = {v: k.removeprefix("STATUS_").lower() for k, v in edge_pb2.Ack.Status.items()}
MAX_REDIRECTS = 3  # followed in a row at once; beyond, or back to an address that just failed: wait first


class LinkRefused(RuntimeError):
    """The cloud refused this edge; retrying cannot help until the configuration changes."""

    def __init__(self, code: grpc.StatusCode, details: str, message: str | None = None) -> None:
        super().__init__(message or f"cloud refused the connection: {code.name}: {details}")
        self.code = code


class _Redirected(Exception):
    """The replica reached does not hold the camera: connect to ``redirect.address``."""

    def __init__(self, redirect: Redirect, details: str) -> None:
        super().__init__(details)
        self.redirect = redirect


@dataclass(frozen=True)
class LinkSettings:
    target: str  # host:port of the cloud server; several replicas: host:port,host:port,...
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    window: int = 32  # base packets in flight without an ack
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.tls_server_name and self.tls_ca is None and self.tls_cert is None:
            raise ValueError("--tls-server-name needs TLS (--tls-ca)")
        bad = [t for t in self.targets if not t.rpartition(":")[2].isdigit()]
        if not self.targets or bad:
            raise ValueError(f"--cloud must be host:port (several: comma separated), got {self.target!r}")

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    @property
    def targets(self) -> list[str]:
        """The cloud addresses, in order."""
        return [t.strip() for t in self.target.split(",") if t.strip()]


def preferred_index(camera_id: str, count: int) -> int:
    """The address of a list of ``count`` a camera tries first: cameras with one list spread over it."""
    return zlib.crc32(camera_id.encode()) % count


def addresses_starting_at(camera_id: str, addresses: list[str], first: str) -> str:
    """A ``--cloud`` list of ``addresses`` (comma separated, rotated) whose address the camera's edge tries first
    is ``first``: to place a camera on a chosen replica."""
    shift = (addresses.index(first) - preferred_index(camera_id, len(addresses))) % len(addresses)
    return ",".join(addresses[shift:] + addresses[:shift])


def certificate_refusal(settings: LinkSettings, error: grpc.RpcError, target: str | None = None) -> LinkRefused | None:
    """The refusal to report when a TLS connection to ``target`` (default: the first address) failed on the
    cloud's certificate (None otherwise)."""
    details = error.details() or ""
    lowered = details.lower()
    if not settings.tls or error.code() != grpc.StatusCode.UNAVAILABLE or not (
            "certificate" in lowered or "hostname verification" in lowered):
        return None
    target = target or settings.targets[0]
    name = settings.tls_server_name or target.rpartition(":")[0]
    ca = settings.tls_ca or "the system CA store"
    return LinkRefused(error.code(), details, f"refusing the cloud at {target}: its certificate does not "
                                              f"verify against {ca} for server name {name!r}: {details}")


class Backoff:
    """Exponential reconnect delays with +-20 % jitter."""

    def __init__(self, minimum: float, maximum: float) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("backoff needs 0 < min <= max")
        self.minimum, self.maximum = minimum, maximum
        self._next = minimum

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.minimum


def apply_config(rates: RateControl, config: common_pb2.EdgeConfig) -> None:
    """Apply the set fields of a cloud config; invalid values are logged and ignored."""
    try:
        fields = config_from_proto(config)
    except ValueError as exc:
        log.warning("ignoring config from the cloud: %s", exc)
        return
    if not fields:
        return
    now = rates.apply(**fields)
    log.info("config from the cloud: base rate %.3f, residual rate %.3f, target %.0f kbps",
             now.base, now.residual, now.target_kbps)


class _Session:
    """One stream: the messages to send and the base packets in flight."""

    def __init__(self, hello: edge_pb2.Hello, store: EdgeStore, window: int, metrics: EdgeMetrics) -> None:
        self.hello, self.store, self.window, self.metrics = hello, store, window, metrics
        self.control: queue.SimpleQueue[edge_pb2.EdgeMessage] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.closed = threading.Event()
        self.welcomed = False
        self.max_packet_bytes = 0
        self._lock = threading.Lock()
        self._last_sent = 0
        self._in_flight: set[int] = set()

    def requests(self) -> Iterator[edge_pb2.EdgeMessage]:
        """The request stream (consumed by a gRPC thread): Hello, then answers and packets."""
        yield edge_pb2.EdgeMessage(hello=self.hello)
        while not self.closed.is_set():
            try:
                yield self.control.get_nowait()
                continue
            except queue.Empty:
                pass
            packet = self._next_packet()
            if packet is not None:
                yield packet
                continue
            self.wake.wait(0.5)
            self.wake.clear()

    def _next_packet(self) -> edge_pb2.EdgeMessage | None:
        with self._lock:
            if not self.welcomed or len(self._in_flight) >= self.window:
                return None
            while (frame := self.store.next_pending(self._last_sent)) is not None:
                self._last_sent = frame.frame_id
                if self.max_packet_bytes and len(frame.base) > self.max_packet_bytes:
                    log.error("frame %d: base layer of %d bytes exceeds the cloud's limit of %d; dropped",
                              frame.frame_id, len(frame.base), self.max_packet_bytes)
                    self.store.acknowledge(frame.frame_id)
                    self.metrics.frames_dropped.labels("oversized").inc()
                    continue
                self._in_flight.add(frame.frame_id)
                self.metrics.frames_sent.inc()
                return edge_pb2.EdgeMessage(base=edge_pb2.BasePacket(
                    frame_id=frame.frame_id, capture_time=to_timestamp(frame.capture_ns), base_layer=frame.base,
                    rate=frame.rate, residual_bytes=frame.residual_bytes,
                    residual_on_request=frame.residual_on_request,
                ))
        return None

    def welcome(self, max_packet_bytes: int) -> None:
        """The cloud accepted the session: base packets may flow."""
        with self._lock:
            self.max_packet_bytes = max_packet_bytes
            self.welcomed = True
        self.wake.set()

    def acknowledged(self, frame_id: int) -> None:
        with self._lock:
            self._in_flight.discard(frame_id)
        self.wake.set()

    def send(self, message: edge_pb2.EdgeMessage) -> None:
        self.control.put(message)
        self.wake.set()

    def close(self) -> None:
        self.closed.set()
        self.wake.set()


class CloudLink:
    """Keeps the stream to the cloud up until stopped or refused."""

    def __init__(self, settings: LinkSettings, hello: edge_pb2.Hello, store: EdgeStore, rates: RateControl,
                 metrics: EdgeMetrics, layers: InspectionLayers | None = None) -> None:
        self.settings, self.hello, self.store, self.rates, self.metrics = settings, hello, store, rates, metrics
        self.layers = layers  # None: answer with stored residual layers only
        # layer requests may code a residual (lazy policy): off the stream's reader thread, one at a time
        self._requests = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-layers")
        self.error: LinkRefused | None = None
        self.sessions = 0  # streams that got a Welcome
        self.target = settings.targets[0]  # the address of the current (or last) stream
        self._session: _Session | None = None
        self._call: grpc.Future | None = None

    def notify(self) -> None:
        """A new frame is in the outbox."""
        session = self._session
        if session is not None:
            session.wake.set()

    def run(self, stop: threading.Event) -> None:
        """Connect, stream, reconnect with backoff (moving along the addresses, following redirects); returns
        when ``stop`` is set or the cloud refuses."""
        backoff = Backoff(self.settings.backoff_min_s, self.settings.backoff_max_s)
        targets = self.settings.targets
        position = preferred_index(self.hello.camera_id, len(targets))
        override: str | None = None  # the next address when it is not targets[position]
        failed: str | None = None  # the address that could not be reached last
        redirects = 0
        first = True
        try:
            while not stop.is_set():
                if not first:
                    self.metrics.reconnects.inc()
                first = False
                target, override = override or targets[position], None
                try:
                    if self._run_session(stop, target):
                        backoff.reset()
                        redirects, failed, override = 0, None, target  # a broken stream: the same replica first
                    else:
                        failed = target
                        if target == targets[position]:
                            position = (position + 1) % len(targets)
                    delay = backoff.next()
                except LinkRefused as exc:
                    self.error = exc
                    log.error("%s", exc)
                    return
                except _Redirected as exc:
                    owner, redirects = exc.redirect, redirects + 1
                    if owner.address not in (target, failed) and redirects <= MAX_REDIRECTS:
                        log.info("%s: connecting to replica %s at %s", exc, owner.replica_id, owner.address)
                        override = owner.address
                        continue
                    override = target  # the holder is gone: this replica takes over once its lease runs out
                    delay = min(owner.remaining_s + 0.1, backoff.next())
                if not stop.is_set():
                    log.info("reconnecting to %s in %.1fs", override or targets[position], delay)
                    stop.wait(delay)
        finally:
            self._requests.shutdown(wait=False, cancel_futures=True)

    def cancel(self) -> None:
        """End the current stream (used on shutdown)."""
        call = self._call
        if call is not None:
            call.cancel()

    def _run_session(self, stop: threading.Event, target: str) -> bool:
        """One stream to ``target``; True when the cloud welcomed it."""
        s = self.settings
        session = _Session(self.hello, self.store, s.window, self.metrics)
        channel = open_channel(target, ca=s.tls_ca, cert=s.tls_cert, key=s.tls_key, server_name=s.tls_server_name,
                               max_send_bytes=MAX_REPLY_BYTES)
        self._session = session
        self.target = target
        try:
            call = edge_pb2_grpc.EdgeLinkStub(channel).Connect(session.requests())
            self._call = call
            if stop.is_set():
                call.cancel()
            for message in call:
                self._handle(session, message)
            log.info("cloud ended the stream")
        except grpc.RpcError as exc:
            code = exc.code()
            if code in REFUSAL_CODES:
                raise LinkRefused(code, exc.details()) from None
            refusal = certificate_refusal(s, exc, target)
            if refusal is not None:
                raise refusal from None
            trailing = getattr(exc, "trailing_metadata", lambda: None)()
            redirect = parse_redirect(trailing) if code == grpc.StatusCode.UNAVAILABLE else None
            if redirect is not None and not stop.is_set():
                raise _Redirected(redirect, exc.details() or "redirected") from None
            if not stop.is_set():
                log.warning("link to %s lost: %s: %s", target, code.name, exc.details())
        finally:
            session.close()
            self._session = self._call = None
            self.metrics.connected.set(0)
            channel.close()
        return session.welcomed

    def _handle(self, session: _Session, message: edge_pb2.CloudMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "welcome":
            self._welcome(session, message.welcome)
        elif kind == "ack":
            self._ack(session, message.ack)
        elif kind == "residual_request":
            self._answer(session, message.residual_request)
        elif kind == "config":
            apply_config(self.rates, message.config)
        else:
            log.warning("ignoring unknown message from the cloud")

    def _welcome(self, session: _Session, welcome: edge_pb2.Welcome) -> None:
        if self.store.align_sequence(welcome.last_frame_id):
            log.info("new store: frame ids continue after the cloud's last frame %d", welcome.last_frame_id)
        apply_config(self.rates, welcome.config)
        session.welcome(welcome.max_packet_bytes)
        self.sessions += 1
        self.metrics.connected.set(1)
        log.info("connected to %s as %s (session %s; cloud holds frames up to %d)",
                 self.target, self.hello.camera_id, welcome.session_id, welcome.last_frame_id)

    def _ack(self, session: _Session, ack: edge_pb2.Ack) -> None:
        self.store.acknowledge(ack.frame_id)
        session.acknowledged(ack.frame_id)
        self.metrics.frames_acked.labels(_ACK_NAMES.get(ack.status, "unknown")).inc()
        if ack.status == edge_pb2.Ack.STATUS_REJECTED:
            self.metrics.frames_dropped.labels("rejected").inc()
            log.warning("cloud rejected frame %d: %s", ack.frame_id, ack.reason)

    def _answer(self, session: _Session, request: edge_pb2.ResidualRequest) -> None:
        self._requests.submit(self._serve, session, request)

    def _serve(self, session: _Session, request: edge_pb2.ResidualRequest) -> None:
        """Answer one layer request: the residual layer (stored, or coded now) or the lossless layer."""
        counter = self.metrics.lossless_requests if request.lossless else self.metrics.residual_requests
        try:
            if self.layers is None:
                data = None if request.lossless else self.store.residual(request.frame_id)
            elif request.lossless:
                data = self.layers.lossless(request.frame_id)
            else:
                data = self.layers.residual(request.frame_id, requested_residual_rate(request))
        except Exception:  # a corrupt stored frame must not end the link: the cloud gets NOT_FOUND
            log.exception("frame %d: cannot produce the requested layer", request.frame_id)
            counter.labels("error").inc()
            data = None
        else:
            counter.labels("ok" if data is not None else "not_found").inc()
        status = edge_pb2.ResidualResponse.STATUS_OK if data is not None else edge_pb2.ResidualResponse.STATUS_NOT_FOUND
        session.send(edge_pb2.EdgeMessage(residual=edge_pb2.ResidualResponse(
            request_id=request.request_id, frame_id=request.frame_id, status=status, residual_layer=data or b"",
        )))
