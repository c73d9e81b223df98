"""Live edge streams: at most one per camera, the way back to an edge for residual requests and config."""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from icmh.rpc import common_pb2, edge_pb2


class EdgeOffline(Exception):
    """The camera's edge has no open stream (or it closed while we waited)."""


class ResidualNotFound(Exception):
    """The edge does not hold the frame's residual layer, or what it needs for the lossless layer (evicted)."""


class FpsMeter:
    """Frames per second over the last ``window_s`` seconds of arrivals (0 when none arrived)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def add(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and self._times[0] < now - self.window_s:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-6)


class EdgeSession:
    """One open ``EdgeLink.Connect`` stream of a camera."""

    def __init__(self, camera_id: str, residual_mode: str, width: int, height: int) -> None:
        self.camera_id, self.residual_mode, self.width, self.height = camera_id, residual_mode, width, height
        self.session_id = uuid.uuid4().hex[:12]
        self.outgoing: queue.Queue[edge_pb2.CloudMessage | None] = queue.Queue()
        self.fps = FpsMeter()
        self.closed = threading.Event()
        self._pending: dict[int, Future[edge_pb2.ResidualResponse]] = {}
        self._request_ids = itertools.count(1)
        self._lock = threading.Lock()

    def send(self, message: edge_pb2.CloudMessage) -> bool:
        """Queue a message to the edge; False when the stream is closed."""
        with self._lock:
            if self.closed.is_set():
                return False
            self.outgoing.put(message)
            return True

    def send_config(self, config: common_pb2.EdgeConfig) -> bool:
        return self.send(edge_pb2.CloudMessage(config=config))

    def request_residual(self, frame_id: int, timeout: float, lossless: bool = False,
                         rate: float | None = None) -> bytes:
        """Ask the edge for a frame's residual layer (``lossless``: its lossless layer; ``rate``: the residual at
        that rate where the edge can code it, see ``ResidualRequest``) and wait for it.

        Raises EdgeOffline (stream closed, or no answer within ``timeout``) or ResidualNotFound.
        """
        future: Future[edge_pb2.ResidualResponse] = Future()
        with self._lock:
            request_id = next(self._request_ids)
            self._pending[request_id] = future
        request = edge_pb2.ResidualRequest(request_id=request_id, frame_id=frame_id, lossless=lossless,
                                           residual_rate=rate)
        if not self.send(edge_pb2.CloudMessage(residual_request=request)):
            self._forget(request_id)
            raise EdgeOffline(f"edge of camera {self.camera_id} disconnected")
        try:
            response = future.result(timeout)
        except FutureTimeout:
            raise EdgeOffline(f"edge of camera {self.camera_id} did not answer within {timeout:g}s") from None
        finally:
            self._forget(request_id)
        if response.status != edge_pb2.ResidualResponse.STATUS_OK:
            layer = "captured frame" if lossless else "residual"
            raise ResidualNotFound(f"edge of camera {self.camera_id} no longer holds the {layer} of frame {frame_id}")
        return response.residual_layer

    def _forget(self, request_id: int) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def resolve(self, response: edge_pb2.ResidualResponse) -> bool:
        """Hand an edge's answer to the waiting request; False if nobody waits for it (late or bogus)."""
        with self._lock:
            future = self._pending.pop(response.request_id, None)
        if future is None:
            return False
        future.set_result(response)
        return True

    def close(self) -> bool:
        """End the stream: the sender stops, waiting requests fail with EdgeOffline. False if already closed."""
        with self._lock:
            if self.closed.is_set():
                return False
            self.closed.set()
            pending, self._pending = self._pending, {}
            self.outgoing.put(None)
        for future in pending.values():
            future.set_exception(EdgeOffline(f"edge of camera {self.camera_id} disconnected"))
        return True


class EdgeSessions:
    """The current session of every connected camera; a new one replaces (closes) the old."""

    def __init__(self) -> None:
        self._sessions: dict[str, EdgeSession] = {}
        self._lock = threading.Lock()

    def open(self, session: EdgeSession) -> EdgeSession | None:
        """Make ``session`` its camera's current one; returns the replaced session (already closed)."""
        with self._lock:
            old = self._sessions.get(session.camera_id)
            self._sessions[session.camera_id] = session
        if old is not None:
            old.close()
        return old

    def close(self, session: EdgeSession) -> bool:
        """Close a session and forget it; False if it was already closed."""
        closed = session.close()
        with self._lock:
            if self._sessions.get(session.camera_id) is session:
                del self._sessions[session.camera_id]
        return closed

    def get(self, camera_id: str) -> EdgeSession | None:
        with self._lock:
            return self._sessions.get(camera_id)

    def count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close_all(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()
