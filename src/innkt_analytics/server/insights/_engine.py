"""Insights queries as SQL in DuckDB over an Arrow table of events (``to_arrow``).

``run(query, source, project)`` answers exactly as ``_reference.run_reference`` does
(the semantics are documented there); only presentation is done in Python: bucket
labels, zero-filling, rates. Values from the caller reach SQL only as bound
parameters; what is spliced into the SQL text comes from closed sets checked by
``_model.validate`` (intervals, column names, operators).

Each call opens its own in-memory DuckDB connection with one thread and a memory
limit, so a query cannot take more than its share of the machine.

Persons: with an id -> person mapping and ``countBy: "person"`` the ``actor`` column is
replaced by each id's person before DuckDB sees it (an Arrow lookup; an id that is no
key is its own person), so every query reads persons as actors. In Arrow, not as a
join in SQL: the join carried every event's JSON columns through a hash join and
doubled the time of a trends query over 200,000 events (0.2 s -> 0.4 s; the lookup
adds ~0.03 s).
"""

from __future__ import annotations

import contextvars
import re
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import duckdb
import pyarrow as pa

from innkt_analytics.server.insights._events import bucket_labels
from innkt_analytics.server.insights._model import (
    Breakdown,
    EventSpec,
    FunnelBreakdownResult,
    FunnelQuery,
    FunnelResult,
    LifecycleQuery,
    LifecycleResult,
    PathEdge,
    PathsQuery,
    PathsResult,
    PropertyFilter,
    Query,
    QueryTooLarge,
    RetentionCohort,
    RetentionQuery,
    RetentionResult,
    Series,
    SeriesResult,
    StickinessQuery,
    StickinessResult,
    TrendsQuery,
    TrendsResult,
    counts_persons,
)
from innkt_analytics.server.insights._reference import OTHER, QUANTILES, funnel_steps

__all__ = ["MEMORY_LIMIT", "connect_segments", "run", "run_interruptible"]

MEMORY_LIMIT: Final = "256MB"
_NUMERIC: Final = "('BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT')"
_LABEL: Final = "'%Y-%m-%dT%H:%M:%S'"


#: set by ``_run``: whether ``src`` holds each event id once
_UNIQUE: contextvars.ContextVar[bool] = contextvars.ContextVar("unique", default=False)
#: set by ``_run``: what the connection reads (``_Source``)
_SOURCE: contextvars.ContextVar[_Source | None] = contextvars.ContextVar("source", default=None)
#: where a filter's or breakdown's ``source`` sits in an event's stored JSON
_STORED_KEY: Final = {"properties": "properties", "context": "context", "device": "deviceInfo"}


class _Source:
    """What a connection reads: an Arrow table of ``arrow_schema()`` (``src``), or a
    storage's stored rows (``raw_events`` of ``connect_segments``: the JSON payload,
    ids not yet mapped to persons), and whether ids map to persons (``person_of``)."""

    def __init__(self, stored: bool, mapped: bool) -> None:
        self.stored, self.mapped = stored, mapped

    @classmethod
    def of(cls, con: duckdb.DuckDBPyConnection) -> _Source:
        names = {
            name
            for (name,) in con.execute(
                "SELECT view_name FROM duckdb_views() "
                "WHERE view_name IN ('raw_events', 'person_of')"
            ).fetchall()
        }
        return cls("raw_events" in names, "person_of" in names)


