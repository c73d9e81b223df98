"""The frame index on PostgreSQL (psycopg 3 with a psycopg_pool connection pool), for fleets and replicas.

The index's SQL is written once with ``?`` parameters; :class:`_Executor` hands it to psycopg as ``%s``.
Every :meth:`PostgresBackend.transaction` is one PostgreSQL transaction on a pooled connection, committed
when the block ends (``synchronous_commit`` on, the server's default: durable before the edge's ack).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

FLEET_EXTRA = "pip install 'icmh-traffic[fleet]'"


def redact(url: str) -> str:
    """The URL without its password (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _sql(statement: str, params: tuple[Any, ...] | list[Any]) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled); unchanged without parameters, which
    psycopg then sends as written."""
    return statement.replace("%", "%%").replace("?", "%s") if params else statement


class _Executor:
    """The sqlite3-like face of a psycopg connection inside a transaction: ``execute`` / ``executemany``
    return a cursor (``fetchone``, ``fetchall``, ``rowcount``)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._conn.execute(_sql(sql, params), params or None)

    def executemany(self, sql: str, params: Iterable[tuple[Any, ...]]) -> Any:
        rows = list(params)
        cursor = self._conn.cursor()
        if rows:
            cursor.executemany(_sql(sql, rows[0]), rows)
        return cursor


class PostgresBackend:
    dialect = "postgresql"
    row_lock = " FOR UPDATE"  # admission of a camera's frames is serialised on its cameras row

    def __init__(self, url: str, pool_size: int = 8, timeout_s: float = 10.0) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise ValueError(f"a PostgreSQL frame index needs psycopg and psycopg_pool ({FLEET_EXTRA})") from exc
        if pool_size < 1:
            raise ValueError("the index connection pool needs at least one connection")
        self.description = redact(url)
        try:  # one direct connection first: its error says why (refused, authentication, no such database)
            psycopg.connect(url, connect_timeout=max(1, round(timeout_s))).close()
        except psycopg.Error as exc:
            raise OSError(f"cannot reach the frame index at {self.description}: {str(exc).strip()}") from None
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=False, timeout=timeout_s,
                                    check=ConnectionPool.check_connection, name="icmh-index",
                                    kwargs={"connect_timeout": max(1, round(timeout_s))})
        self._pool.open(wait=True, timeout=timeout_s)

    @contextmanager
    def transaction(self) -> Iterator[_Executor]:
        """Statements on one pooled connection: committed at the end, rolled back on an exception."""
        with self._pool.connection() as conn:
            yield _Executor(conn)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._pool.connection() as conn:
            return conn.execute(_sql(sql, params), params or None).fetchall()

    def close(self) -> None:
        self._pool.close()
