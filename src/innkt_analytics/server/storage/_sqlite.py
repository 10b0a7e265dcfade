"""SQLite storage: the zero-setup default.

One writer thread owns the only write connection and commits in groups: every
job submitted while the previous transaction was being committed is run in the
next one, so N concurrent requests cost one fsync, not N. ``synchronous=FULL``
in WAL mode makes each commit durable before any caller is answered. Reads go
through per-thread connections in a small thread pool, never blocking the writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import msgspec

from innkt_analytics._exceptions import StorageError, StorageFullError
from innkt_analytics._protocol import ClientConfig
from innkt_analytics.server.storage._base import (
    AuditEntry,
    EventFilter,
    EventPage,
    EventRow,
    KeyRecord,
    Stats,
    Storage,
    StorageHealth,
    StorageStatus,
    Suppression,
    audit_entry,
    event_row,
    key_record,
)

__all__ = ["SQLiteStorage"]

T = TypeVar("T")

SCHEMA_VERSION: Final = 2

_MIGRATIONS: Final[dict[int, str]] = {
    1: """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        session_id TEXT,
        user_id TEXT,
        anonymous_id TEXT,
        ts INTEGER NOT NULL,
        sent_at INTEGER,
        received_at INTEGER NOT NULL,
        corrected INTEGER NOT NULL,
        future INTEGER NOT NULL DEFAULT 0,
        payload BLOB NOT NULL
    );
    CREATE UNIQUE INDEX events_dedup ON events (project, event_id);
    CREATE INDEX events_time ON events (project, corrected);
    CREATE INDEX events_type ON events (project, event_type, corrected);
    CREATE INDEX events_session ON events (project, session_id) WHERE session_id IS NOT NULL;
    CREATE INDEX events_user ON events (project, user_id) WHERE user_id IS NOT NULL;
    CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        scopes TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE project_config (
        project TEXT PRIMARY KEY,
        config BLOB NOT NULL
    );
    """,
    2: """
    CREATE TABLE suppressed_users (
        project TEXT NOT NULL,
        user_id TEXT NOT NULL,
        deleted_at INTEGER NOT NULL,
        PRIMARY KEY (project, user_id)
    );
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail BLOB NOT NULL
    );
    CREATE INDEX audit_project ON audit_log (project, seq);
