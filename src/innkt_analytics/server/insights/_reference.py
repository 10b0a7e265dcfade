"""The oracle: every insights query in plain Python over a list of ``InsightEvent``.

Written to be obviously correct, not fast; the DuckDB engine must give the same
answers (tests/test_insights_engine.py). The semantics, shared by both:

* **Input.** Only the query's project. Two records with the same ``event_id`` are one
  event (the first in the list is kept). Events are ordered by ``(timestamp,
  event_id)``; "before"/"after" always mean this order. Only events in
  ``[dateFrom, dateTo)`` that pass the query's top-level ``filters`` are read, except
  by lifecycle (see there). An event's *id* is ``user_id`` or else ``anonymous_id``;
  its *actor* is, with ``countBy: person`` (the default), the id's person: the value
  of the id in the ``persons`` mapping, or the id itself when it is not a key (an id
  the identity graph joins to no other); with ``countBy: id``, the id
  (``session_id`` for a funnel with ``countBy: session``). Events without one do not
  count for per-actor answers.
* **Filters.** A value is *set* when its key is present and not JSON null. ``eq``: set
  and equal with the same JSON type (numbers compare as floats, booleans only to
  booleans, objects and arrays never); ``neq``: not ``eq`` (so an unset value passes);
  ``in``: ``eq`` to one of the values; ``contains``: a string containing the value
  (case-sensitive); ``gt``/``gte``/``lt``/``lte``: a number (not a boolean) compared.
* **Numbers.** A numeric math reads the property when it is a number (not a boolean)
  and ignores the event otherwise; ``sum`` of nothing is 0, the others are null.
  Percentiles are nearest-rank: the ``ceil(q * n)``-th smallest value.
* **Breakdown.** The value is the string, or the JSON text of another value, or null
  when unset; the ``limit`` values with the most events (trends) or entering actors
  (funnels), ties by value, keep their name and the rest become ``$other``.
* **Trends.** Per bucket of ``interval`` (wall-clock in ``timezone``, see
  ``bucket_labels``): ``total`` events, distinct actors (``unique_users``), distinct
  sessions, or the numeric math. ``compare`` runs the same series over
  ``[dateFrom - L, dateFrom)``, L the range's length.
* **Funnels.** An actor's events are ordered by time, and those of the same
  millisecond by the steps they match, not by id: of two such events, the one that
  matches the first step one of them matches and the other does not comes first (then
  events of the first step by their breakdown value, null first). For each of its
  step-1 events an *attempt* takes, for step k, the first event after step k-1's
  event in this order that matches step k and is at most ``windowSeconds`` after the
  step-1 event (the earliest choice never loses a later step). The actor's attempt is
  the one reaching the most steps, then the earliest in this order.
  A step's ``count`` is the actors whose attempt reached it; times to convert are from
  the previous step's event, median and p90 nearest-rank, in seconds. ``dropped``
  lists the ids of the actors whose attempt reached step ``step - 1`` and not
  ``step``, in id (code point) order, a page of ``limit`` after ``after``. With a
  breakdown the value is the step-1 event's, and attempts are grouped by it.
* **Retention.** An actor's cohort is the bucket (``period``) of its first ``target``
  event in the range. ``values[0]`` is the cohort's size; ``values[i]`` the cohort's
  actors with a ``returning`` event in the i-th period after. Periods that start after
  the range's last bucket are absent (the triangle).
* **Paths.** From each actor's first ``start`` event, the next (or previous) ``steps``
  events of any type; an edge ``s-1:a -> s:b`` counts the actors going from a to b at
  depth s.
* **Lifecycle** (PostHog's definitions). Activity is judged per whole bucket, over all
  the actor's matching events before ``dateTo`` (history included). In a bucket an
  active actor is *new* when it is its first active bucket ever, *returning* when it
  was active in the previous bucket, else *resurrecting*; an actor active in the
  previous bucket and not in this one is *dormant* (negative).
* **Stickiness.** For k = 1 … the number of buckets of the range, the actors whose
  matching events in the range fall in exactly k distinct buckets.
"""

from __future__ import annotations

import math
import zoneinfo
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from fractions import Fraction
from typing import Any, Final, TypeGuard

