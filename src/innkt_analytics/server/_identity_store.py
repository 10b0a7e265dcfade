"""Durable storage of the identity graph (SQLite or PostgreSQL).

Two tables of their own, created with ``CREATE TABLE IF NOT EXISTS`` when the
store opens (no change to the events schema or its version):

* ``identity_links`` — the observations of ``_identity``: one row per
  (project, a, b, alias) with the earliest time seen. Upserts keep the minimum,
  so replays and late events converge on the same rows in any order.
* ``identity_ids`` — every id seen: whether it was sent as a ``userId``, first
  and last seen, and the latest identify traits. ``id_hash`` is the person id
  the id would have as a root, so a person id can be looked up.
* ``identity_versions`` — per project, a number raised after every write that may
  change persons, and only then: a link not stored before (or seen earlier than
  stored), an id sent as a ``userId`` for the first time, a deletion. Insights that
  count persons key their cached answers on it (``version``, ``graph``), so a
  batch repeating what the store holds (every batch of a known user after a
  restart emptied the server's memory of it) leaves their caches alone.

Persons are not stored: ``component`` reads the connected part of the links
around an id and ``_identity.resolve`` partitions it, so no merge is ever half
written and the rule can change without a data migration.

On SQLite the tables are in a file of their own (``<db>.identity.db``), so their
writes never hold the lock the events writer needs; on PostgreSQL they are in
the events' database, through a small asyncpg pool of their own.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from innkt_analytics.server._identity import Link, person_id_of
from innkt_analytics.server.storage._pg_pool import asyncpg_module, open_pool_with_schema
from innkt_analytics.server.storage._side_sqlite import SideSQLite
from innkt_analytics.shared._exceptions import ConfigError, StorageError

__all__ = [
    "GraphTooLarge",
    "IdInfo",
    "IdentityStore",
    "PostgresIdentity",
    "SQLiteIdentity",
    "make_identity",
]

#: at most this many ids are read around one id; a bigger graph is an error
#: (a shared, constant anonymousId such as "unknown" would otherwise be a hub)
MAX_COMPONENT: Final = 10_000

_SQLITE_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS identity_links (project TEXT NOT NULL, a TEXT NOT NULL,"
    " b TEXT NOT NULL, alias INTEGER NOT NULL, at INTEGER NOT NULL,"
    " PRIMARY KEY (project, a, b, alias))",
    "CREATE INDEX IF NOT EXISTS identity_links_b ON identity_links (project, b)",
    "CREATE TABLE IF NOT EXISTS identity_ids (project TEXT NOT NULL, id TEXT NOT NULL,"
    " id_hash TEXT NOT NULL, is_user INTEGER NOT NULL, first_seen INTEGER NOT NULL,"
    " last_seen INTEGER NOT NULL, traits BLOB, traits_at INTEGER, PRIMARY KEY (project, id))",
    "CREATE INDEX IF NOT EXISTS identity_ids_hash ON identity_ids (project, id_hash)",
    "CREATE TABLE IF NOT EXISTS identity_versions (project TEXT PRIMARY KEY,"
    " version INTEGER NOT NULL)",
)
_PG_SCHEMA: Final = tuple(
    s.replace("INTEGER", "bigint").replace("TEXT", "text").replace("BLOB", "bytea")
    for s in _SQLITE_SCHEMA
)

#: a link's row keeps its earliest time: a row the upsert leaves alone is no change
_LINK_CONFLICT: Final = (
    " ON CONFLICT (project, a, b, alias) DO UPDATE SET at = excluded.at"
    " WHERE excluded.at < identity_links.at"
)
_LINK_UPSERT: Final = (
    "INSERT INTO identity_links (project, a, b, alias, at) VALUES ({p})" + _LINK_CONFLICT
)
#: PostgreSQL: every link of a batch in one statement, returning the rows it changed
_PG_LINKS_UPSERT: Final = (
    "INSERT INTO identity_links (project, a, b, alias, at) SELECT $1, k.a, k.b, k.alias, k.at"
    " FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS k(a, b, alias, at)"
    + _LINK_CONFLICT
    + " RETURNING 1"
)
#: the incoming identify is the later one (ties: the greater bytes, so arrival order is moot)
_NEWER: Final = (
    "excluded.traits_at IS NOT NULL AND (identity_ids.traits_at IS NULL"
    " OR excluded.traits_at > identity_ids.traits_at"
    " OR (excluded.traits_at = identity_ids.traits_at"
    " AND excluded.traits > identity_ids.traits))"
)
_BUMP: Final = (
    "INSERT INTO identity_versions (project, version) VALUES ({p}, 1)"
    " ON CONFLICT (project) DO UPDATE SET version = identity_versions.version + 1"
)
_VERSION: Final = "SELECT version FROM identity_versions WHERE project = {p}"
#: the links' first ids that were also sent as a userId (rule 1 of ``_identity``)
_LINKED_USERS: Final = (
    "SELECT DISTINCT l.a FROM identity_links l JOIN identity_ids i"
    " ON i.project = l.project AND i.id = l.a WHERE l.project = {p} AND i.is_user = 1"
)
_ID_UPSERT: Final = (
    "INSERT INTO identity_ids (project, id, id_hash, is_user, first_seen, last_seen, traits,"
    " traits_at) VALUES ({p}) ON CONFLICT (project, id) DO UPDATE SET"
    " is_user = {greatest}(identity_ids.is_user, excluded.is_user),"
    " first_seen = {least}(identity_ids.first_seen, excluded.first_seen),"
    " last_seen = {greatest}(identity_ids.last_seen, excluded.last_seen),"
    f" traits = CASE WHEN {_NEWER} THEN excluded.traits ELSE identity_ids.traits END,"
    f" traits_at = CASE WHEN {_NEWER} THEN excluded.traits_at ELSE identity_ids.traits_at END"
)


class GraphTooLarge(StorageError):
    """More than ``MAX_COMPONENT`` ids are linked around the id asked for."""


@dataclass(slots=True)
class IdInfo:
    """What one ingest batch says about one id."""

    is_user: bool
    first_seen: int
    last_seen: int
    #: the JSON object of the latest identify (ties: the greater bytes, so order is moot)
    traits: bytes | None = None
    traits_at: int | None = None


def _user_ids(ids: dict[str, IdInfo]) -> list[str]:
    """The ids a batch sends as a userId: stored as users before, they change nothing."""
    return sorted(i for i, info in ids.items() if info.is_user)


def _unique_links(links: Sequence[Link]) -> list[Link]:
    """One link per (a, b, alias), the earliest: one statement may touch a row once."""
    earliest: dict[tuple[str, str, bool], Link] = {}
    for k in links:
        found = earliest.get((k.a, k.b, k.alias))
        if found is None or k.at < found.at:
            earliest[(k.a, k.b, k.alias)] = k
    return list(earliest.values())


def _id_row(project: str, ident: str, info: IdInfo) -> tuple[Any, ...]:
    return (
        project,
        ident,
        person_id_of(ident),
        int(info.is_user),
        info.first_seen,
        info.last_seen,
        info.traits,
        info.traits_at,
    )


_Pending = tuple[str, Sequence[Link], dict[str, IdInfo], "asyncio.Future[None]"]


def _settle(group: list[_Pending], error: StorageError | None) -> None:
    for *_, done in group:
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)


class IdentityStore(abc.ABC):
    """Every method raises ``StorageError`` when the database fails."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def record(self, project: str, links: Sequence[Link], ids: dict[str, IdInfo]) -> None:
        """Add observations in one transaction.

        With links, durable when this returns. Without, only first/last seen and
        traits change: those commits skip the flush to disk (SQLite
        ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``), so they
        survive a crash of the server but a power loss only once a later commit
        or checkpoint flushes them.
        """

    @abc.abstractmethod
    async def _neighbours(self, project: str, ids: list[str]) -> list[Link]: ...

    @abc.abstractmethod
    async def id_for_hash(self, project: str, person_id: str) -> str | None: ...

    @abc.abstractmethod
    async def infos(self, project: str, ids: Sequence[str]) -> dict[str, IdInfo]: ...

    @abc.abstractmethod
    async def forget(self, project: str, ids: Sequence[str]) -> None:
        """Delete every link and id row of ``ids`` (a deleted person)."""

    @abc.abstractmethod
    async def version(self, project: str) -> int:
        """The project's graph version: it changes whenever persons may have changed."""

    @abc.abstractmethod
    async def graph(self, project: str) -> tuple[int, list[Link], set[str]]:
        """The version, every link of the project, and which of the links' ids are
        user ids (the input of ``_identity.resolve``), read together.

        The version is read first, so it is never newer than the links.
        """

    async def component(self, project: str, start: str) -> tuple[list[Link], set[str]]:
        """The links and ids connected to ``start`` (over links of either kind).

        Raises ``GraphTooLarge`` past ``MAX_COMPONENT`` ids.
        """
        seen, frontier, links = {start}, [start], set()
        while frontier:
            found = await self._neighbours(project, frontier)
            frontier = []
            for link in found:
                links.add(link)
                for x in (link.a, link.b):
                    if x not in seen:
                        seen.add(x)
                        frontier.append(x)
            if len(seen) > MAX_COMPONENT:
                raise GraphTooLarge(f"more than {MAX_COMPONENT} ids are linked to {start!r}")
        return sorted(links), seen


