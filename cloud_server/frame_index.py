"""The cloud's frame index: every accepted base layer, its sizes, timestamps, detections and deliveries.

It is also the detector's work queue and the source of exactly-once delivery:

* :meth:`FrameIndex.add_frame` commits a frame before the edge gets its ack; a frame id
  the index already holds (or held: ids at or below the camera's last accepted id) is a
  duplicate, never a second detection.
* a frame goes ``RECEIVED`` -> ``DETECTED`` (results stored, one delivery due per sink) ->
  ``PUBLISHED`` (every sink has it); after a restart the detector and each sink resume from these
  rows. A sink that is down holds back its own deliveries only.
* retention deletes published frames by age and total size; the per-camera last frame
  id is kept, so resent old frames are still recognised as duplicates.

The store is SQLite (a file, the default) or PostgreSQL (``postgresql://...``), with one set of SQL and a
versioned schema (:mod:`icmh.cloud.index_migrations`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, Protocol

from icmh.codec.bitstream import digest

from .index_migrations import migrate
from .results import FrameResult, detections_from_json, detections_to_json

_RECORD_COLUMNS = ("camera_id, frame_id, capture_ns, receive_ns, width, height, rate, base_bytes, residual_bytes, "
                   "state, detections, detect_ns, error")
_F_RECORD_COLUMNS = ", ".join(f"f.{c.strip()}" for c in _RECORD_COLUMNS.split(","))


class IndexBackend(Protocol):
    """Where the index lives: SQL with ``?`` parameters, in transactions."""

    dialect: str  # "sqlite" or "postgresql": picks the migrations' DDL
    row_lock: str  # appended to a SELECT that must lock the rows it reads ("" where transactions are serial)
    description: str  # for logs (no password)

    def transaction(self) -> Any: ...
    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]: ...
    def close(self) -> None: ...


def open_backend(location: str | Path, pool_size: int = 8, timeout_s: float = 10.0) -> IndexBackend:
    """``postgresql://...`` (or ``postgres://``), ``sqlite:///path`` (relative; ``sqlite:////abs`` absolute) or
    a plain path of a SQLite file."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        from .index_postgres import PostgresBackend

        return PostgresBackend(text, pool_size, timeout_s)
    if text.startswith("sqlite://"):
        if not text.startswith("sqlite:///") or len(text) == len("sqlite:///"):
            raise ValueError(f"a SQLite index is sqlite:///relative/path or sqlite:////absolute/path, not {text}")
        text = text[len("sqlite:///"):]
    elif "://" in text:
        raise ValueError(f"unknown frame index {text!r}: use postgresql://... or sqlite:///path")
    from .index_sqlite import SqliteBackend

    return SqliteBackend(text)


class FrameState(IntEnum):
    RECEIVED = 0
    DETECTED = 1
    PUBLISHED = 2