import msgspec

from innkt_analytics.server.insights._events import (
    InsightEvent,
    bucket_labels,
    label,
    local,
    shift,
    truncate,
)
from innkt_analytics.server.insights._model import (
    Breakdown,
    EventSpec,
    FunnelBreakdownResult,
    FunnelQuery,
    FunnelResult,
    FunnelStepResult,
    LifecycleQuery,
    LifecycleResult,
    PathEdge,
    PathsQuery,
    PathsResult,
    PropertyFilter,
    Query,
    RetentionCohort,
    RetentionQuery,
    RetentionResult,
    SeriesResult,
    StickinessQuery,
    StickinessResult,
    TrendsQuery,
    TrendsResult,
    counts_persons,
)

__all__ = ["QUANTILES", "funnel_steps", "nearest_rank", "run_reference"]

QUANTILES: Final = {
    "median": Fraction(1, 2),
    "p90": Fraction(9, 10),
    "p95": Fraction(19, 20),
    "p99": Fraction(99, 100),
}
OTHER: Final = "$other"


def run_reference(
    query: Query,
    events: Iterable[InsightEvent],
    project: str,
    persons: Mapping[str, str] | None = None,
) -> Any:
    """The answer to ``query`` over ``events`` of ``project`` (see the module's docstring).

    ``persons`` maps ids to their persons (None: every id is its own person).
    """
    seen: set[str] = set()
    mine: list[InsightEvent] = []
    by_person = persons is not None and counts_persons(query)
    for e in events:
        if e.project == project and e.event_id not in seen:
            seen.add(e.event_id)
            if by_person and persons is not None and e.actor is not None:
                e = replace(e, person=persons.get(e.actor, e.actor))
            mine.append(e)
    mine.sort(key=lambda e: (e.timestamp, e.event_id))
    base = [e for e in mine if all(_match(f, e) for f in query.filters)]
    zone = zoneinfo.ZoneInfo(query.timezone)
    start, end = query.range_ms()
    if isinstance(query, LifecycleQuery):
        return _lifecycle(query, [e for e in base if e.timestamp < end], zone, start, end)
    in_range = [e for e in base if start <= e.timestamp < end]
    if isinstance(query, TrendsQuery):
        return _trends(query, base, zone, start, end)
    if isinstance(query, FunnelQuery):
        return _funnel(query, in_range)
    if isinstance(query, RetentionQuery):
        return _retention(query, in_range, zone, start, end)
    if isinstance(query, StickinessQuery):
        return _stickiness(query, in_range, zone, start, end)
    return _paths(query, in_range)


# -- values and filters ----------------------------------------------------------------


def _source(e: InsightEvent, source: str) -> dict[str, Any]:
    return (
        e.properties if source == "properties" else e.context if source == "context" else e.device
    )


