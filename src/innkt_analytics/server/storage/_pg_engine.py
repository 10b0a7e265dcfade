"""PostgreSQL's storage engine: the SQLite engine's Parquet segments, kept in PostgreSQL.

How an event travels on PostgreSQL (docs/operations.md, "PostgreSQL at scale"):

1. ``insert_events`` commits it to ``events`` (the hot rows) and its id to the dedup
   tables ``event_uuids``/``event_ids`` in one transaction; the 2xx follows that
   commit. The dedup tables keep every stored id, hot or compacted: the
   deduplication rule is the same before and after compaction.
2. Compaction: every instance tries, every ``interval`` seconds, to take the segment
   lock (``pg_try_advisory_xact_lock(SEGMENT_LOCK)``): the one that gets it is the
   compactor for that step; the others skip (no election to configure, and no
   failover to wait for: the next step is taken by whoever is alive). In one
   REPEATABLE READ transaction it reads the oldest hot rows (by ``seq``), writes
   them as one zstd Parquet segment (``_segments.write_segment``, the very files
   the SQLite engine writes), stores the file's bytes in ``segment_parts``, lists
   it in ``segments`` and deletes exactly the rows it read (``seq <= last`` in its
   snapshot: a row another transaction commits later, with a smaller ``seq``,
   stays hot). Segments of one tier are merged ``fanin`` at a time, likewise.
3. Reads take one REPEATABLE READ snapshot: the segment list and the matching hot
   rows (a COPY into Arrow). Each instance keeps the segment files it has read in
   a local cache directory; a file missing there is fetched from ``segment_parts``
   in that same snapshot, so a merge or a deletion that committed meanwhile cannot
   take it away. Files are immutable (a rewrite is a new name), so a cached file is
   never stale; one no longer listed is removed ``cache_grace`` seconds later.
   DuckDB then answers over the files and the hot rows, as on SQLite.
4. Deleting a user, and retention, take the segment lock (waiting for it) and, in
   the same transaction as the hot rows' deletion, rewrite every segment holding
   matching rows and forget their ids: one commit, nothing pending after a crash.

Keeping the segments in PostgreSQL, not in a directory the instances share: no
network file system to set up, and ``pg_dump`` backs up everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from innkt_analytics.server.storage import _segments
from innkt_analytics.server.storage._base import EventFilter
from innkt_analytics.server.storage._columnar import Reader, Segment, Snapshot
from innkt_analytics.server.storage._pg_ingest import FORGET_IDS, clean_text
from innkt_analytics.server.storage._pg_schema import SEGMENT_LOCK
from innkt_analytics.server.storage._rollups import Rollups

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "SEGMENT_LOCK",
    "PgEngine",
    "PgEngineSettings",
    "clean_filter",
    "copy_hot",
    "lock_segments",
    "parse_hot",
    "pg_where",
]

log = logging.getLogger("innkt_analytics.server.postgres")

#: bytes per row of ``segment_parts``
PART: Final = 8 << 20
#: (project, event id) pairs forgotten per statement
_FORGET_CHUNK: Final = 50_000
_LISTED: Final = "file, min_seq, max_seq, min_corrected, max_corrected"


@dataclass(frozen=True, slots=True)
class PgEngineSettings:
    #: compact once the hot rows span this many seqs...
    compact_rows: int = 50_000
    #: ...or the oldest has waited this many seconds
    compact_age: float = 2.0
    #: at most this many rows a compaction (a backlog, say a v3 database's rows,
    #: drains in steps)
    max_compact_rows: int = 500_000
    #: segments of one tier merged at a time into the next
    fanin: int = 16
    #: no merge makes a segment bigger than this
    max_segment_rows: int = 4_000_000
    #: seconds a cached file no longer listed stays, for queries that listed it
    cache_grace: float = 300.0
    #: seconds between two tries of the lock when there was nothing to do; None: no
    #: background compaction (``PostgresStorage.compact_now`` only)
    interval: float | None = 0.5


def clean_filter(flt: EventFilter) -> EventFilter:
    """``flt`` with its texts as PostgreSQL stored them (``clean_text``)."""

    def c(v: str | None) -> str | None:
        return None if v is None else clean_text(v)

    return EventFilter(
        event_type=c(flt.event_type),
        session_id=c(flt.session_id),
        user_id=c(flt.user_id),
        any_id=c(flt.any_id),
        since=flt.since,
        until=flt.until,
    )


def pg_where(project: str, flt: EventFilter) -> tuple[str, list[object]]:
    """A WHERE clause over ``events`` with ``$n`` parameters (texts cleaned)."""
    flt = clean_filter(flt)
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
            params.append(value)
            clauses.append(f"{column} {op} ${len(params)}")
    if flt.any_id is not None:
        params.append(flt.any_id)
        clauses.append(f"(user_id = ${len(params)} OR anonymous_id = ${len(params)})")
    return " AND ".join(clauses), params


async def copy_hot(
    conn: Any,
    columns: Sequence[str],
    where: str = "true",
    params: Sequence[object] = (),
    limit: int | None = None,
) -> bytes:
    """The matching hot rows' ``columns`` in seq order, as PostgreSQL's CSV."""
    select = ", ".join("convert_from(payload, 'UTF8')" if c == "payload" else c for c in columns)
    sql = f"SELECT {select} FROM events WHERE {where} ORDER BY seq"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    out = io.BytesIO()
    await conn.copy_from_query(sql, *params, output=out, format="csv")
    return out.getvalue()


def parse_hot(data: bytes, columns: Sequence[str]) -> pa.Table:
    """``copy_hot``'s CSV as an Arrow table of ``_segments.schema()``'s ``columns``."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    full = _segments.schema().remove_metadata()
    wanted = pa.schema([full.field(c) for c in columns])
    if not data:
        return wanted.empty_table()
    return pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(column_names=list(columns)),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={c: wanted.field(c).type for c in columns},
            true_values=["t"],
            false_values=["f"],
            # NULL is an empty field (and only that: pyarrow's defaults would take
            # the text "NULL" or "NaN" for one), an empty string a quoted one
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


