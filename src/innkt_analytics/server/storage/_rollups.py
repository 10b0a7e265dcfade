"""Per-segment rollups: what ``GET /v1/stats`` needs of a segment, a minute at a time.

A segment never changes once written (a rewrite is a new file with a new name), so
what the stats query reads of it can be reduced once and kept: per project and minute
of ``corrected``

* ``counts``: the number of events of each type;
* ``sessions``: the distinct 64-bit DuckDB ``hash()`` of the session ids;
* ``actors``: the distinct hashes of ``coalesce(user_id, anonymous_id)``.

They answer the whole minutes of a stats query: totals, counts by type, series whose
bucket is a whole number of minutes (a minute lies in one bucket), and distinct
sessions and actors as distinct hashes over fewer rows than the events (a session
spans a few minutes, an actor sends many events a minute). The minutes at the two
ends of a range that are not whole, the hot rows and any segment without a rollup
are read as events, as before; the answer is the same either way, which the tests
check.

Rollups live in memory, built the first time a query reads a segment, within a byte
budget (least recently used first out; a segment left without one is read as
events). They are per process and never written: nothing to back up, migrate or
repair.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from innkt_analytics.server.storage._base import EventFilter, Stats
from innkt_analytics.server.storage._columnar import (
    DISTINCT_ACTORS,
    DISTINCT_SESSIONS,
    MERGED_ACTORS,
    Reader,
    Snapshot,
    parquet_list,
    person_table,
    where,
)

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = [
    "MINUTE_MS",
    "Rollup",
    "Rollups",
    "StatsQuery",
    "edge_minutes",
    "events_stats_query",
    "floor_div",
    "snapshot_stats",
    "stats_query",
    "usable",
    "whole_minutes",
]

MINUTE_MS: Final = 60_000
#: the columns a stats query reads
STATS_COLUMNS: Final = (
    "project",
    "event_type",
    "corrected",
    "session_id",
    "user_id",
    "anonymous_id",
)
#: the default memory for rollups: ~140 MB per 10M events of bench/ingest_scale.py
DEFAULT_BUDGET: Final = 256 << 20


def floor_div(expr: str, divisor: int) -> str:
    """SQL for ``expr`` divided by ``divisor`` rounded down (DuckDB's ``//`` rounds
    toward zero, which would put the minute before 1970 into minute 0)."""
    d = int(divisor)
    return f"({expr} // {d} - ({expr} % {d} < 0)::BIGINT)"


_MINUTE: Final = f"{floor_div('corrected', MINUTE_MS)} AS m"
_BUILD: Final = {
    "counts": f"SELECT project, event_type, {_MINUTE}, COUNT(*) AS n FROM {{src}} GROUP BY ALL",
    "sessions": (
        f"SELECT DISTINCT project, {_MINUTE}, hash(session_id) AS h FROM {{src}}"
        " WHERE session_id IS NOT NULL"
    ),
    "actors": (
        f"SELECT DISTINCT project, {_MINUTE}, hash(coalesce(user_id, anonymous_id)) AS h"
        " FROM {src} WHERE coalesce(user_id, anonymous_id) IS NOT NULL"
    ),
}


@dataclass(frozen=True, slots=True)
class Rollup:
    counts: pa.Table
    sessions: pa.Table
    actors: pa.Table

    @property
    def nbytes(self) -> int:
        return int(self.counts.nbytes + self.sessions.nbytes + self.actors.nbytes)


def whole_minutes(since: int | None, until: int | None) -> tuple[int | None, int | None]:
    """The minutes ``[lo, hi)`` that lie wholly in ``[since, until)`` (``None``: no
    bound on that side)."""
    lo = None if since is None else -(-since // MINUTE_MS)
    hi = None if until is None else until // MINUTE_MS
    return lo, hi


def edge_minutes(since: int | None, until: int | None) -> str | None:
    """SQL for the events of ``[since, until)`` outside its whole minutes (they are
    read as events), or None when both ends fall on a minute."""
    lo, hi = whole_minutes(since, until)
    edges = []
    if lo is not None and since != lo * MINUTE_MS:
        edges.append(f"corrected < {lo * MINUTE_MS}")
    if hi is not None and until != hi * MINUTE_MS:
        edges.append(f"corrected >= {hi * MINUTE_MS}")
    return " OR ".join(edges) or None


def _compact(table: pa.Table) -> pa.Table:
    """Project and event type as dictionaries: ~20 bytes a row. (The minute stays an
    int64: an event may be stamped up to the year 9999, minute 4.2e9.)"""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    for name in table.column_names:
        col = table.column(name)
        if name in ("project", "event_type"):
            col = pc.dictionary_encode(col)  # int32 indices: any number of types
        columns.append(col)
    return pa.table(columns, names=table.column_names).combine_chunks()


def build(con: duckdb.DuckDBPyConnection, path: str) -> Rollup:
    """The rollup of one segment file."""
    src = parquet_list([path])
    parts = {
        name: _compact(con.sql(sql.format(src=src)).to_arrow_table())
        for name, sql in _BUILD.items()
    }
    return Rollup(**parts)


class Rollups:
    """Segment path -> rollup, least recently used out past ``budget`` bytes."""

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._held: OrderedDict[str, Rollup] = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(
        self, con: duckdb.DuckDBPyConnection, paths: Sequence[str]
    ) -> tuple[dict[str, Rollup], list[str]]:
        """The rollups of ``paths`` that fit in the budget (built where missing) and
        the paths left without one, to be read as events."""
        found: dict[str, Rollup] = {}
        missing: list[str] = []
        with self._lock:
            for path in paths:
                held = self._held.get(path)
                if held is None:
                    missing.append(path)
                else:
                    self._held.move_to_end(path)
                    found[path] = held
        left: list[str] = []
        for path in missing:
            if self.budget <= 0:
                left.append(path)
                continue
            rollup = build(con, path)
            with self._lock:
                if self._bytes + rollup.nbytes > self.budget:
                    self._evict(self._bytes + rollup.nbytes - self.budget, keep=found)
                if self._bytes + rollup.nbytes > self.budget:
                    left.append(path)
                    continue
                if path not in self._held:
                    self._held[path] = rollup
                    self._bytes += rollup.nbytes
                found[path] = self._held[path]
        return found, left

    def _evict(self, need: int, keep: dict[str, Rollup]) -> None:
        """Drop least recently used rollups not used by the current query."""
        for path in list(self._held):
            if need <= 0:
                break
            if path in keep:
                continue
            gone = self._held.pop(path)
            self._bytes -= gone.nbytes
            need -= gone.nbytes

    def forget(self, keep: Sequence[str]) -> None:
        """Drop the rollups of segments no longer listed (merged or rewritten)."""
        listed = set(keep)
        with self._lock:
            for path in [p for p in self._held if p not in listed]:
                self._bytes -= self._held.pop(path).nbytes


def usable(bucket_ms: int, flt: EventFilter) -> bool:
    """Whether rollups can answer a stats query: buckets of whole minutes, and no
    filter but the time range (a session or a person's id reads few events anyway; an
    event type would need the distinct sessions and actors kept per type, ~1.6x the
    rows in bench/ingest_scale.py's events)."""
    return bucket_ms % MINUTE_MS == 0 and flt == EventFilter(since=flt.since, until=flt.until)


@dataclass(slots=True)
class StatsQuery:
    """The stats statement over rollups plus events; ``sql`` has ``?`` parameters in
    the order of ``params``, and reads the tables ``tables`` by their names."""

    sql: str
    params: list[object]
    tables: dict[str, pa.Table]


def stats_query(
    *,
    rollups: Sequence[Rollup],
    raw_parts: Sequence[tuple[str, Sequence[object]]],
    project: str,
    since: int | None,
    until: int | None,
    bucket_ms: int,
    uniques: bool,
    merged_sql: str,
) -> StatsQuery:
    """One statement for totals, counts by type, the series and distinct sessions
    and actors: the rollups' whole minutes plus the events of ``raw_parts`` (each a
    ``SELECT event_type, corrected, session_id, user_id, anonymous_id ...`` with its
    parameters: the hot rows, segments without a rollup, the edge minutes)."""
    import pyarrow as pa

    params: list[object] = []
    tables: dict[str, pa.Table] = {}
    raw_sql = []
    for sql, p in raw_parts:
        raw_sql.append(sql)
        params += p
    if not raw_sql:
        raw_sql.append(
            "SELECT NULL::VARCHAR AS event_type, NULL::BIGINT AS corrected,"
            " NULL::VARCHAR AS session_id, NULL::VARCHAR AS user_id,"
            " NULL::VARCHAR AS anonymous_id WHERE false"
        )
    head = f"WITH raw AS ({' UNION ALL '.join(raw_sql)})"

    cond = ["project = ?"]
    cond_params: list[object] = [project]
    lo, hi = whole_minutes(since, until)
    if lo is not None:
        cond.append(f"m >= {int(lo)}")
    if hi is not None:
        cond.append(f"m < {int(hi)}")
    rc = " AND ".join(cond)

    def rolled(name: str, select: str) -> str:
        if not rollups:
            return ""
        tables[f"r_{name}"] = pa.concat_tables([getattr(r, name) for r in rollups])
        params.extend(cond_params)
        return f"SELECT {select} FROM r_{name} WHERE {rc} UNION ALL "

    counts = rolled("counts", "event_type::VARCHAR AS event_type, m * 60000 AS corrected, n")
    parts = [f"c AS ({counts}SELECT event_type, corrected, 1 AS n FROM raw)"]
    sessions_sql = actors_sql = "0"
    if uniques:
        sessions = rolled("sessions", "h")
        actors = rolled("actors", "h")
        parts += [
            f"s AS ({sessions}SELECT hash(session_id) FROM raw WHERE session_id IS NOT NULL)",
            f"a AS (SELECT DISTINCT h AS actor FROM ({actors}"
            " SELECT hash(coalesce(user_id, anonymous_id)) FROM raw"
            " WHERE coalesce(user_id, anonymous_id) IS NOT NULL) AS x(h))",
        ]
        sessions_sql = "SELECT COUNT(DISTINCT h) FROM s AS x(h)"
        actors_sql = "SELECT COUNT(*) FROM a"
    else:
        merged_sql = "0"
        parts.append("a AS (SELECT NULL::UBIGINT AS actor WHERE false)")
    b = int(bucket_ms)
    parts += [
        "t AS (SELECT event_type, SUM(n) AS n FROM c GROUP BY 1)",
        f"b AS (SELECT {floor_div('corrected', b)} * {b} AS k, SUM(n) AS n FROM c GROUP BY 1)",
    ]
    answer = _answer("SELECT coalesce(SUM(n), 0) FROM c", sessions_sql, actors_sql, merged_sql)
    return StatsQuery(f"{head}, {', '.join(parts)} {answer}", params, tables)


def events_stats_query(
    source: str, params: list[object], bucket_ms: int, uniques: bool, merged_sql: str
) -> StatsQuery:
    """The stats statement over every matching event of ``source`` (a relation with
    the stats columns): what ``stats_query`` answers when ``usable`` says no."""
    sessions_sql = actors_sql = "0"
    if uniques:
        sessions_sql = DISTINCT_SESSIONS
        actors_sql = "SELECT COUNT(*) FROM a"
    else:
        merged_sql = "0"
    b = int(bucket_ms)
    sql = (
        f"WITH ev AS (SELECT * FROM {source}),"
        " t AS (SELECT event_type, COUNT(*) AS n FROM ev GROUP BY 1),"
        f" b AS (SELECT {floor_div('corrected', b)} * {b} AS k, COUNT(*) AS n FROM ev GROUP BY 1),"
        f" a AS ({DISTINCT_ACTORS}) "
        + _answer("SELECT COUNT(*) FROM ev", sessions_sql, actors_sql, merged_sql)
    )
    return StatsQuery(sql, list(params), {})


def _answer(total: str, sessions: str, actors: str, merged: str) -> str:
    """The stats' one row, from the CTEs ``t`` (counts by type) and ``b`` (the
    series) and the four scalar subqueries."""
    return (
        f"SELECT ({total}), ({sessions}), ({actors}), ({merged}),"
        " (SELECT list(struct_pack(k := event_type, n := n) ORDER BY n DESC) FROM t),"
        " (SELECT list(struct_pack(k := k, n := n) ORDER BY k) FROM b)"
    )


def snapshot_stats(
    reader: Reader,
    rollups: Rollups,
    snap: Snapshot,
    project: str,
    flt: EventFilter,
    bucket_ms: int,
    *,
    persons: Mapping[str, str] | None,
    uniques: bool,
) -> Stats:
    """``Storage.stats`` over one snapshot (blocking): from the rollups of its
    segments when ``usable``, else over every matching event. Both engines (SQLite,
    and PostgreSQL's segments) answer with this."""
    tables = {"person_of": person_table(persons)} if uniques and persons else {}
    merged = MERGED_ACTORS if tables else "0"
    if usable(bucket_ms, flt):
        query = _rolled_stats(reader, rollups, snap, project, flt, bucket_ms, uniques, merged)
    else:
        cond, params = where(project, flt)
        source = f"({snap.source(STATS_COLUMNS)}) WHERE {cond}"
        query = events_stats_query(source, params, bucket_ms, uniques, merged)
    query.tables.update(tables)
    [(total, sessions, actors, merged_actors, by_type, series)] = reader.query(
        snap, query.sql, query.params, query.tables
    )
    return Stats(
        total=int(total),
        by_event_type={d["k"]: int(d["n"]) for d in by_type or []},
        series=[(int(d["k"]), int(d["n"])) for d in series or []],
        unique_sessions=int(sessions),
        unique_users=int(actors) - int(merged_actors),
    )


def _rolled_stats(
    reader: Reader,
    rollups: Rollups,
    snap: Snapshot,
    project: str,
    flt: EventFilter,
    bucket_ms: int,
    uniques: bool,
    merged: str,
) -> StatsQuery:
    """Stats from the segments' rollups plus the events they cannot answer: the hot
    rows, segments left without a rollup, edge minutes."""
    rollups.forget(snap.listed)
    found, left = rollups.get(reader.duck(), [s.path for s in snap.segments])
    cond, params = where(project, flt)
    cols = "event_type, corrected, session_id, user_id, anonymous_id"
    raw: list[tuple[str, list[object]]] = [(f"SELECT {cols} FROM hot WHERE {cond}", params)]
    if left:
        raw.append((f"SELECT {cols} FROM {parquet_list(left)} WHERE {cond}", params))
    edges = edge_minutes(flt.since, flt.until)
    if found and edges:
        files = parquet_list(list(found))
        raw.append((f"SELECT {cols} FROM {files} WHERE {cond} AND ({edges})", params))
    return stats_query(
        rollups=list(found.values()),
        raw_parts=raw,
        project=project,
        since=flt.since,
        until=flt.until,
        bucket_ms=bucket_ms,
        uniques=uniques,
        merged_sql=merged,
    )