def _is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _eq(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(b, str):
        return isinstance(a, str) and a == b
    return _is_number(a) and _is_number(b) and float(a) == float(b)


def _match(f: PropertyFilter, e: InsightEvent) -> bool:
    values = _source(e, f.source)
    v = values.get(f.key)
    present = v is not None
    if f.op == "is_set":
        return present
    if f.op == "is_not_set":
        return not present
    if f.op == "eq":
        return present and _eq(v, f.value)
    if f.op == "neq":
        return not (present and _eq(v, f.value))
    if f.op == "in":
        assert isinstance(f.value, list)
        return present and any(_eq(v, x) for x in f.value)
    if f.op == "contains":
        return isinstance(v, str) and isinstance(f.value, str) and f.value in v
    if not (_is_number(v) and _is_number(f.value)):
        return False
    x, y = float(v), float(f.value)
    return {"gt": x > y, "gte": x >= y, "lt": x < y, "lte": x <= y}[f.op]


def _spec(spec: EventSpec) -> Callable[[InsightEvent], bool]:
    def matches(e: InsightEvent) -> bool:
        return (spec.event is None or e.event_type == spec.event) and all(
            _match(f, e) for f in spec.filters
        )

    return matches


def _breakdown_value(e: InsightEvent, b: Breakdown) -> str | None:
    v = _source(e, b.source).get(b.property)
    if v is None:
        return None
    return v if isinstance(v, str) else msgspec.json.encode(v).decode()


def _top(counts: dict[str | None, int], limit: int) -> dict[str | None, str | None]:
    """Each value's group: itself for the ``limit`` biggest, ``$other`` for the rest."""
    ranked = sorted(counts, key=lambda v: (-counts[v], v is None, v or ""))
    return {v: (v if i < limit else OTHER) for i, v in enumerate(ranked)}


def nearest_rank(values: Sequence[float], q: Fraction) -> float | None:
    """The ``ceil(q * n)``-th smallest value (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- trends ----------------------------------------------------------------------------


def _math(math_name: str, group: list[InsightEvent], prop: str | None, source: str) -> Any:
    if math_name == "total":
        return len(group)
    if math_name == "unique_users":
        return len({e.actor for e in group if e.actor is not None})
    if math_name == "unique_sessions":
        return len({e.session_id for e in group if e.session_id is not None})
    assert prop is not None
    values = (_source(e, source).get(prop) for e in group)
    nums = [float(v) for v in values if _is_number(v)]
    if math_name == "sum":
        return math.fsum(nums)
    if not nums:
        return None
    if math_name == "avg":
        return math.fsum(nums) / len(nums)
    if math_name == "min":
        return min(nums)
    if math_name == "max":
        return max(nums)
    return nearest_rank(nums, QUANTILES[math_name])


def _trends_range(
    q: TrendsQuery, base: list[InsightEvent], zone: zoneinfo.ZoneInfo, start: int, end: int
) -> tuple[list[str], list[SeriesResult]]:
    labels = bucket_labels(start, end, q.interval, zone)
    events = [e for e in base if start <= e.timestamp < end]
    out = []
    for index, series in enumerate(q.series):
        matching = [e for e in events if _spec(series)(e)]
        groups: dict[str | None, list[InsightEvent]] = defaultdict(list)
        if q.breakdown is None:
            groups[None] = matching
        else:
            counts: dict[str | None, int] = defaultdict(int)
            for e in matching:
                counts[_breakdown_value(e, q.breakdown)] += 1
            top = _top(counts, q.breakdown.limit)
            # groups in rank order, $other last (the engine returns them so too)
            for value in top.values():
                groups.setdefault(value, [])
            for e in matching:
                groups[top[_breakdown_value(e, q.breakdown)]].append(e)
        for value, group in groups.items():
            by_bucket: dict[str, list[InsightEvent]] = defaultdict(list)
            for e in group:
                by_bucket[label(truncate(local(e.timestamp, zone), q.interval))].append(e)
            values = [
                _math(series.math, by_bucket[b], series.math_property, series.math_source)
                for b in labels
            ]
            out.append(SeriesResult(index=index, breakdown_value=value, values=values))
    return labels, out


def _trends(
    q: TrendsQuery, base: list[InsightEvent], zone: zoneinfo.ZoneInfo, start: int, end: int
) -> TrendsResult:
    labels, series = _trends_range(q, base, zone, start, end)
    result = TrendsResult(buckets=labels, series=series)
    if q.compare:
        result.previous_buckets, result.previous = _trends_range(
            q, base, zone, start - (end - start), start
        )
    return result


# -- funnels ---------------------------------------------------------------------------


def funnel_steps(counts: list[int], times: list[list[float]]) -> list[FunnelStepResult]:
    """Step results from each step's actor count and times to convert (seconds)."""
    out = []
    for k, count in enumerate(counts):
        prev = counts[k - 1] if k else count
        out.append(
            FunnelStepResult(
                count=count,
                conversion_rate=count / counts[0] if counts[0] else 0.0,
                step_conversion_rate=count / prev if prev else 0.0,
                dropped_off=prev - count,
                median_seconds=nearest_rank(times[k], QUANTILES["median"]),
                p90_seconds=nearest_rank(times[k], QUANTILES["p90"]),
            )
        )
    return out


def _funnel_order(q: FunnelQuery, seq: list[InsightEvent]) -> list[InsightEvent]:
    """One actor's events in the funnel's order (the module's docstring): events of the
    same millisecond are never ordered by their ids, so the funnel can be computed
    without reading them. Events that tie here match the same steps (and have the same
    breakdown value): which comes first changes no answer."""
    matchers = [_spec(s) for s in q.steps]
    n = len(matchers)

    def key(e: InsightEvent) -> tuple[int, int, bool, str]:
        # the steps matched as bits, step 1 the highest: more is earlier
        mask = sum(1 << (n - 1 - k) for k, m in enumerate(matchers) if m(e))
        bv = None
        if q.breakdown is not None and matchers[0](e):
            bv = _breakdown_value(e, q.breakdown)
        return (e.timestamp, -mask, bv is not None, bv or "")

    return sorted(seq, key=key)


def _attempts(q: FunnelQuery, seq: list[InsightEvent]) -> list[list[InsightEvent]]:
    """Every attempt of one actor: the events of the steps reached."""
    seq = _funnel_order(q, seq)
    matchers = [_spec(s) for s in q.steps]
    window = q.window_seconds * 1000
    attempts = []
    for i, first in enumerate(seq):
        if not matchers[0](first):
            continue
        reached, cur = [first], i
        for k in range(1, len(q.steps)):
            nxt = next(
                (
                    j
                    for j in range(cur + 1, len(seq))
                    if matchers[k](seq[j]) and seq[j].timestamp - first.timestamp <= window
                ),
                None,
            )
            if nxt is None:
                break
            reached.append(seq[nxt])
            cur = nxt
        attempts.append(reached)
    return attempts


def _funnel_of(q: FunnelQuery, best: list[list[InsightEvent]]) -> list[FunnelStepResult]:
    n = len(q.steps)
    counts = [sum(1 for a in best if len(a) > k) for k in range(n)]
    times: list[list[float]] = [[] for _ in range(n)]
    for a in best:
        for k in range(1, len(a)):
            times[k].append((a[k].timestamp - a[k - 1].timestamp) / 1000)
    return funnel_steps(counts, times)


def _best(attempts: list[list[InsightEvent]]) -> list[InsightEvent]:
    # the most steps, then the earliest first step (attempts are in event order)
    return max(attempts, key=lambda a: (len(a), -attempts.index(a)))


def _funnel(q: FunnelQuery, events: list[InsightEvent]) -> FunnelResult:
    by_actor: dict[str, list[InsightEvent]] = defaultdict(list)
    for e in events:
        key = e.session_id if q.count_by == "session" else e.actor
        if key is not None:
            by_actor[key].append(e)
    attempts = {a: att for a, seq in by_actor.items() if (att := _attempts(q, seq))}
    best = {a: _best(att) for a, att in attempts.items()}
    result = FunnelResult(steps=_funnel_of(q, list(best.values())))
    if q.dropped is not None:
        page = q.dropped
        ids = sorted(
            a
            for a, b in best.items()
            if len(b) == page.step - 1 and (page.after is None or a > page.after)
        )
        result.dropped = ids[: page.limit]
        result.dropped_next = ids[page.limit - 1] if len(ids) > page.limit else None
    if q.breakdown is not None:
        b = q.breakdown
        entering: dict[str | None, set[str]] = defaultdict(set)
        for actor, att in attempts.items():
            for a in att:
                entering[_breakdown_value(a[0], b)].add(actor)
        top = _top({v: len(s) for v, s in entering.items()}, b.limit)
        groups: dict[str | None, list[list[InsightEvent]]] = defaultdict(list)
        for att in attempts.values():
            per_group: dict[str | None, list[list[InsightEvent]]] = defaultdict(list)
            for a in att:
                per_group[top[_breakdown_value(a[0], b)]].append(a)
            for value, mine in per_group.items():
                groups[value].append(_best(mine))
        order = [v for v in dict.fromkeys(top.values())]
        result.breakdown = [
            FunnelBreakdownResult(breakdown_value=v, steps=_funnel_of(q, groups[v])) for v in order
        ]
    return result


# -- retention, paths, lifecycle -------------------------------------------------------


def _periods_between(a: str, b: str, period: str) -> int:
    import datetime as dt

    x, y = dt.datetime.fromisoformat(a), dt.datetime.fromisoformat(b)
    if period == "month":
        return (y.year * 12 + y.month) - (x.year * 12 + x.month)
    days = (y.date() - x.date()).days
    return days // 7 if period == "week" else days


def _retention(
    q: RetentionQuery, events: list[InsightEvent], zone: zoneinfo.ZoneInfo, start: int, end: int
) -> RetentionResult:
    labels = bucket_labels(start, end, q.period, zone)
    target, returning = _spec(q.target), _spec(q.returning)

    def bucket(e: InsightEvent) -> str:
        return label(truncate(local(e.timestamp, zone), q.period))

    cohort_of: dict[str, str] = {}
    for e in events:  # in order: the first target event sets the cohort
        if e.actor is not None and e.actor not in cohort_of and target(e):
            cohort_of[e.actor] = bucket(e)
    returned: dict[str, set[int]] = defaultdict(set)
    for e in events:
        if e.actor in cohort_of and returning(e):
            returned[e.actor].add(_periods_between(cohort_of[e.actor], bucket(e), q.period))
    cohorts = []
    for i, start_label in enumerate(labels):
        members = [a for a, c in cohort_of.items() if c == start_label]
        values = [len(members)]
        for p in range(1, min(q.periods, len(labels) - i)):
            values.append(sum(1 for a in members if p in returned[a]))
        cohorts.append(RetentionCohort(start=start_label, size=len(members), values=values))
    return RetentionResult(cohorts=cohorts)


def _paths(q: PathsQuery, events: list[InsightEvent]) -> PathsResult:
    by_actor: dict[str, list[InsightEvent]] = defaultdict(list)
    for e in events:
        if e.actor is not None:
            by_actor[e.actor].append(e)
    is_start = _spec(q.start)
    edges: dict[tuple[int, str, str], int] = defaultdict(int)
    starts = 0
    for seq in by_actor.values():
        i = next((i for i, e in enumerate(seq) if is_start(e)), None)
        if i is None:
            continue
        starts += 1
        if q.direction == "next":
            path = seq[i : i + q.steps + 1]
        else:
            path = seq[max(0, i - q.steps) : i + 1][::-1]
        for s in range(1, len(path)):
            src = f"{s - 1}:{path[s - 1].event_type}"
            edges[(s, src, f"{s}:{path[s].event_type}")] += 1
    ordered = sorted(edges.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1], kv[0][2]))
    return PathsResult(
        starts=starts,
        edges=[PathEdge(step=s, source=a, target=b, count=c) for (s, a, b), c in ordered],
    )


