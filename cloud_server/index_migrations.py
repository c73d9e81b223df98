"""Versioned schema of the frame index, one DDL text per dialect (``sqlite``, ``postgresql``).

:func:`migrate` applies, in one transaction, the migrations a database has not seen yet and records each in
``schema_migrations``; a database written by a newer cloud-server (a version above the last one known here) is
refused. On PostgreSQL an advisory lock serialises replicas starting at the same time.

Migration 1 is the schema of the SQLite index before versioning (``CREATE ... IF NOT EXISTS``), so an existing
``frames.db`` is adopted as version 1 without change. Migration 3 (replicas and camera leases) is used on
PostgreSQL only (several cloud-server replicas, :mod:`icmh.cloud.leases`); SQLite gets the same tables, unused,
so that both stores keep one version sequence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

ADVISORY_LOCK_KEY = 0x1C3A_0001  # pg_advisory_xact_lock key of the index's migrations


class Executor(Protocol):
    def execute(self, sql: str, params: tuple[Any, ...] = ...) -> Any: ...


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: dict[str, str]  # dialect -> statements separated by ";"


_FRAMES_SQLITE = """
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
CREATE INDEX IF NOT EXISTS frames_size ON frames (receive_ns, base_bytes)
"""
_FRAMES_POSTGRES = """
CREATE TABLE cameras (
    camera_id TEXT PRIMARY KEY, last_frame_id BIGINT NOT NULL DEFAULT 0,
    width INTEGER NOT NULL DEFAULT 0, height INTEGER NOT NULL DEFAULT 0,
    residual_mode TEXT NOT NULL DEFAULT '', config TEXT NOT NULL DEFAULT '{}');
CREATE TABLE frames (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, camera_id TEXT NOT NULL, frame_id BIGINT NOT NULL,
    capture_ns BIGINT NOT NULL, receive_ns BIGINT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    rate DOUBLE PRECISION NOT NULL, base BYTEA NOT NULL, base_digest BYTEA NOT NULL, base_bytes BIGINT NOT NULL,
    residual_bytes BIGINT NOT NULL, state SMALLINT NOT NULL DEFAULT 0, detections TEXT, detect_ns BIGINT,
    error TEXT NOT NULL DEFAULT '', UNIQUE (camera_id, frame_id));
CREATE INDEX frames_state ON frames (state, seq);
CREATE INDEX frames_size ON frames (receive_ns, base_bytes)
"""
# One row per (sink, detected frame) still to be published to that sink: each sink's own cursor, so that a sink
# that is down holds back its results only. Frames detected before this migration (state 1 = DETECTED) were due
# to the only sink there was, the JSON Lines file.
_DELIVERIES = """
CREATE TABLE deliveries (
    sink TEXT NOT NULL, seq BIGINT NOT NULL, camera_id TEXT NOT NULL, PRIMARY KEY (sink, seq));
INSERT INTO deliveries (sink, seq, camera_id) SELECT 'jsonl', seq, camera_id FROM frames WHERE state = 1
"""

# Several replicas on one index: each live cloud-server process (``incarnation``) heartbeats its ``replicas`` row;
# a camera's edge streams to the holder of its lease, renewed with the heartbeat and taken over once expired.
# Times are the database server's clock (ns since the epoch), so replicas' clocks do not matter.
_REPLICAS = """
CREATE TABLE replicas (
    replica_id TEXT PRIMARY KEY, incarnation TEXT NOT NULL, address TEXT NOT NULL, sinks TEXT NOT NULL DEFAULT '[]',
    started_ns BIGINT NOT NULL, expires_ns BIGINT NOT NULL);
CREATE TABLE camera_leases (
    camera_id TEXT PRIMARY KEY, replica_id TEXT NOT NULL, incarnation TEXT NOT NULL, address TEXT NOT NULL,
    expires_ns BIGINT NOT NULL, acquired_ns BIGINT NOT NULL, online SMALLINT NOT NULL DEFAULT 0,
    fps DOUBLE PRECISION NOT NULL DEFAULT 0);
CREATE INDEX camera_leases_holder ON camera_leases (incarnation)
"""

# The inspection audit log (icmh.cloud.audit). In its own SQLite file (``audit.db``) beside an SQLite index; in
# the index itself on PostgreSQL, so that every replica records into and lists from one log. SQLite indexes get
# the table too (unused), so that both stores keep one version sequence.
AUDIT_SQLITE = """
CREATE TABLE IF NOT EXISTS inspection_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, time_ns INTEGER NOT NULL, operator TEXT NOT NULL, role TEXT NOT NULL,
    via TEXT NOT NULL, peer TEXT NOT NULL, camera_id TEXT NOT NULL, frame_id INTEGER NOT NULL,
    quality INTEGER NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS inspection_audit_time ON inspection_audit (time_ns)
"""
_AUDIT_POSTGRES = """
CREATE TABLE inspection_audit (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, time_ns BIGINT NOT NULL, operator TEXT NOT NULL,
    role TEXT NOT NULL, via TEXT NOT NULL, peer TEXT NOT NULL, camera_id TEXT NOT NULL, frame_id BIGINT NOT NULL,
    quality INTEGER NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX inspection_audit_time ON inspection_audit (time_ns)
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "cameras and frames", {"sqlite": _FRAMES_SQLITE, "postgresql": _FRAMES_POSTGRES}),
    Migration(2, "per-sink deliveries", {"sqlite": _DELIVERIES, "postgresql": _DELIVERIES}),
    Migration(3, "replicas and camera leases", {"sqlite": _REPLICAS, "postgresql": _REPLICAS}),
    Migration(4, "inspection audit", {"sqlite": AUDIT_SQLITE, "postgresql": _AUDIT_POSTGRES}),
)
LATEST = MIGRATIONS[-1].version


def migrate(db: Executor, dialect: str) -> list[int]:
    """Bring the schema to :data:`LATEST` inside the caller's transaction; returns the versions applied."""
    if dialect == "postgresql":
        db.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
               " applied_ns BIGINT NOT NULL)")
    done = {row[0] for row in db.execute("SELECT version FROM schema_migrations").fetchall()}
    if done and max(done) > LATEST:
        raise ValueError(f"the frame index has schema version {max(done)}, newer than this cloud-server "
                         f"knows ({LATEST}): upgrade the cloud-server")
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.sql[dialect].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT INTO schema_migrations (version, name, applied_ns) VALUES (?, ?, ?)",
                   (migration.version, migration.name, time.time_ns()))
        applied.append(migration.version)
    return applied