""",
}

_COLUMNS: Final = (
    "project, event_id, event_type, session_id, user_id, anonymous_id,"
    " ts, sent_at, received_at, corrected, future, payload"
)
_NCOLS: Final = 12
_CHUNK: Final = 32766 // _NCOLS
_SELECT: Final = (
    "SELECT seq, event_id, event_type, session_id, user_id, anonymous_id,"
    " ts, sent_at, received_at, corrected, future, payload FROM events"
)


def _convert_error(exc: sqlite3.Error) -> StorageError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "full" in str(exc):
        return StorageFullError(f"storage full: {exc}")
    return StorageError(f"storage error: {exc}")


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


class SQLiteStorage(Storage):
    """Embedded storage in one SQLite file (WAL, group commit)."""

    backend = "sqlite"

    def __init__(self, path: str, *, readers: int = 2) -> None:
        self.path = os.path.abspath(path)
        self._pending: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._writer: threading.Thread | None = None
        self._local = threading.local()
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="innkt-sqlite-read"
        )
        self._last_error: StorageError | None = None
        self._event_count = 0

    # -- lifecycle -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def open_sync(self) -> None:
        """Create or migrate the database and start the writer thread."""
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        try:
            conn = self._connect()
            self._migrate(conn)
            self._event_count = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        except sqlite3.Error as exc:
            raise _convert_error(exc) from exc
        self._writer = threading.Thread(
            target=self._run_writer, args=(conn,), name="innkt-sqlite-writer", daemon=True
        )
        self._writer.start()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for target in sorted(v for v in _MIGRATIONS if v > version):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={target}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def open(self) -> None:
        await asyncio.to_thread(self.open_sync)

    def close_sync(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()
        self._readers.shutdown(wait=True)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    # -- the writer ----------------------------------------------------------------

    def _run_writer(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closed:
                        self._cond.wait()
                    jobs, self._pending = self._pending, []
                    if not jobs and self._closed:
                        return
                self._commit_group(conn, jobs)
        finally:
            conn.close()

    def _commit_group(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        # Optimistic first: every job in one transaction without savepoints. Each
        # statement costs this thread, the one serial stage of ingest, a GIL round
        # trip with the event loop, and a savepoint and release per job tripled the
        # statements. Should a job fail, all is rolled back and the group runs again with
        # a savepoint per job, so one failing job never undoes another.
        try:
            conn.execute("BEGIN IMMEDIATE")
            values = [job.fn(conn) for job in jobs]
            conn.execute("COMMIT")
        except Exception:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._commit_isolated(conn, jobs)
            return
        self._last_error = None
        for job, value in zip(jobs, values, strict=True):
            job.future.set_result(value)

    def _commit_isolated(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                # A savepoint per job: one failing job must not undo its neighbours.
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn)
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    if isinstance(_convert_error(exc), StorageFullError):
                        raise
                    results.append((job, None, _convert_error(exc)))
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((job, None, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, value, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            error = _convert_error(exc)
            self._last_error = error
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for job in jobs:
                job.future.set_exception(error)
            return
        self._last_error = None
        for job, value, err in results:
            if err is not None:
                job.future.set_exception(err)
            else:
                job.future.set_result(value)

    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future[T]:
        job = _Job(fn)
        with self._cond:
            if self._closed:
                raise StorageError("storage is closed")
            self._pending.append(job)
            self._cond.notify()
        return job.future

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.wrap_future(self._submit(fn))

    def write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the next group transaction and wait for its commit."""
        return self._submit(fn).result()

    # -- reads ---------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            try:
                return fn(self._reader())
            except sqlite3.Error as exc:
                raise _convert_error(exc) from exc

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, run)

    # -- events --------------------------------------------------------------------

    async def insert_events(self, project: str, rows: Sequence[EventRow]) -> set[str]:
        if not rows:
            return set()
        # The parameters are built here, on the caller's thread: the writer thread is
        # the one serial stage of ingest, so it only binds and steps.
        chunks = _insert_chunks(project, rows)
        stored = await self._write(lambda conn: _insert(conn, chunks))
        self._event_count += len(stored)
        return stored

    async def query_events(
        self, project: str, flt: EventFilter, cursor: int | None, limit: int
    ) -> EventPage:
        where, params = _where(project, flt)
        if cursor is not None:
            where += " AND seq > ?"
            params.append(cursor)
        sql = f"{_SELECT} WHERE {where} ORDER BY seq LIMIT ?"
        params.append(limit + 1)

        def run(conn: sqlite3.Connection) -> EventPage:
            rows = [event_row(r) for r in conn.execute(sql, params)]
            more = len(rows) > limit
            rows = rows[:limit]
            return EventPage(rows=rows, next_cursor=rows[-1].seq if more and rows else None)

        return await self._read(run)

    async def stats(self, project: str, flt: EventFilter, bucket_ms: int) -> Stats:
        where, params = _where(project, flt)

        def run(conn: sqlite3.Connection) -> Stats:
            by_type = dict(
                conn.execute(
                    f"SELECT event_type, COUNT(*) FROM events WHERE {where}"
                    " GROUP BY event_type ORDER BY COUNT(*) DESC",
                    params,
                ).fetchall()
            )
            series = conn.execute(
                f"SELECT (corrected / ?) * ?, COUNT(*) FROM events WHERE {where}"
                " GROUP BY 1 ORDER BY 1",
                [bucket_ms, bucket_ms, *params],
            ).fetchall()
            sessions, users = conn.execute(
                f"SELECT COUNT(DISTINCT session_id), COUNT(DISTINCT user_id)"
                f" FROM events WHERE {where}",
                params,
            ).fetchone()
            return Stats(
                total=sum(by_type.values()),
                by_event_type=by_type,
                series=[(int(t), int(c)) for t, c in series],
                unique_sessions=int(sessions),
                unique_users=int(users),
            )

        return await self._read(run)

    async def delete_events_before(self, project: str | None, before: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            if project is None:
                cur = conn.execute("DELETE FROM events WHERE corrected < ?", (before,))
            else:
                cur = conn.execute(
                    "DELETE FROM events WHERE project = ? AND corrected < ?", (project, before)
                )
            return cur.rowcount

        deleted = await self._write(run)
        self._event_count -= deleted
        return deleted

    # -- config --------------------------------------------------------------------

    async def get_config(self, project: str) -> ClientConfig | None:
        def run(conn: sqlite3.Connection) -> ClientConfig | None:
            row = conn.execute(
                "SELECT config FROM project_config WHERE project = ?", (project,)
            ).fetchone()
            return None if row is None else msgspec.json.decode(row[0], type=ClientConfig)

        return await self._read(run)

    async def put_config(self, project: str, config: ClientConfig) -> ClientConfig:
        def run(conn: sqlite3.Connection) -> ClientConfig:
            row = conn.execute(
                "SELECT config FROM project_config WHERE project = ?", (project,)
            ).fetchone()
            old = 0 if row is None else msgspec.json.decode(row[0], type=ClientConfig).version
            stored = msgspec.structs.replace(config, version=old + 1)
            conn.execute(
                "INSERT INTO project_config (project, config) VALUES (?, ?)"
                " ON CONFLICT (project) DO UPDATE SET config = excluded.config",
                (project, msgspec.json.encode(stored)),
            )
            return stored

        return await self._write(run)

    # -- keys ----------------------------------------------------------------------

    async def create_key(self, record: KeyRecord) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO api_keys (key_id, project, name, scopes, key_hash, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.key_id,
                    record.project,
                    record.name,
                    ",".join(sorted(record.scopes)),
                    record.key_hash,
                    record.created_at,
                ),
            )

        await self._write(run)

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        def run(conn: sqlite3.Connection) -> KeyRecord | None:
            row = conn.execute(
                "SELECT key_id, project, name, scopes, key_hash, created_at, revoked_at"
                " FROM api_keys WHERE key_hash = ?",
                (key_hash,),
            ).fetchone()
            return None if row is None else key_record(row)

        return await self._read(run)

    async def list_keys(self, project: str | None = None) -> list[KeyRecord]:
        def run(conn: sqlite3.Connection) -> list[KeyRecord]:
            sql = (
                "SELECT key_id, project, name, scopes, key_hash, created_at, revoked_at"
                " FROM api_keys"
            )
            if project is None:
                rows = conn.execute(sql + " ORDER BY created_at").fetchall()
            else:
                rows = conn.execute(
                    sql + " WHERE project = ? ORDER BY created_at", (project,)
                ).fetchall()
            return [key_record(r) for r in rows]

        return await self._read(run)

    async def revoke_key(self, key_id: str, at: int) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (at, key_id),
            )
            return cur.rowcount > 0

        return await self._write(run)

    async def count_keys(self) -> int:
        return await self._read(
            lambda conn: int(conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])
        )

    # -- privacy -------------------------------------------------------------------

    async def delete_user(self, project: str, user_id: str, at: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM events WHERE project = ? AND user_id = ?", (project, user_id)
            )
            conn.execute(
                "INSERT INTO suppressed_users (project, user_id, deleted_at) VALUES (?, ?, ?)"
                " ON CONFLICT (project, user_id) DO UPDATE SET deleted_at = excluded.deleted_at",
                (project, user_id, at),
            )
            return cur.rowcount

        deleted = await self._write(run)
        self._event_count -= deleted
        return deleted

    async def suppressed_users(self, project: str | None = None) -> list[Suppression]:
        def run(conn: sqlite3.Connection) -> list[Suppression]:
            sql = "SELECT project, user_id, deleted_at FROM suppressed_users"
            rows = (
                conn.execute(sql).fetchall()
                if project is None
                else conn.execute(sql + " WHERE project = ?", (project,)).fetchall()
            )
            return [Suppression(project=p, user_id=u, deleted_at=d) for p, u, d in rows]

        return await self._read(run)

    async def append_audit(self, entry: AuditEntry) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO audit_log (project, at, actor, action, subject, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    entry.project,
                    entry.at,
                    entry.actor,
                    entry.action,
                    entry.subject,
                    msgspec.json.encode(entry.detail),
                ),
            )

        await self._write(run)

    async def list_audit(self, project: str, limit: int, before: int | None) -> list[AuditEntry]:
        def run(conn: sqlite3.Connection) -> list[AuditEntry]:
            rows = conn.execute(
                "SELECT seq, project, at, actor, action, subject, detail FROM audit_log"
                " WHERE project = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (project, before if before is not None else 2**62, limit),
            ).fetchall()
            return [audit_entry(r) for r in rows]

        return await self._read(run)

    # -- health --------------------------------------------------------------------

    async def health(self) -> StorageHealth:
        def run(conn: sqlite3.Connection) -> StorageHealth:
            conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchall()  # is the file readable?
            size = sum(
                os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p)
            )
            return StorageHealth(
                status=StorageStatus.OK,
                backend=self.backend,
                size_bytes=size,
                events=self._event_count,
            )

        try:
            result = await self._read(run)
        except StorageError as exc:
            return StorageHealth(
                status=StorageStatus.UNAVAILABLE,
                backend=self.backend,
                size_bytes=0,
                events=0,
                reason=str(exc),
            )
        if self._last_error is not None:
            # Nothing else clears the error until a client writes, and clients wait
            # for health: so find out now whether a write commits again.
            with contextlib.suppress(StorageError):
                await self._write(_probe_write)
        if self._last_error is not None:
            full = isinstance(self._last_error, StorageFullError)
            result.status = StorageStatus.FULL if full else StorageStatus.UNAVAILABLE
            result.reason = str(self._last_error)
        return result


