"""The DuckDB engine answers every insights query as the pure-Python reference does.

Event logs are generated with hypothesis: out-of-order (late) events, event ids reused
within a project (retries, and a retry carrying different content: the first stored
wins), two projects sharing event ids, events at the same millisecond, anonymous
events, events without actor or session; ranges in time zones with DST changes and
odd offsets (Asia/Kolkata +5:30, Pacific/Chatham +12:45/+13:45) inside the data.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from innkt_analytics.server.insights._engine import run
from innkt_analytics.server.insights._events import InsightEvent, to_arrow
from innkt_analytics.server.insights._model import MATHS, Query, QueryTooLarge, parse_query
from innkt_analytics.server.insights._reference import run_reference

# 2026-03-27T00:00Z: Europe's DST change (2026-03-29) falls inside the generated days
T0 = 1774569600000
MINUTE = 60_000
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]
TYPES = ["view", "signup", "buy", "share"]

property_values = st.fixed_dictionaries(
    {},
    optional={
        "plan": st.sampled_from(["free", "pro", "team", ""]),
        "amount": st.one_of(
            st.integers(-50, 500), st.floats(-100, 100, allow_nan=False).map(lambda x: round(x, 2))
        ),
        "n": st.integers(0, 3),
        "flag": st.booleans(),
        "nothing": st.none(),
        "url": st.sampled_from(["/a", "/a/b", "/pricing", "/A"]),
    },
)


@st.composite
def events(draw: st.DrawFn) -> InsightEvent:
    # a few hot timestamps make ties in time; the rest spread over five days
    ts = draw(
        st.one_of(
            st.sampled_from([T0 + 36 * 60 * MINUTE, T0 + 49 * 60 * MINUTE]),
            st.integers(-1440, 4 * 1440).map(lambda m: T0 + m * MINUTE),
        )
    )
    user = draw(st.sampled_from(["u1", "u2", "u3", "u4", "u5", None]))
    return InsightEvent(
        project=draw(st.sampled_from(["p", "p", "p", "q"])),
        event_id=f"e{draw(st.integers(0, 60))}",
        event_type=draw(st.sampled_from(TYPES)),
        timestamp=ts,
        user_id=user,
        anonymous_id=draw(st.sampled_from(["anon1", "anon2", None])) if user is None else None,
        session_id=draw(st.sampled_from(["s1", "s2", "s3", None])),
        properties=draw(property_values),
        context=draw(st.fixed_dictionaries({}, optional={"locale": st.sampled_from(["en", "fr"])})),
        device=draw(st.fixed_dictionaries({}, optional={"os": st.sampled_from(["ios", "web"])})),
    )


logs = st.lists(events(), min_size=20, max_size=80)

filters = st.sampled_from(
    [
        {"key": "plan", "op": "eq", "value": "pro"},
        {"key": "plan", "op": "neq", "value": "pro"},
        {"key": "plan", "op": "in", "value": ["free", "team", 3]},
        {"key": "url", "op": "contains", "value": "/a"},
        {"key": "amount", "op": "gt", "value": 10},
        {"key": "amount", "op": "lte", "value": 0.5},
        {"key": "amount", "op": "gte", "value": -3},
        {"key": "amount", "op": "lt", "value": 100},
        {"key": "n", "op": "eq", "value": 1.0},
        {"key": "flag", "op": "eq", "value": True},
        {"key": "flag", "op": "neq", "value": False},
        {"key": "nothing", "op": "is_set"},
        {"key": "amount", "op": "is_not_set"},
        {"key": "locale", "op": "eq", "value": "fr", "source": "context"},
        {"key": "os", "op": "is_set", "source": "device"},
    ]
)
# filters narrow a lot: half the specs have none, so later steps still match
filter_lists = st.one_of(st.just([]), st.lists(filters, max_size=2))
event_names = st.sampled_from([*TYPES, None])


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    return {"event": draw(event_names), "filters": draw(filter_lists)}


@st.composite
def ranges(draw: st.DrawFn) -> dict[str, Any]:
    start = dt.date(2026, 3, 25) + dt.timedelta(days=draw(st.integers(0, 4)))
    # (the events span 2026-03-26 to 03-31)
    end = start + dt.timedelta(days=draw(st.integers(1, 6)))
    frm = start.isoformat()
    if draw(st.booleans()):  # a time of day too, sometimes with an offset
        frm += "T" + draw(st.sampled_from(["06:30:00", "23:59:59.999", "00:00:00+02:00"]))
    return {
        "dateFrom": frm,
        "dateTo": end.isoformat(),
        "timezone": draw(st.sampled_from(ZONES)),
        "filters": draw(st.one_of(st.just([]), st.just([]), st.lists(filters, max_size=1))),
    }


breakdowns = st.one_of(
    st.none(),
    st.builds(
        lambda p, limit: {"property": p, "limit": limit},
        st.sampled_from(["plan", "n", "flag"]),
        st.integers(1, 3),
    ),
)


@st.composite
def trends(draw: st.DrawFn) -> dict[str, Any]:
    series = []
    for _ in range(draw(st.integers(1, 3))):
        s = draw(specs())
        s["math"] = draw(st.sampled_from(sorted(MATHS)))
        if s["math"] not in ("total", "unique_users", "unique_sessions"):
            s["mathProperty"] = "amount"
        series.append(s)
    query = draw(ranges())
    query["interval"] = draw(st.sampled_from(["minute", "hour", "day", "week", "month"]))
    if query["interval"] == "minute":  # at most 1,500 buckets: one day
        start = dt.date.fromisoformat(query["dateFrom"][:10])
        query["dateFrom"], query["dateTo"] = str(start), str(start + dt.timedelta(days=1))
    query |= {"series": series, "breakdown": draw(breakdowns), "compare": draw(st.booleans())}
    return query


@st.composite
def funnels(draw: st.DrawFn) -> dict[str, Any]:
    steps = draw(st.lists(specs(), min_size=2, max_size=4))
    return draw(ranges()) | {
        "steps": steps,
        "windowSeconds": draw(st.sampled_from([60, 7200, 86400, 14 * 86400, 14 * 86400])),
        "countBy": draw(st.sampled_from(["user", "session"])),
        "breakdown": draw(breakdowns),
        "dropped": draw(
            st.one_of(
                st.none(),
                st.builds(
                    lambda step, limit, after: {"step": step, "limit": limit, "after": after},
                    st.integers(2, len(steps)),
                    st.integers(1, 3),
                    st.sampled_from([None, "anon1", "s2", "u2"]),
                ),
            )
        ),
    }


@st.composite
def retention(draw: st.DrawFn) -> dict[str, Any]:
    return draw(ranges()) | {
        "target": draw(specs()),
        "returning": draw(specs()),
        "period": draw(st.sampled_from(["day", "week", "month"])),
        "periods": draw(st.integers(1, 8)),
    }


@st.composite
def paths(draw: st.DrawFn) -> dict[str, Any]:
    return draw(ranges()) | {
        "start": draw(specs()),
        "direction": draw(st.sampled_from(["next", "previous"])),
        "steps": draw(st.integers(1, 4)),
    }


@st.composite
def lifecycle(draw: st.DrawFn) -> dict[str, Any]:
    return draw(ranges()) | {
        "event": draw(specs()),
        "interval": draw(st.sampled_from(["hour", "day", "week", "month"])),
    }


def close(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 relative (sums are added in another order)."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(close, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return bool(a == b)


def check(kind: str, body: dict[str, Any], log: list[InsightEvent]) -> None:
    query: Query = parse_query(kind, msgspec.json.encode(body))
    expected = msgspec.to_builtins(run_reference(query, log, "p"))
    got = msgspec.to_builtins(run(query, to_arrow(log), "p"))
    assert close(got, expected), f"\nengine:    {got}\nreference: {expected}"


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(logs, trends())
def test_trends(log: list[InsightEvent], body: dict[str, Any]) -> None:
    check("trends", body, log)


@SETTINGS
@given(logs, funnels())
def test_funnels(log: list[InsightEvent], body: dict[str, Any]) -> None:
    check("funnels", body, log)


@SETTINGS
@given(logs, retention())
def test_retention(log: list[InsightEvent], body: dict[str, Any]) -> None:
    check("retention", body, log)


@SETTINGS
@given(logs, paths())
def test_paths(log: list[InsightEvent], body: dict[str, Any]) -> None:
    check("paths", body, log)


@SETTINGS
@given(logs, lifecycle())
def test_stickiness(log: list[InsightEvent], body: dict[str, Any]) -> None:
    check("stickiness", body, log)


@SETTINGS
@given(logs, lifecycle())
def test_lifecycle(log: list[InsightEvent], body: dict[str, Any]) -> None:
    check("lifecycle", body, log)


@pytest.mark.parametrize(
    "kind", ["trends", "funnels", "retention", "paths", "lifecycle", "stickiness"]
)
def test_empty_log(kind: str) -> None:
    """No events at all: zero-filled answers, the same from both."""
    body: dict[str, Any] = {"dateFrom": "2026-03-01", "dateTo": "2026-03-03"}
    body |= {
        "trends": {"series": [{"math": "avg", "mathProperty": "amount"}, {}]},
        "funnels": {"steps": [{}, {}]},
        "paths": {"start": {}},
    }.get(kind, {})
    check(kind, body, [])


def test_memory_limit_is_a_clear_error() -> None:
    """Past its memory limit the engine raises QueryTooLarge (the route's 422)."""
    log = [InsightEvent("p", f"e{i}", "view", T0 + i * 1000, f"u{i % 50}") for i in range(50_000)]
    body = {"dateFrom": "2026-03-01", "dateTo": "2026-04-30", "start": {}}
    query = parse_query("paths", msgspec.json.encode(body))
    with pytest.raises(QueryTooLarge, match="more than 1MB of memory"):
        run(query, to_arrow(log), "p", memory_limit="1MB")
    assert run(query, to_arrow(log), "p").starts == 50