class PgEngine:
    """One instance's side of the segments: its cache, snapshots, and the steps it
    takes when it holds the segment lock."""

    def __init__(self, cache_dir: str | None, settings: PgEngineSettings | None = None) -> None:
        self.settings = settings or PgEngineSettings()
        self._own_dir = cache_dir is None
        self.dir = cache_dir or tempfile.mkdtemp(prefix="innkt-pg-segments-")
        os.makedirs(self.dir, exist_ok=True)
        self.reader = Reader(directory=self.dir)
        self.rollups = Rollups()
        self.compactions = 0
        self.merges = 0
        self.last_error: str | None = None
        self._unlisted: dict[str, float] = {}  # cached file -> when first seen unlisted

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # -- reads ---------------------------------------------------------------------

    async def snapshot(
        self,
        conn: Any,
        project: str,
        flt: EventFilter,
        columns: Sequence[str],
        *,
        after_seq: int | None = None,
        hot_limit: int | None = None,
    ) -> Snapshot:
        """The segments that can hold matching events (cached here) and the matching
        hot rows (the first ``hot_limit``, if given), from one snapshot."""
        where, params = pg_where(project, flt)
        if after_seq is not None:
            params.append(after_seq)
            where += f" AND seq > ${len(params)}"
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            listed = await conn.fetch(f"SELECT {_LISTED} FROM segments ORDER BY min_seq")
            chosen = [
                r
                for r in listed
                if (flt.since is None or r[4] >= flt.since)
                and (flt.until is None or r[3] < flt.until)
                and (after_seq is None or r[2] > after_seq)
            ]
            await self._ensure_cached(conn, [r[0] for r in chosen])
            data = await copy_hot(conn, columns, where, params, hot_limit)
        hot = await asyncio.to_thread(parse_hot, data, columns)
        self._seen({r[0] for r in listed})
        return Snapshot(
            [Segment(self.path(r[0]), *r[1:]) for r in chosen],
            hot,
            tuple(self.path(r[0]) for r in listed),
        )

    async def _ensure_cached(self, conn: Any, names: Sequence[str]) -> None:
        """Fetch the files of ``names`` missing here (in the caller's transaction)."""
        for name in await self._missing(names):
            await self._fetch(conn, name)

    async def _missing(self, names: Sequence[str]) -> list[str]:
        """Those of ``names`` not in the cache."""
        return await asyncio.to_thread(
            lambda: [n for n in names if not os.path.exists(self.path(n))]
        )

    async def _fetch(self, conn: Any, name: str) -> None:
        """One file from ``segment_parts`` into the cache (written aside, then renamed)."""
        parts = await conn.fetchval("SELECT count(*) FROM segment_parts WHERE file = $1", name)
        path = self.path(name)
        tmp = f"{path}.{secrets.token_hex(4)}.part"
        f = await asyncio.to_thread(open, tmp, "wb")
        try:
            for part in range(parts):
                data = await conn.fetchval(
                    "SELECT data FROM segment_parts WHERE file = $1 AND part = $2", name, part
                )
                await asyncio.to_thread(f.write, data)
            await asyncio.to_thread(f.close)
            await asyncio.to_thread(os.replace, tmp, path)
        finally:
            f.close()
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, tmp)

    async def warm(self, conn: Any, files: int = 2) -> bool:
        """Fetch up to ``files`` listed segment files this instance has not cached
        yet (the background loop's idle work): the first query after a start, or
        after another instance's merge, then finds them here. False when every
        listed file is cached."""
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            listed = [r[0] for r in await conn.fetch("SELECT file FROM segments")]
            missing = await self._missing(listed)
            for name in missing[:files]:
                await self._fetch(conn, name)
        self._seen(set(listed))
        return len(missing) > files

    def _seen(self, listed: set[str]) -> None:
        """Note which cached files the latest listing no longer names."""
        now = time.monotonic()
        for name in os.listdir(self.dir):
            if name in listed:
                self._unlisted.pop(name, None)
            else:
                self._unlisted.setdefault(name, now)

    def sweep(self) -> bool:
        """Remove cached files unlisted for ``cache_grace`` seconds."""
        limit = time.monotonic() - self.settings.cache_grace
        old = [n for n, t in self._unlisted.items() if t < limit]
        for name in old:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(name))
            del self._unlisted[name]
        return bool(old)

    # -- the background steps --------------------------------------------------------

    async def step(self, conn: Any, *, force: bool = False, wait: bool = False) -> bool:
        """One compaction when due, else one merge; False when there was nothing to
        do, or another instance holds the lock (unless ``wait``)."""
        if await self.compact(conn, force=force, wait=wait):
            await self._vacuum(conn, "events")
            return True
        if await self.merge(conn, wait=wait):
            await self._vacuum(conn, "segment_parts")
            return True
        return False

    async def _vacuum(self, conn: Any, table: str) -> None:
        """Make the rows a step deleted reusable now: the hot rows' table would
        otherwise grow by every event compacted (2.5 GB of dead rows by 7.9M events
        where autovacuum is off), and every read and compaction would scan them.
        Outside any transaction; a table another session holds is skipped."""
        await conn.execute(f"VACUUM (SKIP_LOCKED) {table}")

    @contextlib.asynccontextmanager
    async def _locked(self, conn: Any, wait: bool) -> AsyncIterator[bool]:
        """The segment lock for the session, around the caller's transaction: a
        REPEATABLE READ snapshot must begin after the lock is held, not with the
        statement taking it (it would predate the previous holder's commit). The
        pool's reset releases it too, should this be cancelled."""
        if wait:
            await conn.execute("SELECT pg_advisory_lock($1)", SEGMENT_LOCK)
        elif not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SEGMENT_LOCK):
            yield False
            return
        try:
            yield True
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", SEGMENT_LOCK)

    async def compact(self, conn: Any, *, force: bool = False, wait: bool = False) -> bool:
        async with self._locked(conn, wait) as held:
            if held:
                return await self._compact(conn, force)
        return False

    async def _compact(self, conn: Any, force: bool) -> bool:
        s = self.settings
        async with conn.transaction(isolation="repeatable_read"):
            first = await conn.fetchrow("SELECT seq, received_at FROM events ORDER BY seq LIMIT 1")
            if first is None:
                return False
            if not force:
                top = await conn.fetchval("SELECT max(seq) FROM events")
                waited = time.time() - first[1] / 1000
                if top - first[0] + 1 < s.compact_rows and waited < s.compact_age:
                    return False
            data = await copy_hot(conn, _segments.HOT_COLUMNS, limit=s.max_compact_rows)
            table = await asyncio.to_thread(parse_hot, data, _segments.HOT_COLUMNS)
            upto = table["seq"][-1].as_py()
            name = f"seg-{upto:012d}-{secrets.token_hex(4)}.parquet"
            meta = await asyncio.to_thread(_segments.write_segment, self.dir, name, table)
            if meta is not None:
                await self._upload(conn, meta)
            await conn.execute("DELETE FROM events WHERE seq <= $1", upto)
        self.compactions += 1
        return True

    async def merge(self, conn: Any, *, wait: bool = False) -> bool:
        async with self._locked(conn, wait) as held:
            if held:
                return await self._merge(conn)
        return False

    async def _merge(self, conn: Any) -> bool:
        s = self.settings
        async with conn.transaction():
            rows = await conn.fetch("SELECT file, rows, tier FROM segments ORDER BY min_seq")
            found = _segments.merge_window(
                [(r[1], r[2]) for r in rows], s.fanin, s.max_segment_rows
            )
            if found is None:
                return False
            start, tier = found
            names = [r[0] for r in rows[start : start + s.fanin]]
            await self._ensure_cached(conn, names)
            name = f"seg-m{tier + 1}-{secrets.token_hex(6)}.parquet"
            meta = await asyncio.to_thread(
                _segments.rewrite, self.dir, name, [self.path(n) for n in names], tier + 1
            )
            await self._replace(conn, names, meta)
        self.merges += 1
        return True

    async def delete_matching(
        self,
        conn: Any,
        project: str | None,
        ids: list[str] | None = None,
        before: int | None = None,
    ) -> int:
        """Rewrite the segments holding events of ``project`` (None: every project)
        whose user or anonymous id is one of ``ids``, or whose corrected time is before
        ``before``, and forget those events' ids; returns how many went. Call in a
        transaction that holds the segment lock (``lock_segments``)."""
        deleted = 0
        segments = await conn.fetch(
            "SELECT file, rows, tier, min_corrected FROM segments ORDER BY min_seq"
        )
        for name, rows, tier, min_corrected in segments:
            if before is not None and min_corrected >= before:
                continue
            await self._ensure_cached(conn, [name])
            new_name = f"seg-d{tier}-{secrets.token_hex(6)}.parquet"
            gone, keys, meta = await asyncio.to_thread(
                _segments.drop_matching, self.dir, name, new_name, tier, rows, project, ids, before
            )
            if gone == 0:
                continue
            await self._replace(conn, [name], meta)
            for start in range(0, len(keys), _FORGET_CHUNK):
                chunk = keys[start : start + _FORGET_CHUNK]
                await conn.fetchval(
                    "WITH gone AS (SELECT * FROM unnest($1::text[], $2::text[])"
                    " AS g(project, event_id))" + FORGET_IDS,
                    [k[0] for k in chunk],
                    [k[1] for k in chunk],
                )
            deleted += gone
        return deleted

    async def _replace(
        self, conn: Any, old: Sequence[str], new: _segments.SegmentMeta | None
    ) -> None:
        await conn.execute("DELETE FROM segments WHERE file = ANY($1::text[])", list(old))
        await conn.execute("DELETE FROM segment_parts WHERE file = ANY($1::text[])", list(old))
        if new is not None:
            await self._upload(conn, new)

    async def _upload(self, conn: Any, meta: _segments.SegmentMeta) -> None:
        f = await asyncio.to_thread(open, self.path(meta.file), "rb")
        try:
            part = 0
            while chunk := await asyncio.to_thread(f.read, PART):
                await conn.execute(
                    "INSERT INTO segment_parts (file, part, data) VALUES ($1, $2, $3)",
                    meta.file,
                    part,
                    chunk,
                )
                part += 1
        finally:
            f.close()
        await conn.execute(
            "INSERT INTO segments (file, rows, bytes, min_seq, max_seq, min_corrected,"
            " max_corrected, tier, sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            meta.file,
            meta.rows,
            meta.bytes,
            meta.min_seq,
            meta.max_seq,
            meta.min_corrected,
            meta.max_corrected,
            meta.tier,
            meta.sha256,
        )


async def lock_segments(conn: Any) -> None:
    """Wait for the segment lock, held to the end of the caller's transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", SEGMENT_LOCK)
