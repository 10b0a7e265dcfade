"""One SQLite connection for a server part that keeps its own tables in a file.

The key-value store and the identity store each hold one. Work runs in a worker thread
under a lock (sqlite3 objects are not for concurrent use); SQLite errors become
``StorageError`` named after the part.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from innkt_analytics.shared._exceptions import StorageError

__all__ = ["SideSQLite"]

T = TypeVar("T")


class SideSQLite:
    """The file at ``path`` with ``schema`` (idempotent DDL) applied when it opens."""

    def __init__(self, path: str, *, what: str, schema: Sequence[str]) -> None:
        self.path = os.path.abspath(path)
        self.what = what
        self._schema = schema
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _open_sync(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            for statement in self._schema:
                conn.execute(statement)
        except sqlite3.Error:
            conn.close()
            raise
        self._conn = conn

    async def open(self) -> None:
        """Open the file and apply the schema; raises ``StorageError``."""
        try:
            await asyncio.to_thread(self._open_sync)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.what}: {exc}") from exc

    async def close(self) -> None:
        def run() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(run)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in a worker thread; an open transaction is rolled back on error.

        Raises ``StorageError`` when the file is not open or SQLite fails.
        """

        def call() -> T:
            with self._lock:
                if self._conn is None:
                    raise StorageError(f"{self.what} is not open")
                try:
                    return fn(self._conn)
                except sqlite3.Error as exc:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise StorageError(f"{self.what}: {exc}") from exc

        return await asyncio.to_thread(call)
