"""The cloud's frame index (SQLite): every accepted base layer, its sizes, timestamps and detections.

It is also the detector's work queue and the source of exactly-once delivery:

* :meth:`FrameIndex.add_frame` commits a frame before the edge gets its ack; a frame id
  the index already holds (or held: ids at or below the camera's last accepted id) is a
  duplicate, never a second detection.
* a frame goes ``RECEIVED`` -> ``DETECTED`` (results stored) -> ``PUBLISHED`` (written to
  the sinks); after a restart the detector resumes from these states.
* retention deletes published frames by age and total size; the per-camera last frame
  id is kept, so resent old frames are still recognised as duplicates.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any

from shared.codec.bitstream import digest
from shared.service.sqlite import Database

from .results import FrameResult, detections_from_json, detections_to_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cameras (
    camera_id TEXT PRIMARY KEY, last_frame_id INTEGER NOT NULL DEFAULT 0,
    width INTEGER NOT NULL DEFAULT 0, height INTEGER NOT NULL DEFAULT 0,
    residual_mode TEXT NOT NULL DEFAULT '', config TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS frames (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, camera_id TEXT NOT NULL, frame_id INTEGER NOT NULL,
    capture_ns INTEGER NOT NULL, receive_ns INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    rate REAL NOT NULL, base BLOB NOT NULL, base_digest BLOB NOT NULL, base_bytes INTEGER NOT NULL,
    residual_bytes INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0, detections TEXT, detect_ns INTEGER,
    error TEXT NOT NULL DEFAULT '', UNIQUE (camera_id, frame_id));
CREATE INDEX IF NOT EXISTS frames_state ON frames (state, seq);
CREATE INDEX IF NOT EXISTS frames_size ON frames (receive_ns, base_bytes);
"""
_RECORD_COLUMNS = ("camera_id, frame_id, capture_ns, receive_ns, width, height, rate, base_bytes, residual_bytes, "
                   "state, detections, detect_ns, error")


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
    if state >= FrameState.DETECTED:
        result = FrameResult(camera_id, frame_id, capture_ns, detect_ns, width, height,
                             detections_from_json(json.loads(detections)), error)
    return FrameRecord(camera_id, frame_id, capture_ns, receive_ns, width, height, rate, base_bytes, residual_bytes,
                       FrameState(state), result)


