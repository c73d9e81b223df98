"""What every sink of detection results offers the delivery loop (:mod:`icmh.cloud.publishers.delivery`)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping

from ..results import FrameResult


class PublishError(Exception):
    """The sink cannot take results now (down, refused, timed out): they stay due and are retried."""


class Publisher(ABC):
    """A sink of detection results, fed in order by its own cursor in the frame index."""

    name: str  # the cursor's name in the index: stable across restarts (kind and topic, not the host)
    inline: bool = False  # True: delivered in the detector thread, before live subscribers see the results

    @abstractmethod
    def publish(self, results: list[FrameResult], recovering: bool = False) -> int:
        """Deliver ``results`` (oldest first); return once the sink holds them. ``recovering``: after a restart
        or a failed attempt, some may be there already. Returns how many the sink already had and did not store
        again. Raises :class:`PublishError` (or ``OSError``) when it cannot: nothing is then taken as delivered."""

    def available(self) -> bool:
        """Whether the sink is reachable now (a connection is up)."""
        return True

    def publish_status(self, online: Mapping[str, bool]) -> None:
        """Best effort: the cameras' online state, for sinks that keep a status (MQTT retained messages)."""
        return None

    def close(self) -> None:
        """Release connections and files."""
        return None


def payload(result: FrameResult) -> bytes:
    """A result as sent to the brokers: the JSON of a JSON Lines record."""
    return json.dumps(result.to_json(), separators=(",", ":")).encode()


def topic_token(camera_id: str) -> str:
    """A camera id as one MQTT topic level / NATS subject token: letters, digits, ``-`` and ``_`` kept, every
    other byte of its UTF-8 as ``%XX`` (no ``/``, ``.``, wildcards or spaces reach the broker)."""
    return "".join(chr(b) if (b < 128 and chr(b).isalnum()) or chr(b) in "-_" else f"%{b:02X}"
                   for b in camera_id.encode("utf-8"))
