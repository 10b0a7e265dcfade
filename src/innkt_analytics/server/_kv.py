"""A tiny durable key-value store for small server-side documents.

Dashboards and alert rules are a handful of small JSON documents per project;
they do not belong in the event ``Storage`` interface. They live in one table,
``innkt_kv``, in the same database as the events: a SQLite file (through a
separate connection, so the event writer's group commit is untouched) or
PostgreSQL (a small asyncpg pool). Backups of the SQLite file therefore include
them.

Keys are grouped by a namespace (``"dashboards"``, ``"alerts"``); callers put
the project into the key (``"<project>/<name>"``) and list by prefix.
"""

from __future__ import annotations

import abc
import sqlite3
import time
from typing import Any, Final

from litestar import Litestar

from innkt_analytics.server._state import ServerState, required
from innkt_analytics.server.storage import parse_db_url
from innkt_analytics.server.storage._pg_pool import asyncpg_module, open_pool_with_schema
from innkt_analytics.server.storage._side_sqlite import SideSQLite
from innkt_analytics.shared._exceptions import StorageError

__all__ = ["KVStore", "PostgresKV", "SQLiteKV", "install_kv", "kv_of", "make_kv"]

_TABLE: Final = "innkt_kv"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _escape_like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class KVStore(abc.ABC):
    """Async key-value store; every method raises ``StorageError`` when the database fails."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the table if needed."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def get(self, namespace: str, key: str) -> bytes | None:
        """The value, or None when the key is absent."""

    @abc.abstractmethod
    async def put(self, namespace: str, key: str, value: bytes) -> None:
        """Insert or replace the value; durable when this returns."""

    @abc.abstractmethod
    async def delete(self, namespace: str, key: str) -> bool:
        """Remove the key; True when it existed."""

    @abc.abstractmethod
    async def put_if(self, namespace: str, key: str, value: bytes, expected: bytes | None) -> bool:
        """Compare-and-set: store ``value`` only if the stored value is ``expected`` (None:
        the key is absent). True when stored; atomic across instances sharing the database."""

    @abc.abstractmethod
    async def items(self, namespace: str, prefix: str = "") -> list[tuple[str, bytes]]:
        """All (key, value) pairs of the namespace whose key starts with ``prefix``, by key."""


class SQLiteKV(KVStore):
    """The table in a SQLite file, through one connection of its own."""

    def __init__(self, path: str) -> None:
        self._db = SideSQLite(
            path,
            what="key-value store",
            schema=[
                f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
                " ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
                " updated_at INTEGER NOT NULL, PRIMARY KEY (ns, key))"
            ],
        )
        self.path = self._db.path

    async def _run(self, sql: str, params: tuple[Any, ...]) -> tuple[list[Any], int]:
        """Run one statement (autocommit); returns its rows and rowcount."""

        def run(conn: sqlite3.Connection) -> tuple[list[Any], int]:
            cur = conn.execute(sql, params)
            return cur.fetchall(), cur.rowcount

        return await self._db.run(run)

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def get(self, namespace: str, key: str) -> bytes | None:
        rows, _ = await self._run(
            f"SELECT value FROM {_TABLE} WHERE ns = ? AND key = ?", (namespace, key)
        )
        return bytes(rows[0][0]) if rows else None

    async def put(self, namespace: str, key: str, value: bytes) -> None:
        await self._run(
            f"INSERT INTO {_TABLE} (ns, key, value, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            (namespace, key, value, _now_ms()),
        )

    async def delete(self, namespace: str, key: str) -> bool:
        _, count = await self._run(
            f"DELETE FROM {_TABLE} WHERE ns = ? AND key = ?", (namespace, key)
        )
        return count > 0

    async def put_if(self, namespace: str, key: str, value: bytes, expected: bytes | None) -> bool:
        if expected is None:
            sql = (
                f"INSERT INTO {_TABLE} (ns, key, value, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (ns, key) DO NOTHING"
            )
            params: tuple[Any, ...] = (namespace, key, value, _now_ms())
        else:
            sql = (
                f"UPDATE {_TABLE} SET value = ?, updated_at = ?"
                " WHERE ns = ? AND key = ? AND value = ?"
            )
            params = (value, _now_ms(), namespace, key, expected)
        _, count = await self._run(sql, params)
        return count > 0

    async def items(self, namespace: str, prefix: str = "") -> list[tuple[str, bytes]]:
        rows, _ = await self._run(
            f"SELECT key, value FROM {_TABLE} WHERE ns = ? AND key LIKE ? ESCAPE '\\' ORDER BY key",
            (namespace, _escape_like(prefix) + "%"),
        )
        # LIKE is case-insensitive for ASCII in SQLite; the prefix test is not.
        return [(k, bytes(v)) for k, v in rows if k.startswith(prefix)]


class PostgresKV(KVStore):
    """The table in PostgreSQL, through a small asyncpg pool of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None

    async def open(self) -> None:
        self._pool = await open_pool_with_schema(
            self.url,
            what="key-value store",
            lock="innkt_kv",
            statements=[
                f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
                " ns text NOT NULL, key text NOT NULL, value bytea NOT NULL,"
                " updated_at bigint NOT NULL, PRIMARY KEY (ns, key))"
            ],
            max_size=2,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _call(self, method: str, sql: str, *args: Any) -> Any:
        asyncpg = asyncpg_module()
        if self._pool is None:
            raise StorageError("key-value store is not open")
        try:
            return await getattr(self._pool, method)(sql, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageError(f"key-value store: {exc}") from exc

    async def get(self, namespace: str, key: str) -> bytes | None:
        value = await self._call(
            "fetchval", f"SELECT value FROM {_TABLE} WHERE ns = $1 AND key = $2", namespace, key
        )
        return None if value is None else bytes(value)

    async def put(self, namespace: str, key: str, value: bytes) -> None:
        await self._call(
            "execute",
            f"INSERT INTO {_TABLE} (ns, key, value, updated_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            namespace,
            key,
            value,
            _now_ms(),
        )

    async def delete(self, namespace: str, key: str) -> bool:
        status: str = await self._call(
            "execute", f"DELETE FROM {_TABLE} WHERE ns = $1 AND key = $2", namespace, key
        )
        return status != "DELETE 0"

    async def put_if(self, namespace: str, key: str, value: bytes, expected: bytes | None) -> bool:
        if expected is None:
            status: str = await self._call(
                "execute",
                f"INSERT INTO {_TABLE} (ns, key, value, updated_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (ns, key) DO NOTHING",
                *(namespace, key, value, _now_ms()),
            )
            return status != "INSERT 0 0"
        status = await self._call(
            "execute",
            f"UPDATE {_TABLE} SET value = $1, updated_at = $2"
            " WHERE ns = $3 AND key = $4 AND value = $5",
            *(value, _now_ms(), namespace, key, expected),
        )
        return status != "UPDATE 0"

    async def items(self, namespace: str, prefix: str = "") -> list[tuple[str, bytes]]:
        rows = await self._call(
            "fetch",
            f"SELECT key, value FROM {_TABLE} WHERE ns = $1 AND starts_with(key, $2)"
            ' ORDER BY key COLLATE "C"',
            namespace,
            prefix,
        )
        return [(r["key"], bytes(r["value"])) for r in rows]


def make_kv(url: str) -> KVStore:
    """The store for a database URL as ``INNKT_DB`` takes it (path, sqlite:///, postgresql://).

    Raises ``ConfigError`` for an unknown scheme.
    """
    db = parse_db_url(url)
    return PostgresKV(url) if db.sqlite_path is None else SQLiteKV(db.sqlite_path)


def install_kv(state: ServerState, app: Litestar) -> None:
    """``create_app`` ``on_state`` hook, before the hooks of the subsystems that keep
    documents (dashboards, alert rules): the app's one store, in ``settings.db``.

    It opens first among the startup hooks (after the event storage, so a new
    SQLite file already exists) and closes last at shutdown.
    """
    store = make_kv(state.settings.db)
    state.parts.kv = store
    app.on_startup.insert(0, store.open)
    app.on_shutdown.append(store.close)


def kv_of(state: ServerState) -> KVStore:
    """The store ``install_kv`` made. Raises ``LookupError`` without it."""
    return required(state.parts.kv, "install_kv")
