"""Sinks of detection results (JSON Lines file, MQTT, NATS JetStream) and their delivery from the frame index."""

from __future__ import annotations

from .base import Publisher, PublishError, payload, topic_token

SCHEMES = ("mqtt://", "mqtts://", "nats://", "tls://")

__all__ = ["Publisher", "PublishError", "open_publisher", "payload", "topic_token", "SCHEMES"]


def open_publisher(url: str, timeout_s: float = 10.0, replica_id: str | None = None) -> Publisher:
    """A broker sink from its ``--publish`` URL: ``mqtt://host:1883/topic/prefix`` or ``nats://host:4222/subject``
    (``replica_id``: the publishing cloud server is that replica of a fleet).

    Connecting happens in the background: a broker that is down at start is an outage, not an error."""
    if url.startswith(("mqtt://", "mqtts://")):
        from .mqtt_publisher import MqttPublisher

        return MqttPublisher(url, timeout_s, replica_id)
    if url.startswith(("nats://", "tls://")):
        from .nats_publisher import NatsPublisher

        return NatsPublisher(url, timeout_s)
    raise ValueError(f"unknown output {url!r}: use mqtt://host:1883/topic/prefix or nats://host:4222/subject")
