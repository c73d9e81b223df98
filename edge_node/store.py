"""The edge's durable frame state in one SQLite file: sequence numbers, the outbox, the residual store.

* The outbox holds base layers the cloud has not acknowledged; it is bounded
  (:class:`OutboxFull` when full) so an outage cannot fill the disk, and nothing
  in it is dropped: a frame leaves it only on the cloud's ack.
* The residual store keeps residual layers for the cloud's human-quality requests,
  bounded by total size and age; the oldest go first.

A frame's id, base layer and residual layer are written in one transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from shared.service.sqlite import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    frame_id INTEGER PRIMARY KEY, capture_ns INTEGER NOT NULL, rate REAL NOT NULL,
    base BLOB NOT NULL, base_bytes INTEGER NOT NULL, residual_bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS residuals (
    frame_id INTEGER PRIMARY KEY, stored_ns INTEGER NOT NULL, bytes INTEGER NOT NULL, data BLOB NOT NULL);
-- small covering indexes: sizes are summed without reading the layers
CREATE INDEX IF NOT EXISTS outbox_size ON outbox (base_bytes);
CREATE INDEX IF NOT EXISTS residuals_age ON residuals (stored_ns, bytes);
INSERT OR IGNORE INTO meta (key, value) VALUES ('next_frame_id', 1);
"""


class OutboxFull(RuntimeError):
    """The outbox is at its limit: the cloud has not acknowledged enough frames."""


@dataclass(frozen=True)
class StoreLimits:
    outbox_frames: int = 10_000
    outbox_bytes: int = 512 * 1024 * 1024
    residual_bytes: int = 1024 * 1024 * 1024
    residual_age_s: float = 24 * 3600.0  # 0: no age limit

    def __post_init__(self) -> None:
        if min(self.outbox_frames, self.outbox_bytes, self.residual_bytes) <= 0 or self.residual_age_s < 0:
            raise ValueError("store limits must be positive (residual age: 0 for none)")


@dataclass(frozen=True)
class PendingFrame:
    """A base layer waiting in the outbox."""

    frame_id: int
    capture_ns: int
    rate: float
    base: bytes
    residual_bytes: int


@dataclass(frozen=True)
class Usage:
    frames: int
    bytes: int


class EdgeStore:
    def __init__(self, path: str | Path, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        self._db = Database(path, _SCHEMA)
        self._evict_residuals()

    # -- writing -----------------------------------------------------------------------
    def add_frame(self, capture_ns: int, rate: float, base: bytes, residual: bytes | None) -> int:
        """Give the frame the next sequence number and keep both layers; returns the frame id."""
        if not self.has_room(len(base)):
            outbox = self.outbox_usage()
            raise OutboxFull(f"outbox holds {outbox.frames} frames / {outbox.bytes} bytes unacknowledged")
        with self._db.transaction() as db:
            frame_id = db.execute("SELECT value FROM meta WHERE key = 'next_frame_id'").fetchone()[0]
            db.execute("UPDATE meta SET value = ? WHERE key = 'next_frame_id'", (frame_id + 1,))
            db.execute(
                "INSERT INTO outbox (frame_id, capture_ns, rate, base, base_bytes, residual_bytes)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (frame_id, capture_ns, rate, base, len(base), len(residual or b"")),
            )
            if residual is not None:
                db.execute(
                    "INSERT INTO residuals (frame_id, stored_ns, bytes, data) VALUES (?, ?, ?, ?)",
                    (frame_id, time.time_ns(), len(residual), residual),
                )
        self._evict_residuals()
        return frame_id

    def has_room(self, base_bytes: int = 0) -> bool:
        """Whether the outbox can take one more base layer of ``base_bytes``."""
        outbox = self.outbox_usage()
        return outbox.frames < self.limits.outbox_frames and outbox.bytes + base_bytes <= self.limits.outbox_bytes

    def acknowledge(self, frame_id: int) -> None:
        """The cloud holds the frame (or refused it for good): drop it from the outbox."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM outbox WHERE frame_id = ?", (frame_id,))

    def align_sequence(self, cloud_last_frame_id: int) -> bool:
        """Continue after the cloud's last frame id when this store has nothing pending (a new store).

        Returns True if the next frame id moved.
        """
        with self._db.transaction() as db:
            if db.execute("SELECT 1 FROM outbox LIMIT 1").fetchone():
                return False
            cursor = db.execute(
                "UPDATE meta SET value = ? WHERE key = 'next_frame_id' AND value <= ?",
                (cloud_last_frame_id + 1, cloud_last_frame_id),
            )
            return cursor.rowcount > 0

    # -- reading -----------------------------------------------------------------------
    def next_pending(self, after_frame_id: int) -> PendingFrame | None:
        """The oldest outbox frame with an id above ``after_frame_id``."""
        rows = self._db.query(
            "SELECT frame_id, capture_ns, rate, base, residual_bytes FROM outbox WHERE frame_id > ?"
            " ORDER BY frame_id LIMIT 1",
            (after_frame_id,),
        )
        if not rows:
            return None
        frame_id, capture_ns, rate, base, residual_bytes = rows[0]
        return PendingFrame(frame_id, capture_ns, rate, bytes(base), residual_bytes)

    def residual(self, frame_id: int) -> bytes | None:
        """The residual layer of a frame, or None when it was never stored or has been evicted."""
        self._evict_residuals()
        rows = self._db.query("SELECT data FROM residuals WHERE frame_id = ?", (frame_id,))
        return bytes(rows[0][0]) if rows else None

    def next_frame_id(self) -> int:
        return self._db.query("SELECT value FROM meta WHERE key = 'next_frame_id'")[0][0]

    def outbox_usage(self) -> Usage:
        row = self._db.query("SELECT COUNT(*), COALESCE(SUM(base_bytes), 0) FROM outbox")[0]
        return Usage(row[0], row[1])

    def residual_usage(self) -> Usage:
        row = self._db.query("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM residuals")[0]
        return Usage(row[0], row[1])

    # -- retention ---------------------------------------------------------------------
    def _evict_residuals(self) -> None:
        with self._db.transaction() as db:
            if self.limits.residual_age_s:
                cutoff = time.time_ns() - int(self.limits.residual_age_s * 1e9)
                db.execute("DELETE FROM residuals WHERE stored_ns < ?", (cutoff,))
            total = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM residuals").fetchone()[0]
            excess = total - self.limits.residual_bytes
            if excess <= 0:
                return
            last = None
            for frame_id, size in db.execute("SELECT frame_id, bytes FROM residuals ORDER BY frame_id"):
                last, excess = frame_id, excess - size
                if excess <= 0:
                    break
            db.execute("DELETE FROM residuals WHERE frame_id <= ?", (last,))

    def close(self) -> None:
        self._db.close()
