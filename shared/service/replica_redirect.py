"""The redirect of an edge to the cloud replica that holds its camera (see ``EdgeLink.Connect`` in edge.proto).

A replica that does not hold a camera's lease ends the edge's ``Connect`` call with ``UNAVAILABLE`` and these
trailing metadata; an edge that understands them connects to that replica, older edges retry as after any
``UNAVAILABLE``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

OWNER_ADDRESS = "icmh-owner-address"  # host:port of the replica holding the camera
OWNER_REPLICA = "icmh-owner-replica"  # its replica id
LEASE_REMAINING_MS = "icmh-lease-remaining-ms"  # how long its lease lasts unless renewed


@dataclass(frozen=True)
class Redirect:
    address: str
    replica_id: str
    remaining_s: float


def redirect_metadata(address: str, replica_id: str, remaining_s: float) -> tuple[tuple[str, str], ...]:
    return ((OWNER_ADDRESS, address), (OWNER_REPLICA, replica_id),
            (LEASE_REMAINING_MS, str(max(0, round(remaining_s * 1000)))))


def parse_redirect(metadata: Iterable[tuple[str, str | bytes]] | None) -> Redirect | None:
    """The redirect carried by a call's trailing metadata, or None."""
    values = {key: value.decode() if isinstance(value, bytes) else value for key, value in metadata or ()}
    address = values.get(OWNER_ADDRESS, "")
    if not address:
        return None
    try:
        remaining_s = int(values.get(LEASE_REMAINING_MS, "0")) / 1000
    except ValueError:
        remaining_s = 0.0
    return Redirect(address, values.get(OWNER_REPLICA, ""), remaining_s)
