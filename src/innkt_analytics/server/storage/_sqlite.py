"""SQLite storage: the zero-setup default.

One writer *process* (``_sqlite_writer.py``) owns the only write connection and
commits in groups: every job sent while the previous transaction was being
committed runs in the next one, so N concurrent requests cost one fsync, not N.
``synchronous=FULL`` in WAL mode makes each commit durable before any caller is
answered. A process, not a thread: the event loop parses on one core while the
writer binds, steps and fsyncs on the other, instead of both taking turns on one
GIL. Reads go through per-thread connections in a small thread pool, never
blocking the writer.

The events themselves live in the storage engine (docs/operations.md): the
``events`` table is an arrival-ordered hot log; a compactor thread
(``_engine.py``) moves its rows into zstd Parquet segments with dedup runs of
their ids; reads (``_columnar.py``) run in DuckDB over the segments and the hot
rows of one snapshot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec

from innkt_analytics.server.storage import _engine_backup, _rollups
from innkt_analytics.server.storage import _sqlite_writer as _w
from innkt_analytics.server.storage._base import (
    KEY_COLUMNS,
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
    key_record,
)
from innkt_analytics.server.storage._columnar import (
    Reader,
    where,
)
from innkt_analytics.server.storage._engine import Compactor, EngineSettings, segment_dir, spawn
from innkt_analytics.server.storage._segments import hot_columns
from innkt_analytics.server.storage._sqlite_client import WriterClient, storage_error
from innkt_analytics.server.storage._sqlite_schema import migrate
from innkt_analytics.shared._exceptions import StorageError, StorageFullError
from innkt_analytics.shared._protocol import ClientConfig

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["SQLiteStorage"]

T = TypeVar("T")

_CHUNK: Final = 32766 // _w.NCOLS
Statement = tuple[str, tuple[Any, ...]]


def _convert_error(exc: sqlite3.Error) -> StorageError:
    return storage_error(_w.error_of(exc))


class SQLiteStorage(Storage):
    """Embedded storage in one SQLite file (WAL, group commit in a writer process)."""

    backend = "sqlite"

    def __init__(
        self, path: str, *, readers: int = 2, engine: EngineSettings | None = None
    ) -> None:
        self.path = os.path.abspath(path)
        self.engine_settings = engine or EngineSettings()
        self._compactor_proc: subprocess.Popen[bytes] | None = None
        self._local_compactor: Compactor | None = None
        self.columnar = Reader(self.path)
        self.rollups = _rollups.Rollups()
        self._closed = False
        self._writer: WriterClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer_lock = threading.Lock()
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="innkt-sqlite-read"
        )
        self._last_error: StorageError | None = None
        self._event_count = 0

    # -- lifecycle -----------------------------------------------------------------

    def open_sync(self, *, start_writer: bool = True) -> None:
        """Create or migrate the database and start the writer process.

        With ``start_writer=False`` the writer starts on the first write instead:
        the CLI's read-only commands (``keys list``) never pay for starting it.
        """
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        try:
            _engine_backup.finish_restore(Path(self.path))  # a restore a crash interrupted
            conn = _w.connect_writer(self.path)
            try:
                migrate(conn)
                hot, cold = conn.execute(
                    "SELECT (SELECT COUNT(*) FROM events),"
                    " (SELECT coalesce(sum(rows), 0) FROM segments)"
                ).fetchone()
                self._event_count = int(hot) + int(cold)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise _convert_error(exc) from exc
        if start_writer:
            self._writer = WriterClient(self.path, self._group_done, self._loop)
            try:
                self.compactor().recover()  # before the first read: deletions finished
            except (sqlite3.Error, OSError) as exc:
                raise storage_error(_w.error_of(exc)) from exc
            if hot:  # rows a stopped server left in the hot log: compacted now, not
                self._ensure_compactor_process()  # at the next write

    async def open(self, *, start_writer: bool = True) -> None:
        """``open_sync``, and bind the storage to the running loop, which then
        reads the writer's answers itself (use it from this loop, as with PostgreSQL)."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.open_sync, start_writer=start_writer)

    def close_sync(self) -> None:
        with self._writer_lock:
            proc, self._compactor_proc = self._compactor_proc, None
            local, self._local_compactor = self._local_compactor, None
        if proc is not None:
            _stop_process(proc)
        if local is not None:
            local.close()
        with self._writer_lock:
            self._closed = True
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:  # the pool's threads are gone: nobody uses them
            conn.close()
        self._reader_conns.clear()

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    # -- the writer ----------------------------------------------------------------

    def _group_done(self, error: StorageError | None) -> None:
        self._last_error = error

    def _client(self) -> WriterClient:
        with self._writer_lock:
            if self._closed:
                raise StorageError("storage is closed")
            if self._writer is None or not self._writer.alive:
                # Killed (out of memory, say): a new one takes over; the old one's
                # jobs were answered with errors, so their clients retry.
                self._writer = WriterClient(self.path, self._group_done, self._loop)
            return self._writer

    async def _write(self, op: str, *args: Any) -> Any:
        return await self._client().call(op, args)

    async def _sql(self, *statements: Statement) -> list[tuple[int, list[tuple[Any, ...]]]]:
        """Run statements in one job of the next group: ``(rowcount, rows)`` each."""
        result: list[tuple[int, list[tuple[Any, ...]]]] = await self._write("sql", list(statements))
        return result

    def write_sync(self, op: str, *args: Any) -> Any:
        """Run ``op`` (see ``_sqlite_writer.OPS``) in the next group and wait for its commit."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._client().submit(op, args, future)
        return future.result()

    @property
    def writer_pid(self) -> int | None:
        """The writer process, for operators and tests."""
        writer = self._writer
        return None if writer is None else writer.proc.pid

    # -- reads ---------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _w.connect(self.path)
            self._local.conn = conn
            self._reader_conns.append(conn)
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
        # The parameters are built here: the writer process is the one serial stage
        # of ingest, so it only binds and steps.
        answer: list[str] | None = await self._write("insert", _insert_chunks(project, rows))
        stored = {r.event_id for r in rows} if answer is None else set(answer)
        self._event_count += len(stored)
        self._ensure_compactor_process()
        return stored

    def scan(self, project: str, flt: EventFilter, select: str) -> Iterator[pa.RecordBatch]:
        """``SELECT {select}`` (DuckDB SQL over the columns of ``_segments.HOT_COLUMNS``)
        on the matching events of one snapshot, in seq order, as Arrow record batches;
        a blocking iterator (run it on a thread of its own)."""
        conn = _w.connect(self.path)
        try:
            yield from self.columnar.scan(conn, project, flt, select)
        finally:
            conn.close()

    def insight_source(
        self, project: str, since: int | None, until: int | None, *, payload: bool = True
    ) -> tuple[list[str], pa.Table]:
        """One snapshot of the project's events in ``[since, until)`` for the insights
        engine: the segment files that may hold some, and the matching hot rows
        (blocking), without their JSON unless ``payload``."""
        columns = hot_columns(payload)
        conn = _w.connect(self.path)
        try:
            snap = self.columnar.snapshot(
                conn, project, EventFilter(since=since, until=until), columns
            )
        finally:
            conn.close()
        return [s.path for s in snap.segments], snap.hot

    def compact_sync(self) -> None:
        """Compact and merge everything now (tests, backups); the compactor process
        does this in the background on its own."""
        self.compactor().run_until_idle()

    def compactor(self) -> Compactor:
        """This process's own compactor: deletions and ``compact_sync`` run here,
        excluded from the compactor process's steps by the engine's lock."""
        with self._writer_lock:
            if self._closed:
                raise StorageError("storage is closed")
            if self._local_compactor is None:
                self._local_compactor = Compactor(self.path, self.engine_settings)
            return self._local_compactor

    def _ensure_compactor_process(self) -> None:
        """Start the compactor process with the first write; again if it died."""
        proc = self._compactor_proc
        if proc is not None and proc.poll() is None:
            return
        with self._writer_lock:
            if self._closed:
                return
            proc = self._compactor_proc
            if proc is None or proc.poll() is not None:
                self._compactor_proc = spawn(self.path, self.engine_settings)

    async def query_events(
        self, project: str, flt: EventFilter, cursor: int | None, limit: int
    ) -> EventPage:
        def run(conn: sqlite3.Connection) -> EventPage:
            rows = self.columnar.page(conn, project, flt, cursor, limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            return EventPage(rows=rows, next_cursor=rows[-1].seq if more and rows else None)

        return await self._read(run)

    async def stats(
        self,
        project: str,
        flt: EventFilter,
        bucket_ms: int,
        *,
        persons: Mapping[str, str] | None = None,
        uniques: bool = True,
    ) -> Stats:
        def run(conn: sqlite3.Connection) -> Stats:
            snap = self.columnar.snapshot(conn, project, flt, _rollups.STATS_COLUMNS)
            return _rollups.snapshot_stats(
                self.columnar,
                self.rollups,
                snap,
                project,
                flt,
                bucket_ms,
                persons=persons,
                uniques=uniques,
            )

        return await self._read(run)

    async def delete_events_before(self, project: str | None, before: int) -> int:
        flt = EventFilter(until=before)
        cond, params = where(project, flt)
        [(deleted, _)] = await self._sql((f"DELETE FROM events WHERE {cond}", tuple(params)))
        deleted += await self._rewrite_segments(project, None, before)
        self._event_count -= deleted
        return deleted

    async def _rewrite_segments(
        self, project: str | None, ids: list[str] | None, before: int | None
    ) -> int:
        def run() -> int:
            compactor = self.compactor()
            with compactor.locked():
                gone = compactor.delete_matching(project, ids, before)
                if ids is not None and project is not None:
                    compactor.write(
                        "sql",
                        [
                            (
                                "DELETE FROM pending_deletes WHERE project = ? AND id = ?",
                                (project, i),
                            )
                            for i in ids
                        ],
                    )
                return gone

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise _convert_error(exc) from exc
        except OSError as exc:
            raise storage_error(_w.error_of(exc)) from exc

    # -- config --------------------------------------------------------------------

    async def get_config(self, project: str) -> ClientConfig | None:
        def run(conn: sqlite3.Connection) -> ClientConfig | None:
            row = conn.execute(
                "SELECT config FROM project_config WHERE project = ?", (project,)
            ).fetchone()
            return None if row is None else msgspec.json.decode(row[0], type=ClientConfig)

        return await self._read(run)

    async def put_config(self, project: str, config: ClientConfig) -> ClientConfig:
        # The version is counted up inside the writer's transaction, so two
        # concurrent updates never hand out the same version.
        [(_, [(stored,)])] = await self._sql(
            (
                "INSERT INTO project_config (project, config) VALUES (?1, json_set(?2,"
                " '$.version', coalesce((SELECT json_extract(config, '$.version')"
                " FROM project_config WHERE project = ?1), 0) + 1))"
                " ON CONFLICT (project) DO UPDATE SET config = excluded.config"
                " RETURNING config",
                (project, msgspec.json.encode(config)),
            )
        )
        return msgspec.json.decode(stored, type=ClientConfig)

    # -- keys ----------------------------------------------------------------------

    async def create_key(self, record: KeyRecord) -> None:
        await self._sql(
            (
                "INSERT INTO api_keys"
                " (key_id, project, name, scopes, key_hash, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.key_id,
                    record.project,
                    record.name,
                    ",".join(sorted(record.scopes)),
                    record.key_hash,
                    record.created_at,
                    record.expires_at,
                ),
            )
        )

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        def run(conn: sqlite3.Connection) -> KeyRecord | None:
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?",
                (key_hash,),
            ).fetchone()
            return None if row is None else key_record(row)

        return await self._read(run)

    async def list_keys(self, project: str | None = None) -> list[KeyRecord]:
        def run(conn: sqlite3.Connection) -> list[KeyRecord]:
            sql = f"SELECT {KEY_COLUMNS} FROM api_keys"
            if project is None:
                rows = conn.execute(sql + " ORDER BY created_at").fetchall()
            else:
                rows = conn.execute(
                    sql + " WHERE project = ? ORDER BY created_at", (project,)
                ).fetchall()
            return [key_record(r) for r in rows]

        return await self._read(run)

    async def revoke_key(self, key_id: str, at: int) -> bool:
        [(changed, _)] = await self._sql(
            (
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (at, key_id),
            )
        )
        return changed > 0

    async def count_keys(self) -> int:
        return await self._read(
            lambda conn: int(conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])
        )

    async def expire_key(self, key_id: str, at: int) -> bool:
        [(changed, _)] = await self._sql(
            (
                "UPDATE api_keys SET expires_at = min(coalesce(expires_at, ?), ?)"
                " WHERE key_id = ? AND revoked_at IS NULL",
                (at, at, key_id),
            )
        )
        return changed > 0

    async def record_key_use(self, used: dict[str, int]) -> None:
        if used:
            await self._sql(
                *(
                    (
                        "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?)"
                        " WHERE key_id = ?",
                        (at, key_id),
                    )
                    for key_id, at in used.items()
                )
            )

    # -- privacy -------------------------------------------------------------------

    async def delete_user(self, project: str, user_id: str, at: int) -> int:
        return await self.delete_users(project, [user_id], at)

    async def delete_users(self, project: str, user_ids: Sequence[str], at: int) -> int:
        ids = sorted(set(user_ids))
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        statements: list[Statement] = [
            (
                f"DELETE FROM events WHERE project = ?"
                f" AND (user_id IN ({marks}) OR anonymous_id IN ({marks}))",
                (project, *ids, *ids),
            )
        ]
        for user_id in ids:
            statements += [
                (
                    "INSERT INTO suppressed_users (project, user_id, deleted_at)"
                    " VALUES (?, ?, ?) ON CONFLICT (project, user_id)"
                    " DO UPDATE SET deleted_at = excluded.deleted_at",
                    (project, user_id, at),
                ),
                # Segments are rewritten next; should this process die first, the next
                # start finishes the job from this row.
                (
                    "INSERT OR IGNORE INTO pending_deletes (project, id) VALUES (?, ?)",
                    (project, user_id),
                ),
            ]
        [(deleted, _), *_] = await self._sql(*statements)
        deleted += await self._rewrite_segments(project, ids, None)
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
        await self._sql(
            (
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
        )

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

    def size_bytes(self) -> int:
        """The database, its WAL and the segment directory, in bytes."""
        paths = [self.path, self.path + "-wal"]
        folder = segment_dir(self.path)
        if os.path.isdir(folder):
            paths += [os.path.join(folder, n) for n in os.listdir(folder)]
        total = 0
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(p)
        return total

    def _engine_health(self, conn: sqlite3.Connection) -> dict[str, object]:
        hot, segments, runs = conn.execute(
            "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM segments),"
            " (SELECT COUNT(*) FROM dedup_runs)"
        ).fetchone()
        proc = self._compactor_proc
        return {
            "hotEvents": int(hot),
            "segments": int(segments),
            "dedupRuns": int(runs),
            "compactorRunning": proc is not None and proc.poll() is None,
        }

    async def health(self) -> StorageHealth:
        def run(conn: sqlite3.Connection) -> StorageHealth:
            conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchall()  # is the file readable?
            return StorageHealth(
                status=StorageStatus.OK,
                backend=self.backend,
                size_bytes=self.size_bytes(),
                events=self._event_count,
                extra=self._engine_health(conn),
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
                await self._write("probe")
        if self._last_error is not None:
            full = isinstance(self._last_error, StorageFullError)
            result.status = StorageStatus.FULL if full else StorageStatus.UNAVAILABLE
            result.reason = str(self._last_error)
        return result


def _insert_chunks(project: str, rows: Sequence[EventRow]) -> list[_w.Chunk]:
    chunks: list[_w.Chunk] = []
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
        chunks.append((_w.insert_sql(len(chunk)), params, [r.event_id for r in chunk]))
    return chunks


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Close the compactor's stdin: it finishes its step and exits."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def now_ms() -> int:
    return time.time_ns() // 1_000_000
