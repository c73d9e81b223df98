"""Detection results to an MQTT broker (paho-mqtt 2.x): QoS 1, one topic per camera, retained status.

``mqtt://[user[:password]@]host[:1883]/prefix`` (``mqtts://`` for TLS with the system CAs, port 8883); the
password may also come from ``$ICMH_MQTT_PASSWORD``. Topics (a camera id is one topic level,
see :func:`~icmh.cloud.publishers.base.topic_token`):

* ``PREFIX/CAMERA/detections`` — every result (the JSON of a JSON Lines record), QoS 1, not retained;
* ``PREFIX/CAMERA/status`` — retained ``{"camera_id", "online", "time_ns"}``, sent when it changes and after
  every (re)connection;
* ``PREFIX/status`` — retained ``online``; ``offline`` on shutdown and, as the connection's will, on a crash.

A replica among several (``replica_id``) announces itself on ``PREFIX/replicas/REPLICA/status`` instead, so that
one replica's crash does not mark the fleet offline, and its camera statuses say ``"replica"``: the status of a
camera whose replica is ``offline`` is stale until the camera's new replica publishes it.

A batch counts as delivered when the broker has acknowledged (PUBACK) every message. paho keeps unacknowledged
QoS 1 messages across reconnections and sends them again, so a retry after a timeout waits for those instead of
publishing them a second time. Across a cloud restart a result whose PUBACK was not recorded in the index is
sent again: MQTT QoS 1 is at-least-once; consumers de-duplicate on (camera_id, frame_id).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..results import FrameResult
from .base import Publisher, PublishError, payload, topic_token

log = logging.getLogger("icmh.cloud.mqtt")


@dataclass(frozen=True)
class MqttTarget:
    """Where an ``mqtt://`` / ``mqtts://`` output URL points (password from ``$ICMH_MQTT_PASSWORD`` if not in it)."""

    host: str
    port: int
    prefix: str
    username: str | None
    password: str | None
    tls: bool
    client_id: str | None


def parse_mqtt_url(url: str) -> MqttTarget:
    """The broker, topic prefix (default ``icmh``) and credentials of an MQTT output URL; ValueError if invalid."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"an MQTT output is mqtt://host[:port]/topic/prefix, not {url}")
    prefix = parts.path.strip("/") or "icmh"
    if any(c in prefix for c in "+#") or "//" in prefix:
        raise ValueError(f"MQTT topic prefix {prefix!r} has a wildcard or an empty level")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else os.environ.get("ICMH_MQTT_PASSWORD")
    tls = parts.scheme == "mqtts"
    return MqttTarget(parts.hostname, parts.port or (8883 if tls else 1883), prefix, username,
                      password if username else None, tls, parse_qs(parts.query).get("client_id", [None])[0])


class MqttPublisher(Publisher):
    def __init__(self, url: str, timeout_s: float = 10.0, replica_id: str | None = None) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise ValueError("--publish mqtt://... needs paho-mqtt (pip install 'icmh-traffic[fleet]')") from exc
        target = parse_mqtt_url(url)
        self.prefix = target.prefix
        self.name = f"mqtt:{self.prefix}"
        self.replica_id = replica_id
        self.status_topic = (f"{self.prefix}/status" if replica_id is None
                             else f"{self.prefix}/replicas/{topic_token(replica_id)}/status")
        self.timeout_s = timeout_s
        self._mqtt = mqtt
        client_id = target.client_id or f"icmh-cloud-{uuid.uuid4().hex[:12]}"
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                                   protocol=mqtt.MQTTv311)
        if target.username:
            self._client.username_pw_set(target.username, target.password)
        if target.tls:
            self._client.tls_set()
        self._client.will_set(self.status_topic, "offline", qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.reconnect_delay_set(1, 10)
        self._inflight: dict[tuple[str, int], Any] = {}  # result key -> MQTTMessageInfo not yet acknowledged
        self._status_sent: dict[str, bool] = {}
        self._connections = 0  # bumped on every CONNACK: statuses are sent again
        self._status_round = -1
        self._lock = threading.Lock()
        self._first_connection = threading.Event()
        self._client.connect_async(target.host, target.port, keepalive=30)
        self._client.loop_start()  # connects, and reconnects, in paho's network thread

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker refused the connection: %s", reason_code)
            return
        log.info("connected to the MQTT broker (topics under %s/)", self.prefix)
        client.publish(self.status_topic, "online", qos=1, retain=True)
        self._connections += 1
        self._first_connection.set()

    def available(self) -> bool:
        if not self._first_connection.is_set():  # just started: give paho's first connection a chance
            self._first_connection.wait(self.timeout_s)
        return self._client.is_connected()

    def publish(self, results: list[FrameResult], recovering: bool = False) -> int:
        if not self.available():
            raise PublishError("not connected to the MQTT broker")
        with self._lock:
            infos = []
            for result in results:
                info = self._inflight.get(result.key)
                if info is None:  # not handed to paho before (a retry waits for those it still holds)
                    topic = f"{self.prefix}/{topic_token(result.camera_id)}/detections"
                    info = self._client.publish(topic, payload(result), qos=1)
                    if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                        raise PublishError(f"MQTT publish failed: {self._mqtt.error_string(info.rc)}")
                    self._inflight[result.key] = info
                infos.append(info)
            deadline = time.monotonic() + self.timeout_s
            for info in infos:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            missing = sum(not info.is_published() for info in infos)
            if missing:
                raise PublishError(f"the MQTT broker acknowledged {len(infos) - missing} of {len(infos)} results "
                                   f"within {self.timeout_s:g} s")
            for result in results:
                self._inflight.pop(result.key, None)
        return 0

    def publish_status(self, online: Mapping[str, bool]) -> None:
        if not self._client.is_connected():
            return
        connections = self._connections
        if connections != self._status_round:  # a new connection: the broker may have lost retained messages
            self._status_sent, self._status_round = {}, connections
        for camera_id, state in online.items():
            if self._status_sent.get(camera_id) == state:
                continue
            status = {"camera_id": camera_id, "online": state, "time_ns": time.time_ns()}
            if self.replica_id is not None:
                status["replica"] = self.replica_id
            body = json.dumps(status)
            info = self._client.publish(f"{self.prefix}/{topic_token(camera_id)}/status", body, qos=1, retain=True)
            if info.rc == self._mqtt.MQTT_ERR_SUCCESS:
                self._status_sent[camera_id] = state

    def close(self) -> None:
        if self._client.is_connected():
            self._client.publish(self.status_topic, "offline", qos=1, retain=True).wait_for_publish(2.0)
        self._client.disconnect()
        self._client.loop_stop()