class SQLiteIdentity(IdentityStore):
    """The tables in the SQLite file, through one connection of its own."""

    def __init__(self, path: str) -> None:
        self._db = SideSQLite(path, what="identity store", schema=_SQLITE_SCHEMA)
        self.path = self._db.path
        self._pending: list[_Pending] = []
        self._flushing = False

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def _do(self, fn: Any) -> Any:
        return await self._db.run(fn)

    async def record(self, project: str, links: Sequence[Link], ids: dict[str, IdInfo]) -> None:
        # Group commit: the batches that arrive while one transaction is being
        # written share the next one, so concurrent requests share one flush.
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((project, links, ids, done))
        if not self._flushing:
            self._flushing = True
            try:
                while self._pending:
                    group, self._pending = self._pending, []
                    try:
                        await self._do(functools.partial(self._write, group=group))
                    except StorageError as exc:
                        _settle(group, exc)
                    else:
                        _settle(group, None)
            finally:
                self._flushing = False
                # cancelled while writing: whoever waits must not wait forever
                _settle(self._pending, StorageError("identity store: write cancelled"))
                self._pending = []
        await done

    @staticmethod
    def _write(conn: sqlite3.Connection, *, group: list[_Pending]) -> None:
        durable = any(links for _, links, _, _ in group)
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        conn.execute("BEGIN IMMEDIATE")
        for project, links, ids, _ in group:
            users = _user_ids(ids)
            known = SQLiteIdentity._known_users(conn, project, users)
            before = conn.total_changes
            # a link counts as a change only when inserted or moved earlier (the
            # upsert's WHERE leaves any other row untouched, and uncounted)
            conn.executemany(
                _LINK_UPSERT.format(p="?, ?, ?, ?, ?"),
                [(project, k.a, k.b, int(k.alias), k.at) for k in links],
            )
            changed = conn.total_changes > before or len(known) < len(users)
            conn.executemany(
                _ID_UPSERT.format(p="?, ?, ?, ?, ?, ?, ?, ?", least="min", greatest="max"),
                [_id_row(project, i, info) for i, info in ids.items()],
            )
            if changed:
                conn.execute(_BUMP.format(p="?"), (project,))
        conn.execute("COMMIT")

    @staticmethod
    def _known_users(conn: sqlite3.Connection, project: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` are stored as user ids already."""
        known: set[str] = set()
        for start in range(0, len(ids), 400):
            chunk = ids[start : start + 400]
            marks = ", ".join("?" * len(chunk))
            known.update(
                r[0]
                for r in conn.execute(
                    "SELECT id FROM identity_ids WHERE project = ? AND is_user = 1"
                    f" AND id IN ({marks})",
                    (project, *chunk),
                )
            )
        return known

    async def _neighbours(self, project: str, ids: list[str]) -> list[Link]:
        def run(conn: sqlite3.Connection) -> list[Link]:
            out: list[Link] = []
            for start in range(0, len(ids), 400):
                chunk = ids[start : start + 400]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT a, b, alias, at FROM identity_links WHERE project = ?"
                    f" AND (a IN ({marks}) OR b IN ({marks}))",
                    (project, *chunk, *chunk),
                ).fetchall()
                out += [Link(a, b, bool(alias), at) for a, b, alias, at in rows]
            return out

        result: list[Link] = await self._do(run)
        return result

    async def id_for_hash(self, project: str, person_id: str) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT id FROM identity_ids WHERE project = ? AND id_hash = ? LIMIT 1",
                (project, person_id),
            ).fetchone()
            return None if row is None else str(row[0])

        result: str | None = await self._do(run)
        return result

    async def infos(self, project: str, ids: Sequence[str]) -> dict[str, IdInfo]:
        def run(conn: sqlite3.Connection) -> dict[str, IdInfo]:
            out: dict[str, IdInfo] = {}
            for start in range(0, len(ids), 400):
                chunk = list(ids[start : start + 400])
                marks = ", ".join("?" * len(chunk))
                for row in conn.execute(
                    "SELECT id, is_user, first_seen, last_seen, traits, traits_at"
                    f" FROM identity_ids WHERE project = ? AND id IN ({marks})",
                    (project, *chunk),
                ):
                    traits = None if row[4] is None else bytes(row[4])
                    out[row[0]] = IdInfo(bool(row[1]), row[2], row[3], traits, row[5])
            return out

        result: dict[str, IdInfo] = await self._do(run)
        return result

    async def forget(self, project: str, ids: Sequence[str]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            for ident in ids:
                conn.execute(
                    "DELETE FROM identity_links WHERE project = ? AND (a = ? OR b = ?)",
                    (project, ident, ident),
                )
                conn.execute(
                    "DELETE FROM identity_ids WHERE project = ? AND id = ?", (project, ident)
                )
            conn.execute(_BUMP.format(p="?"), (project,))
            conn.execute("COMMIT")

        await self._do(run)

    async def version(self, project: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(_VERSION.format(p="?"), (project,)).fetchone()
            return 0 if row is None else int(row[0])

        result: int = await self._do(run)
        return result

    async def graph(self, project: str) -> tuple[int, list[Link], set[str]]:
        def run(conn: sqlite3.Connection) -> tuple[int, list[Link], set[str]]:
            conn.execute("BEGIN")  # one snapshot (the lock keeps writers out anyway)
            try:
                row = conn.execute(_VERSION.format(p="?"), (project,)).fetchone()
                links = [
                    Link(a, b, bool(alias), at)
                    for a, b, alias, at in conn.execute(
                        "SELECT a, b, alias, at FROM identity_links WHERE project = ?",
                        (project,),
                    )
                ]
                users = {r[0] for r in conn.execute(_LINKED_USERS.format(p="?"), (project,))}
            finally:
                conn.execute("COMMIT")
            return (0 if row is None else int(row[0])), links, users

        result: tuple[int, list[Link], set[str]] = await self._do(run)
        return result


def _pg(value: str) -> str:
    # PostgreSQL text cannot hold U+0000; the events storage stores U+FFFD, so do we.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


class PostgresIdentity(IdentityStore):
    """The tables in PostgreSQL, through a small asyncpg pool of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None

    async def open(self) -> None:
        # servers starting together would race on the catalog otherwise: one advisory lock
        self._pool = await open_pool_with_schema(
            self.url,
            what="identity store",
            lock="innkt_identity",
            statements=_PG_SCHEMA,
            max_size=4,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _with(self, fn: Any) -> Any:
        asyncpg = asyncpg_module()
        if self._pool is None:
            raise StorageError("identity store is not open")
        try:
            async with self._pool.acquire() as conn:
                return await fn(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageError(f"identity store: {exc}") from exc

    async def record(self, project: str, links: Sequence[Link], ids: dict[str, IdInfo]) -> None:
        users = [_pg(i) for i in _user_ids(ids)]

        async def run(conn: Any) -> None:
            changed = False
            async with conn.transaction():
                if not links:
                    await conn.execute("SET LOCAL synchronous_commit = off")
                if users:
                    known = await conn.fetchval(
                        "SELECT count(*) FROM identity_ids WHERE project = $1 AND is_user = 1"
                        " AND id = ANY($2::text[])",
                        _pg(project),
                        users,
                    )
                    changed = known < len(users)
                if links:
                    unique = _unique_links(links)
                    touched = await conn.fetch(
                        _PG_LINKS_UPSERT,
                        _pg(project),
                        [_pg(k.a) for k in unique],
                        [_pg(k.b) for k in unique],
                        [int(k.alias) for k in unique],
                        [k.at for k in unique],
                    )
                    changed = changed or bool(touched)
                await conn.executemany(
                    _ID_UPSERT.format(
                        p="$1, $2, $3, $4, $5, $6, $7, $8", least="least", greatest="greatest"
                    ),
                    [
                        _id_row(_pg(project), _pg(i), info)
                        for i, info in sorted(ids.items(), key=lambda kv: kv[0])
                    ],
                )
            if changed:
                await self._bump(conn, project)

        await self._with(run)

    @staticmethod
    async def _bump(conn: Any, project: str) -> None:
        # After the change has committed, in a transaction of its own: a reader that
        # sees the new version sees the change, and concurrent writers hold the
        # project's version row only for this short, unflushed transaction (a crash
        # may lose the bump: cached answers then wait for the next write to refresh).
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = off")
            await conn.execute(_BUMP.format(p="$1"), _pg(project))

    async def _neighbours(self, project: str, ids: list[str]) -> list[Link]:
        async def run(conn: Any) -> list[Link]:
            rows = await conn.fetch(
                "SELECT a, b, alias, at FROM identity_links WHERE project = $1"
                " AND (a = ANY($2::text[]) OR b = ANY($2::text[]))",
                _pg(project),
                [_pg(i) for i in ids],
            )
            return [Link(r[0], r[1], bool(r[2]), r[3]) for r in rows]

        result: list[Link] = await self._with(run)
        return result

    async def id_for_hash(self, project: str, person_id: str) -> str | None:
        async def run(conn: Any) -> str | None:
            value = await conn.fetchval(
                "SELECT id FROM identity_ids WHERE project = $1 AND id_hash = $2 LIMIT 1",
                _pg(project),
                person_id,
            )
            return None if value is None else str(value)

        result: str | None = await self._with(run)
        return result

    async def infos(self, project: str, ids: Sequence[str]) -> dict[str, IdInfo]:
        async def run(conn: Any) -> dict[str, IdInfo]:
            rows = await conn.fetch(
                "SELECT id, is_user, first_seen, last_seen, traits, traits_at"
                " FROM identity_ids WHERE project = $1 AND id = ANY($2::text[])",
                _pg(project),
                [_pg(i) for i in ids],
            )
            return {
                r[0]: IdInfo(bool(r[1]), r[2], r[3], None if r[4] is None else bytes(r[4]), r[5])
                for r in rows
            }

        result: dict[str, IdInfo] = await self._with(run)
        return result

    async def forget(self, project: str, ids: Sequence[str]) -> None:
        async def run(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(
                    "DELETE FROM identity_links WHERE project = $1"
                    " AND (a = ANY($2::text[]) OR b = ANY($2::text[]))",
                    _pg(project),
                    [_pg(i) for i in ids],
                )
                await conn.execute(
                    "DELETE FROM identity_ids WHERE project = $1 AND id = ANY($2::text[])",
                    _pg(project),
                    [_pg(i) for i in ids],
                )
            await self._bump(conn, project)

        await self._with(run)

    async def version(self, project: str) -> int:
        async def run(conn: Any) -> int:
            value = await conn.fetchval(_VERSION.format(p="$1"), _pg(project))
            return 0 if value is None else int(value)

        result: int = await self._with(run)
        return result

    async def graph(self, project: str) -> tuple[int, list[Link], set[str]]:
        async def run(conn: Any) -> tuple[int, list[Link], set[str]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                value = await conn.fetchval(_VERSION.format(p="$1"), _pg(project))
                rows = await conn.fetch(
                    "SELECT a, b, alias, at FROM identity_links WHERE project = $1", _pg(project)
                )
                users = {r[0] for r in await conn.fetch(_LINKED_USERS.format(p="$1"), _pg(project))}
            links = [Link(r[0], r[1], bool(r[2]), r[3]) for r in rows]
            return (0 if value is None else int(value)), links, users

        result: tuple[int, list[Link], set[str]] = await self._with(run)
        return result


def make_identity(url: str) -> IdentityStore:
    """The store for a database URL as ``INNKT_DB`` takes it. Raises ``ConfigError``."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresIdentity(url)
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    if "://" in path:
        raise ConfigError("db", f"unsupported database URL {url!r}")
    # A file of its own: in the events' file, its write lock made the events writer
    # wait (SQLite's busy handler sleeps in milliseconds), costing ingest ~40 %.
    return SQLiteIdentity(path + ".identity.db")
