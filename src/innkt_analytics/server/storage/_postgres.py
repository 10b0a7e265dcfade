"""PostgreSQL storage: for several stateless server instances sharing one database.

Ingest goes through ``GroupInserter`` (``_pg_ingest``): concurrent batches are
merged, at most ``insert_concurrency`` transactions run at once, and each is a
COPY of the ids into ``event_uuids``/``event_ids`` and of the rows into
``events`` — falling back to ``INSERT … ON CONFLICT DO NOTHING`` when an id was
already stored.
Callers are answered only after COMMIT (``synchronous_commit`` stays on).

See ``_pg_schema`` for the table layout and why deduplication lives in its own
table. Every driver error is converted to ``StorageError`` here (the app
answers 503 with Retry-After); a connection lost mid-request is retried once on
a fresh connection, which the pool opens again as soon as the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import asyncpg
import msgspec

from innkt_analytics.server.storage import _rollups
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
from innkt_analytics.server.storage._pg_engine import (
    PgEngine,
    PgEngineSettings,
    clean_filter,
    lock_segments,
)
from innkt_analytics.server.storage._pg_ingest import (
    EVENT_COLUMNS,
    FORGET_IDS,
    INSERT,
    GroupInserter,
    Key,
    clean_text,
    copy_records,
    insert_args,
)
from innkt_analytics.server.storage._pg_partitions import (
    create_partitions,
    delete_rows_before,
    expired_partitions,
    load_partitions,
    purge_retired,
    retire,
)
from innkt_analytics.server.storage._pg_schema import (
    KEY_COLUMNS_DDL,
    MIGRATIONS,
    SCHEMA_VERSION,
    PartitionWindow,
    months_ahead,
    partitions_to_create,
)
from innkt_analytics.shared._exceptions import ConfigError, StorageError, StorageFullError
from innkt_analytics.shared._protocol import ClientConfig

if TYPE_CHECKING:
    import pyarrow as pa

    from innkt_analytics.server.storage._columnar import Snapshot

__all__ = ["PostgresStorage"]

T = TypeVar("T")
log = logging.getLogger("innkt_analytics.server.postgres")

# Arbitrary constants for pg_advisory_xact_lock: instances serialise migrations
# (partition DDL uses _pg_partitions.PARTITION_LOCK).
_MIGRATION_LOCK: Final = 0x494E4B54_0001
#: seconds a migration statement (or the wait for another instance's) may take
_MIGRATION_TIMEOUT: Final = 3600.0
_CONFIG_LOCK_SPACE: Final = 0x494E4B54  # two-int form: (space, hashtext(project))
#: above this many (estimated) events, health reports the planner's estimate
_EXACT_COUNT_LIMIT: Final = 200_000


# Errors after which the same request may succeed on a new connection.
_CONNECTION_LOST: Final = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.InterfaceError,
    ConnectionError,
)
_DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


class StorageState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


def _convert_error(exc: BaseException) -> StorageError:
    if isinstance(exc, asyncpg.exceptions.DiskFullError):
        return StorageFullError(f"PostgreSQL is out of disk space: {exc}")
    if isinstance(exc, TimeoutError):
        return StorageError("PostgreSQL did not answer in time")
    kind = type(exc).__name__
    return StorageError(f"PostgreSQL unavailable ({kind}): {exc}".rstrip(": "))


class PostgresStorage(Storage):
    """Events, keys and config in PostgreSQL; safe to share between server instances.

    ``pool_size`` is the most connections this instance opens.
    """

    backend = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        window: PartitionWindow | None = None,
        maintenance_interval: float = 3600.0,
        insert_concurrency: int = 4,
        engine: PgEngineSettings | None = None,
        segment_cache: str | None = None,
    ) -> None:
        if pool_size < 1:
            raise ConfigError("pool_size", "must be >= 1")
        if insert_concurrency < 1:
            raise ConfigError("insert_concurrency", "must be >= 1")
        self.url = url
        self.pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._window = window or PartitionWindow()
        self._maintenance_interval = maintenance_interval
        self._pool: Any = None
        self._state = StorageState.NEW
        self._known: set[int] = set()  # month starts that have a partition
        self._last_error: StorageError | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._engine_settings = engine or PgEngineSettings()
        self._segment_cache = segment_cache
        self._engine: PgEngine | None = None
        self._compacting: asyncio.Task[None] | None = None
        self.slow_inserts = 0  # groups that held an already stored id (see _pg_ingest)
        # Ingest statements in flight at once; more concurrent batches are merged.
        self._inserter = GroupInserter(
            self._insert_rows, max_inflight=min(insert_concurrency, pool_size)
        )

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate and create the coming months' partitions.

        Raises ``StorageError`` when PostgreSQL cannot be reached.
        """
        if self._state is not StorageState.NEW:
            raise StorageError(f"cannot open storage in state {self._state.value}")
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings={"application_name": "innkt-analytics"},
            )
        except (*_DRIVER_ERRORS, ValueError) as exc:
            raise _convert_error(exc) from exc
        self._state = StorageState.OPEN
        self._engine = PgEngine(self._segment_cache, self._engine_settings)
        try:
            await self._run(self._migrate)
            await self.ensure_partitions_ahead()
        except BaseException:
            await self.close()
            raise
        self._maintenance = asyncio.create_task(self._maintain())
        if self._engine_settings.interval is not None:
            self._compacting = asyncio.create_task(self._compact_loop())

    async def close(self) -> None:
        if self._state is StorageState.CLOSED:
            return
        # a compaction cut short rolls back: its rows stay hot, nothing is lost
        for task in (self._compacting, self._maintenance):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._state is StorageState.OPEN:
            await self._inserter.close()  # answer what is in flight first
        self._state = StorageState.CLOSED
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self._connect_timeout)
            except _DRIVER_ERRORS:  # TimeoutError is among them
                self._pool.terminate()
        if self._engine is not None:
            self._engine.close()

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            # Not the command timeout: a migration of a large database (v3 moves
            # every UUID id) can outlast it, and the other instances wait for it.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK, timeout=_MIGRATION_TIMEOUT
            )
            await conn.execute("CREATE TABLE IF NOT EXISTS innkt_schema (version integer NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM innkt_schema") or 0
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"database schema version {version} is newer than this server's"
                    f" {SCHEMA_VERSION}; upgrade the server"
                )
            for target in sorted(v for v in MIGRATIONS if v > version):
                for statement in MIGRATIONS[target]:
                    await conn.execute(statement, timeout=_MIGRATION_TIMEOUT)
                await conn.execute("DELETE FROM innkt_schema")
                await conn.execute("INSERT INTO innkt_schema (version) VALUES ($1)", target)
            for statement in KEY_COLUMNS_DDL:  # idempotent, outside the numbered versions
                await conn.execute(statement)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self._maintenance_interval)
            try:
                await self.ensure_partitions_ahead()
            except StorageError as exc:
                log.warning("partition maintenance failed: %s", exc)

    async def _compact_loop(self) -> None:
        """The storage engine's background steps (``_pg_engine``): compactions and
        merges when this instance gets the segment lock; else fetching listed
        segment files into the cache; cache cleanup always."""
        engine = self.engine
        interval = engine.settings.interval
        assert interval is not None  # started only with one
        while True:
            try:
                busy = await self._run(lambda conn: engine.step(conn))
                # idle: fetch what other instances wrote, before a query needs it
                busy = busy or await self._run(lambda conn: engine.warm(conn))
                engine.last_error = None
            except (StorageError, OSError, ValueError) as exc:
                # a full disk, say: the hot rows keep the events meanwhile
                engine.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("storage compaction failed: %s", engine.last_error)
                busy = False
                await asyncio.sleep(5.0)
            engine.sweep()
            if not busy:
                await asyncio.sleep(interval)

    @property
    def engine(self) -> PgEngine:
        if self._engine is None:
            raise StorageError(f"storage is {self._state.value}")
        return self._engine

    async def compact_now(self) -> None:
        """Compact every hot row and merge until nothing is left to do, waiting for
        the segment lock (tests, benchmarks); the background loop does this on its own."""
        engine = self.engine

        async def run(conn: Any) -> None:
            while await engine.step(conn, force=True, wait=True):
                pass

        await self._run(run)

    async def ensure_partitions_ahead(self) -> None:
        """Create this month's and the next months' partitions if missing.

        Run at open and hourly, so inserts normally never wait on DDL.
        Raises ``StorageError``.
        """
        now = time.time_ns() // 1_000_000
        wanted = months_ahead(now, self._window.future_months)
        await self._run(lambda conn: self._create_partitions(conn, wanted))

    async def _create_partitions(self, conn: Any, starts: Sequence[int]) -> None:
        if not all(s in self._known for s in starts):
            self._known = await create_partitions(conn, starts)

    # -- the connection helper -----------------------------------------------------

    async def _run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection; errors become ``StorageError``."""
        if self._state is not StorageState.OPEN:
            raise StorageError(f"storage is {self._state.value}")
        for attempt in range(2):
            try:
                async with self._pool.acquire(timeout=self._connect_timeout) as conn:
                    result = await fn(conn)
            except _CONNECTION_LOST as exc:
                # A connection killed while idle in the pool (server restart,
                # failover, pg_terminate_backend) fails its next use; a fresh one
                # may work. Retrying is safe: inserts are deduplicated.
                if attempt == 0:
                    continue
                raise self._failed(exc) from exc
            except _DRIVER_ERRORS as exc:
                raise self._failed(exc) from exc
            self._last_error = None
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed(self, exc: BaseException) -> StorageError:
        error = _convert_error(exc)
        self._last_error = error
        return error

    # -- events --------------------------------------------------------------------

    async def insert_events(self, project: str, rows: Sequence[EventRow]) -> set[str]:
        if not rows:
            return set()
        if self._state is not StorageState.OPEN:
            raise StorageError(f"storage is {self._state.value}")
        return await self._inserter.insert(project, rows)

    async def _insert_rows(self, rows: list[tuple[str, EventRow]]) -> set[Key]:
        """One transaction for a merged group: COPY, or row by row on a duplicate."""
        needed = partitions_to_create(
            (r.corrected for _, r in rows), self._known, time.time_ns() // 1_000_000, self._window
        )
        copy = copy_records(rows)

        async def run(conn: Any) -> set[Key]:
            if needed:
                await self._create_partitions(conn, needed)
            try:
                async with conn.transaction():
                    if copy.uuids:
                        await conn.copy_records_to_table("event_uuids", records=copy.uuids)
                    if copy.ids:
                        await conn.copy_records_to_table("event_ids", records=copy.ids)
                    await conn.copy_records_to_table(
                        "events", records=copy.events, columns=EVENT_COLUMNS
                    )
                return copy.keys
            except asyncpg.UniqueViolationError:
                self.slow_inserts += 1  # some were stored already: row by row
            stored = await conn.fetch(INSERT, *insert_args(rows))
            return {(r[0], r[1]) for r in stored}

        return await self._run(run)

    async def query_events(
        self, project: str, flt: EventFilter, cursor: int | None, limit: int
    ) -> EventPage:
        from innkt_analytics.server.storage._columnar import page_merged
        from innkt_analytics.server.storage._segments import HOT_COLUMNS

        engine = self.engine
        snap = await self._run(
            lambda conn: engine.snapshot(
                conn, project, flt, HOT_COLUMNS, after_seq=cursor, hot_limit=limit + 1
            )
        )
        rows = await asyncio.to_thread(
            page_merged,
            engine.reader,
            snap,
            clean_text(project),
            clean_filter(flt),
            cursor,
            limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return EventPage(rows=rows, next_cursor=rows[-1].seq if more and rows else None)

    async def snapshot(
        self,
        project: str,
        flt: EventFilter,
        columns: Sequence[str],
        *,
        hot_limit: int | None = None,
    ) -> Snapshot:
        """One snapshot of the project's matching events: the segment files that may
        hold some (cached locally) and the matching hot rows of ``columns`` (the first
        ``hot_limit``), for DuckDB (``_columnar``)."""
        engine = self.engine
        return await self._run(
            lambda conn: engine.snapshot(conn, project, flt, columns, hot_limit=hot_limit)
        )

    async def insight_source(
        self,
        project: str,
        since: int | None,
        until: int | None,
        *,
        payload: bool = True,
        hot_limit: int | None = None,
    ) -> tuple[list[str], pa.Table]:
        """``SQLiteStorage.insight_source`` on PostgreSQL: the segment files (cached
        here) that may hold the project's events in ``[since, until)`` and the first
        ``hot_limit`` matching hot rows, without their JSON unless ``payload``."""
        from innkt_analytics.server.storage._segments import hot_columns

        flt = EventFilter(since=since, until=until)
        snap = await self.snapshot(project, flt, hot_columns(payload), hot_limit=hot_limit)
        return [s.path for s in snap.segments], snap.hot

    async def scan(self, project: str, flt: EventFilter, select: str) -> Iterator[pa.RecordBatch]:
        """``SELECT {select}`` (DuckDB SQL over ``_segments.HOT_COLUMNS``) on the
        matching events of one snapshot, as ``SQLiteStorage.scan`` gives them: the
        snapshot is taken here, the returned iterator is blocking (run it on a
        thread of its own)."""
        from innkt_analytics.server.storage._columnar import scan_snapshot
        from innkt_analytics.server.storage._segments import HOT_COLUMNS

        snap = await self.snapshot(project, flt, HOT_COLUMNS)
        return scan_snapshot(snap, clean_text(project), clean_filter(flt), select)

    async def stats(
        self,
        project: str,
        flt: EventFilter,
        bucket_ms: int,
        *,
        persons: Mapping[str, str] | None = None,
        uniques: bool = True,
    ) -> Stats:
        engine = self.engine
        snap = await self.snapshot(project, flt, _rollups.STATS_COLUMNS)
        return await asyncio.to_thread(
            _rollups.snapshot_stats,
            engine.reader,
            engine.rollups,
            snap,
            clean_text(project),
            clean_filter(flt),
            bucket_ms,
            persons=persons,
            uniques=uniques,
        )

    async def delete_events_before(self, project: str | None, before: int) -> int:
        """Retention. Hot months wholly before ``before`` are dropped as partitions
        (for one project: those holding only its rows), the other hot rows deleted
        row by row; then the segments holding older events are rewritten. Raises
        ``StorageError``.
        """
        engine = self.engine
        project = None if project is None else clean_text(project)

        async def run(conn: Any) -> int:
            for start in await expired_partitions(conn, project, before):
                await retire(conn, start, project)
            deleted = await purge_retired(conn)
            async with conn.transaction():
                await lock_segments(conn)
                deleted += await delete_rows_before(conn, project, before)
                deleted += await engine.delete_matching(conn, project, None, before)
            self._known = await load_partitions(conn)
            return deleted

        return await self._run(run)

    # -- config --------------------------------------------------------------------

    async def get_config(self, project: str) -> ClientConfig | None:
        raw = await self._run(
            lambda conn: conn.fetchval(
                "SELECT config FROM project_config WHERE project = $1", project
            )
        )
        return None if raw is None else msgspec.json.decode(raw, type=ClientConfig)

    async def put_config(self, project: str, config: ClientConfig) -> ClientConfig:
        async def run(conn: Any) -> ClientConfig:
            async with conn.transaction():
                # Two instances bumping the same project's version must not both
                # read version N; the lock also covers a project with no row yet.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))", _CONFIG_LOCK_SPACE, project
                )
                raw = await conn.fetchval(
                    "SELECT config FROM project_config WHERE project = $1", project
                )
                old = 0 if raw is None else msgspec.json.decode(raw, type=ClientConfig).version
                stored = msgspec.structs.replace(config, version=old + 1)
                await conn.execute(
                    "INSERT INTO project_config (project, config) VALUES ($1, $2)"
                    " ON CONFLICT (project) DO UPDATE SET config = excluded.config",
                    project,
                    msgspec.json.encode(stored),
                )
            return stored

        return await self._run(run)

    # -- keys ----------------------------------------------------------------------

    async def create_key(self, record: KeyRecord) -> None:
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO api_keys"
                " (key_id, project, name, scopes, key_hash, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                record.key_id,
                record.project,
                record.name,
                ",".join(sorted(record.scopes)),
                record.key_hash,
                record.created_at,
                record.expires_at,
            )
        )

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        row = await self._run(
            lambda conn: conn.fetchrow(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash
            )
        )
        return None if row is None else key_record(row)

    async def list_keys(self, project: str | None = None) -> list[KeyRecord]:
        sql = f"SELECT {KEY_COLUMNS} FROM api_keys"
        if project is None:
            rows = await self._run(lambda conn: conn.fetch(sql + " ORDER BY created_at, key_id"))
        else:
            rows = await self._run(
                lambda conn: conn.fetch(
                    sql + " WHERE project = $1 ORDER BY created_at, key_id", project
                )
            )
        return [key_record(r) for r in rows]

    async def revoke_key(self, key_id: str, at: int) -> bool:
        status = await self._run(
            lambda conn: conn.execute(
                "UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL",
                at,
                key_id,
            )
        )
        return bool(status != "UPDATE 0")

    async def count_keys(self) -> int:
        count = await self._run(lambda conn: conn.fetchval("SELECT count(*) FROM api_keys"))
        return int(count)

    async def expire_key(self, key_id: str, at: int) -> bool:
        status = await self._run(
            lambda conn: conn.execute(
                "UPDATE api_keys SET expires_at = least(coalesce(expires_at, $1), $1)"
                " WHERE key_id = $2 AND revoked_at IS NULL",
                at,
                key_id,
            )
        )
        return bool(status != "UPDATE 0")

    async def record_key_use(self, used: dict[str, int]) -> None:
        if used:
            await self._run(
                lambda conn: conn.executemany(
                    "UPDATE api_keys SET last_used_at = greatest(coalesce(last_used_at, 0), $2)"
                    " WHERE key_id = $1",
                    list(used.items()),
                )
            )

    # -- privacy -------------------------------------------------------------------

    async def delete_user(self, project: str, user_id: str, at: int) -> int:
        return await self.delete_users(project, [user_id], at)

    async def delete_users(self, project: str, user_ids: Sequence[str], at: int) -> int:
        project = clean_text(project)  # as stored
        ids = sorted({clean_text(u) for u in user_ids})
        engine = self.engine

        async def run(conn: Any) -> int:
            async with conn.transaction():
                await lock_segments(conn)  # no compaction moves their rows meanwhile
                # the ids go too, as deleting a row frees its unique key in SQLite;
                # only the hot rows are in this table, scanned without an index
                deleted = await conn.fetchval(
                    "WITH gone AS (DELETE FROM events WHERE project = $1"
                    " AND (user_id = ANY($2::text[]) OR anonymous_id = ANY($2::text[]))"
                    " RETURNING project, event_id)" + FORGET_IDS,
                    project,
                    ids,
                )
                deleted += await engine.delete_matching(conn, project, ids)
                await conn.executemany(
                    "INSERT INTO suppressed_users (project, user_id, deleted_at)"
                    " VALUES ($1, $2, $3) ON CONFLICT (project, user_id)"
                    " DO UPDATE SET deleted_at = excluded.deleted_at",
                    [(project, user_id, at) for user_id in ids],
                )
            return int(deleted)

        return await self._run(run)

    async def suppressed_users(self, project: str | None = None) -> list[Suppression]:
        sql = "SELECT project, user_id, deleted_at FROM suppressed_users"

        async def run(conn: Any) -> list[Any]:
            if project is None:
                return list(await conn.fetch(sql))
            return list(await conn.fetch(sql + " WHERE project = $1", project))

        rows = await self._run(run)
        return [Suppression(project=r[0], user_id=r[1], deleted_at=r[2]) for r in rows]

    async def append_audit(self, entry: AuditEntry) -> None:
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO audit_log (project, at, actor, action, subject, detail)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
                entry.project,
                entry.at,
                entry.actor,
                entry.action,
                entry.subject,
                msgspec.json.encode(entry.detail).decode(),
            )
        )

    async def list_audit(self, project: str, limit: int, before: int | None) -> list[AuditEntry]:
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT seq, project, at, actor, action, subject, detail::text FROM audit_log"
                " WHERE project = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                project,
                before if before is not None else 2**62,
                limit,
            )
        )
        return [audit_entry(r) for r in rows]

    # -- health --------------------------------------------------------------------

    async def _engine_health(self, conn: Any) -> dict[str, object]:
        segments, rows, size = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(rows), 0), coalesce(sum(bytes), 0) FROM segments",
            timeout=self._connect_timeout,
        )
        engine = self.engine
        return {
            "segments": int(segments),
            "segmentEvents": int(rows),
            "segmentBytes": int(size),
            "compactorRunning": self._compacting is not None and not self._compacting.done(),
            "compactorError": engine.last_error,
        }

    async def health(self) -> StorageHealth:
        async def run(conn: Any) -> StorageHealth:
            size, estimate, version = await conn.fetchrow(
                "SELECT pg_database_size(current_database()),"
                " (SELECT sum(greatest(reltuples, 0)) FROM pg_class"
                "  WHERE oid IN ('event_ids'::regclass, 'event_uuids'::regclass)),"
                " (SELECT max(version) FROM innkt_schema)",
                timeout=self._connect_timeout,
            )
            exact = estimate < _EXACT_COUNT_LIMIT  # -1 (taken as 0) before the first ANALYZE
            if exact:
                events = await conn.fetchval(
                    "SELECT (SELECT count(*) FROM event_ids) + (SELECT count(*) FROM event_uuids)",
                    timeout=self._connect_timeout,
                )
            else:
                events = int(estimate)
            return StorageHealth(
                status=StorageStatus.OK,
                backend=self.backend,
                size_bytes=int(size),
                events=int(events),
                extra={
                    **await self._engine_health(conn),
                    "schemaVersion": version,
                    "partitions": len(self._known),
                    "eventsExact": exact,
                    "slowInserts": self.slow_inserts,
                    "pool": {"size": self._pool.get_size(), "max": self.pool_size},
                },
            )

        last = self._last_error
        try:
            result = await self._run(run)
        except StorageError as exc:
            return StorageHealth(
                status=StorageStatus.UNAVAILABLE,
                backend=self.backend,
                size_bytes=0,
                events=0,
                reason=str(exc),
            )
        if isinstance(last, StorageFullError):
            # Reads work but the last write hit a full disk: say so until a write succeeds.
            result.status = StorageStatus.FULL
            result.reason = str(last)
            self._last_error = last
        return result
