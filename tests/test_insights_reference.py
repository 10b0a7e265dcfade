"""Hand-computed answers of the reference implementation: these pin the semantics.

Each case is small enough to check by reading it; the engine is then held to the
reference by tests/test_insights_engine.py. Every case also runs through the engine.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from innkt_analytics.server.insights import InsightEvent, parse_query, run, run_reference, to_arrow

H = 3_600_000
M = 60_000
DAY = 24 * H
T0 = 1772323200000  # 2026-03-01T00:00:00Z, a Sunday


def ev(eid: str, etype: str, t: int, user: str | None = "u1", **kw: Any) -> InsightEvent:
    return InsightEvent(project=kw.pop("project", "p"), event_id=eid, event_type=etype,
                        timestamp=t, user_id=user, **kw)  # fmt: skip


def answer(kind: str, body: dict[str, Any], events: list[InsightEvent]) -> Any:
    query = parse_query(kind, msgspec.json.encode(body))
    ref = msgspec.to_builtins(run_reference(query, events, "p"))
    assert msgspec.to_builtins(run(query, to_arrow(events), "p")) == ref
    return ref


MARCH = {"dateFrom": "2026-03-01", "dateTo": "2026-03-04"}


def test_trends_counts_uniques_and_duplicates() -> None:
    events = [
        ev("a", "view", T0 + H, "u1", session_id="s1"),
        ev("a", "view", T0 + 2 * H, "u9"),  # the same id again: the first copy counts
        ev("b", "view", T0 + 3 * H, "u2", session_id="s1"),
        ev("c", "view", T0 + DAY, None, anonymous_id="anon"),  # anonymous: an actor too
        ev("d", "view", T0 + DAY, None),  # no actor: counted, not a unique user
        ev("e", "view", T0 + H, "u1", project="q"),  # another project
        ev("f", "view", T0 + 3 * DAY, "u1"),  # dateTo is exclusive
    ]
    body = MARCH | {
        "series": [{"event": "view"}, {"math": "unique_users"}, {"math": "unique_sessions"}]
    }
    got = answer("trends", body, events)
    assert got["buckets"] == ["2026-03-01T00:00:00", "2026-03-02T00:00:00", "2026-03-03T00:00:00"]
    assert [s["values"] for s in got["series"]] == [[2, 2, 0], [2, 1, 0], [1, 0, 0]]


def test_trends_timezone_decides_the_day() -> None:
    # 23:30 UTC on 1 March is 2 March in Paris (UTC+1) and 1 March in New York
    events = [ev("a", "view", T0 + 23 * H + 30 * M)]
    for zone, values in (("Europe/Paris", [0, 1]), ("America/New_York", [1, 0])):
        body = {"dateFrom": "2026-03-01", "dateTo": "2026-03-03", "timezone": zone}
        got = answer("trends", body | {"series": [{}]}, events)
        assert got["series"][0]["values"] == values, zone


def test_trends_numeric_maths_and_percentiles() -> None:
    amounts: list[Any] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, "11", True]  # a string, a bool: ignored
    events = [ev(f"e{i}", "buy", T0 + i, properties={"amount": a}) for i, a in enumerate(amounts)]
    events.append(ev("none", "buy", T0 + DAY))
    maths = ["sum", "avg", "min", "max", "median", "p90", "p95", "p99"]
    body = MARCH | {"series": [{"math": m, "mathProperty": "amount"} for m in maths]}
    got = answer("trends", body, events)
    # nearest rank: median of 1..10 is the 5th value, p90 the 9th, p95 and p99 the 10th
    firsts = [s["values"][0] for s in got["series"]]
    assert firsts == [55.0, 5.5, 1.0, 10.0, 5.0, 9.0, 10.0, 10.0]
    # a bucket without numbers: sum 0, the others null
    assert [s["values"][1] for s in got["series"]] == [0.0] + [None] * 7


def test_trends_breakdown_top_n_other_and_compare() -> None:
    plans = ["pro", "pro", "pro", "free", "free", "team", None]
    events = [
        ev(f"e{i}", "view", T0 + i * M, properties={} if p is None else {"plan": p})
        for i, p in enumerate(plans)
    ]
    events.append(ev("old", "view", T0 - DAY, properties={"plan": "pro"}))  # the previous period
    body = {"dateFrom": "2026-03-01", "dateTo": "2026-03-02", "series": [{}]}
    body |= {"breakdown": {"property": "plan", "limit": 2}, "compare": True}
    got = answer("trends", body, events)
    assert [(s["breakdownValue"], s["values"]) for s in got["series"]] == [
        ("pro", [3]),
        ("free", [2]),
        ("$other", [2]),  # team and the unset value
    ]
    assert got["previousBuckets"] == ["2026-02-28T00:00:00"]
    assert [(s["breakdownValue"], s["values"]) for s in got["previous"]] == [("pro", [1])]


def test_filters() -> None:
    props: list[dict[str, Any]] = [
        {"plan": "pro", "n": 1, "url": "/a/b"},
        {"plan": "Pro", "n": 1.0, "flag": True},
        {"plan": None, "n": True, "url": "/b"},
        {"n": "1"},
    ]
    events = [ev(f"e{i}", "view", T0 + i, properties=p) for i, p in enumerate(props)]
    cases: list[tuple[dict[str, Any], int]] = [
        ({"key": "plan", "op": "eq", "value": "pro"}, 1),  # case-sensitive
        ({"key": "plan", "op": "neq", "value": "pro"}, 3),  # unset and null pass neq
        ({"key": "n", "op": "eq", "value": 1}, 2),  # 1 == 1.0; not True, not "1"
        ({"key": "n", "op": "in", "value": [True, "1"]}, 2),
        ({"key": "url", "op": "contains", "value": "/a"}, 1),
        ({"key": "n", "op": "gte", "value": 1}, 2),
        ({"key": "n", "op": "lt", "value": 1}, 0),
        ({"key": "plan", "op": "is_set"}, 2),  # null is not set
        ({"key": "plan", "op": "is_not_set"}, 2),
        ({"key": "flag", "op": "eq", "value": True}, 1),
    ]
    for flt, count in cases:
        got = answer("trends", MARCH | {"series": [{"filters": [flt]}]}, events)
        assert got["series"][0]["values"][0] == count, flt


FUNNEL = MARCH | {
    "steps": [{"event": "view"}, {"event": "signup"}, {"event": "buy"}],
    "windowSeconds": 3600,
}


def test_funnel_order_window_and_times() -> None:
    events = [
        # u1 converts fully: 10 min to sign up, 20 min more to buy
        ev("a1", "view", T0, "u1"),
        ev("a2", "signup", T0 + 10 * M, "u1"),
        ev("a3", "buy", T0 + 30 * M, "u1"),
        # u2: buys before signing up (order matters), so reaches step 2 only
        ev("b1", "view", T0, "u2"),
        ev("b2", "buy", T0 + 5 * M, "u2"),
        ev("b3", "signup", T0 + 20 * M, "u2"),
        # u3: the buy is 61 min after the first view (outside the window), but a later
        # view restarts the funnel and all three steps fit in it
        ev("c1", "view", T0, "u3"),
        ev("c2", "signup", T0 + 40 * M, "u3"),
        ev("c3", "view", T0 + 50 * M, "u3"),
        ev("c4", "signup", T0 + 55 * M, "u3"),
        ev("c5", "buy", T0 + 61 * M, "u3"),
        # u4: only views
        ev("d1", "view", T0, "u4"),
    ]
    got = answer("funnels", FUNNEL, events)
    steps = got["steps"]
    assert [s["count"] for s in steps] == [4, 3, 2]
    assert [s["droppedOff"] for s in steps] == [0, 1, 1]
    assert steps[1]["conversionRate"] == 0.75
    assert steps[2]["stepConversionRate"] == 2 / 3
    # u1 600 s, u2 1200 s, u3 300 s (its second attempt): nearest-rank median 600, p90 1200
    assert (steps[1]["medianSeconds"], steps[1]["p90Seconds"]) == (600.0, 1200.0)
    assert sorted([steps[2]["medianSeconds"], steps[2]["p90Seconds"]]) == [360.0, 1200.0]


def test_funnel_one_event_is_one_step_and_sessions() -> None:
    # a step needs its own event, even when one event matches two steps
    events = [ev("a", "view", T0, "u1", session_id="s1")]
    body = MARCH | {"steps": [{"event": "view"}, {}]}
    assert [s["count"] for s in answer("funnels", body, events)["steps"]] == [1, 0]
    # per session, u1's two sessions are two funnels
    events.append(ev("b", "view", T0 + M, "u1", session_id="s2"))
    events.append(ev("c", "buy", T0 + 2 * M, "u1", session_id="s2"))
    body = MARCH | {"steps": [{"event": "view"}, {"event": "buy"}], "countBy": "session"}
    assert [s["count"] for s in answer("funnels", body, events)["steps"]] == [2, 1]


def test_funnel_breakdown_by_first_step() -> None:
    events = [
        ev("a1", "view", T0, "u1", properties={"src": "ad"}),
        ev("a2", "buy", T0 + M, "u1"),
        ev("b1", "view", T0, "u2", properties={"src": "ad"}),
        ev("c1", "view", T0, "u3", properties={"src": "mail"}),
        ev("c2", "buy", T0 + M, "u3"),
    ]
    body = MARCH | {
        "steps": [{"event": "view"}, {"event": "buy"}],
        "breakdown": {"property": "src"},
    }
    got = answer("funnels", body, events)
    assert [(b["breakdownValue"], [s["count"] for s in b["steps"]]) for b in got["breakdown"]] == [
        ("ad", [2, 1]),
        ("mail", [1, 1]),
    ]


def test_retention_triangle() -> None:
    events = [
        ev("a1", "signup", T0, "u1"),
        ev("a2", "view", T0 + DAY, "u1"),
        ev("a3", "view", T0 + 2 * DAY, "u1"),
        ev("b1", "signup", T0 + DAY, "u2"),
        ev("b2", "view", T0 + 2 * DAY, "u2"),
        ev("b3", "signup", T0 + 2 * DAY, "u2"),  # not a new cohort: the first counts
        ev("c1", "view", T0, "u3"),  # never did the target event
    ]
    body = MARCH | {"target": {"event": "signup"}, "returning": {"event": "view"}, "periods": 5}
    got = answer("retention", body, events)
    assert [(c["start"][:10], c["values"]) for c in got["cohorts"]] == [
        ("2026-03-01", [1, 1, 1]),
        ("2026-03-02", [1, 1]),
        ("2026-03-03", [0]),  # periods past the range's last day are absent
    ]


def test_paths_next_and_previous() -> None:
    events = [
        ev("a1", "home", T0, "u1"),
        ev("a2", "search", T0 + 1, "u1"),
        ev("a3", "buy", T0 + 2, "u1"),
        ev("a4", "search", T0 + 3, "u1"),  # after the first search: not a second start
        ev("b1", "search", T0, "u2"),
        ev("b2", "home", T0 + 1, "u2"),
    ]
    body = MARCH | {"start": {"event": "search"}, "steps": 2}
    got = answer("paths", body, events)
    assert got["starts"] == 2
    assert [(e["step"], e["source"], e["target"], e["count"]) for e in got["edges"]] == [
        (1, "0:search", "1:buy", 1),
        (1, "0:search", "1:home", 1),
        (2, "1:buy", "2:search", 1),
    ]
    got = answer("paths", body | {"direction": "previous"}, events)
    assert [(e["source"], e["target"]) for e in got["edges"]] == [("0:search", "1:home")]


def test_lifecycle() -> None:
    # days 1..4 of March; u1 also active on 28 February (history before the range)
    active = {"u1": [-1, 0, 1, 3], "u2": [1, 2], "u3": [0]}
    events = [
        ev(f"{u}-{d}", "view", T0 + d * DAY + H, u) for u, days in active.items() for d in days
    ]
    body = {"dateFrom": "2026-03-01", "dateTo": "2026-03-05"}
    got = answer("lifecycle", body, events)
    assert got["new"] == [1, 1, 0, 0]  # u3 on day 0, u2 on day 1
    assert got["returning"] == [1, 1, 1, 0]  # u1 day 0 and 1, u2 day 2
    assert got["resurrecting"] == [0, 0, 0, 1]  # u1 on day 3
    assert got["dormant"] == [0, -1, -1, -1]  # u3 day 1, u1 day 2, u2 day 3


@pytest.mark.parametrize("kind", ["trends", "funnels", "retention", "paths", "lifecycle"])
def test_results_are_camel_case_json(kind: str) -> None:
    body: dict[str, Any] = MARCH | {
        "trends": {"series": [{}]},
        "funnels": {"steps": [{}, {}]},
        "paths": {"start": {}},
    }.get(kind, {})
    query = parse_query(kind, msgspec.json.encode(body))
    text = msgspec.json.encode(run_reference(query, [ev("a", "view", T0)], "p")).decode()
    assert "_" not in text.replace("$other", "")


def test_funnel_dropped_users_paged() -> None:
    events = [ev(f"v{u}", "view", T0, u) for u in ("c", "a", "b", "d")]
    events.append(ev("buy-d", "buy", T0 + M, "d"))
    body = MARCH | {"steps": [{"event": "view"}, {"event": "buy"}]}
    got = answer("funnels", body | {"dropped": {"step": 2, "limit": 2}}, events)
    assert (got["dropped"], got["droppedNext"]) == (["a", "b"], "b")
    got = answer("funnels", body | {"dropped": {"step": 2, "limit": 2, "after": "b"}}, events)
    assert (got["dropped"], got["droppedNext"]) == (["c"], None)
    assert answer("funnels", body, events)["dropped"] is None


def test_stickiness() -> None:
    # u1 on days 0, 1 and twice on 2; u2 on day 0 only; u3 before the range only
    days = {"u1": [0, 1, 2, 2], "u2": [0], "u3": [-1]}
    events = [
        ev(f"{u}-{i}", "view", T0 + d * DAY + i * H, u)
        for u, ds in days.items()
        for i, d in enumerate(ds)
    ]
    got = answer("stickiness", MARCH | {"event": {"event": "view"}}, events)
    assert got["actors"] == [1, 0, 1]