def _lifecycle(
    q: LifecycleQuery, events: list[InsightEvent], zone: zoneinfo.ZoneInfo, start: int, end: int
) -> LifecycleResult:
    import datetime as dt

    labels = bucket_labels(start, end, q.interval, zone)
    matches = _spec(q.event)
    active: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.actor is not None and matches(e):
            active[e.actor].add(label(truncate(local(e.timestamp, zone), q.interval)))
    out = LifecycleResult(buckets=labels, new=[], returning=[], resurrecting=[], dormant=[])
    for b in labels:
        prev = label(shift(dt.datetime.fromisoformat(b), q.interval, -1))
        new = returning = resurrecting = dormant = 0
        for buckets in active.values():
            if b in buckets:
                if min(buckets) == b:
                    new += 1
                elif prev in buckets:
                    returning += 1
                else:
                    resurrecting += 1
            elif prev in buckets:
                dormant -= 1
        out.new.append(new)
        out.returning.append(returning)
        out.resurrecting.append(resurrecting)
        out.dormant.append(dormant)
    return out


def _stickiness(
    q: StickinessQuery, events: list[InsightEvent], zone: zoneinfo.ZoneInfo, start: int, end: int
) -> StickinessResult:
    n = len(bucket_labels(start, end, q.interval, zone))
    matches = _spec(q.event)
    active: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.actor is not None and matches(e):
            active[e.actor].add(label(truncate(local(e.timestamp, zone), q.interval)))
    return StickinessResult(
        actors=[sum(1 for b in active.values() if len(b) == k) for k in range(1, n + 1)]
    )
