"""Funnels in DuckDB: each actor's best attempt without sorting most actors.

The semantics are ``_reference``'s (the earliest attempt reaching the most steps);
``funnel`` explains how it is found at 10M events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from innkt_analytics.server.insights._model import (
    EventSpec,
    FunnelBreakdownResult,
    FunnelQuery,
    FunnelResult,
)
from innkt_analytics.server.insights._reference import funnel_steps
from innkt_analytics.server.insights._sql import Sql, grouped, ranked_groups

__all__ = ["funnel"]


def funnel(con: duckdb.DuckDBPyConnection, q: FunnelQuery, project: str) -> FunnelResult:
    """Each actor's best attempt (per breakdown value), into ``funnel_best``.

    Only events of some step matter. Each gets a *key*, ``ts * 2^n`` plus its rank
    among the step sets an event can match, so that the keys order an actor's events
    as ``_reference`` does, with no event id read (a column as costly to read as all
    the others together). Events with equal keys match the same steps: which comes
    first changes no answer.

    The earliest attempt that reaches the last step is the best one, so each actor's
    earliest attempt is first followed with joins and minimums, no sort (step k: the
    smallest step-k key after step k-1's within the window): exact unless another
    step-k event has step k-1's key. The other actors (whose earliest attempt falls
    short, or with such a tie) are sequenced: their events sorted once per actor by
    key, and per event "the chain from the next step-k event" is a window function over
    the rows after it, one pass per step from the last back to the second; each step-1
    event is an attempt, the window only cuts its chain short. The best is an
    ``arg_min`` of (most steps, earliest keys) per actor and value, in a temporary
    table that the overall answer, the breakdown and the dropped page all read.

    Actors are DuckDB's 64-bit hashes of their ids (``_actors``: grouping and joining
    integers instead of strings; a storage's segments hold the ids' hashes) unless the
    answer names them (a dropped page) or they are sessions. Two actors whose ids hash
    alike would count as one: a chance of about n^2 / 2^65 for n actors, as retention.
    """
    start, end = q.range_ms()
    n = len(q.steps)
    sql = Sql()
    flags = ", ".join(f"{sql.spec(s)} AS m{k}" for k, s in enumerate(q.steps))
    bv = sql.breakdown(q.breakdown) if q.breakdown else "NULL"
    window = sql.p(q.window_seconds * 1000)
    ev, actor = _actors(sql, q, project)
    rows = f"{actor} IS NOT NULL AND ts >= {sql.p(start)} AND ts < {sql.p(end)}"
    ms = ", ".join(f"m{k}" for k in range(n))
    # step 1 the highest bit: an event matching more, or earlier, steps comes first
    mask = " + ".join(f"m{k}::BIGINT * {1 << (n - 1 - k)}" for k in range(n))
    key = f"ts * {1 << n} + {(1 << n) - 1} - ({mask})"

    def typed_flags(t: str) -> str:
        # the flags of events of type ``t``: no string compared per event (with no
        # filters, a constant)
        def flag(s: EventSpec) -> str:
            if s.event is None:
                return sql.spec(s)
            return sql.filters(s.filters) if s.event == t else "false"

        return ", ".join(f"{flag(s)} AS m{k}" for k, s in enumerate(q.steps))

    def steps(of: Sequence[int], each_type: bool = True) -> str:
        # the events of steps ``of``, as text rather than a CTE: DuckDB keeps a CTE
        # read several times as one result, which at 10M events is more than the
        # memory limit (spilled to disk), where a scan per use reads only what its
        # filters select. One scan per event type when each of those steps names one:
        # DuckDB reads the other columns of only the rows an equality on the type
        # selects (an IN or OR is checked after reading every row)
        types = {q.steps[k].event for k in of}
        each = [None] if None in types or not each_type else sorted(types)  # type: ignore[type-var]  # no None
        scans = " UNION ALL ".join(
            f"SELECT *, {actor} AS a, {flags if t is None else typed_flags(t)} FROM ({ev}) ev "
            f"WHERE {rows}" + ("" if t is None else f" AND event_type = {sql.p(t)}")
            for t in each
        )
        # the breakdown value of step-1 events only: the JSON of no other is read
        return (
            f"(SELECT a, {key} AS k, {ms}, CASE WHEN m0 THEN {bv} END AS bv "
            f"FROM ({scans}) e0 WHERE {' OR '.join(f'm{k}' for k in of)})"
        )

    # the window in keys: a step's key is at most ``last`` (its time at most t0 + window)
    last = f"((k0 >> {n}) + {window} + 1) * {1 << n} - 1"
    text = (
        f"WITH f0 AS (SELECT a, bv, k0, {last} AS last FROM (SELECT a, bv, min(k) AS k0 "
        f"FROM {steps([0])} e WHERE m0 GROUP BY a, bv))"
    )
    keys = ["f.a", "f.bv", "f.k0", "f.last"]
    for k in range(1, n):
        # step k of the chain, and whether another step-k event has step k-1's key
        # (then which comes first is not known here; it changes no answer, but the
        # chain would have to count the events of that key)
        text += (
            f", f{k} AS (SELECT f.*, min(e.k) FILTER (WHERE e.k > f.k{k - 1}) AS k{k}, "
            f"count(*) FILTER (WHERE e.k = f.k{k - 1}) > 1 AS tie{k} "
            f"FROM f{k - 1} f LEFT JOIN {steps([k])} e ON e.a = f.a "
            f"AND e.k >= f.k{k - 1} AND e.k <= f.last AND e.m{k} "
            f"GROUP BY {', '.join(keys)})"
        )
        keys += [f"f.k{k}", f"f.tie{k}"]
    ties = " OR ".join(f"coalesce(tie{k}, false)" for k in range(1, n))
    text += (
        # done: the earliest attempt reached the last step with no tie on the way;
        # an actor's values whose earliest attempts have the same key go the other way
        f" SELECT *, k{n - 1} IS NOT NULL AND NOT ({ties}) "
        f"AND count(*) OVER (PARTITION BY a, k0) = 1 AS done FROM f{n - 1}"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE funnel_first AS {text}", sql.used(text))
    try:
        # the others: one scan of every step's events, of their actors only
        _funnel_best(con, sql, steps(range(n), each_type=False), n, window)
    finally:
        con.execute("DROP TABLE funnel_first")
    try:
        return _funnel_answer(con, q, n)
    finally:
        con.execute("DROP TABLE funnel_best")


def _actors(sql: Sql, q: FunnelQuery, project: str) -> tuple[str, str]:
    """The funnel's events and the SQL of each one's actor (``a``): a session id, the
    person's id when the answer names actors (a dropped page), else the hash of it."""
    if q.count_by == "session":
        return sql.events(q, project, persons=False), "session_id"
    if q.dropped is not None:
        return sql.events(q, project), "actor"
    ev = sql.events(q, project, persons=False, id_hash=True)
    if not sql.source.stored:
        # an Arrow table's ids are persons already; hash(NULL) is a number
        return ev, f"CASE WHEN id IS NULL THEN NULL ELSE {sql.id_hash()} END"
    # a storage's rows: ``id_hash`` is the stored hash of ``id``, NULL without one (so
    # the ids themselves, two string columns, are not read)
    if not sql.source.mapped:
        return ev, "id_hash"
    # the hashed ids to their persons' hashes, as retention maps them
    hashed = f"(SELECT * EXCLUDE (id, actor), id_hash AS id FROM ({ev}))"
    return sql.persons_of(hashed, hashed=True), "actor"


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
        # c{k}: the keys of the chain from the next step-k event (k{k} .. k{n-1})
        fields = ", ".join([f"'k{k}': k", *(f"'k{j}': c{k + 1}.k{j}" for j in range(k + 1, n))])
        # the first pass orders by (key, step-1 value) and numbers the rows; the
        # others order by that number
        order = "k, bv NULLS FIRST" if k == n - 1 else "o"
        number = f", row_number() OVER (PARTITION BY a ORDER BY {order}) AS o" if k == n - 1 else ""
        text += (
            f", l{k} AS (SELECT *{number}, first_value(CASE WHEN m{k} THEN {{{fields}}} END "
            f"IGNORE NULLS) OVER (PARTITION BY a ORDER BY {order} {after}) AS c{k} "
            f"FROM {prev})"
        )
        prev = f"l{k}"
    chain = ", ".join(f"c1.k{k} AS k{k}" for k in range(1, n))
    depth = " + ".join(
        [
            "1",
            *(
                f"coalesce((k{k} >> {n}) - (k0 >> {n}) <= {window}, false)::INT"
                for k in range(1, n)
            ),
        ]
    )
    text += (
        f", att AS (SELECT a, bv, k AS k0, {chain} FROM l1 WHERE m0), "
        f"scored AS (SELECT a, bv, depth, k0, "
        + ", ".join(f"CASE WHEN depth > {k} THEN k{k} END AS k{k}" for k in range(1, n))
        + f" FROM (SELECT *, {depth} AS depth FROM att) "
        f"UNION ALL SELECT a, bv, {n}, k0, {', '.join(f'k{k}' for k in range(1, n))} "
        "FROM funnel_first WHERE a NOT IN (SELECT a FROM open)) "
        f"SELECT a, bv, arg_min(s, score) AS s, min(score) AS score FROM ({_scored(n)}) "
        "GROUP BY a, bv"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE funnel_best AS {text}", sql.used(text))


def _scored(n: int) -> str:
    """``scored``'s attempts as ``s`` (steps reached, their times) and ``score``, the
    smallest for the best: the most steps, then the earliest in the funnel's order
    (step 1's key and value, then the chain's keys: of two attempts with the same
    step-1 key and value the one first in order has the earlier chain)."""
    last = 2**63 - 1  # a step not reached: after every key
    times = ", ".join(["'depth': depth", *(f"'t{k}': k{k} >> {n}" for k in range(n))])
    score = ", ".join(
        [
            "'d': -depth",
            "'k0': k0",
            "'b': bv IS NOT NULL",
            "'v': coalesce(bv, '')",
            *(f"'k{k}': coalesce(k{k}, {last})" for k in range(1, n)),
        ]
    )
    return f"SELECT a, bv, {{{times}}} AS s, {{{score}}} AS score FROM scored"


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
