"""The edge's durable frame state in one SQLite file: sequence numbers, the outbox, the residual store.

* The outbox holds base layers the cloud has not acknowledged; it is bounded
  (:class:`OutboxFull` when full) so an outage cannot fill the disk, and nothing
  in it is dropped: a frame leaves it only on the cloud's ack.
* The inspection store keeps what the cloud's HUMAN and ORIGINAL requests need: residual
  layers (coded at capture by the eager policy, or on request and then cached) and the
  captured frames themselves (lossless WebP, with their base layer and residual rate, so the
  lazy policy can code the residual later and the lossless layer is the stored file). Both
  tables share one bound on total size and one on age; the oldest frames go first.

A frame's id, base layer, residual layer and captured frame are written in one transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from icmh.service.sqlite import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    frame_id INTEGER PRIMARY KEY, capture_ns INTEGER NOT NULL, rate REAL NOT NULL,
    base BLOB NOT NULL, base_bytes INTEGER NOT NULL, residual_bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS residuals (
    frame_id INTEGER PRIMARY KEY, stored_ns INTEGER NOT NULL, bytes INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    frame_id INTEGER PRIMARY KEY, stored_ns INTEGER NOT NULL, bytes INTEGER NOT NULL, image BLOB NOT NULL,
    base BLOB NOT NULL, residual_rate REAL NOT NULL);
-- small covering indexes: sizes are summed without reading the layers
CREATE INDEX IF NOT EXISTS outbox_size ON outbox (base_bytes);
CREATE INDEX IF NOT EXISTS residuals_age ON residuals (stored_ns, bytes);
CREATE INDEX IF NOT EXISTS frames_age ON frames (stored_ns, bytes);
INSERT OR IGNORE INTO meta (key, value) VALUES ('next_frame_id', 1);
"""


_INSPECTION_TABLES = ("residuals", "frames")


class OutboxFull(RuntimeError):
    """The outbox is at its limit: the cloud has not acknowledged enough frames."""


@dataclass(frozen=True)
class StoreLimits:
    outbox_frames: int = 10_000
    outbox_bytes: int = 512 * 1024 * 1024
    residual_bytes: int = 1024 * 1024 * 1024  # inspection store: residual layers + captured frames
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
    residual_on_request: bool = False


@dataclass(frozen=True)
class StoredFrame:
    """A captured frame kept for inspection: lossless WebP, its base layer and the residual rate it was due."""

    frame_id: int
    image: bytes
    base: bytes
    residual_rate: float


@dataclass(frozen=True)
class Usage:
    frames: int
    bytes: int


