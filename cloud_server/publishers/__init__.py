"""Sinks of detection results (JSON Lines file, MQTT, NATS JetStream) and their delivery from the frame index."""

from __future__ import annotations

from .base import Publisher, PublishError, payload, topic_token

KINDS = {"mqtt": ("mqtt://", "mqtts://"), "nats": ("nats://", "tls://")}  # broker kind -> URL schemes
SCHEMES = tuple(scheme for schemes in KINDS.values() for scheme in schemes)

__all__ = ["Publisher", "PublishError", "open_publisher", "output_kind", "payload", "topic_token", "SCHEMES"]


def output_kind(url: str) -> str:
    """``mqtt`` or ``nats``: the broker of a ``--publish`` URL; ValueError for any other output."""
    for kind, schemes in KINDS.items():
        if url.startswith(schemes):
            return kind
    raise ValueError(f"unknown output {url!r}: use mqtt://host:1883/topic/prefix or nats://host:4222/subject")


def open_publisher(url: str, timeout_s: float = 10.0, replica_id: str | None = None) -> Publisher:
    """A broker sink from its ``--publish`` URL: ``mqtt://host:1883/topic/prefix`` or ``nats://host:4222/subject``
    (``replica_id``: the publishing cloud server is that replica of a fleet).

    Connecting happens in the background: a broker that is down at start is an outage, not an error."""
    if output_kind(url) == "mqtt":
        from .mqtt_publisher import MqttPublisher

        return MqttPublisher(url, timeout_s, replica_id)
    from .nats_publisher import NatsPublisher

    return NatsPublisher(url, timeout_s)
