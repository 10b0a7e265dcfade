"""Funnels in DuckDB: each actor's best attempt without sorting most actors.

The semantics are ``_reference``'s (the earliest attempt reaching the most steps);
``funnel`` explains how it is found at 10M events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from innkt_analytics.server.insights._model import FunnelBreakdownResult, FunnelQuery, FunnelResult
from innkt_analytics.server.insights._reference import funnel_steps
from innkt_analytics.server.insights._sql import Sql, grouped, ranked_groups

__all__ = ["funnel"]


def funnel(con: duckdb.DuckDBPyConnection, q: FunnelQuery, project: str) -> FunnelResult:
    """Each actor's best attempt (per breakdown value), into ``funnel_best``.

    Only events of some step matter. The earliest attempt that reaches the last step
    is the best one, so each actor's earliest attempt is first followed with joins
    and minimums, no sort (step k: the earliest step-k event after step k-1's within
    the window), by time alone, without reading event ids (a column as costly to
    read as all the others): exact when step k-1's event is the only event of steps
    k-1 and k at its millisecond, at every step. The other actors (whose earliest
    attempt falls short, or with such a tie) are sequenced: their events sorted once
    per actor by ``(ts, event_id)``, and per event "the chain from the next step-k
    event" is a window function over the rows after it, one pass per step from the
    last back to the second; each step-1 event is an attempt, the window only cuts
    its chain short. The best is an ``arg_min`` of (most steps, earliest) per actor
    and value, in a temporary table that the overall answer, the breakdown and the
    dropped page all read.
    """
    start, end = q.range_ms()
    n = len(q.steps)
    sql = Sql()
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
        f"AND count(*) OVER (PARTITION BY a, t0) = 1 AS done FROM f{n - 1}"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE funnel_first AS {text}", sql.used(text))
    try:
        # the others in (ts, event_id) order: one scan, as the id column costs as
        # much to read for some rows as for all
        _funnel_best(con, sql, steps("event_id, ", range(n), each_type=False), n, window)
    finally:
        con.execute("DROP TABLE funnel_first")
    try:
        return _funnel_answer(con, q, n)
    finally:
        con.execute("DROP TABLE funnel_best")


def _funnel_best(con: duckdb.DuckDBPyConnection, sql: Sql, e: str, n: int, window: str) -> None:
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
        page, sql = q.dropped, Sql()
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
        sql = Sql()
        by_value = (
            ranked_groups("funnel_best", "count(*)", q.breakdown.limit, sql)
            + f", g AS ({grouped('funnel_best', sql)}), "
            "best AS (SELECT a, r, any_value(grp) AS grp, arg_min(s, score) AS s "
            "FROM g GROUP BY a, r)"
        )
        result.breakdown = [
            FunnelBreakdownResult(breakdown_value=r[1], steps=steps(r))
            for r in con.execute(f"WITH {by_value} {aggregate}", sql.params).fetchall()
        ]
    return result
