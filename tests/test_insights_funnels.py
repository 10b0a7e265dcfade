"""Funnels that convert: the engine's two ways of finding each actor's best attempt.

The engine follows each actor's earliest attempt with joins and keeps it when it
reaches the last step; only the other actors' events are sorted and sequenced
(``_engine._funnel``). test_insights_engine's random funnels rarely reach their last
step, so here the logs are dense: few actors, few event types, steps drawn from those
types without filters (repeated steps too), many events at the same millisecond, and
windows from a minute to two weeks, so that both ways (and their mix within one
query) are compared with the reference, with breakdowns and dropped pages.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from innkt_analytics.server.insights._engine import run
from innkt_analytics.server.insights._events import InsightEvent, to_arrow
from innkt_analytics.server.insights._model import parse_query
from innkt_analytics.server.insights._reference import run_reference
from tests.test_insights_engine import MINUTE, T0, close

TYPES = ["a", "b", "c"]


@st.composite
def dense_logs(draw: st.DrawFn) -> list[InsightEvent]:
    n = draw(st.integers(5, 60))
    out = []
    for i in range(n):
        out.append(
            InsightEvent(
                project="p",
                event_id=f"e{draw(st.integers(0, 200))}",
                event_type=draw(st.sampled_from(TYPES)),
                # a few minutes apart over a day, often at the same millisecond
                timestamp=T0 + draw(st.integers(0, 300)) * MINUTE // draw(st.sampled_from([1, 5])),
                user_id=draw(st.sampled_from(["u1", "u2", "u3", None])),
                anonymous_id=f"anon{i % 2}",
                session_id=draw(st.sampled_from(["s1", "s2"])),
                properties=draw(
                    st.fixed_dictionaries({}, optional={"plan": st.sampled_from(["free", "pro"])})
                ),
            )
        )
    return out


@st.composite
def converting(draw: st.DrawFn) -> dict[str, Any]:
    steps = draw(st.lists(st.sampled_from(TYPES), min_size=2, max_size=4))
    body: dict[str, Any] = {
        "dateFrom": "2026-03-26",
        "dateTo": "2026-03-29",
        "steps": [{"event": s} for s in steps],
        "windowSeconds": draw(st.sampled_from([60, 1800, 7200, 14 * 86400])),
        "countBy": draw(st.sampled_from(["user", "session"])),
    }
    if draw(st.booleans()):
        body["breakdown"] = {"property": "plan", "limit": draw(st.integers(1, 2))}
    if draw(st.booleans()):
        body["dropped"] = {"step": draw(st.integers(2, len(steps))), "limit": 2}
    return body


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dense_logs(), converting())
def test_funnels_that_convert(log: list[InsightEvent], body: dict[str, Any]) -> None:
    query = parse_query("funnels", msgspec.json.encode(body))
    expected = msgspec.to_builtins(run_reference(query, log, "p"))
    got = msgspec.to_builtins(run(query, to_arrow(log), "p"))
    assert close(got, expected), f"\nengine:    {got}\nreference: {expected}"


def _event(i: int, event_type: str, minute: int, user: str = "u1") -> InsightEvent:
    return InsightEvent(
        project="p",
        event_id=f"e{i:02d}",
        event_type=event_type,
        timestamp=T0 + minute * MINUTE,
        user_id=user,
        anonymous_id=None,
        session_id="s1",
        properties={},
    )


def _steps(log: list[InsightEvent], steps: list[str]) -> list[dict[str, Any]]:
    body = {
        "dateFrom": "2026-03-26",
        "dateTo": "2026-03-29",
        "steps": [{"event": s} for s in steps],
        "windowSeconds": 86400,
    }
    query = parse_query("funnels", msgspec.json.encode(body))
    expected = msgspec.to_builtins(run_reference(query, log, "p"))
    got = msgspec.to_builtins(run(query, to_arrow(log), "p"))
    assert close(got, expected), f"\nengine:    {got}\nreference: {expected}"
    return list(got["steps"])


@pytest.mark.parametrize("ids", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2)])
def test_same_millisecond_events_follow_the_steps_not_their_ids(ids: tuple[int, ...]) -> None:
    """Events of one millisecond are in step order whatever their ids: a signup at the
    page view's millisecond follows it; a second page view at the same millisecond is
    step 2 of "page view, page view" (not the one a minute later); and of two such
    attempts the first, whose chain is earlier, is the user's."""
    log = [
        _event(ids[0], "signup", 10),
        _event(ids[1], "page_view", 10),
        _event(ids[2], "page_view", 10),
        _event(ids[3], "page_view", 11),
    ]
    steps = _steps(log, ["page_view", "signup"])
    assert [s["count"] for s in steps] == [1, 1]
    assert steps[1]["medianSeconds"] == 0
    steps = _steps(log, ["page_view", "page_view"])
    assert [s["count"] for s in steps] == [1, 1]
    assert steps[1]["medianSeconds"] == 0
    # two attempts at minute 10: one goes on at minute 10, the other at 11
    log = [
        _event(ids[0], "a", 10),
        _event(ids[1], "a", 10),
        _event(ids[2], "a", 11),
        _event(ids[3], "b", 20),
    ]
    steps = _steps(log, ["a", "a", "b"])
    assert [s["count"] for s in steps] == [1, 1, 1]
    assert [s["medianSeconds"] for s in steps[1:]] == [0, 600]
