"""The frame index's embedded store: one SQLite file (WAL, fsynced commits), the default."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from icmh.service.sqlite import Database


class SqliteBackend:
    """SQL with ``?`` parameters on one SQLite database; transactions are serialised (``BEGIN IMMEDIATE``)."""

    dialect = "sqlite"
    row_lock = ""  # BEGIN IMMEDIATE already holds the database's write lock

    def __init__(self, path: str | Path) -> None:
        self._db = Database(path, "")
        self.description = f"sqlite:///{self._db.path}"

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._db.transaction() as conn:
            yield conn

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self._db.query(sql, params)

    def close(self) -> None:
        self._db.close()