class _Sql:
    """SQL text with its parameters.

    Property values are read as JSON values (``value``): from the stored payload
    directly on a storage's rows (one parse of the payload per key, not one to cut
    out ``properties`` and another to read the key from it), from the ``properties``,
    ``context`` or ``device`` column of an Arrow table otherwise.
    """

    def __init__(self) -> None:
        # named, so the order the SQL is built in need not be the order it reads in
        self.params: dict[str, Any] = {}
        self.unique = _UNIQUE.get()
        self.source = _SOURCE.get() or _Source(stored=False, mapped=False)

    def p(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"${name}"

    def used(self, text: str) -> dict[str, Any]:
        """The parameters ``text`` reads (a statement refuses any other)."""
        return {name: self.params[name] for name in set(re.findall(r"\$(p\d+)\b", text))}

    def value(self, source: str, key: str) -> str:
        """The key's JSON value; NULL when missing or when ``source`` is no object."""
        # keys never hold '"' or '\\' (validated), so this is always a plain member path
        # a literal, not a parameter: DuckDB then compiles the path once and sees the
        # same subexpression twice when an expression reads it again
        member = '."' + key.replace("'", "''") + '"'
        if self.source.stored:
            return f"json_extract(payload, '$.{_STORED_KEY[source]}{member}')"
        return f"json_extract({source}, '${member}')"

    def eq(self, v: str, value: Any) -> str:
        if isinstance(value, bool):
            return (
                f"json_type({v}) = 'BOOLEAN' AND "
                f"json_extract_string({v}, '$') = {self.p(str(value).lower())}"
            )
        if isinstance(value, str):
            return f"json_type({v}) = 'VARCHAR' AND json_extract_string({v}, '$') = {self.p(value)}"
        return f"{self.number(v)} = {self.p(float(value))}"

    def number(self, v: str) -> str:
        """The JSON value ``v`` as a DOUBLE when it is a number, else NULL."""
        return (
            f"(CASE WHEN json_type({v}) IN {_NUMERIC} "
            f"THEN CAST(json_extract_string({v}, '$') AS DOUBLE) END)"
        )

    def filter(self, f: PropertyFilter) -> str:
        v = self.value(f.source, f.key)
        if f.op in ("is_set", "is_not_set"):
            cond = f"coalesce(json_type({v}) <> 'NULL', false)"
            return cond if f.op == "is_set" else f"NOT {cond}"
        if f.op == "eq":
            return f"coalesce({self.eq(v, f.value)}, false)"
        if f.op == "neq":
            return f"NOT coalesce({self.eq(v, f.value)}, false)"
        if f.op == "in":
            assert isinstance(f.value, list)
            return "(" + " OR ".join(f"coalesce({self.eq(v, x)}, false)" for x in f.value) + ")"
        if f.op == "contains":
            return (
                f"coalesce(json_type({v}) = 'VARCHAR' AND "
                f"contains(json_extract_string({v}, '$'), {self.p(f.value)}), false)"
            )
        sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[f.op]
        return f"coalesce({self.number(v)} {sym} {self.p(float(f.value))}, false)"  # type: ignore[arg-type]  # a number: validated

    def filters(self, filters: list[PropertyFilter]) -> str:
        return " AND ".join(["true", *(f"({self.filter(f)})" for f in filters)])

    def spec(self, spec: EventSpec) -> str:
        cond = "true" if spec.event is None else f"event_type = {self.p(spec.event)}"
        return f"({cond} AND {self.filters(spec.filters)})"

    def breakdown(self, b: Breakdown) -> str:
        # the JSON value is cut out of the payload once (DuckDB computes a
        # projection's repeated subexpression once), then read three ways
        v = self.value(b.source, b.property)
        return (
            f"(CASE json_type({v}) WHEN 'VARCHAR' THEN json_extract_string({v}, '$') "
            f"WHEN 'NULL' THEN NULL ELSE CAST({v} AS VARCHAR) END)"
        )

    def bucket(self, interval: str, zone: str) -> str:
        """The wall-clock start of the event's bucket as a naive TIMESTAMP."""
        assert interval in ("minute", "hour", "day", "week", "month")
        if zone == "UTC":  # epoch_ms is UTC's wall clock already: no ICU conversion
            return f"date_trunc('{interval}', epoch_ms(ts))"
        return (
            f"date_trunc('{interval}', timezone({self.p(zone)}, CAST(epoch_ms(ts) AS TIMESTAMPTZ)))"
        )

    def base(self, query: Query, project: str, *, persons: bool = True) -> str:
        """The ``ev`` CTE: ``events``."""
        return f"ev AS ({self.events(query, project, persons=persons)})"

    def events(self, query: Query, project: str, *, persons: bool = True) -> str:
        """The project's events, one per event id, past the query's filters, with
        ``id`` (user or else anonymous id) and ``actor`` (its person).

        On a storage's rows ``persons=False`` leaves ``actor`` the id: the join with
        the mapping then waits for the caller's fewer rows (``persons_of``)."""
        if self.source.stored:
            join = ""
            actor = "coalesce(e.user_id, e.anonymous_id)"
            if persons and self.source.mapped:
                join = f" LEFT JOIN person_of pm ON pm.id = {actor}"
                actor = f"coalesce(pm.person, {actor})"
            rows = "raw_events"
            if not self.unique:
                rows = (
                    "(SELECT * FROM raw_events QUALIFY row_number() OVER "
                    "(PARTITION BY project, event_id ORDER BY seq) = 1)"
                )
            return (
                "SELECT e.event_id, e.seq, e.event_type, e.ts, e.session_id, e.payload, "
                f"coalesce(e.user_id, e.anonymous_id) AS id, {actor} AS actor FROM {rows} e"
                f"{join} WHERE e.project = {self.p(project)} AND {self.filters(query.filters)}"
            )
        if self.unique:  # a storage's events: one per (project, event id) already
            return (
                f"SELECT *, actor AS id FROM src WHERE project = {self.p(project)}"
                f" AND {self.filters(query.filters)}"
            )
        return (
            "SELECT *, actor AS id FROM (SELECT *, row_number() OVER "
            "(PARTITION BY event_id ORDER BY seq) AS dup FROM src "
            f"WHERE project = {self.p(project)}) WHERE dup = 1 AND {self.filters(query.filters)}"
        )

    def persons_of(self, table: str) -> str:
        """``table``'s rows with ``actor``: the person of their ``id`` (``base`` with
        ``persons=False``; an Arrow table's ids are persons already)."""
        if self.source.stored and self.source.mapped:
            return (
                f"SELECT t.*, coalesce(pm.person, t.id) AS actor FROM {table} t "
                "LEFT JOIN person_of pm ON pm.id = t.id"
            )
        return f"SELECT *, id AS actor FROM {table}"


def _connect(
    source: pa.Table, memory_limit: str, persons: Mapping[str, str] | None = None
) -> duckdb.DuckDBPyConnection:
    """A connection whose table ``src`` is ``source``, actors mapped by ``persons``
    (pass the mapping only for a query that counts persons: see ``run``)."""
    con = duckdb.connect(config={"threads": 1, "memory_limit": memory_limit})
    # epoch_ms gives a naive UTC TIMESTAMP; the session zone makes its TIMESTAMPTZ UTC too
    con.execute("SET TimeZone = 'UTC'")
    con.register("src", _as_persons(source, persons) if persons else source)
    return con


def _json_column(key: str) -> str:
    # as InsightEvent.from_row: the payload's object, or {} when missing or not one
    return (
        f"coalesce(CASE WHEN json_type(payload, '$.{key}') = 'OBJECT'"
        f" THEN CAST(json_extract(payload, '$.{key}') AS VARCHAR) END, '{{}}')"
    )


def connect_segments(
    segments: Sequence[str],
    hot: pa.Table,
    memory_limit: str,
    persons: Mapping[str, str] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A connection over the storage engine's Parquet ``segments`` and ``hot`` rows
    (``_segments.HOT_COLUMNS`` of one snapshot).

    The engine reads the view ``raw_events`` (the stored columns, ``corrected`` as
    ``ts``, the JSON ``payload``) and ``person_of`` (the ``persons`` mapping, when
    given), so DuckDB reads only the columns and row groups a query needs, cuts only
    the keys it asks for out of the JSON, and joins ids to persons only where a
    query counts them. The view ``src`` has the columns of ``arrow_schema()`` over
    the same rows, for reading them as the engine's Arrow input."""
    con = duckdb.connect(config={"threads": 2, "memory_limit": memory_limit})
    con.execute("SET TimeZone = 'UTC'")
    con.register("hot_rows", hot)
    raw = (
        "seq, project, event_id, event_type, corrected AS ts, user_id, anonymous_id,"
        " session_id, payload"
    )
    parts = [f"SELECT {raw} FROM hot_rows"]
    if segments:
        files = ", ".join("'" + p.replace("'", "''") + "'" for p in segments)
        parts.insert(0, f"SELECT {raw} FROM read_parquet([{files}])")
    con.execute(f"CREATE VIEW raw_events AS {' UNION ALL '.join(parts)}")
    actor = "coalesce(e.user_id, e.anonymous_id)"
    join = ""
    if persons:
        con.register(
            "person_of",
            pa.table(
                {
                    "id": pa.array(list(persons), pa.string()),
                    "person": pa.array(list(persons.values()), pa.string()),
                }
            ),
        )
        join = f" LEFT JOIN person_of m ON m.id = {actor}"
        actor = f"coalesce(m.person, {actor})"
    con.execute(
        f"CREATE VIEW src AS SELECT e.seq, e.project, e.event_id, e.event_type, e.ts,"
        f" {actor} AS actor, e.session_id,"
        f" {_json_column('properties')} AS properties, {_json_column('context')} AS context,"
        f" {_json_column('deviceInfo')} AS device FROM raw_events e{join}"
    )
    return con


def _as_persons(source: pa.Table, persons: Mapping[str, str]) -> pa.Table:
    """``source`` with each actor replaced by its person (itself when it is no key)."""
    import pyarrow.compute as pc

    actors = source.column("actor")
    where = pc.index_in(actors, value_set=pa.array(list(persons), pa.string()))
    mapped = pc.take(pa.array(list(persons.values()), pa.string()), where)
    column = source.schema.get_field_index("actor")
    return source.set_column(column, "actor", pc.coalesce(mapped, actors))


def run(
    query: Query,
    source: pa.Table,
    project: str,
    *,
    persons: Mapping[str, str] | None = None,
    memory_limit: str = MEMORY_LIMIT,
) -> Any:
    """The answer to ``query`` over the events of ``project`` in ``source``.

    ``source`` has the columns of ``arrow_schema()``; ``persons`` maps ids to their
    persons (None: every id is its own person). Raises ``QueryTooLarge`` past
    ``memory_limit`` (a DuckDB size such as ``"256MB"``).
    """
    return run_interruptible(
        query, source, project, None, persons=persons, memory_limit=memory_limit
    )


def run_interruptible(
    query: Query,
    source: pa.Table | tuple[Sequence[str], pa.Table],
    project: str,
    on_connection: Callable[[duckdb.DuckDBPyConnection | None], None] | None,
    *,
    persons: Mapping[str, str] | None = None,
    memory_limit: str = MEMORY_LIMIT,
) -> Any:
    """``run`` over an Arrow table or a storage's ``(segments, hot)`` (``connect_segments``),
    handing the query's connection to ``on_connection`` once open and None before it
    closes, so another thread may ``interrupt()`` it.

    Raises ``QueryTooLarge`` past ``memory_limit``, ``duckdb.InterruptException`` when
    interrupted.
    """
    mapping = persons if counts_persons(query) else None
    if isinstance(source, pa.Table):
        con = _connect(source, memory_limit, mapping)
    else:
        con = connect_segments(source[0], source[1], memory_limit, mapping)
    if on_connection is not None:
        on_connection(con)
    try:
        # a storage's events hold each event id once: no deduplication window
        return _run(con, query, project, unique=not isinstance(source, pa.Table))
    except duckdb.OutOfMemoryException as exc:
        raise QueryTooLarge(f"the query needs more than {memory_limit} of memory") from exc
    finally:
        if on_connection is not None:
            on_connection(None)
        con.close()


def _run(
    con: duckdb.DuckDBPyConnection, query: Query, project: str, *, unique: bool = False
) -> Any:
    """The answer; ``unique``: ``src`` holds each event id once (a storage's events,
    as ``connect_segments`` gives), so the engine skips deduplicating them, which at
    10M events is a window over every id and most of a query's time."""
    token = _UNIQUE.set(unique)
    source = _SOURCE.set(_Source.of(con))
    try:
        return _dispatch(con, query, project)
    finally:
        _SOURCE.reset(source)
        _UNIQUE.reset(token)


def _dispatch(con: duckdb.DuckDBPyConnection, query: Query, project: str) -> Any:
    if isinstance(query, TrendsQuery):
        return _trends(con, query, project)
    if isinstance(query, FunnelQuery):
        return _funnel(con, query, project)
    if isinstance(query, RetentionQuery):
        return _retention(con, query, project)
    if isinstance(query, PathsQuery):
        return _paths(con, query, project)
    if isinstance(query, StickinessQuery):
        return _stickiness(con, query, project)
    return _lifecycle(con, query, project)


# -- trends ----------------------------------------------------------------------------


def _ranked_groups(table: str, weight: str, limit: int, sql: _Sql) -> str:
    """SQL for ``ranked``: ``table``'s breakdown values ``bv`` ranked as
    ``_reference._top`` ranks them, by the aggregate ``weight``."""
    order = "w DESC, bv IS NULL, coalesce(bv, '')"
    return (
        f"top AS (SELECT bv, {weight} AS w FROM {table} GROUP BY 1 "
        f"ORDER BY {order} LIMIT {sql.p(limit)}), "
        f"ranked AS (SELECT bv, row_number() OVER (ORDER BY {order}) AS r FROM top)"
    )


def _grouped(table: str, sql: _Sql) -> str:
    """``table``'s rows with their group: ``grp`` (the value, or ``$other`` past the
    top ones) and its rank ``r`` (``$other`` last)."""
    return (
        f"SELECT t.*, CASE WHEN ranked.r IS NULL THEN {sql.p(OTHER)} ELSE t.bv END AS grp, "
        f"coalesce(ranked.r, 1000) AS r FROM {table} t "
        "LEFT JOIN ranked ON t.bv IS NOT DISTINCT FROM ranked.bv"
    )


def _aggregate(series_math: str, sql: _Sql) -> str:
    """The series' aggregate of ``x``: what ``_measured`` gives."""
    if series_math == "total":
        return "count(*)"
    if series_math in ("unique_users", "unique_sessions"):
        return "count(DISTINCT x)"
    if series_math == "sum":
        return "coalesce(fsum(x), 0.0)"
    if series_math == "avg":
        return "fsum(x) / count(x)"
    if series_math in ("min", "max"):
        return f"{series_math}(x)"
    return f"quantile_disc(x, {sql.p(float(QUANTILES[series_math]))})"


def _measured(series: Series, sql: _Sql) -> str:
    """What a series' math reads of an event, as ``x``."""
    if series.math == "total":
        return "NULL"
    if series.math == "unique_users":
        return "actor"
    if series.math == "unique_sessions":
        return "session_id"
    assert series.math_property is not None
    return sql.number(sql.value(series.math_source, series.math_property))


def _trends_range(
    con: duckdb.DuckDBPyConnection, q: TrendsQuery, project: str, start: int, end: int
) -> tuple[list[str], list[SeriesResult]]:
    labels = bucket_labels(start, end, q.interval, zoneinfo.ZoneInfo(q.timezone))
    out: list[SeriesResult] = []
    for index, series in enumerate(q.series):
        sql = _Sql()
        base = sql.base(q, project, persons=series.math == "unique_users")
        bucket = sql.bucket(q.interval, q.timezone)
        where = f"ts >= {sql.p(start)} AND ts < {sql.p(end)} AND {sql.spec(series)}"
        x = _measured(series, sql)
        agg = _aggregate(series.math, sql)
        # rows grouped by bucket (a TIMESTAMP; its label is written per group, not per event)
        if q.breakdown is None:
            text = (
                f"WITH {base}, m AS (SELECT {bucket} AS bt, {x} AS x FROM ev WHERE {where}) "
                f"SELECT 1, NULL, strftime(bt, {_LABEL}), {agg} FROM m GROUP BY bt"
            )
        elif series.math == "total":
            # counts add up: count per (value, bucket), then rank and group the counts
            bv = sql.breakdown(q.breakdown)
            text = (
                f"WITH {base}, m AS (SELECT {bucket} AS bt, {bv} AS bv FROM ev WHERE {where}), "
                "c AS MATERIALIZED (SELECT bt, bv, count(*) AS n FROM m GROUP BY bt, bv), "
                + _ranked_groups("c", "sum(n)", q.breakdown.limit, sql)
                + f", g AS ({_grouped('c', sql)}) "
                f"SELECT r, grp, strftime(bt, {_LABEL}), sum(n) FROM g GROUP BY r, grp, bt"
            )
        else:
            bv = sql.breakdown(q.breakdown)
            text = (
                f"WITH {base}, m AS MATERIALIZED (SELECT {bucket} AS bt, {bv} AS bv, {x} AS x "
                f"FROM ev WHERE {where}), "
                + _ranked_groups("m", "count(*)", q.breakdown.limit, sql)
                + f", g AS ({_grouped('m', sql)}) "
                f"SELECT r, grp, strftime(bt, {_LABEL}), {agg} FROM g GROUP BY r, grp, bt"
            )
        rows = con.execute(text + " ORDER BY 1", sql.params).fetchall()
        empty: Any = 0 if series.math in ("total", "unique_users", "unique_sessions") else None
        if series.math == "sum":
            empty = 0.0
        # without a breakdown there is one series even when nothing matched
        groups: dict[tuple[int, str | None], dict[str, Any]] = {}
        if q.breakdown is None:
            groups[(1, None)] = {}
        for r, grp, b, value in rows:
            groups.setdefault((r, grp), {})[b] = value
        for (_, grp), values in groups.items():
            out.append(
                SeriesResult(
                    index=index,
                    breakdown_value=grp,
                    values=[values.get(b, empty) for b in labels],
                )
            )
    return labels, out


def _trends(con: duckdb.DuckDBPyConnection, q: TrendsQuery, project: str) -> TrendsResult:
    start, end = q.range_ms()
    labels, series = _trends_range(con, q, project, start, end)
    result = TrendsResult(buckets=labels, series=series)
    if q.compare:
        result.previous_buckets, result.previous = _trends_range(
            con, q, project, start - (end - start), start
        )
    return result


# -- funnels ---------------------------------------------------------------------------


def _funnel(con: duckdb.DuckDBPyConnection, q: FunnelQuery, project: str) -> FunnelResult:
    """Each actor's best attempt (per breakdown value), into ``funnel_best``.

    Only events of some step matter. The earliest attempt that reaches the last step
    is the best one, so each actor's earliest attempt is first followed with joins
    and minimums, no sort (step k: the earliest step-k event after step k-1's within
    the window), by time alone: exact for an actor none of whose step events share a
    millisecond, and event ids (a column as costly to read as all the others) are
    not read. The other actors (whose earliest attempt falls short, or with ties)
    are sequenced: their events sorted once per actor by ``(ts, event_id)`` (by
    ``ts`` when none of them has a tie), and per event "the chain from the next
    step-k event" is a window function over the rows after it, one pass per step
    from the last back to the second; each step-1 event is an attempt, the window
    only cuts its chain short. The best is an ``arg_min`` of (most steps, earliest)
    per actor and value, in a temporary table that the overall answer, the
    breakdown and the dropped page all read.
    """
    start, end = q.range_ms()
    n = len(q.steps)
    sql = _Sql()
    key = "session_id" if q.count_by == "session" else "actor"
    flags = ", ".join(f"{sql.spec(s)} AS m{k}" for k, s in enumerate(q.steps))
    bv = sql.breakdown(q.breakdown) if q.breakdown else "NULL"
    window = sql.p(q.window_seconds * 1000)
    rows = f"{key} IS NOT NULL AND ts >= {sql.p(start)} AND ts < {sql.p(end)}"
    ev = sql.events(q, project, persons=key == "actor")
    ms = ", ".join(f"m{k}" for k in range(n))

    def steps(cols: str, of: Sequence[int], each_type: bool = True) -> str:
        # the events of steps ``of``, as text rather than a CTE: DuckDB keeps a CTE
        # read several times as one result, which at 10M events is more than the
        # memory limit (spilled to disk), where a scan per use reads only what its
        # filters select. One scan per event type when each of those steps names one:
        # DuckDB reads the other columns of only the rows an equality on the type
        # selects (an IN or OR is checked after reading every row)
        types = {q.steps[k].event for k in of}
        each = [None] if None in types or not each_type else sorted(types)  # type: ignore[type-var]  # no None
        scans = " UNION ALL ".join(
            f"SELECT *, {key} AS a, {flags} FROM ({ev}) ev WHERE {rows}"
            + ("" if t is None else f" AND event_type = {sql.p(t)}")
            for t in each
        )
        # the breakdown value of step-1 events only: the JSON of no other is read
        return (
            f"(SELECT a, ts, {cols}{ms}, CASE WHEN m0 THEN {bv} END AS bv FROM ({scans}) e0 "
            f"WHERE {' OR '.join(f'm{k}' for k in of)})"
        )

    text = (
        f"WITH f0 AS (SELECT a, bv, min(ts) AS t0 FROM {steps('', [0])} e WHERE m0 GROUP BY a, bv)"
    )
    keys = ["f.a", "f.bv", "f.t0"]
    for k in range(1, n):
        # step k of the chain, and whether step k-1's event is the only event of step
        # k-1 or k at its millisecond (else which comes first is the event ids' call)
        text += (
            f", f{k} AS (SELECT f.*, min(e.ts) FILTER (WHERE e.m{k} AND e.ts > f.t{k - 1} "
            f"AND e.ts - f.t0 <= {window}) AS t{k}, "
            f"count(*) FILTER (WHERE e.ts = f.t{k - 1}) > 1 AS tie{k} "
            f"FROM f{k - 1} f LEFT JOIN {steps('', [k - 1, k])} e ON e.a = f.a "
            f"AND e.ts >= f.t{k - 1} AND e.ts - f.t0 <= {window} "
            f"GROUP BY {', '.join(keys)})"
        )
        keys += [f"f.t{k}", f"f.tie{k}"]
    ties = " OR ".join(f"coalesce(tie{k}, false)" for k in range(1, n))
    text += (
        # done: the earliest attempt reached the last step with no tie on the way;
        # an actor's values whose earliest attempts start at the same millisecond
        # are ordered by event id too
        f" SELECT *, t{n - 1} IS NOT NULL AND NOT ({ties}) "
        "AND count(*) OVER (PARTITION BY a, t0) = 1 AS done, "
        f"({ties}) OR count(*) OVER (PARTITION BY a, t0) > 1 AS tied FROM f{n - 1}"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE funnel_first AS {text}", sql.used(text))
    try:
        [(tied,)] = con.execute(
            "SELECT coalesce(bool_or(tied), false) FROM funnel_first WHERE a IN "
            "(SELECT a FROM funnel_first GROUP BY a HAVING NOT bool_and(done))"
        ).fetchall()
        _funnel_best(
            con,
            q,
            sql,
            # ids only when ties need them: then one scan (the id column costs as
            # much to read for some rows as for all)
            steps("event_id, " if tied else "NULL AS event_id, ", range(n), each_type=not tied),
            n,
            window,
        )
    finally:
        con.execute("DROP TABLE funnel_first")
    try:
        return _funnel_answer(con, q, n)
    finally:
        con.execute("DROP TABLE funnel_best")


def _funnel_best(
    con: duckdb.DuckDBPyConnection, q: FunnelQuery, sql: _Sql, e: str, n: int, window: str
) -> None:
    """``funnel_best`` from ``funnel_first``: the actors whose earliest attempts are
    done as they are, the others sequenced (``e``: their step events)."""
    text = (
        "WITH open AS (SELECT a FROM funnel_first GROUP BY a HAVING NOT bool_and(done)), "
        f"rest AS (SELECT * FROM {e} e WHERE a IN (SELECT a FROM open))"
    )
    after = "ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING"
    prev = "rest"
    for k in range(n - 1, 0, -1):
        # c{k}: the times of the chain from the next step-k event (t{k} .. t{n-1})
        fields = ", ".join([f"'t{k}': ts", *(f"'t{j}': c{k + 1}.t{j}" for j in range(k + 1, n))])
        # the first pass orders by (ts, event_id) and numbers the rows; the others
        # order by that number
        order = "ts, event_id" if k == n - 1 else "o"
        number = f", row_number() OVER (PARTITION BY a ORDER BY {order}) AS o" if k == n - 1 else ""
        text += (
            f", l{k} AS (SELECT *{number}, first_value(CASE WHEN m{k} THEN {{{fields}}} END "
            f"IGNORE NULLS) OVER (PARTITION BY a ORDER BY {order} {after}) AS c{k} "
            f"FROM {prev})"
        )
        prev = f"l{k}"
    times = ", ".join(f"c1.t{k} AS t{k}" for k in range(1, n))
    depth = " + ".join(
        ["1", *(f"coalesce(t{k} - t0 <= {window}, false)::INT" for k in range(1, n))]
    )
    fields = ", ".join(["'depth': depth", *(f"'t{k}': t{k}" for k in range(n))])
    quick = ", ".join([f"'depth': {n}", *(f"'t{k}': t{k}" for k in range(n))])
    text += (
        f", att AS (SELECT a, bv, event_id, ts AS t0, {times} FROM l1 WHERE m0), "
        # the most steps, then the earliest: the smallest score
        f"scored AS (SELECT a, bv, {{{fields}}} AS s, "
        "{'d': -depth, 't': t0, 'i': event_id} AS score "
        f"FROM (SELECT *, {depth} AS depth FROM att) "
        f"UNION ALL SELECT a, bv, {{{quick}}}, {{'d': -{n}, 't': t0, 'i': NULL}} "
        "FROM funnel_first WHERE a NOT IN (SELECT a FROM open)) "
        "SELECT a, bv, arg_min(s, score) AS s, min(score) AS score FROM scored GROUP BY a, bv"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE funnel_best AS {text}", sql.used(text))


def _funnel_answer(con: duckdb.DuckDBPyConnection, q: FunnelQuery, n: int) -> FunnelResult:
    """The answer from ``funnel_best``: each actor's best attempt per breakdown value."""
    cols = ["r", "any_value(grp)"]
    for k in range(n):
        cols.append(f"count(*) FILTER (WHERE s.depth > {k})")
        if k:
            cols.append(f"list((s.t{k} - s.t{k - 1}) / 1000.0) FILTER (WHERE s.depth > {k})")
    aggregate = f"SELECT {', '.join(cols)} FROM best GROUP BY r ORDER BY r"

    def steps(row: tuple[Any, ...]) -> Any:
        counts: list[int] = [row[2]]
        times: list[list[float]] = [[]]
        for k in range(1, n):
            counts.append(row[1 + 2 * k])
            times.append(list(row[2 + 2 * k] or []))
        return funnel_steps(counts, times)

    overall = (
        "best AS (SELECT a, 1 AS r, NULL AS grp, arg_min(s, score) AS s "
        "FROM funnel_best GROUP BY a)"
    )
    rows = con.execute(f"WITH {overall} {aggregate}").fetchall()
    result = FunnelResult(steps=steps(rows[0]) if rows else funnel_steps([0] * n, [[]] * n))
    if q.dropped is not None:
        page, sql = q.dropped, _Sql()
        after = "true" if page.after is None else f"a > {sql.p(page.after)}"
        dropped = [
            a
            for (a,) in con.execute(
                f"WITH {overall} SELECT a FROM best WHERE s.depth = {sql.p(page.step - 1)} "
                f"AND {after} ORDER BY a LIMIT {sql.p(page.limit + 1)}",
                sql.params,
            ).fetchall()
        ]
        result.dropped, result.dropped_next = dropped, None
        if len(dropped) > page.limit:
            result.dropped = dropped[: page.limit]
            result.dropped_next = dropped[page.limit - 1]
    if q.breakdown is not None:
        # per (actor, value) best attempts: a group's best is the best of its values'
        sql = _Sql()
        by_value = (
            _ranked_groups("funnel_best", "count(*)", q.breakdown.limit, sql)
            + f", g AS ({_grouped('funnel_best', sql)}), "
            "best AS (SELECT a, r, any_value(grp) AS grp, arg_min(s, score) AS s "
            "FROM g GROUP BY a, r)"
        )
        result.breakdown = [
            FunnelBreakdownResult(breakdown_value=r[1], steps=steps(r))
            for r in con.execute(f"WITH {by_value} {aggregate}", sql.params).fetchall()
        ]
    return result


# -- retention, paths, lifecycle -------------------------------------------------------


def _retention(con: duckdb.DuckDBPyConnection, q: RetentionQuery, project: str) -> RetentionResult:
    start, end = q.range_ms()
    labels = bucket_labels(start, end, q.period, zoneinfo.ZoneInfo(q.timezone))
    sql = _Sql()
    bucket = sql.bucket(q.period, q.timezone)
    diff = {
        "day": "date_diff('day', c.bt, r.bt)",
        "week": "date_diff('day', c.bt, r.bt) // 7",
        "month": "date_diff('month', c.bt, r.bt)",
    }[q.period]
    # one pass over the events: the buckets each id was active in, by what it did
    # there; ids become persons on those few rows, not on every event
    text = (
        f"WITH {sql.base(q, project, persons=False)}, e AS (SELECT id, {bucket} AS bt, "
        f"{sql.spec(q.target)} AS mt, {sql.spec(q.returning)} AS mr FROM ev "
        f"WHERE id IS NOT NULL AND ts >= {sql.p(start)} AND ts < {sql.p(end)}), "
        "ids AS (SELECT id, bt, bool_or(mt) AS mt, bool_or(mr) AS mr FROM e "
        "WHERE mt OR mr GROUP BY id, bt), "
        f"act AS MATERIALIZED (SELECT actor, bt, bool_or(mt) AS mt, bool_or(mr) AS mr "
        f"FROM ({sql.persons_of('ids')}) GROUP BY actor, bt), "
        # day, week and month buckets never go back in time, so the first event's
        # bucket is the smallest
        "c AS (SELECT actor, min(bt) AS bt FROM act WHERE mt GROUP BY actor), "
        "r AS (SELECT actor, bt FROM act WHERE mr) "
        # period 0 is the cohort's size
        f"SELECT strftime(bt, {_LABEL}), 0, count(*) FROM c GROUP BY 1 UNION ALL "
        f"SELECT strftime(c.bt, {_LABEL}), {diff}, count(DISTINCT c.actor) FROM c "
        "JOIN r ON r.actor = c.actor AND r.bt > c.bt GROUP BY 1, 2"
    )
    counts: dict[tuple[str, int], int] = {}
    for label, p, count in con.execute(text, sql.params).fetchall():
        counts[(label, p)] = count
    cohorts = []
    for i, label in enumerate(labels):
        values = [counts.get((label, 0), 0)]
        for p in range(1, min(q.periods, len(labels) - i)):
            values.append(counts.get((label, p), 0))
        cohorts.append(RetentionCohort(start=label, size=values[0], values=values))
    return RetentionResult(cohorts=cohorts)


def _paths(con: duckdb.DuckDBPyConnection, q: PathsQuery, project: str) -> PathsResult:
    start, end = q.range_ms()
    sql = _Sql()
    sign = 1 if q.direction == "next" else -1
    text = (
        f"WITH {sql.base(q, project)}, e AS (SELECT actor, event_type, {sql.spec(q.start)} AS ms, "
        "row_number() OVER (PARTITION BY actor ORDER BY ts, event_id) AS o FROM ev "
        f"WHERE actor IS NOT NULL AND ts >= {sql.p(start)} AND ts < {sql.p(end)}), "
        "st AS (SELECT actor, min(o) AS o0 FROM e WHERE ms GROUP BY actor), "
        f"p AS (SELECT e.actor, (e.o - st.o0) * {sign} AS s, e.event_type "
        "FROM e JOIN st USING (actor) "
        f"WHERE (e.o - st.o0) * {sign} BETWEEN 0 AND {sql.p(q.steps)}) "
        # step 0 carries the number of actors who started
        "SELECT 0, NULL, NULL, count(*) FROM st UNION ALL "
        "SELECT b.s, a.event_type, b.event_type, count(*) FROM p a JOIN p b "
        "ON a.actor = b.actor AND b.s = a.s + 1 GROUP BY 1, 2, 3"
    )
    rows = con.execute(text, sql.params).fetchall()
    starts = next(c for s, _, _, c in rows if s == 0)
    edges = sorted(
        (
            PathEdge(step=s, source=f"{s - 1}:{a}", target=f"{s}:{b}", count=c)
            for s, a, b, c in rows
            if s
        ),
        key=lambda x: (x.step, -x.count, x.source, x.target),
    )
    return PathsResult(starts=starts, edges=edges)


def _lifecycle(con: duckdb.DuckDBPyConnection, q: LifecycleQuery, project: str) -> LifecycleResult:
    start, end = q.range_ms()
    labels = bucket_labels(start, end, q.interval, zoneinfo.ZoneInfo(q.timezone))
    sql = _Sql()
    step = "INTERVAL 7 DAY" if q.interval == "week" else f"INTERVAL 1 {q.interval.upper()}"
    text = (
        f"WITH {sql.base(q, project)}, act AS (SELECT DISTINCT actor, "
        f"{sql.bucket(q.interval, q.timezone)} AS bt FROM ev "
        f"WHERE actor IS NOT NULL AND ts < {sql.p(end)} AND {sql.spec(q.event)}), "
        "first AS (SELECT actor, min(bt) AS f FROM act GROUP BY actor), "
        f"bk AS (SELECT CAST(x AS TIMESTAMP) AS b FROM unnest({sql.p(labels)}::VARCHAR[]) t(x)), "
        "cur AS (SELECT bk.b, CASE WHEN first.f = bk.b THEN 'new' "
        "WHEN p.actor IS NOT NULL THEN 'returning' ELSE 'resurrecting' END AS kind "
        "FROM act a JOIN bk ON a.bt = bk.b JOIN first USING (actor) "
        f"LEFT JOIN act p ON p.actor = a.actor AND p.bt = bk.b - {step}), "
        "dormant AS (SELECT bk.b, 'dormant' AS kind FROM act p "
        f"JOIN bk ON p.bt = bk.b - {step} "
        "LEFT JOIN act c ON c.actor = p.actor AND c.bt = bk.b WHERE c.actor IS NULL) "
        f"SELECT strftime(b, {_LABEL}), kind, count(*) FROM "
        "(SELECT * FROM cur UNION ALL SELECT * FROM dormant) GROUP BY 1, 2"
    )
    got = {(b, kind): c for b, kind, c in con.execute(text, sql.params).fetchall()}
    return LifecycleResult(
        buckets=labels,
        new=[got.get((b, "new"), 0) for b in labels],
        returning=[got.get((b, "returning"), 0) for b in labels],
        resurrecting=[got.get((b, "resurrecting"), 0) for b in labels],
        dormant=[-got.get((b, "dormant"), 0) for b in labels],
    )


def _stickiness(
    con: duckdb.DuckDBPyConnection, q: StickinessQuery, project: str
) -> StickinessResult:
    start, end = q.range_ms()
    n = len(bucket_labels(start, end, q.interval, zoneinfo.ZoneInfo(q.timezone)))
    sql = _Sql()
    text = (
        f"WITH {sql.base(q, project)}, per AS (SELECT actor, "
        f"count(DISTINCT {sql.bucket(q.interval, q.timezone)}) AS k FROM ev "
        f"WHERE actor IS NOT NULL AND ts >= {sql.p(start)} AND ts < {sql.p(end)} "
        f"AND {sql.spec(q.event)} GROUP BY actor) SELECT k, count(*) FROM per GROUP BY k"
    )
    got = dict(con.execute(text, sql.params).fetchall())
    return StickinessResult(actors=[got.get(k, 0) for k in range(1, n + 1)])
