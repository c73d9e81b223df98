"""What the brokers of ``--publish`` outputs got: an MQTT subscriber, readers of a JetStream stream, and
:class:`BrokerCapture`, which gives one benchmark run its own topic prefix / subject on each broker, counts what
arrived there against the detected frames and removes what the run left behind.

Used by ``bench scale --publish`` and by the fleet tests (tests/fleet_support.py). Needs the ``fleet`` extra
(paho-mqtt, nats-py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from icmh.cloud.index_postgres import redact
from icmh.cloud.publishers import output_kind
from icmh.cloud.publishers.mqtt_publisher import parse_mqtt_url
from icmh.cloud.publishers.nats_publisher import parse_nats_url

from .delivery import stats

T = TypeVar("T")
Key = tuple[str, int]  # (camera_id, frame_id)


class MqttMessage(NamedTuple):
    topic: str
    payload: bytes
    retained: bool
    arrival_ns: int  # this machine's clock when the subscriber got it


class MqttCollector:
    """Everything published under ``prefix/#`` (default: the prefix of ``url``): a persistent-session QoS 1
    subscriber, so messages queued for it while it was cut off by a broker restart still arrive."""

    def __init__(self, url: str, prefix: str | None = None, timeout_s: float = 10.0) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt, self._target, self._client_id = mqtt, parse_mqtt_url(url), f"collector-{uuid.uuid4().hex[:8]}"
        self.prefix = prefix or self._target.prefix
        self.messages: list[MqttMessage] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = self._client(clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{self.prefix}/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(self._target.host, self._target.port)
        self.client.loop_start()
        if not self.subscribed.wait(timeout_s):
            self.close()
            raise TimeoutError(f"the MQTT subscriber on {redact(url)} did not subscribe within {timeout_s:g} s")

    def _client(self, clean_session: bool) -> Any:
        client = self._mqtt.Client(self._mqtt.CallbackAPIVersion.VERSION2, client_id=self._client_id,
                                   clean_session=clean_session)
        if self._target.username:
            client.username_pw_set(self._target.username, self._target.password)
        if self._target.tls:
            client.tls_set()
        return client

    def _on_message(self, _client: object, _userdata: object, message: Any) -> None:
        with self._lock:
            self.messages.append(MqttMessage(message.topic, message.payload, bool(message.retain), time.time_ns()))

    def results(self, camera: str) -> list[dict]:
        """The results received for ``camera`` (its topic token), in arrival order."""
        with self._lock:
            return [json.loads(m.payload) for m in self.messages if m.topic.endswith(f"/{camera}/detections")]

    def detections(self) -> list[tuple[dict, int]]:
        """Every result received (``PREFIX/CAMERA/detections``) with its arrival time in ns."""
        with self._lock:
            return [(json.loads(m.payload), m.arrival_ns) for m in self.messages
                    if m.topic.endswith("/detections") and m.payload]

    def last(self, topic: str) -> bytes | None:
        """The payload last received on ``topic``."""
        with self._lock:
            found = [m.payload for m in self.messages if m.topic == topic]
        return found[-1] if found else None

    def clear_status(self, timeout_s: float = 5.0) -> None:
        """Remove the retained status messages seen (``.../status``) from the broker (an empty retained message)."""
        with self._lock:
            topics = {m.topic for m in self.messages if m.topic.endswith("/status")}
        infos = [self.client.publish(topic, b"", qos=1, retain=True) for topic in sorted(topics)]
        for info in infos:
            info.wait_for_publish(timeout_s)

    def close(self) -> None:
        """Disconnect, and drop the persistent session at the broker (a clean-session connection under the same
        client id; skipped when the broker is down)."""
        self.client.disconnect()
        self.client.loop_stop()
        forget = self._client(clean_session=True)
        try:
            forget.connect(self._target.host, self._target.port)
            forget.loop(timeout=2.0)  # the CONNACK: the broker has discarded the old session
            forget.disconnect()
        except OSError:
            pass


def _jetstream(url: str, action: Callable[[Any], Awaitable[T]], timeout_s: float = 15.0) -> T:
    """``action(jetstream context)`` on a fresh connection to the NATS server of ``url`` (no reconnection)."""

    async def run() -> T:
        import nats

        target = parse_nats_url(url)
        nc = await asyncio.wait_for(nats.connect(target.server, user=target.user, password=target.password,
                                                 allow_reconnect=False, connect_timeout=5), timeout_s)
        try:
            return await action(nc.jetstream(timeout=timeout_s))
        finally:
            await nc.close()

    return asyncio.run(run())


class StoredMessage(NamedTuple):
    record: dict
    msg_id: str  # the Nats-Msg-Id header
    stored_ns: int  # JetStream's storage time (µs resolution)


def stream_messages(url: str, stream: str) -> list[StoredMessage]:
    """Every message a JetStream stream holds, in order (the stream missing: nats' ``NotFoundError``)."""

    async def read(js: Any) -> list[StoredMessage]:
        from nats.js.errors import NotFoundError

        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                message = await js.get_msg(stream, seq)
            except NotFoundError:  # deleted from the middle of the stream
                continue
            stored = int(message.time.timestamp() * 1e6) * 1000 if message.time else 0
            out.append(StoredMessage(json.loads(message.data), (message.headers or {}).get("Nats-Msg-Id", ""),
                                     stored))
        return out

    return _jetstream(url, read)


def stream_records(url: str, stream: str) -> list[tuple[dict, str]]:
    """Every message a JetStream stream holds, in order: (payload JSON, Nats-Msg-Id)."""
    return [(m.record, m.msg_id) for m in stream_messages(url, stream)]


def stream_count(url: str, stream: str) -> int:
    """How many messages the stream holds (0 when it does not exist)."""

    async def count(js: Any) -> int:
        from nats.js.errors import NotFoundError

        try:
            return (await js.stream_info(stream)).state.messages
        except NotFoundError:
            return 0

    return _jetstream(url, count)


def delete_stream(url: str, stream: str) -> bool:
    """Delete a JetStream stream; False when it did not exist."""

    async def delete(js: Any) -> bool:
        from nats.js.errors import NotFoundError

        try:
            return await js.delete_stream(stream)
        except NotFoundError:
            return False

    return _jetstream(url, delete)


def scoped_url(url: str, token: str) -> str:
    """``url`` with ``token`` appended to its topic prefix (``PREFIX/TOKEN``) or subject (``SUBJECT.TOKEN``; an
    explicit ``stream=NAME`` becomes ``NAME_TOKEN``). ValueError for a URL that is no MQTT or NATS output."""
    kind, parts = output_kind(url), urlsplit(url)
    if kind == "mqtt":
        path = f"/{parse_mqtt_url(url).prefix}/{token}"
        query = parts.query
    else:
        path = f"/{parse_nats_url(url).subject}.{token}"
        fields = parse_qs(parts.query)
        if "stream" in fields:
            fields["stream"] = [f"{fields['stream'][0]}_{token}"]
        query = urlencode(fields, doseq=True)
    scoped = urlunsplit(parts._replace(path=path, query=query))
    _PARSERS[kind](scoped)  # a valid level / token
    return scoped


_PARSERS: dict[str, Callable[[str], Any]] = {"mqtt": parse_mqtt_url, "nats": parse_nats_url}


def _repeats(keys: Iterable[Key]) -> int:
    return sum(n - 1 for n in Counter(keys).values())


@dataclass
class _Output:
    given: str  # the URL as given
    url: str  # scoped: what the clouds publish to
    kind: str  # mqtt / nats (icmh.cloud.publishers.output_kind)
    collector: MqttCollector | None = None  # MQTT
    stream: str | None = None  # NATS


class BrokerCapture:
    """One benchmark run's outputs: each URL of ``urls`` scoped with ``token`` (:func:`scoped_url`), an MQTT
    subscriber on each MQTT prefix from now on; on close the MQTT statuses the run left retained are cleared and
    the JetStream streams it caused are deleted."""

    def __init__(self, urls: Sequence[str], token: str) -> None:
        self.outputs: list[_Output] = []
        try:
            for given in urls:
                url = scoped_url(given, token)
                output = _Output(given, url, output_kind(url))
                if output.kind == "mqtt":
                    output.collector = MqttCollector(output.url)
                else:
                    output.stream = parse_nats_url(output.url).stream
                    stream_count(output.url, output.stream)  # the server answers (fails early if not)
                self.outputs.append(output)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> BrokerCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def publish_urls(self) -> list[str]:
        """The ``--publish`` URLs the clouds of the run get."""
        return [o.url for o in self.outputs]

    def caught_up(self, keys: set[Key]) -> bool:
        """Whether every broker holds (at least as many results as) ``keys``: MQTT every key, NATS the count."""
        for output in self.outputs:
            if output.collector is not None:
                if not keys <= {(r["camera_id"], r["frame_id"]) for r, _ in output.collector.detections()}:
                    return False
            elif stream_count(output.url, output.stream) < len(keys):
                return False
        return True

    def _received(self, output: _Output) -> list[tuple[dict, int]]:
        if output.collector is not None:
            return output.collector.detections()
        from nats.js.errors import NotFoundError

        try:
            return [(m.record, m.stored_ns) for m in stream_messages(output.url, output.stream)]
        except NotFoundError:  # the clouds never reached the server
            return []

    def report(self, detected: set[Key], in_time: bool) -> dict[str, dict]:
        """Per given URL (password hidden): messages, distinct (camera, frame), missing (detected, not at the
        broker), unexpected, duplicates (extra copies) and capture -> broker latency (MQTT: arrival at the
        subscriber; NATS: JetStream's storage time). Read the streams after the clouds stopped."""
        out = {}
        for output in self.outputs:
            received = self._received(output)
            keys = [(r["camera_id"], r["frame_id"]) for r, _ in received]
            target = {"topic_prefix": parse_mqtt_url(output.url).prefix} if output.kind == "mqtt" else {
                "subject": parse_nats_url(output.url).subject, "stream": output.stream}
            out[redact(output.given)] = {
                "kind": output.kind, **target,
                "messages": len(keys), "distinct": len(set(keys)), "missing": len(detected - set(keys)),
                "unexpected": len(set(keys) - detected), "duplicates": _repeats(keys),
                "caught_up_in_time": in_time,
                "capture_to_broker_ms": stats((t - r["capture_ns"]) / 1e6 for r, t in received if t),
            }
        return out

    def close(self) -> None:
        """Best effort: clear retained statuses, close the subscribers, delete the streams."""
        for output in self.outputs:
            try:
                if output.collector is not None:
                    output.collector.clear_status()
                    output.collector.close()
                else:
                    delete_stream(output.url, output.stream)
            except Exception as exc:  # a broker gone: what it holds stays, the run's figures do not depend on it
                print(f"bench: cleaning up {redact(output.url)} failed: {exc}", file=sys.stderr)
        self.outputs = []
