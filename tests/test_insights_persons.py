"""Insights count persons: the engine equals the reference given the identity graph's
id -> person mapping, and the server (SQLite and PostgreSQL) equals the reference
given the persons its graph forms from the events it stored.

Journeys are generated with hypothesis: people browse anonymously on one or two
devices and then identify (or not), sign in, get aliased to another user id (alias
chains), share a device with someone else (two user ids on one anonymous id: the
guard), and identify late (the identify's event time is before the events it links,
and it arrives last).
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from innkt_analytics.server._identity import Link, links_of_event, resolve
from innkt_analytics.server.insights._engine import run
from innkt_analytics.server.insights._events import InsightEvent, to_arrow
from innkt_analytics.server.insights._model import parse_query
from innkt_analytics.server.insights._reference import run_reference
from tests._server import ServerProcess
from tests.conftest import ServerFactory
from tests.test_insights_engine import (
    MINUTE,
    T0,
    TYPES,
    close,
    funnels,
    lifecycle,
    paths,
    property_values,
    retention,
    trends,
)


def person_roots(events: Iterable[InsightEvent]) -> dict[str, str]:
    """What the server's graph makes of ``events``: id -> its person's root (docs/identity.md)."""
    links: list[Link] = []
    users: set[str] = set()
    ids: set[str] = set()
    for e in events:
        links += links_of_event(e.event_type, e.user_id, e.anonymous_id, e.properties, e.timestamp)
        if e.user_id is not None:
            users.add(e.user_id)
    for link in links:
        ids.update((link.a, link.b))
    return {i: p.root for p in resolve(links, ids, users) for i in p.ids if i != p.root}


class Picker(Protocol):
    def integers(self, lo: int, hi: int) -> int: ...
    def choice(self, options: Sequence[Any]) -> Any: ...
    def properties(self) -> dict[str, Any]: ...


class _Draws:
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integers(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options: Sequence[Any]) -> Any:
        return self.draw(st.sampled_from(options))

    def properties(self) -> dict[str, Any]:
        return self.draw(property_values)


class _Random:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integers(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[Any]) -> Any:
        return self.rng.choice(options)

    def properties(self) -> dict[str, Any]:
        return {"plan": self.choice(["free", "pro"])}


def journey(pick: Picker, people: int, tag: str = "") -> list[InsightEvent]:
    """Events of ``people`` people, in arrival order; ``tag`` ends every id."""
    out: list[InsightEvent] = []
    late: list[InsightEvent] = []

    def add(kind: str | None, user: str | None, anon: str | None, **props: Any) -> InsightEvent:
        return InsightEvent(
            project="p",
            event_id=f"j{next(ids)}{tag}",
            event_type=kind or pick.choice(TYPES),
            timestamp=T0 + pick.integers(-1440, 4 * 1440) * MINUTE,
            user_id=None if user is None else user + tag,
            anonymous_id=None if anon is None else anon + tag,
            session_id=pick.choice(["s1", "s2", None]),
            properties=props or pick.properties(),
        )

    ids = itertools.count()
    for k in range(people):
        user = f"u{k}"
        for d in range(pick.integers(1, 2)):  # devices
            anon = f"a{k}{d}"
            out += [add(None, None, anon) for _ in range(pick.integers(0, 4))]
            how = pick.choice(["identify", "late identify", "never"])
            if how == "never":
                continue
            identify = add("identify", user, anon, plan="pro")
            (late if how == "late identify" else out).append(identify)
            out += [add(None, user, anon) for _ in range(pick.integers(0, 3))]
    for _ in range(pick.integers(0, 2)):  # alias chains: u_i -> u_j
        i, j = pick.integers(0, people), pick.integers(0, people)
        if i != j:
            out.append(add("alias", f"u{j}", None, previousId=f"u{i}{tag}"))
    if pick.choice([True, False]):  # a shared device: another user signs in on a00
        out.append(add("identify", f"u{people}", "a00", plan="free"))
    # a late identify arrives last, its event time anywhere (often before what it links)
    out += late
    if out and pick.choice([True, False]):  # one event stored twice
        out.append(out[0])
    return out


@st.composite
def journeys(draw: st.DrawFn) -> list[InsightEvent]:
    pick = _Draws(draw)
    return journey(pick, pick.integers(1, 4))


def check(kind: str, body: dict[str, Any], log: list[InsightEvent]) -> None:
    query = parse_query(kind, msgspec.json.encode(body))
    roots = person_roots(log)
    expected = msgspec.to_builtins(run_reference(query, log, "p", roots))
    got = msgspec.to_builtins(run(query, to_arrow(log), "p", persons=roots))
    assert close(got, expected), f"\nengine:    {got}\nreference: {expected}\nroots: {roots}"


count_by = st.sampled_from(["person", "person", "id"])
# fewer than test_insights_engine's 60: the queries' own variety is tested there
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(journeys(), trends(), count_by)
def test_trends(log: list[InsightEvent], body: dict[str, Any], by: str) -> None:
    check("trends", body | {"countBy": by}, log)


@SETTINGS
@given(journeys(), funnels(), st.sampled_from(["person", "person", "id", "session", "user"]))
def test_funnels(log: list[InsightEvent], body: dict[str, Any], by: str) -> None:
    if body["dropped"] is not None:
        body["dropped"]["after"] = None if by == "session" else body["dropped"]["after"]
    check("funnels", body | {"countBy": by}, log)


@SETTINGS
@given(journeys(), retention(), count_by)
def test_retention(log: list[InsightEvent], body: dict[str, Any], by: str) -> None:
    check("retention", body | {"countBy": by}, log)


@SETTINGS
@given(journeys(), paths(), count_by)
def test_paths(log: list[InsightEvent], body: dict[str, Any], by: str) -> None:
    check("paths", body | {"countBy": by}, log)


@SETTINGS
@given(journeys(), lifecycle(), count_by)
def test_lifecycle_and_stickiness(log: list[InsightEvent], body: dict[str, Any], by: str) -> None:
    check("lifecycle", body | {"countBy": by}, log)
    check("stickiness", body | {"countBy": by}, log)


# -- through the server ----------------------------------------------------------------

RANGE = {"dateFrom": "2026-03-26", "dateTo": "2026-04-01", "timezone": "Europe/Paris"}
SIGNUP_TO_BUY = RANGE | {"steps": [{"event": "signup"}, {"event": "buy"}]}


def _wire(e: InsightEvent) -> dict[str, Any]:
    ts = dt.datetime.fromtimestamp(e.timestamp / 1000, dt.UTC)
    out: dict[str, Any] = {
        "eventId": e.event_id,
        "eventType": e.event_type,
        "timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "properties": e.properties,
    }
    for key, value in (
        ("userId", e.user_id),
        ("anonymousId", e.anonymous_id),
        ("sessionId", e.session_id),
    ):
        if value is not None:
            out[key] = value
    return out


def _send(server: ServerProcess, events: list[InsightEvent]) -> None:
    r = httpx.post(
        server.url + "/v1/events/batch",
        json={"events": [_wire(e) for e in events]},
        headers=server.headers(),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert not r.json()["rejected"], r.text


def _ask(server: ServerProcess, kind: str, body: dict[str, Any]) -> Any:
    r = httpx.post(
        f"{server.url}/v1/insights/{kind}", json=body, headers=server.headers("read"), timeout=60
    )
    assert r.status_code == 200, (kind, r.text)
    return r.json()


def _expect(kind: str, body: dict[str, Any], log: list[InsightEvent]) -> Any:
    query = parse_query(kind, msgspec.json.encode(body))
    return msgspec.to_builtins(run_reference(query, log, "p", person_roots(log)))


QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("trends", RANGE | {"series": [{"math": "unique_users"}, {"event": "buy"}], "compare": True}),
    ("funnels", SIGNUP_TO_BUY | {"dropped": {"step": 2}}),
    ("retention", RANGE | {"target": {"event": "signup"}, "periods": 3}),
    ("paths", RANGE | {"start": {"event": "signup"}, "steps": 2}),
    ("lifecycle", RANGE | {"event": {"event": "view"}}),
    ("stickiness", RANGE | {"event": {}}),
]


def test_insights_count_persons_on_both_backends(backend_server: ServerProcess) -> None:
    server = backend_server
    log: list[InsightEvent] = []
    for seed in range(4):
        events = journey(_Random(seed), 4, tag=f"-{seed}")
        for start in range(0, len(events), 7):  # several batches: late events arrive late
            _send(server, events[start : start + 7])
        log += events
    assert len(set(person_roots(log).values())) >= 4  # persons with several ids
    differ = set()
    for kind, body in QUERIES:
        answers = []
        for by in ("person", "id"):
            query = body | {"countBy": by}
            answers.append(_ask(server, kind, query))
            assert answers[-1] == _expect(kind, query, log), (kind, by)
        if answers[0] != answers[1]:
            differ.add(kind)
    # persons are not ids here: the comparisons above mean something
    assert {"trends", "funnels", "retention", "paths"} <= differ


def test_a_late_identify_joins_the_funnel(backend_server: ServerProcess) -> None:
    """Signup anonymous, purchase signed in: 0 % by id, 100 % by person, once the identify
    arrives — after both events, and after a first answer was cached."""
    server = backend_server
    at = dt.datetime(2026, 3, 28, 10, tzinfo=dt.UTC).timestamp() * 1000
    signup = InsightEvent("p", "e1", "signup", int(at), anonymous_id="anon-9")
    buy = InsightEvent("p", "e2", "buy", int(at) + 3_600_000, user_id="u-9")
    identify = InsightEvent(
        "p", "e3", "identify", int(at) + 60_000, user_id="u-9", anonymous_id="anon-9"
    )
    _send(server, [signup, buy])
    by_person = _ask(server, "funnels", SIGNUP_TO_BUY)
    assert [s["count"] for s in by_person["steps"]] == [1, 0]
    _send(server, [identify])
    by_person = _ask(server, "funnels", SIGNUP_TO_BUY)
    assert [s["count"] for s in by_person["steps"]] == [1, 1]
    by_id = _ask(server, "funnels", SIGNUP_TO_BUY | {"countBy": "id"})
    assert [s["count"] for s in by_id["steps"]] == [1, 0]
    users = RANGE | {"series": [{"math": "unique_users"}], "interval": "week"}
    assert sum(_ask(server, "trends", users)["series"][0]["values"]) == 1
    assert sum(_ask(server, "trends", users | {"countBy": "id"})["series"][0]["values"]) == 2


@pytest.mark.parametrize("kind", ["trends", "paths"])
def test_count_by_is_validated(shared_server: ServerProcess, kind: str) -> None:
    body = RANGE | {"series": [{}], "start": {}, "countBy": "session"}
    if kind == "paths":
        del body["series"]
    else:
        del body["start"]
    r = httpx.post(
        f"{shared_server.url}/v1/insights/{kind}", json=body, headers=shared_server.headers("read")
    )
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith("countBy: ")


@pytest.mark.postgres
def test_an_identify_through_another_instance_refreshes_a_cached_answer(
    pg_database: str, server_factory: ServerFactory
) -> None:
    """The answer cache's data version counts this instance's writes only; the graph's
    version is in the database, so an identify stored by another instance is seen."""
    a = server_factory(db=pg_database)
    b = server_factory(db=pg_database)
    b.keys = dict(a.keys)  # the database already had keys when B started
    at = int(dt.datetime(2026, 3, 28, 10, tzinfo=dt.UTC).timestamp() * 1000)
    _send(
        a,
        [
            InsightEvent("p", "e1", "signup", at, anonymous_id="anon-5"),
            InsightEvent("p", "e2", "buy", at + 60_000, user_id="u-5"),
        ],
    )
    url, read = a.url + "/v1/insights/funnels", a.headers("read")
    for cache in ("miss", "hit"):
        r = httpx.post(url, json=SIGNUP_TO_BUY, headers=read)
        assert (r.headers["X-Innkt-Cache"], [s["count"] for s in r.json()["steps"]]) == (
            cache,
            [1, 0],
        )
    identify = InsightEvent("p", "e3", "identify", at, user_id="u-5", anonymous_id="anon-5")
    _send(b, [identify])
    r = httpx.post(url, json=SIGNUP_TO_BUY, headers=read)
    assert (r.headers["X-Innkt-Cache"], [s["count"] for s in r.json()["steps"]]) == ("miss", [1, 1])
