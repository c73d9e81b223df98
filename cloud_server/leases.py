"""Camera leases in a shared PostgreSQL frame index: which cloud-server replica a camera's edge streams to.

Each running replica process (an *incarnation* of a ``--replica-id``) has a ``replicas`` row with an expiry it
renews by heartbeat, and holds the leases of its cameras (``camera_leases``: replica id, its address, expiry),
renewed with it. A replica acquires a camera's lease when the camera's edge opens its stream there, if the lease
is free, already its own, or expired (a *takeover*: its holder died or lost the database); it releases its
leases on a clean shutdown. A restarted process with the same replica id waits for its predecessor's heartbeat
to expire and then inherits its leases (those nobody took over meanwhile). Every comparison of expiries uses the
database server's clock, in one transaction with a row lock, so two replicas never both hold a live lease.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .frame_index import FrameState, IndexBackend

#: the database server's clock in ns since the epoch
NOW_NS = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000000 AS BIGINT)"
#: cameras whose live lease an incarnation (the parameter) holds
HELD_BY = f"SELECT camera_id FROM camera_leases WHERE incarnation = ? AND expires_ns > {NOW_NS}"
#: local sinks (a replica's own JSON Lines file) are named ``NAME@REPLICA``; other sinks are shared
LOCAL_SINK_MARK = "@"


def local_sink_name(name: str, replica_id: str) -> str:
    return f"{name}{LOCAL_SINK_MARK}{replica_id}"


def is_local_sink(name: str) -> bool:
    return LOCAL_SINK_MARK in name


@dataclass(frozen=True)
class ReplicaIdentity:
    replica_id: str
    address: str  # host:port at which edges and the other replicas reach this replica
    lease_s: float = 15.0

    def __post_init__(self) -> None:
        if not self.replica_id or len(self.replica_id) > 128 or LOCAL_SINK_MARK in self.replica_id:
            raise ValueError(f"--replica-id must be 1-128 characters without {LOCAL_SINK_MARK!r}, "
                             f"got {self.replica_id!r}")
        if not self.address.rpartition(":")[2].isdigit():
            raise ValueError(f"--advertise-address must be host:port, got {self.address!r}")
        if self.lease_s < 1:
            raise ValueError(f"--lease-seconds must be at least 1, got {self.lease_s:g}")


@dataclass(frozen=True)
class Holder:
    """The live holder of a camera's lease."""

    replica_id: str
    address: str
    remaining_s: float
    online: bool = False  # the camera's edge has a stream open to it
    fps: float = 0.0


@dataclass(frozen=True)
class Claim:
    """What became of an attempt to acquire a camera's lease."""

    acquired: bool  # this replica holds it now
    takeover: bool = False  # acquired from a holder that let it expire
    holder: Holder | None = None  # the other replica holding it, when not acquired


class ReplicaInUse(ValueError):
    """Another live process runs with this replica id."""


