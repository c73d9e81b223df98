"""The frame index as one of several replicas sees it: the work of the cameras whose lease it holds.

:class:`ReplicaFrameIndex` is a :class:`~icmh.cloud.frame_index.FrameIndex` on PostgreSQL whose detector queue
(:meth:`pending`) and shared-sink cursors (:meth:`deliveries` of MQTT / NATS) hold only the frames of cameras
this process holds a live lease of (:mod:`icmh.cloud.leases`), so a camera's frames are detected and published by
one replica at a time; when its lease moves, the new holder resumes from the same rows. A replica's own JSON Lines
file is a *local* sink (``jsonl@REPLICA``): it gets what that replica detected, whichever camera, and keeps its
cursor for that replica id across restarts. Admission (:meth:`add_frame`) and the results' state change stay as
they are: serialised on the camera's row and conditional on the frame's state, so even two replicas racing for a
frame (a lease moving during a detector batch) store one result and owe it once to each sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .frame_index import _F_RECORD_COLUMNS, _RECORD_COLUMNS, FrameIndex, FrameRecord, FrameState, _record
from .leases import LOCAL_SINK_MARK, NOW_NS, CameraLeases, ReplicaIdentity, held_clause, is_local_sink

SQLITE_REFUSAL = ("several replicas need a shared PostgreSQL frame index (--index postgresql://...); a SQLite "
                  "index serves a single cloud-server: leave out --replica-id")


class ReplicaFrameIndex(FrameIndex):
    def __init__(self, location: str | Path, identity: ReplicaIdentity, pool_size: int = 8,
                 timeout_s: float = 10.0) -> None:
        if not str(location).startswith(("postgresql://", "postgres://")):
            raise ValueError(SQLITE_REFUSAL)
        super().__init__(location, pool_size, timeout_s)
        self.leases = CameraLeases(self._db, identity)
        self.local_sinks: frozenset[str] = frozenset()

    @property
    def incarnation(self) -> str:
        return self.leases.incarnation

    # -- the detector's queue ----------------------------------------------------------------------------------
    def pending(self, limit: int) -> list[tuple[FrameRecord, bytes]]:
        """Up to ``limit`` frames of this replica's cameras waiting for the detector, oldest first."""
        rows = self._db.query(
            f"SELECT {_RECORD_COLUMNS}, base FROM frames WHERE state = ? AND {held_clause()} ORDER BY seq LIMIT ?",
            (FrameState.RECEIVED, self.incarnation, limit))
        return [(_record(r[:-1]), bytes(r[-1])) for r in rows]

    # -- sinks -------------------------------------------------------------------------------------------------
    def configure_sinks(self, sinks: Sequence[str]) -> int:
        """This replica's sinks (its local ones named ``NAME@REPLICA``). Drops the deliveries owed to shared sinks
        no live replica configures and to local sinks of this replica it no longer has; returns how many."""
        if len(set(sinks)) != len(sinks):
            raise ValueError(f"two outputs share a name: {', '.join(sinks)}")
        self.sinks, self.local_sinks = tuple(sinks), frozenset(s for s in sinks if is_local_sink(s))
        me = self.leases.identity.replica_id
        others = [names for replica_id, (_, names) in self.leases.live_replicas().items() if replica_id != me]
        configured = set(sinks).union(*others)
        mine = f"{LOCAL_SINK_MARK}{me}"
        self.leases.announce_sinks(sinks)
        with self._db.transaction() as db:
            dropped = db.execute(
                "DELETE FROM deliveries WHERE sink <> ALL(?) AND (POSITION(? IN sink) = 0 OR RIGHT(sink, ?) = ?)",
                (sorted(configured), LOCAL_SINK_MARK, len(mine), mine)).rowcount
            db.execute("UPDATE frames SET state = ? WHERE state = ? AND NOT EXISTS"
                       " (SELECT 1 FROM deliveries d WHERE d.seq = frames.seq)",
                       (FrameState.PUBLISHED, FrameState.DETECTED))
        return dropped

    def _scope(self, sink: str, column: str) -> tuple[str, tuple[str, ...]]:
        """SQL condition (and parameters) limiting a sink's deliveries to what this replica delivers."""
        if sink in self.local_sinks:
            return "", ()
        return f" AND {held_clause(column)}", (self.incarnation,)

    def deliveries(self, sink: str, limit: int):  # -> list[FrameResult]
        """Up to ``limit`` results due to ``sink`` that this replica delivers, oldest first: all those of a local
        sink, those of the cameras it holds for a shared one."""
        scope, params = self._scope(sink, "d.camera_id")
        rows = self._db.query(
            f"SELECT {_F_RECORD_COLUMNS} FROM deliveries d JOIN frames f ON f.seq = d.seq WHERE d.sink = ?{scope}"
            " ORDER BY d.seq LIMIT ?", (sink, *params, limit))
        return [r.result for r in map(_record, rows) if r.result is not None]

    def backlog(self) -> dict[str, int]:
        """Results this replica owes, per configured sink."""
        due = {}
        for sink in self.sinks:
            scope, params = self._scope(sink, "camera_id")
            due[sink] = int(self._db.query(f"SELECT COUNT(*) FROM deliveries WHERE sink = ?{scope}",
                                           (sink, *params))[0][0])
        return due

    # -- figures and retention ---------------------------------------------------------------------------------
    def usage(self) -> tuple[int, int, int]:
        """(frames, base-layer bytes) of the whole index, and the frames waiting for this replica's detector."""
        frames, size = self._db.query("SELECT COUNT(*), COALESCE(SUM(base_bytes), 0) FROM frames")[0]
        waiting = self._db.query(f"SELECT COUNT(*) FROM frames WHERE state = ? AND {held_clause()}",
                                 (FrameState.RECEIVED, self.incarnation))[0][0]
        return int(frames), int(size), int(waiting)

    def prune(self, max_age_s: float = 0.0, max_bytes: int = 0) -> int:
        """Retention, run by one replica of the fleet at a time (the live one with the smallest id)."""
        live = self.leases.live_replicas()
        if live and min(live) != self.leases.identity.replica_id:
            return 0
        return super().prune(max_age_s, max_bytes)


def live_replicas_of(index: FrameIndex) -> list[str]:
    """Ids of the replicas with a live heartbeat on ``index`` (none on SQLite): a server started without
    ``--replica-id`` must not share their index."""
    if index._db.dialect != "postgresql":  # noqa: SLF001 - the backend is the index's own
        return []
    rows = index._db.query(f"SELECT replica_id FROM replicas WHERE expires_ns > {NOW_NS} ORDER BY replica_id")  # noqa: SLF001
    return [r[0] for r in rows]
