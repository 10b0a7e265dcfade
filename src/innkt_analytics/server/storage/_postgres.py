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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import asyncpg
import msgspec

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
    event_row,
    key_record,
    person_pairs,
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

#: who did an event: the userId, else the anonymousId (``Storage.stats``)
_ACTOR: Final = "coalesce(user_id, anonymous_id)"
_SELECT: Final = (
    "SELECT seq, event_id, event_type, session_id, user_id, anonymous_id,"
    " ts, sent_at, received_at, corrected, future, payload FROM events"
)

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
        try:
            await self._run(self._migrate)
            await self.ensure_partitions_ahead()
        except BaseException:
            await self.close()
            raise
        self._maintenance = asyncio.create_task(self._maintain())

    async def close(self) -> None:
        if self._state is StorageState.CLOSED:
            return
        if self._state is StorageState.OPEN:
            await self._inserter.close()  # answer what is in flight first
        self._state = StorageState.CLOSED
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self._connect_timeout)
            except _DRIVER_ERRORS:  # TimeoutError is among them
                self._pool.terminate()

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
        where, params = _where(project, flt)
        if cursor is not None:
            params.append(cursor)
            where += f" AND seq > ${len(params)}"
        params.append(limit + 1)
        sql = f"{_SELECT} WHERE {where} ORDER BY project, seq LIMIT ${len(params)}"

        async def run(conn: Any) -> EventPage:
            rows = [event_row(r) for r in await conn.fetch(sql, *params)]
            more = len(rows) > limit
            rows = rows[:limit]
            return EventPage(rows=rows, next_cursor=rows[-1].seq if more and rows else None)

        return await self._run(run)

    async def insight_rows(
        self, project: str, since: int | None, until: int | None, *, payload: bool, limit: int
    ) -> pa.Table:
        """Up to ``limit`` of the project's events in ``[since, until)`` as an Arrow
        table of the storage engine's hot-row columns (``_segments.schema()``; the
        JSON ``payload`` only when asked for), which the insights engine reads as it
        reads SQLite's hot rows: one COPY as CSV, parsed by pyarrow, instead of
        paging rows into Python objects."""
        import io

        import pyarrow as pa
        import pyarrow.csv as pcsv

        from innkt_analytics.server.storage._segments import HOT_COLUMNS, schema

        columns = [c for c in HOT_COLUMNS if payload or c != "payload"]
        select = ", ".join(
            "convert_from(payload, 'UTF8')" if c == "payload" else c for c in columns
        )
        where, params = _where(project, EventFilter(since=since, until=until))
        params.append(limit)
        sql = f"SELECT {select} FROM events WHERE {where} LIMIT ${len(params)}"

        async def run(conn: Any) -> bytes:
            out = io.BytesIO()
            await conn.copy_from_query(sql, *params, output=out, format="csv")
            return out.getvalue()

        data = await self._run(run)
        full = schema().remove_metadata()
        wanted = pa.schema([full.field(c) for c in columns])
        if not data:
            return wanted.empty_table()
        return pcsv.read_csv(
            io.BytesIO(data),
            read_options=pcsv.ReadOptions(column_names=columns),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(
                column_types={c: wanted.field(c).type for c in columns},
                true_values=["t"],
                false_values=["f"],
                # NULL is an empty field (and only that: pyarrow's defaults would
                # take the text "NULL" or "NaN" for one), an empty string a quoted one
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )

    async def stats(
        self,
        project: str,
        flt: EventFilter,
        bucket_ms: int,
        *,
        persons: Mapping[str, str] | None = None,
        uniques: bool = True,
    ) -> Stats:
        where, params = _where(project, flt)
        n = len(params)

        async def run(conn: Any) -> Stats:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                by_type = {
                    r[0]: int(r[1])
                    for r in await conn.fetch(
                        f"SELECT event_type, count(*) FROM events WHERE {where}"
                        " GROUP BY event_type ORDER BY count(*) DESC",
                        *params,
                    )
                }
                series = await conn.fetch(
                    # rounded down, before 1970 too (integer / rounds toward zero)
                    f"SELECT corrected - mod(mod(corrected, ${n + 1}) + ${n + 1}, ${n + 1})"
                    " AS bucket, count(*)"
                    f" FROM events WHERE {where} GROUP BY 1 ORDER BY 1",
                    *params,
                    bucket_ms,
                )
                sessions = actors = merged = 0
                if uniques:
                    sessions = await conn.fetchval(
                        f"SELECT count(DISTINCT session_id) FROM events WHERE {where}", *params
                    )
                    ids, roots = person_pairs(persons or {})
                    actors, merged = await conn.fetchrow(
                        f"WITH a AS (SELECT DISTINCT {_ACTOR} AS actor FROM events"
                        f" WHERE {where} AND {_ACTOR} IS NOT NULL),"
                        f" m AS (SELECT * FROM unnest(${n + 1}::text[], ${n + 2}::text[])"
                        " AS m(id, root))"
                        " SELECT (SELECT count(*) FROM a),"
                        " (SELECT count(*) - count(DISTINCT m.root)"
                        "  FROM a JOIN m ON m.id = a.actor)",
                        *params,
                        ids,
                        roots,
                    )
            return Stats(
                total=sum(by_type.values()),
                by_event_type=by_type,
                series=[(int(t), int(c)) for t, c in series],
                unique_sessions=int(sessions),
                unique_users=int(actors) - int(merged),
            )

        return await self._run(run)

    async def delete_events_before(self, project: str | None, before: int) -> int:
        """Retention. Months wholly before ``before`` are dropped as partitions
        (for one project: those holding only its rows); the rest is deleted row by
        row. Raises ``StorageError``.
        """

        async def run(conn: Any) -> int:
            for start in await expired_partitions(conn, project, before):
                await retire(conn, start, project)
            deleted = await purge_retired(conn)
            async with conn.transaction():
                deleted += await delete_rows_before(conn, project, before)
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
        project, user_id = clean_text(project), clean_text(user_id)  # as stored

        async def run(conn: Any) -> int:
            async with conn.transaction():
                # the ids go too, as deleting a row frees its unique key in SQLite;
                # anonymous_id has no index (it would cost every insert): a deletion,
                # rare, scans the project's rows instead
                deleted = await conn.fetchval(
                    "WITH gone AS (DELETE FROM events WHERE project = $1"
                    " AND (user_id = $2 OR anonymous_id = $2)"
                    " RETURNING project, event_id)" + FORGET_IDS,
                    project,
                    user_id,
                )
                await conn.execute(
                    "INSERT INTO suppressed_users (project, user_id, deleted_at)"
                    " VALUES ($1, $2, $3) ON CONFLICT (project, user_id)"
                    " DO UPDATE SET deleted_at = excluded.deleted_at",
                    project,
                    user_id,
                    at,
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


def _where(project: str, flt: EventFilter) -> tuple[str, list[object]]:
    clauses = ["project = $1"]
    params: list[object] = [clean_text(project)]
    for column, op, value in (
        ("event_type", "=", flt.event_type),
        ("session_id", "=", flt.session_id),
        ("user_id", "=", flt.user_id),
        ("corrected", ">=", flt.since),
        ("corrected", "<", flt.until),
    ):
        if value is not None:
            params.append(clean_text(value) if isinstance(value, str) else value)
            clauses.append(f"{column} {op} ${len(params)}")
    if flt.any_id is not None:
        params.append(clean_text(flt.any_id))
        clauses.append(f"(user_id = ${len(params)} OR anonymous_id = ${len(params)})")
    return " AND ".join(clauses), params
