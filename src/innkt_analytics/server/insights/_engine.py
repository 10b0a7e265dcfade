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

A storage's rows (``connect_segments``: up to tens of millions of events) are read as
stored instead: property values cut out of each JSON payload only for the keys a
query asks for, and ids joined to persons in SQL only where a query counts actors
(``_sql.Sql.events``). The SQL is written by ``_sql``; funnels are in ``_funnels``.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final

import duckdb
import pyarrow as pa

from innkt_analytics.server.insights._events import bucket_labels
from innkt_analytics.server.insights._funnels import funnel
from innkt_analytics.server.insights._model import (
    FunnelQuery,
    LifecycleQuery,
    LifecycleResult,
    PathEdge,
    PathsQuery,
    PathsResult,
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
    property_keys,
)
from innkt_analytics.server.insights._reference import QUANTILES
from innkt_analytics.server.insights._sql import (
    LABEL,
    SOURCE,
    UNIQUE,
    Source,
    Sql,
    grouped,
    ranked_groups,
)
from innkt_analytics.server.storage._columnar import parquet_list, person_table
from innkt_analytics.server.storage._segments import (
    ACTOR_HASH,
    ACTOR_HASH_SQL,
    PROPERTY_PREFIX,
    distinct_columns,
    property_json,
    segment_hashed,
    segment_properties,
    usable_key,
)

__all__ = ["MEMORY_LIMIT", "connect_segments", "run", "run_interruptible"]

MEMORY_LIMIT: Final = "256MB"


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
    props: Sequence[str] = (),
) -> duckdb.DuckDBPyConnection:
    """A connection over the storage engine's Parquet ``segments`` and ``hot`` rows
    (``_segments.HOT_COLUMNS`` of one snapshot).

    The engine reads the view ``raw_events`` (the stored columns, ``corrected`` as
    ``ts``, the JSON ``payload``) and ``person_of`` (the ``persons`` mapping, when
    given), so DuckDB reads only the columns and row groups a query needs, cuts only
    the keys it asks for out of the JSON, and joins ids to persons only where a
    query counts them. The view ``src`` has the columns of ``arrow_schema()`` over
    the same rows, for reading them as the engine's Arrow input.

    ``raw_events`` also has a column ``p:<key>`` for each of ``props`` (the
    ``properties`` keys the query reads): a segment's property column where it has
    one, else the same value cut out of the JSON (``_segments.property_json``); and
    ``actor_hash``, the 64-bit hash of the actor id (``_segments.ACTOR_HASH_SQL``),
    stored or computed alike."""
    con = duckdb.connect(config={"threads": 2, "memory_limit": memory_limit})
    con.execute("SET TimeZone = 'UTC'")
    con.register("hot_rows", hot)
    raw = (
        "seq, project, event_id, event_type, corrected AS ts, user_id, anonymous_id,"
        " session_id, payload"
    )
    hot_raw = raw
    if "payload" not in hot.column_names:
        # hot rows loaded without their JSON (a query that reads none): NULL in its
        # place, and no property to read either
        hot_raw, props = raw.replace("payload", "NULL::VARCHAR AS payload"), []
    # "Plan" and "plan" cannot both be columns of the view: those are read from the JSON
    props = [k for k in distinct_columns(props) if usable_key(k)]
    computed = f", {ACTOR_HASH_SQL} AS {ACTOR_HASH}"
    parts = [f"SELECT {hot_raw}{_props_from(props, ())}{computed} FROM hot_rows"]
    # the segments by which of the keys they hold as columns, and whether they hold
    # the actor hashes (made by this DuckDB): one scan each
    groups: dict[tuple[frozenset[str], bool], list[str]] = {}
    for path in segments:
        kind = (segment_properties(path) & set(props), segment_hashed(path))
        groups.setdefault(kind, []).append(path)
    for (held, hashed), paths in groups.items():
        hashes = f", {ACTOR_HASH}" if hashed else computed
        parts.insert(
            0, f"SELECT {raw}{_props_from(props, held)}{hashes} FROM {parquet_list(paths)}"
        )
    con.execute(f"CREATE VIEW raw_events AS {' UNION ALL '.join(parts)}")
    actor = "coalesce(e.user_id, e.anonymous_id)"
    join = ""
    if persons:
        con.register("person_of", person_table(persons, "person"))
        join = f" LEFT JOIN person_of m ON m.id = {actor}"
        actor = f"coalesce(m.person, {actor})"
    con.execute(
        f"CREATE VIEW src AS SELECT e.seq, e.project, e.event_id, e.event_type, e.ts,"
        f" {actor} AS actor, e.session_id,"
        f" {_json_column('properties')} AS properties, {_json_column('context')} AS context,"
        f" {_json_column('deviceInfo')} AS device FROM raw_events e{join}"
    )
    return con


