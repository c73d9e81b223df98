"""Detection results to NATS JetStream (nats-py), each (camera, frame) stored once in the stream.

``nats://[user:password@]host[:4222]/subject[?stream=NAME&duplicate_window=SECONDS]``: results go to
``SUBJECT.CAMERA`` (the camera id as one subject token, see :func:`~icmh.cloud.publishers.base.topic_token`)
with the header ``Nats-Msg-Id: CAMERA:FRAME``. The stream (default name: the subject in capitals, ``.`` -> ``_``)
is created when missing, capturing ``SUBJECT.>`` with a duplicate window of ``duplicate_window`` seconds
(default 600).

A result counts as delivered on JetStream's publish acknowledgement; the batch is sent in order and stops at the
first failure, so what the stream holds of a batch is a prefix of each camera's results. On a retry or after a
restart (``recovering``) the results at or below the last frame the stream holds for their camera are skipped,
and JetStream drops any other re-sent message whose id it saw within the duplicate window: a re-publication
after a crash or an outage is never stored twice.

nats-py is asyncio: the publisher runs its own event loop in a thread and waits on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..results import FrameResult
from .base import Publisher, PublishError, payload, topic_token

log = logging.getLogger("icmh.cloud.nats")
DEFAULT_DUPLICATE_WINDOW_S = 600.0


@dataclass(frozen=True)
class NatsTarget:
    """Where a ``nats://`` / ``tls://`` output URL points."""

    server: str  # scheme://host:port
    subject: str
    stream: str
    duplicate_window_s: float
    user: str | None
    password: str | None


def parse_nats_url(url: str) -> NatsTarget:
    """The server, subject (default ``icmh.detections``), stream name (default: the subject in capitals, ``.`` ->
    ``_``), duplicate window and credentials of a NATS output URL; ValueError if invalid."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls") or not parts.hostname:
        raise ValueError(f"a NATS output is nats://host[:port]/subject, not {url}")
    subject = parts.path.strip("/").replace("/", ".") or "icmh.detections"
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", subject):
        raise ValueError(f"NATS subject {subject!r}: tokens of letters, digits, - and _ separated by dots")
    query = parse_qs(parts.query)
    try:
        window = float(query.get("duplicate_window", [DEFAULT_DUPLICATE_WINDOW_S])[0])
    except ValueError:
        raise ValueError(f"duplicate_window of {url} is not a number of seconds") from None
    return NatsTarget(f"{parts.scheme}://{parts.hostname}:{parts.port or 4222}", subject,
                      query.get("stream", [re.sub(r"[^A-Za-z0-9_-]", "_", subject).upper()])[0], window,
                      unquote(parts.username) if parts.username else None,
                      unquote(parts.password) if parts.password else None)


class NatsPublisher(Publisher):
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        try:
            import nats  # noqa: F401 - checked here, used in the loop thread
        except ImportError as exc:
            raise ValueError("--publish nats://... needs nats-py (pip install 'icmh-traffic[fleet]')") from exc
        target = parse_nats_url(url)
        self.subject, self.stream, self.duplicate_window_s = target.subject, target.stream, target.duplicate_window_s
        self.name = f"nats:{self.subject}"
        self.timeout_s = timeout_s
        self.guard_s = 10 * timeout_s + 30  # a whole batch in recovery: last-message look-ups, then publishes
        self._server, self._user, self._password = target.server, target.user, target.password
        self._nc: Any = None
        self._js: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats-publisher", daemon=True)
        self._thread.start()

    def _run(self, coroutine: Any, timeout_s: float | None = None) -> Any:
        """Run on the publisher's loop; a batch of acknowledgements takes at most its timeouts (guarded)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        timeout_s = self.guard_s if timeout_s is None else timeout_s
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PublishError(f"NATS did not answer within {timeout_s:g} s") from None

    def available(self) -> bool:
        """Connected to the NATS server (the first connection is made here or by the first publish)."""
        if self._nc is None:
            try:
                self._run(self._connect())
            except Exception as exc:  # the server is down: an outage, retried by the delivery loop
                log.debug("NATS connection: %s", exc)
        return self._nc is not None and self._nc.is_connected

    async def _connect(self) -> None:
        import nats

        if self._nc is not None and not self._nc.is_closed:
            if self._nc.is_connected:
                return
            raise PublishError("reconnecting to the NATS server")
        # nats-py retries a first connection forever with max_reconnect_attempts=-1: bound it here
        nc = await asyncio.wait_for(nats.connect(
            self._server, user=self._user, password=self._password, name="icmh-cloud",
            connect_timeout=max(1, round(self.timeout_s)), allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=1, error_cb=self._on_error), self.timeout_s)
        js = nc.jetstream(timeout=self.timeout_s)
        await self._ensure_stream(js)
        self._nc, self._js = nc, js
        log.info("connected to NATS %s, JetStream stream %s (subjects %s.>)", self._server, self.stream,
                 self.subject)

    async def _ensure_stream(self, js: Any) -> None:
        from nats.js.errors import NotFoundError

        wanted = f"{self.subject}.>"
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(name=self.stream, subjects=[wanted], duplicate_window=self.duplicate_window_s)
            return
        if wanted not in (info.config.subjects or []):
            raise PublishError(f"JetStream stream {self.stream} exists but does not capture {wanted}")
        if (info.config.duplicate_window or 0) < self.duplicate_window_s:
            log.warning("stream %s de-duplicates over %.0f s only (asked: %.0f s)", self.stream,
                        info.config.duplicate_window or 0, self.duplicate_window_s)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS connection: %s", exc)

    async def _last_frame(self, camera_id: str) -> int:
        """The last frame id the stream holds for a camera (0: none)."""
        from nats.js.errors import NotFoundError

        try:
            message = await self._js.get_last_msg(self.stream, f"{self.subject}.{topic_token(camera_id)}")
        except NotFoundError:
            return 0
        return int(json.loads(message.data)["frame_id"])

    async def _publish(self, results: list[FrameResult], recovering: bool) -> int:
        await self._connect()
        skipped = 0
        if recovering:
            last = {c: await self._last_frame(c) for c in {r.camera_id for r in results}}
            kept = [r for r in results if r.frame_id > last[r.camera_id]]
            skipped, results = len(results) - len(kept), kept
        for result in results:  # in order, one acknowledgement at a time: what the stream holds is a prefix
            ack = await self._js.publish(f"{self.subject}.{topic_token(result.camera_id)}", payload(result),
                                         timeout=self.timeout_s,
                                         headers={"Nats-Msg-Id": f"{result.camera_id}:{result.frame_id}"})
            skipped += bool(ack.duplicate)
        return skipped

    def publish(self, results: list[FrameResult], recovering: bool = False) -> int:
        from nats.errors import Error as NatsError

        try:
            return self._run(self._publish(results, recovering))
        except PublishError:
            raise
        except (NatsError, asyncio.TimeoutError, OSError) as exc:
            raise PublishError(f"NATS: {str(exc) or type(exc).__name__}") from exc

    def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            try:
                self._run(self._nc.close(), timeout_s=5.0)
            except Exception as exc:  # closing a dead connection
                log.debug("closing the NATS connection: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