def _probe_write(conn: sqlite3.Connection) -> None:
    # Dirties a page without leaving a trace, so the commit really has to write.
    conn.execute("INSERT INTO project_config (project, config) VALUES ('', x'')")
    conn.execute("DELETE FROM project_config WHERE project = ''")


_Chunk = tuple[str, list[object], list[str]]  # (SQL, parameters, event ids)


@functools.lru_cache(maxsize=64)
def _insert_sql(n: int) -> str:
    placeholders = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * n)
    return (
        f"INSERT INTO events ({_COLUMNS}) VALUES {placeholders}"
        " ON CONFLICT (project, event_id) DO NOTHING"
    )


def _insert_chunks(project: str, rows: Sequence[EventRow]) -> list[_Chunk]:
    chunks: list[_Chunk] = []
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        params: list[object] = []
        for r in chunk:
            params += (
                project,
                r.event_id,
                r.event_type,
                r.session_id,
                r.user_id,
                r.anonymous_id,
                r.timestamp,
                r.sent_at,
                r.received_at,
                r.corrected,
                r.future,
                r.payload,
            )
        chunks.append((_insert_sql(len(chunk)), params, [r.event_id for r in chunk]))
    return chunks


def _insert(conn: sqlite3.Connection, chunks: list[_Chunk]) -> set[str]:
    # No RETURNING: it would step once per row, and every step gives up and takes
    # back the GIL, which the busy event loop holds. One step inserts the chunk.
    stored: set[str] = set()
    for sql, params, ids in chunks:
        cur = conn.execute(sql, params)
        inserted = cur.rowcount
        wanted = set(ids)
        if inserted == len(wanted):
            stored |= wanted  # the usual case: none of the ids was stored before
        elif inserted > 0 and cur.lastrowid is not None:
            # Some were duplicates. The new rows took the rowids after the old
            # maximum, in one run ending at lastrowid: read their ids back.
            last = cur.lastrowid
            found = conn.execute(
                "SELECT event_id FROM events WHERE seq > ? AND seq <= ?", (last - inserted, last)
            )
            stored.update(r[0] for r in found)
    return stored


def _where(project: str, flt: EventFilter) -> tuple[str, list[object]]:
    clauses = ["project = ?"]
    params: list[object] = [project]
    for column, value in (
        ("event_type", flt.event_type),
        ("session_id", flt.session_id),
        ("user_id", flt.user_id),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if flt.since is not None:
        clauses.append("corrected >= ?")
        params.append(flt.since)
    if flt.until is not None:
        clauses.append("corrected < ?")
        params.append(flt.until)
    return " AND ".join(clauses), params


def now_ms() -> int:
    return time.time_ns() // 1_000_000