def _props_from(props: Sequence[str], held: Collection[str]) -> str:
    """The ``p:<key>`` columns of a part of ``raw_events`` whose segments hold the
    keys ``held`` as columns."""
    cols = []
    for key in props:
        name = '"' + PROPERTY_PREFIX + key + '"'  # keys never hold '"' (validated)
        cols.append(name if key in held else f"{property_json(key)} AS {name}")
    return "".join(", " + c for c in cols)


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
        con = connect_segments(
            source[0], source[1], memory_limit, mapping, props=property_keys(query)
        )
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
    token = UNIQUE.set(unique)
    source = SOURCE.set(Source.of(con))
    try:
        return _dispatch(con, query, project)
    finally:
        SOURCE.reset(source)
        UNIQUE.reset(token)


def _dispatch(con: duckdb.DuckDBPyConnection, query: Query, project: str) -> Any:
    if isinstance(query, TrendsQuery):
        return _trends(con, query, project)
    if isinstance(query, FunnelQuery):
        return funnel(con, query, project)
    if isinstance(query, RetentionQuery):
        return _retention(con, query, project)
    if isinstance(query, PathsQuery):
        return _paths(con, query, project)
    if isinstance(query, StickinessQuery):
        return _stickiness(con, query, project)
    return _lifecycle(con, query, project)


# -- trends ----------------------------------------------------------------------------


def _aggregate(series_math: str, sql: Sql) -> str:
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