class CameraLeases:
    """The lease rows of one replica process (see the module docstring)."""

    def __init__(self, db: IndexBackend, identity: ReplicaIdentity) -> None:
        self._db, self.identity = db, identity
        self.incarnation = uuid.uuid4().hex
        self._lease_ns = int(identity.lease_s * 1e9)

    # -- this replica ------------------------------------------------------------------------------------------
    def register(self, sinks: Iterable[str], wait_s: float | None = None) -> float:
        """Announce this process; waits while a predecessor with the same replica id still has a live heartbeat,
        then inherits its leases. Returns the seconds waited; :class:`ReplicaInUse` when it stays alive."""
        me = self.identity
        deadline = time.monotonic() + (2.5 * me.lease_s if wait_s is None else wait_s)
        start = time.monotonic()
        while True:
            with self._db.transaction() as db:
                row = db.execute(f"SELECT incarnation, address, expires_ns - {NOW_NS} FROM replicas"
                                 " WHERE replica_id = ? FOR UPDATE", (me.replica_id,)).fetchone()
                if row is None or row[2] <= 0 or row[0] == self.incarnation:
                    db.execute(
                        "INSERT INTO replicas (replica_id, incarnation, address, sinks, started_ns, expires_ns)"
                        f" VALUES (?, ?, ?, ?, {NOW_NS}, {NOW_NS} + ?) ON CONFLICT (replica_id) DO UPDATE SET"
                        " incarnation = excluded.incarnation, address = excluded.address, sinks = excluded.sinks,"
                        " started_ns = excluded.started_ns, expires_ns = excluded.expires_ns",
                        (me.replica_id, self.incarnation, me.address, json.dumps(sorted(sinks)), self._lease_ns))
                    db.execute("UPDATE camera_leases SET incarnation = ?, address = ? WHERE replica_id = ?",
                               (self.incarnation, me.address, me.replica_id))
                    return time.monotonic() - start
            remaining = row[2] / 1e9
            if time.monotonic() + min(remaining, 1.0) > deadline:
                raise ReplicaInUse(f"replica id {me.replica_id!r} is in use by a live cloud-server at {row[1]}: "
                                   "give every replica its own --replica-id")
            time.sleep(min(remaining + 0.05, 1.0))

    def announce_sinks(self, sinks: Iterable[str]) -> None:
        """The sinks this replica delivers to (the others keep their deliveries)."""
        with self._db.transaction() as db:
            db.execute("UPDATE replicas SET sinks = ? WHERE replica_id = ? AND incarnation = ?",
                       (json.dumps(sorted(sinks)), self.identity.replica_id, self.incarnation))

    def renew(self, status: Mapping[str, tuple[bool, float]]) -> set[str] | None:
        """Heartbeat: extend this process's replica row and leases and record the cameras' ``(online, fps)``.
        Returns the cameras it holds, or None when another process took its replica id over."""
        with self._db.transaction() as db:
            alive = db.execute(f"UPDATE replicas SET expires_ns = {NOW_NS} + ? WHERE replica_id = ?"
                               " AND incarnation = ?",
                               (self._lease_ns, self.identity.replica_id, self.incarnation)).rowcount
            if not alive:
                return None
            held = {row[0] for row in db.execute(
                f"UPDATE camera_leases SET expires_ns = {NOW_NS} + ? WHERE incarnation = ? RETURNING camera_id",
                (self._lease_ns, self.incarnation)).fetchall()}
            db.executemany("UPDATE camera_leases SET online = ?, fps = ? WHERE camera_id = ? AND incarnation = ?",
                           [(int(online), fps, camera, self.incarnation)
                            for camera, (online, fps) in status.items() if camera in held])
        return held

    def acquire(self, camera_id: str) -> Claim:
        """Take the camera's lease if it is free, ours or expired; else say who holds it."""
        me = self.identity
        with self._db.transaction() as db:
            db.execute("INSERT INTO camera_leases (camera_id, replica_id, incarnation, address, expires_ns,"
                       " acquired_ns) VALUES (?, '', '', '', 0, 0) ON CONFLICT (camera_id) DO NOTHING", (camera_id,))
            replica_id, incarnation, address, remaining, online, fps = db.execute(
                f"SELECT replica_id, incarnation, address, expires_ns - {NOW_NS}, online, fps FROM camera_leases"
                " WHERE camera_id = ? FOR UPDATE", (camera_id,)).fetchone()
            if incarnation != self.incarnation and incarnation and remaining > 0:
                return Claim(False, holder=Holder(replica_id, address, remaining / 1e9, bool(online), fps))
            db.execute(f"UPDATE camera_leases SET replica_id = ?, incarnation = ?, address = ?,"
                       f" expires_ns = {NOW_NS} + ?, acquired_ns = CASE WHEN incarnation = ? THEN acquired_ns"
                       f" ELSE {NOW_NS} END WHERE camera_id = ?",
                       (me.replica_id, self.incarnation, me.address, self._lease_ns, self.incarnation, camera_id))
        return Claim(True, takeover=bool(incarnation) and incarnation != self.incarnation)

    def release(self, cameras: Iterable[str] | None = None) -> int:
        """Give up the leases of ``cameras`` (None: all of this process's); returns how many."""
        with self._db.transaction() as db:
            if cameras is None:
                return db.execute("DELETE FROM camera_leases WHERE incarnation = ?", (self.incarnation,)).rowcount
            return db.execute("DELETE FROM camera_leases WHERE incarnation = ? AND camera_id = ANY(?)",
                              (self.incarnation, list(cameras))).rowcount

    def hand_over(self, cameras: Iterable[str], replica_id: str) -> set[str]:
        """Move the live leases of ``cameras`` this process holds to the live replica ``replica_id`` (rebalancing):
        its heartbeat renews them from now on. Returns the cameras moved (none when it is not alive)."""
        with self._db.transaction() as db:
            rows = db.execute(
                f"UPDATE camera_leases SET replica_id = r.replica_id, incarnation = r.incarnation,"
                f" address = r.address, expires_ns = {NOW_NS} + ?, acquired_ns = {NOW_NS}, online = 0, fps = 0"
                f" FROM replicas r WHERE r.replica_id = ? AND r.expires_ns > {NOW_NS}"
                f" AND camera_leases.incarnation = ? AND camera_leases.camera_id = ANY(?)"
                " RETURNING camera_leases.camera_id",
                (self._lease_ns, replica_id, self.incarnation, list(cameras))).fetchall()
        return {row[0] for row in rows}

    def unregister(self) -> None:
        """Clean shutdown: release every lease and remove the replica row (a restart need not wait)."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM camera_leases WHERE incarnation = ?", (self.incarnation,))
            db.execute("DELETE FROM replicas WHERE replica_id = ? AND incarnation = ?",
                       (self.identity.replica_id, self.incarnation))

    # -- the fleet ---------------------------------------------------------------------------------------------
    def holder(self, camera_id: str) -> Holder | None:
        """The live holder of the camera's lease when it is another process (None: free, expired or ours)."""
        rows = self._db.query(f"SELECT replica_id, address, expires_ns - {NOW_NS}, online, fps FROM camera_leases"
                              " WHERE camera_id = ? AND incarnation NOT IN ('', ?)", (camera_id, self.incarnation))
        if not rows or rows[0][2] <= 0:
            return None
        replica_id, address, remaining, online, fps = rows[0]
        return Holder(replica_id, address, remaining / 1e9, bool(online), fps)

    def holders(self) -> dict[str, Holder]:
        """Every camera with a live lease and its holder (this process included)."""
        rows = self._db.query(f"SELECT camera_id, replica_id, address, expires_ns - {NOW_NS}, online, fps"
                              f" FROM camera_leases WHERE incarnation <> '' AND expires_ns > {NOW_NS}")
        return {r[0]: Holder(r[1], r[2], r[3] / 1e9, bool(r[4]), r[5]) for r in rows}

    def live_replicas(self) -> dict[str, tuple[str, list[str]]]:
        """Replica id -> (address, configured sink names) of every replica with a live heartbeat."""
        rows = self._db.query(f"SELECT replica_id, address, sinks FROM replicas WHERE expires_ns > {NOW_NS}"
                              " ORDER BY replica_id")
        return {r[0]: (r[1], json.loads(r[2])) for r in rows}

    def with_work(self, cameras: Iterable[str] | None = None, unleased: bool = False) -> set[str]:
        """Cameras with frames waiting for the detector or results due to a shared sink: among ``cameras``
        (None: any), or (``unleased``) those of them without a live lease: work nobody is doing."""
        clauses, params = [], []
        if cameras is not None:
            clauses.append("camera_id = ANY(?)")
            params.append(list(cameras))
        if unleased:
            clauses.append(f"camera_id NOT IN (SELECT camera_id FROM camera_leases WHERE incarnation <> ''"
                           f" AND expires_ns > {NOW_NS})")
        where = "".join(f" AND {c}" for c in clauses)
        rows = self._db.query(
            f"SELECT DISTINCT camera_id FROM frames WHERE state = ?{where}"
            f" UNION SELECT DISTINCT camera_id FROM deliveries WHERE POSITION(? IN sink) = 0{where}",
            (FrameState.RECEIVED, *params, LOCAL_SINK_MARK, *params))
        return {r[0] for r in rows}


def held_clause(column: str = "camera_id") -> str:
    """``COLUMN IN (cameras held by the incarnation given as the parameter)``."""
    return f"{column} IN ({HELD_BY})"