class FrameIndex:
    def __init__(self, path: str | Path) -> None:
        self._db = Database(path, _SCHEMA)

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
        rows = self._db.query(
            "SELECT c.camera_id, c.last_frame_id, c.width, c.height, c.residual_mode, c.config,"
            " (SELECT COUNT(*) FROM frames f WHERE f.camera_id = c.camera_id),"
            " COALESCE((SELECT f.capture_ns FROM frames f WHERE f.camera_id = c.camera_id"
            "           ORDER BY f.frame_id DESC LIMIT 1), 0)"
            " FROM cameras c WHERE ? IS NULL OR c.camera_id = ? ORDER BY c.camera_id",
            (camera_id, camera_id),
        )
        return [CameraRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]

    def set_camera_config(self, camera_id: str, changes: dict[str, float]) -> dict[str, float]:
        """Merge ``changes`` into the camera's stored config; returns the result."""
        with self._db.transaction() as db:
            db.execute("INSERT OR IGNORE INTO cameras (camera_id) VALUES (?)", (camera_id,))
            row = db.execute("SELECT config FROM cameras WHERE camera_id = ?", (camera_id,)).fetchone()
            config = {**json.loads(row[0]), **changes}
            db.execute("UPDATE cameras SET config = ? WHERE camera_id = ?", (json.dumps(config), camera_id))
        return config

    # -- frames ------------------------------------------------------------------------
    def add_frame(self, camera_id: str, frame_id: int, capture_ns: int, rate: float, base: bytes, width: int,
                  height: int, residual_bytes: int) -> Admission:
        """Commit a received base layer (durable when this returns ACCEPTED)."""
        base_digest = digest(base)
        with self._db.transaction() as db:
            row = db.execute("SELECT base_digest FROM frames WHERE camera_id = ? AND frame_id = ?",
                             (camera_id, frame_id)).fetchone()
            if row is not None:
                return Admission.DUPLICATE if bytes(row[0]) == base_digest else Admission.CONFLICT
            last = db.execute("SELECT last_frame_id FROM cameras WHERE camera_id = ?", (camera_id,)).fetchone()
            if last is not None and frame_id <= last[0]:
                return Admission.DUPLICATE  # accepted before, since removed by retention
            db.execute(
                "INSERT INTO frames (camera_id, frame_id, capture_ns, receive_ns, width, height, rate, base,"
                " base_digest, base_bytes, residual_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (camera_id, frame_id, capture_ns, time.time_ns(), width, height, rate, base, base_digest, len(base),
                 residual_bytes),
            )
            db.execute("INSERT INTO cameras (camera_id, last_frame_id) VALUES (?, ?) ON CONFLICT (camera_id)"
                       " DO UPDATE SET last_frame_id = MAX(last_frame_id, excluded.last_frame_id)",
                       (camera_id, frame_id))
        return Admission.ACCEPTED

    def pending(self, limit: int) -> list[tuple[FrameRecord, bytes]]:
        """Up to ``limit`` frames waiting for the detector, oldest first, with their base layers."""
        rows = self._db.query(
            f"SELECT {_RECORD_COLUMNS}, base FROM frames WHERE state = ? ORDER BY seq LIMIT ?",
            (FrameState.RECEIVED, limit),
        )
        return [(_record(r[:-1]), bytes(r[-1])) for r in rows]

    def record_results(self, results: list[FrameResult]) -> None:
        with self._db.transaction() as db:
            db.executemany(
                "UPDATE frames SET state = ?, detections = ?, detect_ns = ?, error = ?"
                " WHERE camera_id = ? AND frame_id = ? AND state = ?",
                [(FrameState.DETECTED, json.dumps(detections_to_json(r.detections)), r.detect_ns, r.error,
                  r.camera_id, r.frame_id, FrameState.RECEIVED) for r in results],
            )

    def mark_published(self, keys: list[tuple[str, int]]) -> None:
        with self._db.transaction() as db:
            db.executemany("UPDATE frames SET state = ? WHERE camera_id = ? AND frame_id = ?",
                           [(FrameState.PUBLISHED, camera, frame) for camera, frame in keys])

    def unpublished(self) -> list[FrameResult]:
        """Results detected but not yet written to the sinks (a crash in between), oldest first."""
        rows = self._db.query(f"SELECT {_RECORD_COLUMNS} FROM frames WHERE state = ? ORDER BY seq",
                              (FrameState.DETECTED,))
        return [r.result for r in map(_record, rows) if r.result is not None]

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
                excess = db.execute("SELECT COALESCE(SUM(base_bytes), 0) FROM frames").fetchone()[0] - max_bytes
                doomed = []
                if excess > 0:
                    for seq, size in db.execute("SELECT seq, base_bytes FROM frames WHERE state = ? ORDER BY seq",
                                                (FrameState.PUBLISHED,)):
                        doomed.append((seq,))
                        excess -= size
                        if excess <= 0:
                            break
                deleted += db.executemany("DELETE FROM frames WHERE seq = ?", doomed).rowcount
        return deleted

    def usage(self) -> tuple[int, int, int]:
        """(frames, base-layer bytes, frames waiting for the detector)."""
        frames = self._db.query("SELECT COUNT(*) FROM frames")[0][0]
        size = self._db.query("SELECT COALESCE(SUM(base_bytes), 0) FROM frames")[0][0]
        waiting = self._db.query("SELECT COUNT(*) FROM frames WHERE state = ?", (FrameState.RECEIVED,))[0][0]
        return frames, size, waiting

    def close(self) -> None:
        self._db.close()
