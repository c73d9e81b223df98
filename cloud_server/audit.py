"""The inspection audit log: every HUMAN and ORIGINAL frame request, allowed or refused.

It is its own SQLite file beside an SQLite frame index, and a table of the index on PostgreSQL, where every
replica of a fleet records into and lists from the same log.

A row says who (operator, role, how identified, peer address), when, which camera and frame, which quality and
what came of it: ``ok``, ``denied`` (role or camera list) or the failure's gRPC status in lower case
(``not_found``, ``unavailable``, ...). An allowed inspection is written (fsynced) before its image is returned:
when the row cannot be written the image is not delivered. :func:`audited` wraps ``Operator.GetFrame`` with the
role / camera checks (before the frame is looked up) and the recording; every GetFrame, machine quality
included, is also counted in ``icmh_cloud_inspections_total{quality,outcome}``. Calls refused before they reach
the servicer (no or wrong credentials) are counted in ``icmh_cloud_auth_refusals_total`` only: without an
identity there is nobody to record, and unauthenticated callers must not be able to grow the log.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from icmh.rpc import operator_pb2
from icmh.service.residual_modes import requested_residual_rate
from icmh.service.sqlite import Database
from icmh.service.timestamps import to_timestamp

from .access import OperatorAccess, abort, refusal
from .auth import Role
from .frame_index import IndexBackend
from .index_migrations import AUDIT_SQLITE
from .metrics import CloudMetrics

log = logging.getLogger("icmh.cloud.audit")
Quality = operator_pb2.Quality
MAX_ID_CHARS = 256
MAX_FRAME_ID = 2**63 - 1  # SQLite integers are signed 64-bit
MAX_LIST = 10_000
_COLUMNS = ("time_ns", "operator", "role", "via", "peer", "camera_id", "frame_id", "quality", "outcome", "detail")
T = TypeVar("T")


@dataclass(frozen=True)
class AuditRecord:
    time_ns: int
    operator: str
    role: str
    via: str
    peer: str
    camera_id: str
    frame_id: int
    quality: int
    outcome: str
    detail: str = ""

    def to_proto(self) -> operator_pb2.AuditRecord:
        fields = {k: getattr(self, k) for k in _COLUMNS if k != "time_ns"}
        return operator_pb2.AuditRecord(time=to_timestamp(self.time_ns), **fields)


def check_ids(context: grpc.ServicerContext, camera_id: str, *frame_ids: int) -> None:
    """INVALID_ARGUMENT for a camera id or frame ids no camera can have (before they reach SQLite)."""
    if len(camera_id) > MAX_ID_CHARS:
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"camera_id longer than {MAX_ID_CHARS} characters")
    if any(f > MAX_FRAME_ID for f in frame_ids):
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"frame ids are at most {MAX_FRAME_ID}")


class AuditLog:
    """Durable audit rows, pruned by age only (its own retention, apart from the frame index): in an SQLite file
    (``path``), or in the table the index's migrations made (an :class:`IndexBackend`, not closed here)."""

    def __init__(self, store: str | Path | IndexBackend) -> None:
        self._own = isinstance(store, (str, Path))  # an SQLite file of its own, closed with the log
        self.db: Database | IndexBackend = Database(store, AUDIT_SQLITE) if self._own else store

    def record(self, record: AuditRecord) -> None:
        with self.db.transaction() as conn:
            conn.execute(f"INSERT INTO inspection_audit ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * 10)})",
                         tuple(getattr(record, k) for k in _COLUMNS))

    def query(self, camera_id: str = "", operator: str = "", since_ns: int = 0, until_ns: int = 0,
              limit: int = 100) -> list[AuditRecord]:
        """Rows matching the filters (empty / 0: any), newest first, at most ``limit``."""
        where, params = ["time_ns >= ?"], [since_ns]
        if until_ns:
            where.append("time_ns < ?")
            params.append(until_ns)
        for column, value in (("camera_id", camera_id), ("operator", operator)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        rows = self.db.query(f"SELECT {', '.join(_COLUMNS)} FROM inspection_audit WHERE {' AND '.join(where)} "
                             "ORDER BY time_ns DESC, seq DESC LIMIT ?", (*params, min(limit, MAX_LIST)))
        return [AuditRecord(*row) for row in rows]

    def prune(self, max_age_s: float, now_ns: int | None = None) -> int:
        """Delete rows older than ``max_age_s`` (0: keep forever); returns how many."""
        if max_age_s <= 0:
            return 0
        cutoff = (now_ns or time.time_ns()) - int(max_age_s * 1e9)
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM inspection_audit WHERE time_ns < ?", (cutoff,)).rowcount

    def count(self) -> int:
        return self.db.query("SELECT COUNT(*) FROM inspection_audit")[0][0]

    def close(self) -> None:
        if self._own:
            self.db.close()


def quality_label(quality: int) -> str:
    return Quality.Name(quality).removeprefix("QUALITY_").lower() if quality in Quality.values() else "unknown"


class InspectionGuard:
    """Checks a GetFrame request against the caller's role and cameras, runs it, records and counts it."""

    def __init__(self, access: OperatorAccess, audit: AuditLog, metrics: CloudMetrics) -> None:
        self.access, self.audit, self.metrics = access, audit, metrics

    def run(self, request: operator_pb2.GetFrameRequest, context: grpc.ServicerContext, body: Callable[[], T]) -> T:
        identity = self.access.caller(context)
        quality = request.quality or Quality.QUALITY_MACHINE
        # Every tier above the machine image shows what the base layer hides: the inspector role at least.
        needed = Role.VIEWER if quality == Quality.QUALITY_MACHINE else Role.INSPECTOR
        row = functools.partial(AuditRecord, time.time_ns(), identity.name, identity.role.label, identity.via,
                                context.peer(), request.camera_id[:MAX_ID_CHARS],
                                min(request.frame_id, MAX_FRAME_ID), quality)
        if len(request.camera_id) > MAX_ID_CHARS or request.frame_id > MAX_FRAME_ID:
            detail = f"camera_id longer than {MAX_ID_CHARS} characters or frame_id above {MAX_FRAME_ID}"
            self._finish(row, quality, "invalid_argument", detail)
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, detail)
        reason = refusal(identity, needed, request.camera_id)
        if reason is not None:
            self._finish(row, quality, "denied", reason)
            abort(context, grpc.StatusCode.PERMISSION_DENIED, f"{quality_label(quality)} quality: {reason}")
        try:
            response = body()
        except Exception:
            code, details = context.code(), context.details() or ""
            outcome = code.name.lower() if isinstance(code, grpc.StatusCode) else "internal"
            self._finish(row, quality, outcome, details.decode(errors="replace") if isinstance(details, bytes)
                         else str(details))
            raise
        # the residual rate an operator asked for (a sharper view than the camera's) is part of what was seen
        rate = requested_residual_rate(request)
        detail = "" if rate is None else f"residual_rate {rate:g}"
        if not self._finish(row, quality, "ok", detail):
            abort(context, grpc.StatusCode.INTERNAL, "the inspection could not be audited, so it is not delivered")
        return response

    def _finish(self, row: Callable[..., AuditRecord], quality: int, outcome: str, detail: str) -> bool:
        """Above machine quality write the audit row, and count the request (outcome ``audit_failed`` when the
        row could not be written: then False)."""
        written = True
        if quality != Quality.QUALITY_MACHINE:
            try:
                self.audit.record(row(outcome, detail[:1000]))
            except Exception:
                log.exception("cannot write the audit row of an inspection")
                self.metrics.errors.labels("audit").inc()
                written = False
        self.metrics.inspections.labels(quality_label(quality), outcome if written else "audit_failed").inc()
        return written


def audited(get_frame: Callable[[Any, Any, Any], T]) -> Callable[[Any, Any, Any], T]:
    """Decorator of ``OperatorService.GetFrame``: the servicer's ``inspections`` guard runs around the body."""

    @functools.wraps(get_frame)
    def guarded(servicer: Any, request: Any, context: Any) -> T:
        return servicer.inspections.run(request, context, lambda: get_frame(servicer, request, context))

    return guarded