def _measured(series: Series, sql: Sql) -> str:
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
        sql = Sql()
        base = sql.base(q, project, persons=series.math == "unique_users")
        bucket = sql.bucket(q.interval, q.timezone)
        where = f"ts >= {sql.p(start)} AND ts < {sql.p(end)} AND {sql.spec(series)}"
        x = _measured(series, sql)
        agg = _aggregate(series.math, sql)
        # rows grouped by bucket (a TIMESTAMP; its label is written per group, not per event)
        if q.breakdown is None:
            text = (
                f"WITH {base}, m AS (SELECT {bucket} AS bt, {x} AS x FROM ev WHERE {where}) "
                f"SELECT 1, NULL, strftime(bt, {LABEL}), {agg} FROM m GROUP BY bt"
            )
        elif series.math == "total":
            # counts add up: count per (bucket, the value's JSON text), read each text
            # as its value once (values from texts such as '"12"' and '12' are one:
            # add those up again), then rank and group the counts
            bj = sql.breakdown_json(q.breakdown)
            text = (
                f"WITH {base}, m AS (SELECT {bucket} AS bt, {bj} AS bj FROM ev WHERE {where}), "
                f"c AS MATERIALIZED (SELECT bt, {sql.breakdown_of('bj')} AS bv, sum(n) AS n "
                "FROM (SELECT bt, bj, count(*) AS n FROM m GROUP BY bt, bj) GROUP BY bt, bv), "
                + ranked_groups("c", "sum(n)", q.breakdown.limit, sql)
                + f", g AS ({grouped('c', sql)}) "
                f"SELECT r, grp, strftime(bt, {LABEL}), sum(n) FROM g GROUP BY r, grp, bt"
            )
        else:
            bv = sql.breakdown(q.breakdown)
            text = (
                f"WITH {base}, m AS MATERIALIZED (SELECT {bucket} AS bt, {bv} AS bv, {x} AS x "
                f"FROM ev WHERE {where}), "
                + ranked_groups("m", "count(*)", q.breakdown.limit, sql)
                + f", g AS ({grouped('m', sql)}) "
                f"SELECT r, grp, strftime(bt, {LABEL}), {agg} FROM g GROUP BY r, grp, bt"
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


# -- retention, paths, lifecycle -------------------------------------------------------


#: UTC buckets of a fixed length: (length, shift) in ms, a bucket starting where
#: ``(t + shift) % length == 0`` (weeks start on Monday: 1970-01-01 was a Thursday)
_FIXED_MS: Final = {"day": (86_400_000, 0), "week": (604_800_000, 3 * 86_400_000)}


def _retention(con: duckdb.DuckDBPyConnection, q: RetentionQuery, project: str) -> RetentionResult:
    start, end = q.range_ms()
    labels = bucket_labels(start, end, q.period, zoneinfo.ZoneInfo(q.timezone))
    sql = Sql()
    bucket = sql.bucket(q.period, q.timezone)
    diff = {
        "day": "date_diff('day', c.bt, r.bt)",
        "week": "date_diff('day', c.bt, r.bt) // 7",
        "month": "date_diff('month', c.bt, r.bt)",
    }[q.period]
    label = f"strftime({{bt}}, {LABEL})"
    if q.timezone == "UTC" and q.period in _FIXED_MS:
        # UTC days and weeks are fixed lengths: bucket by an integer counted from
        # the bucket that holds ``start`` (every event read is at or after it, so
        # ``//`` rounds down), made a timestamp only for the labels (the events'
        # grouping ~10 % faster than by timestamps)
        size, shift = _FIXED_MS[q.period]
        base = (start + shift) // size * size - shift
        bucket = f"((ts - {int(base)}) // {size})"
        diff = "r.bt - c.bt"
        label = f"strftime(epoch_ms({int(base)} + {{bt}} * {size}), {LABEL})"
    # one pass over the events: the buckets each id (hashed) was active in, by what
    # it did there; ids become persons on those few rows, not on every event
    text = (
        f"WITH {sql.base(q, project, persons=False, id_hash=True)}, "
        f"e AS (SELECT {sql.id_hash()} AS id, "
        f"{bucket} AS bt, {sql.spec(q.target)} AS mt, {sql.spec(q.returning)} AS mr FROM ev "
        f"WHERE id IS NOT NULL AND ts >= {sql.p(start)} AND ts < {sql.p(end)}), "
        "ids AS (SELECT id, bt, bool_or(mt) AS mt, bool_or(mr) AS mr FROM e "
        "WHERE mt OR mr GROUP BY id, bt), "
        f"act AS MATERIALIZED (SELECT actor, bt, bool_or(mt) AS mt, bool_or(mr) AS mr "
        f"FROM ({sql.persons_of('ids', hashed=True)}) GROUP BY actor, bt), "
        # day, week and month buckets never go back in time, so the first event's
        # bucket is the smallest
        "c AS (SELECT actor, min(bt) AS bt FROM act WHERE mt GROUP BY actor), "
        "r AS (SELECT actor, bt FROM act WHERE mr) "
        # period 0 is the cohort's size
        f"SELECT {label.format(bt='bt')}, 0, count(*) FROM c GROUP BY 1 UNION ALL "
        f"SELECT {label.format(bt='c.bt')}, {diff}, count(DISTINCT c.actor) FROM c "
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
    sql = Sql()
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
    sql = Sql()
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
        f"SELECT strftime(b, {LABEL}), kind, count(*) FROM "
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
    sql = Sql()
    text = (
        f"WITH {sql.base(q, project)}, per AS (SELECT actor, "
        f"count(DISTINCT {sql.bucket(q.interval, q.timezone)}) AS k FROM ev "
        f"WHERE actor IS NOT NULL AND ts >= {sql.p(start)} AND ts < {sql.p(end)} "
        f"AND {sql.spec(q.event)} GROUP BY actor) SELECT k, count(*) FROM per GROUP BY k"
    )
    got = dict(con.execute(text, sql.params).fetchall())
    return StickinessResult(actors=[got.get(k, 0) for k in range(1, n + 1)])