class Admission(Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"  # the id is taken by a different base layer


@dataclass(frozen=True)
class FrameRecord:
    camera_id: str
    frame_id: int
    capture_ns: int
    receive_ns: int
    width: int
    height: int
    rate: float
    base_bytes: int
    residual_bytes: int
    state: FrameState
    result: FrameResult | None  # once detected

    @property
    def key(self) -> tuple[str, int]:
        return self.camera_id, self.frame_id

    @property
    def base_bpp(self) -> float:
        return 8.0 * self.base_bytes / (self.width * self.height)


@dataclass(frozen=True)
class CameraRecord:
    camera_id: str
    last_frame_id: int
    width: int
    height: int
    residual_mode: str
    config: dict[str, float]
    frames_stored: int = 0
    last_capture_ns: int = 0


def _record(row: Any) -> FrameRecord:
    (camera_id, frame_id, capture_ns, receive_ns, width, height, rate, base_bytes, residual_bytes, state,
     detections, detect_ns, error) = tuple(row)
    result = None
    if state >= FrameState.DETECTED and detections is not None:
        result = FrameResult(camera_id, frame_id, capture_ns, detect_ns, width, height,
                             detections_from_json(json.loads(detections)), error)
    return FrameRecord(camera_id, frame_id, capture_ns, receive_ns, width, height, rate, base_bytes, residual_bytes,
                       FrameState(state), result)


class FrameIndex:
    def __init__(self, location: str | Path | IndexBackend, pool_size: int = 8, timeout_s: float = 10.0) -> None:
        self._db: IndexBackend = (open_backend(location, pool_size, timeout_s)
                                  if isinstance(location, (str, Path)) else location)
        self.sinks: tuple[str, ...] = ()
        try:
            with self._db.transaction() as db:
                self.migrations_applied = migrate(db, self._db.dialect)
        except BaseException:
            self._db.close()
            raise

    @property
    def description(self) -> str:
        return self._db.description

    @property
    def backend(self) -> IndexBackend:
        """The store the index is in (the inspection audit shares it on PostgreSQL)."""
        return self._db

    def schema_version(self) -> int:
        return int(self._db.query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0][0])

    # -- cameras -----------------------------------------------------------------------
    def register_camera(self, camera_id: str, width: int, height: int, residual_mode: str) -> CameraRecord:
        """Record a connecting camera's frame size and mode; returns its record (last frame id, config)."""
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO cameras (camera_id, width, height, residual_mode) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (camera_id) DO UPDATE SET width = excluded.width, height = excluded.height,"
                " residual_mode = excluded.residual_mode",
                (camera_id, width, height, residual_mode),
            )
        record = self.camera(camera_id)
        assert record is not None
        return record

    def camera(self, camera_id: str) -> CameraRecord | None:
        found = self.cameras(camera_id)
        return found[0] if found else None

    def cameras(self, camera_id: str | None = None) -> list[CameraRecord]:
        """Every camera that ever connected (or only ``camera_id``), with its stored-frame figures."""
        where, params = (" WHERE c.camera_id = ?", (camera_id,)) if camera_id is not None else ("", ())
        rows = self._db.query(
            "SELECT c.camera_id, c.last_frame_id, c.width, c.height, c.residual_mode, c.config,"
            " (SELECT COUNT(*) FROM frames f WHERE f.camera_id = c.camera_id),"
            " COALESCE((SELECT f.capture_ns FROM frames f WHERE f.camera_id = c.camera_id"
            "           ORDER BY f.frame_id DESC LIMIT 1), 0)"
            f" FROM cameras c{where} ORDER BY c.camera_id",
            params,
        )
        return [CameraRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]

    def set_camera_config(self, camera_id: str, changes: dict[str, float]) -> dict[str, float]:
        """Merge ``changes`` into the camera's stored config; returns the result."""
        with self._db.transaction() as db:
            db.execute("INSERT INTO cameras (camera_id) VALUES (?) ON CONFLICT (camera_id) DO NOTHING", (camera_id,))
            row = db.execute(f"SELECT config FROM cameras WHERE camera_id = ?{self._db.row_lock}",
                             (camera_id,)).fetchone()
            config = {**json.loads(row[0]), **changes}
            db.execute("UPDATE cameras SET config = ? WHERE camera_id = ?", (json.dumps(config), camera_id))
        return config

    # -- frames ------------------------------------------------------------------------
    def add_frame(self, camera_id: str, frame_id: int, capture_ns: int, rate: float, base: bytes, width: int,
                  height: int, residual_bytes: int) -> Admission:
        """Commit a received base layer (durable when this returns ACCEPTED)."""
        base_digest = digest(base)
        with self._db.transaction() as db:
            db.execute("INSERT INTO cameras (camera_id) VALUES (?) ON CONFLICT (camera_id) DO NOTHING", (camera_id,))
            last = db.execute(f"SELECT last_frame_id FROM cameras WHERE camera_id = ?{self._db.row_lock}",
                              (camera_id,)).fetchone()[0]  # locked: one admission per camera at a time
            row = db.execute("SELECT base_digest FROM frames WHERE camera_id = ? AND frame_id = ?",
                             (camera_id, frame_id)).fetchone()
            if row is not None:
                return Admission.DUPLICATE if bytes(row[0]) == base_digest else Admission.CONFLICT
            if frame_id <= last:
                return Admission.DUPLICATE  # accepted before, since removed by retention
            db.execute(
                "INSERT INTO frames (camera_id, frame_id, capture_ns, receive_ns, width, height, rate, base,"
                " base_digest, base_bytes, residual_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (camera_id, frame_id, capture_ns, time.time_ns(), width, height, rate, base, base_digest, len(base),
                 residual_bytes),
            )
            db.execute("UPDATE cameras SET last_frame_id = ? WHERE camera_id = ?", (frame_id, camera_id))
        return Admission.ACCEPTED

    def pending(self, limit: int) -> list[tuple[FrameRecord, bytes]]:
        """Up to ``limit`` frames waiting for the detector, oldest first, with their base layers."""
        rows = self._db.query(
            f"SELECT {_RECORD_COLUMNS}, base FROM frames WHERE state = ? ORDER BY seq LIMIT ?",
            (FrameState.RECEIVED, limit),
        )
        return [(_record(r[:-1]), bytes(r[-1])) for r in rows]

    def record_results(self, results: list[FrameResult]) -> list[FrameResult]:
        """Store detection results; each newly detected frame becomes due to every sink of :attr:`sinks`
        (published at once when there is none). Returns those stored now (not those another detector stored
        first)."""
        state = FrameState.DETECTED if self.sinks else FrameState.PUBLISHED
        stored_now = []
        with self._db.transaction() as db:
            for r in results:
                stored = db.execute(
                    "UPDATE frames SET state = ?, detections = ?, detect_ns = ?, error = ?"
                    " WHERE camera_id = ? AND frame_id = ? AND state = ?",
                    (state, json.dumps(detections_to_json(r.detections)), r.detect_ns, r.error, r.camera_id,
                     r.frame_id, FrameState.RECEIVED),
                ).rowcount
                if stored:  # only a frame detected now gets deliveries: never twice
                    db.executemany(
                        "INSERT INTO deliveries (sink, seq, camera_id) SELECT ?, seq, camera_id FROM frames"
                        " WHERE camera_id = ? AND frame_id = ?",
                        [(sink, r.camera_id, r.frame_id) for sink in self.sinks],
                    )
                    stored_now.append(r)
        return stored_now

    def mark_published(self, keys: list[tuple[str, int]]) -> None:
        """Publish frames by hand (whatever their state): no sink is owed them any more."""
        with self._db.transaction() as db:
            db.executemany("DELETE FROM deliveries WHERE seq IN"
                           " (SELECT seq FROM frames WHERE camera_id = ? AND frame_id = ?)", keys)
            db.executemany("UPDATE frames SET state = ? WHERE camera_id = ? AND frame_id = ?",
                           [(FrameState.PUBLISHED, camera, frame) for camera, frame in keys])

    def unpublished(self) -> list[FrameResult]:
        """Results detected but not yet delivered to every sink, oldest first."""
        rows = self._db.query(f"SELECT {_RECORD_COLUMNS} FROM frames WHERE state = ? ORDER BY seq",
                              (FrameState.DETECTED,))
        return [r.result for r in map(_record, rows) if r.result is not None]

    # -- deliveries (one cursor per sink) --------------------------------------------------
    def configure_sinks(self, sinks: Sequence[str]) -> int:
        """The sinks every result detected from now on is due to. Deliveries owed to sinks no longer configured
        are dropped (frames owed nothing else become published); returns how many were dropped."""
        if len(set(sinks)) != len(sinks):
            raise ValueError(f"two outputs share a name: {', '.join(sinks)}")
        self.sinks = tuple(sinks)
        marks = ", ".join("?" for _ in sinks)
        with self._db.transaction() as db:
            dropped = db.execute(f"DELETE FROM deliveries WHERE sink NOT IN ({marks})" if sinks
                                 else "DELETE FROM deliveries", tuple(sinks)).rowcount
            db.execute("UPDATE frames SET state = ? WHERE state = ? AND NOT EXISTS"
                       " (SELECT 1 FROM deliveries d WHERE d.seq = frames.seq)",
                       (FrameState.PUBLISHED, FrameState.DETECTED))
        return dropped

    def deliveries(self, sink: str, limit: int) -> list[FrameResult]:
        """Up to ``limit`` results due to ``sink``, oldest first."""
        rows = self._db.query(
            f"SELECT {_F_RECORD_COLUMNS} FROM deliveries d JOIN frames f ON f.seq = d.seq WHERE d.sink = ?"
            " ORDER BY d.seq LIMIT ?", (sink, limit))
        return [r.result for r in map(_record, rows) if r.result is not None]

    def delivered(self, sink: str, keys: Iterable[tuple[str, int]]) -> None:
        """``sink`` has these results: advance its cursor; frames every sink has are published."""
        keys = list(keys)
        with self._db.transaction() as db:
            db.executemany("DELETE FROM deliveries WHERE sink = ? AND seq IN"
                           " (SELECT seq FROM frames WHERE camera_id = ? AND frame_id = ?)",
                           [(sink, camera, frame) for camera, frame in keys])
            db.executemany("UPDATE frames SET state = ? WHERE camera_id = ? AND frame_id = ? AND state = ?"
                           " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = frames.seq)",
                           [(FrameState.PUBLISHED, camera, frame, FrameState.DETECTED) for camera, frame in keys])

    def backlog(self) -> dict[str, int]:
        """Results due, per configured sink."""
        counts = dict(self._db.query("SELECT sink, COUNT(*) FROM deliveries GROUP BY sink"))
        return {sink: int(counts.get(sink, 0)) for sink in self.sinks}

    def frame(self, camera_id: str, frame_id: int) -> FrameRecord | None:
        rows = self._db.query(f"SELECT {_RECORD_COLUMNS} FROM frames WHERE camera_id = ? AND frame_id = ?",
                              (camera_id, frame_id))
        return _record(rows[0]) if rows else None

    def base_layer(self, camera_id: str, frame_id: int) -> bytes | None:
        rows = self._db.query("SELECT base FROM frames WHERE camera_id = ? AND frame_id = ?", (camera_id, frame_id))
        return bytes(rows[0][0]) if rows else None

    def frames(self, camera_id: str, min_frame_id: int = 0, max_frame_id: int = 0,
               limit: int = 100) -> list[FrameRecord]:
        """Frames of a camera in an id range (0: open end), newest first."""
        rows = self._db.query(
            f"SELECT {_RECORD_COLUMNS} FROM frames WHERE camera_id = ? AND frame_id >= ? AND frame_id <= ?"
            " ORDER BY frame_id DESC LIMIT ?",
            (camera_id, min_frame_id, max_frame_id or 2**63 - 1, limit),
        )
        return [_record(r) for r in rows]

    # -- retention ---------------------------------------------------------------------
    def prune(self, max_age_s: float = 0.0, max_bytes: int = 0) -> int:
        """Delete published frames older than ``max_age_s`` and, oldest first, beyond ``max_bytes`` of
        base layers in total (0: no limit). Returns the number of frames deleted."""
        deleted = 0
        with self._db.transaction() as db:
            if max_age_s:
                cutoff = time.time_ns() - int(max_age_s * 1e9)
                deleted += db.execute("DELETE FROM frames WHERE receive_ns < ? AND state = ?",
                                      (cutoff, FrameState.PUBLISHED)).rowcount
            if max_bytes:
                excess = int(db.execute("SELECT COALESCE(SUM(base_bytes), 0) FROM frames").fetchone()[0]) - max_bytes
                if excess > 0:  # the oldest published frames whose sizes add up to the excess
                    row = db.execute(
                        "SELECT seq FROM (SELECT seq, SUM(base_bytes) OVER (ORDER BY seq) AS running FROM frames"
                        " WHERE state = ?) AS published WHERE running >= ? ORDER BY seq LIMIT 1",
                        (FrameState.PUBLISHED, excess)).fetchone()
                    last = row[0] if row is not None else db.execute(
                        "SELECT MAX(seq) FROM frames WHERE state = ?", (FrameState.PUBLISHED,)).fetchone()[0]
                    if last is not None:
                        deleted += db.execute("DELETE FROM frames WHERE state = ? AND seq <= ?",
                                              (FrameState.PUBLISHED, last)).rowcount
        return deleted

    def usage(self) -> tuple[int, int, int]:
        """(frames, base-layer bytes, frames waiting for the detector)."""
        frames, size = self._db.query("SELECT COUNT(*), COALESCE(SUM(base_bytes), 0) FROM frames")[0]
        waiting = self._db.query("SELECT COUNT(*) FROM frames WHERE state = ?", (FrameState.RECEIVED,))[0][0]
        return int(frames), int(size), int(waiting)

    def close(self) -> None:
        self._db.close()