class EdgeStore:
    def __init__(self, path: str | Path, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        self._db = Database(path, _SCHEMA)
        with self._db.transaction() as db:  # stores written before the lazy policy existed
            columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
            if "on_request" not in columns:
                db.execute("ALTER TABLE outbox ADD COLUMN on_request INTEGER NOT NULL DEFAULT 0")
        self._evict_residuals()

    # -- writing -----------------------------------------------------------------------
    def add_frame(self, capture_ns: int, rate: float, base: bytes, residual: bytes | None,
                  image: bytes | None = None, residual_rate: float = 0.0) -> int:
        """Give the frame the next sequence number and keep its layers; returns the frame id.

        ``image`` (lossless WebP of the captured frame) is kept with ``base`` and ``residual_rate``
        for ORIGINAL requests and, when ``residual`` is None, for coding the residual on request.
        """
        if not self.has_room(len(base)):
            outbox = self.outbox_usage()
            raise OutboxFull(f"outbox holds {outbox.frames} frames / {outbox.bytes} bytes unacknowledged")
        with self._db.transaction() as db:
            frame_id = db.execute("SELECT value FROM meta WHERE key = 'next_frame_id'").fetchone()[0]
            db.execute("UPDATE meta SET value = ? WHERE key = 'next_frame_id'", (frame_id + 1,))
            db.execute(
                "INSERT INTO outbox (frame_id, capture_ns, rate, base, base_bytes, residual_bytes, on_request)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (frame_id, capture_ns, rate, base, len(base), len(residual or b""),
                 int(residual is None and image is not None)),
            )
            if residual is not None:
                db.execute(
                    "INSERT INTO residuals (frame_id, stored_ns, bytes, data) VALUES (?, ?, ?, ?)",
                    (frame_id, time.time_ns(), len(residual), residual),
                )
            if image is not None:
                db.execute(
                    "INSERT INTO frames (frame_id, stored_ns, bytes, image, base, residual_rate)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (frame_id, time.time_ns(), len(image) + len(base), image, base, residual_rate),
                )
        self._evict_residuals()
        return frame_id

    def put_residual(self, frame_id: int, residual: bytes) -> None:
        """Keep a residual layer coded on request (a later request for the frame reads it)."""
        with self._db.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO residuals (frame_id, stored_ns, bytes, data) VALUES (?, ?, ?, ?)",
                (frame_id, time.time_ns(), len(residual), residual),
            )
        self._evict_residuals()

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
            "SELECT frame_id, capture_ns, rate, base, residual_bytes, on_request FROM outbox WHERE frame_id > ?"
            " ORDER BY frame_id LIMIT 1",
            (after_frame_id,),
        )
        if not rows:
            return None
        frame_id, capture_ns, rate, base, residual_bytes, on_request = rows[0]
        return PendingFrame(frame_id, capture_ns, rate, bytes(base), residual_bytes, bool(on_request))

    def residual(self, frame_id: int) -> bytes | None:
        """The residual layer of a frame, or None when it was never stored or has been evicted."""
        self._evict_residuals()
        rows = self._db.query("SELECT data FROM residuals WHERE frame_id = ?", (frame_id,))
        return bytes(rows[0][0]) if rows else None

    def frame(self, frame_id: int) -> StoredFrame | None:
        """The captured frame kept for a frame id, or None when it was never kept or has been evicted."""
        self._evict_residuals()
        rows = self._db.query("SELECT image, base, residual_rate FROM frames WHERE frame_id = ?", (frame_id,))
        if not rows:
            return None
        image, base, residual_rate = rows[0]
        return StoredFrame(frame_id, bytes(image), bytes(base), residual_rate)

    def next_frame_id(self) -> int:
        return self._db.query("SELECT value FROM meta WHERE key = 'next_frame_id'")[0][0]

    def outbox_usage(self) -> Usage:
        row = self._db.query("SELECT COUNT(*), COALESCE(SUM(base_bytes), 0) FROM outbox")[0]
        return Usage(row[0], row[1])

    def residual_usage(self) -> Usage:
        row = self._db.query("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM residuals")[0]
        return Usage(row[0], row[1])

    def frame_usage(self) -> Usage:
        row = self._db.query("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM frames")[0]
        return Usage(row[0], row[1])

    # -- retention ---------------------------------------------------------------------
    def _evict_residuals(self) -> None:
        """Apply the inspection store's age and size bounds to residual layers and frames together."""
        with self._db.transaction() as db:
            if self.limits.residual_age_s:
                cutoff = time.time_ns() - int(self.limits.residual_age_s * 1e9)
                for table in _INSPECTION_TABLES:
                    db.execute(f"DELETE FROM {table} WHERE stored_ns < ?", (cutoff,))
            total = sum(db.execute(f"SELECT COALESCE(SUM(bytes), 0) FROM {table}").fetchone()[0]
                        for table in _INSPECTION_TABLES)
            excess = total - self.limits.residual_bytes
            if excess <= 0:
                return
            last = None
            for frame_id, size in db.execute(
                "SELECT frame_id, SUM(bytes) FROM (SELECT frame_id, bytes FROM residuals"
                " UNION ALL SELECT frame_id, bytes FROM frames) GROUP BY frame_id ORDER BY frame_id"
            ):
                last, excess = frame_id, excess - size
                if excess <= 0:
                    break
            for table in _INSPECTION_TABLES:
                db.execute(f"DELETE FROM {table} WHERE frame_id <= ?", (last,))

    def close(self) -> None:
        self._db.close()
