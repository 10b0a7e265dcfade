"""Insights answers: cached until the project's data changes, and stopped at a time limit."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from innkt_analytics.server._state import ApiError
from innkt_analytics.server.insights._cache import AnswerCache
from innkt_analytics.server.insights._events import InsightEvent
from innkt_analytics.server.insights._model import parse_query
from innkt_analytics.server.insights._routes import Job, run_within
from tests._server import ServerProcess
from tests.conftest import ServerFactory

DAY = "2026-03-02"
RANGE = {"dateFrom": "2026-03-02", "dateTo": "2026-03-03"}


def _events(server: ServerProcess, events: list[dict[str, Any]], key: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else server.headers("write")
    for i in range(0, len(events), 2500):
        r = httpx.post(
            server.url + "/v1/events/batch",
            json={"events": events[i : i + 2500]},
            headers=headers,
            timeout=60,
        )
        assert r.status_code == 200, r.text


def _event(event_type: str, user: str, at: str, **props: Any) -> dict[str, Any]:
    return {
        "eventId": uuid.uuid4().hex,
        "eventType": event_type,
        "userId": user,
        "timestamp": at,
        "properties": props,
    }


def _ask(server: ServerProcess, kind: str, body: bytes | dict[str, Any]) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}/v1/insights/{kind}",
        content=content,
        headers={**server.headers("read"), "Content-Type": "application/json"},
        timeout=60,
    )


def _views(r: httpx.Response) -> list[Any]:
    assert r.status_code == 200, r.text
    values: list[Any] = r.json()["series"][0]["values"]
    return values


TRENDS = {**RANGE, "interval": "day", "series": [{"event": "view"}]}


def test_answers_are_cached_until_events_are_stored_or_deleted(
    storage_url: str, server_factory: ServerFactory
) -> None:
    # (a long time to live on PostgreSQL too, so the hits below never depend on timing)
    server = server_factory(db=storage_url, env={"INNKT_INSIGHTS_CACHE_TTL_POSTGRES": "600"})
    _events(server, [_event("view", u, f"{DAY}T10:00:00Z") for u in ("ada", "bob")])
    first = _ask(server, "trends", TRENDS)
    assert (_views(first), first.headers["x-innkt-cache"]) == ([2], "miss")
    # The same query spelled differently (key order, spacing, a default written out)
    # is the same entry.
    same = json.dumps(
        {"series": [{"event": "view", "math": "total"}], "timezone": "UTC", **RANGE},
        indent=2,
    ).encode()
    second = _ask(server, "trends", same)
    assert (_views(second), second.headers["x-innkt-cache"]) == ([2], "hit")
    assert second.content == first.content

    # Another project's events leave this project's answers cached.
    other = server.create_key("write", project="elsewhere")
    _events(server, [_event("view", "eve", f"{DAY}T11:00:00Z")], key=other)
    assert _ask(server, "trends", TRENDS).headers["x-innkt-cache"] == "hit"

    # A new event of this project (even one outside the range) is a new data version.
    _events(server, [_event("view", "cy", f"{DAY}T12:00:00Z")])
    third = _ask(server, "trends", TRENDS)
    assert (_views(third), third.headers["x-innkt-cache"]) == ([3], "miss")
    assert _ask(server, "trends", TRENDS).headers["x-innkt-cache"] == "hit"

    # Deleting a user's data is one too.
    gone = httpx.delete(server.url + "/v1/users/bob", headers=server.headers("admin"))
    assert gone.status_code == 200, gone.text
    fourth = _ask(server, "trends", TRENDS)
    assert (_views(fourth), fourth.headers["x-innkt-cache"]) == ([2], "miss")

    # A refused query is not an answer: nothing is cached or counted for it.
    bad = _ask(server, "trends", {**TRENDS, "interval": "fortnight"})
    assert bad.status_code == 400
    assert "x-innkt-cache" not in bad.headers


@pytest.mark.postgres
def test_on_postgres_answers_live_for_their_own_time(
    pg_database: str, server_factory: ServerFactory
) -> None:
    # other instances' writes go unseen there: INNKT_INSIGHTS_CACHE_TTL_POSTGRES, not
    # the SQLite setting, bounds an answer's age; 0 keeps none
    env = {"INNKT_INSIGHTS_CACHE_TTL": "600", "INNKT_INSIGHTS_CACHE_TTL_POSTGRES": "0"}
    server = server_factory(db=pg_database, env=env)
    _events(server, [_event("view", "ada", f"{DAY}T10:00:00Z")])
    for _ in range(2):
        r = _ask(server, "trends", TRENDS)
        assert (_views(r), r.headers["x-innkt-cache"]) == ([1], "miss")


def test_retention_deletes_invalidate_cached_answers(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_RETENTION_DAYS": "30", "INNKT_RETENTION_INTERVAL": "0.2"})
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).replace(microsecond=0)
    day = old.date()
    query = {
        "dateFrom": day.isoformat(),
        "dateTo": (day + dt.timedelta(days=1)).isoformat(),
        "series": [{"event": "view"}],
    }
    _events(server, [_event("view", "ada", old.isoformat())])
    # The retention run deletes the old event within a few intervals; until then the
    # answer may be cached, and after it a cached count of 1 must not be served.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = _ask(server, "trends", query)
        if _views(r) == [0]:
            break
        time.sleep(0.1)
    assert _views(r) == [0]
    assert server.count_events() == 0


def test_a_query_past_the_time_limit_is_stopped_with_422(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_INSIGHTS_TIMEOUT": "0.3"})
    # a 10-step funnel over 40,000 alternating events of two users, none of whose
    # attempts gets past step 2 within its 1 s window, so the engine sequences every
    # event (~0.6 s of DuckDB; one that completes its first attempt takes a few joins)
    start = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
    _events(
        server,
        [
            _event("abc"[i % 3], f"u{i % 2}", (start + dt.timedelta(seconds=i)).isoformat())
            for i in range(40_000)
        ],
    )
    heavy = {**RANGE, "steps": [{"event": e} for e in "abcabcabca"], "windowSeconds": 1}
    r = _ask(server, "funnels", heavy)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "query_timeout"
    assert "0.3 s" in r.json()["message"]
    assert "INNKT_INSIGHTS_TIMEOUT" in r.json()["message"]
    # the server is free again, and a query within the limit (a day without the
    # 40,000 events, which a query of their day loads whatever it asks) answers
    next_day = {"dateFrom": "2026-03-03", "dateTo": "2026-03-04"}
    light = _ask(server, "trends", {**next_day, "series": [{"event": "a"}]})
    assert light.status_code == 200, light.text


def test_the_time_limit_interrupts_the_duckdb_statement() -> None:
    base = 1_772_409_600_000  # 2026-03-02T00:00:00Z
    events = [
        InsightEvent("p", f"e{i}", "abc"[i % 3], base + i * 1000, user_id=f"u{i % 2}")
        for i in range(20_000)
    ]
    body = {**RANGE, "steps": [{"event": e} for e in "abcabcabca"], "windowSeconds": 86400}
    query = parse_query("funnels", json.dumps(body).encode())

    async def stopped_while_running() -> Job:
        job = Job()
        work = asyncio.create_task(run_within(query, events, "p", 60.0, job))
        while not job.running:  # the funnel (seconds) is under way in DuckDB
            assert not work.done()
            await asyncio.sleep(0.005)
        # what the time limit does, from the event loop's thread: interrupt, again
        # until the thread gives up (between two statements there is nothing to stop)
        while not work.done():
            job.stop()
            await asyncio.wait({work}, timeout=0.02)
        with pytest.raises(ApiError) as raised:
            await work
        assert (raised.value.status, raised.value.code) == (422, "query_timeout")
        return job

    job = asyncio.run(stopped_while_running())
    # DuckDB gave the statement up: the thread did not run the funnel to its end
    assert job.interrupted
    assert not job.running
    # past a limit, the same
    with pytest.raises(ApiError) as raised:
        asyncio.run(run_within(query, events, "p", 0.01, Job()))
    assert raised.value.code == "query_timeout"
    # and a query within its limit answers
    answer = json.loads(asyncio.run(run_within(query, events[:300], "p", 60.0, Job())))
    assert answer["steps"][0]["count"] == 2


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _k(n: int) -> tuple[str, str, bytes, int]:
    return ("p", "trends", str(n).encode(), 0)


def test_answer_cache_is_a_bounded_lru_with_a_time_to_live() -> None:
    clock = _Clock()
    cache = AnswerCache(size=2, ttl=10.0, max_bytes=100, max_entry_bytes=60, clock=clock)
    cache.put(_k(1), b"a" * 10)
    cache.put(_k(2), b"b" * 10)
    assert cache.get(_k(1)) == b"a" * 10  # 1 is now the most recently used
    cache.put(_k(3), b"c" * 10)
    assert cache.get(_k(2)) is None  # the least recently used went
    assert cache.get(_k(1)) is not None
    assert cache.get(_k(3)) is not None
    cache.put(_k(4), b"d" * 61)  # over the entry bound: not kept, nothing evicted
    assert cache.get(_k(4)) is None
    assert len(cache) == 2
    cache.put(_k(5), b"e" * 60)
    cache.put(_k(6), b"f" * 50)  # 110 bytes: the older goes to stay within 100
    assert cache.get(_k(5)) is None
    assert cache.get(_k(6)) is not None
    clock.now = 10.0
    assert cache.get(_k(6)) is None
    assert len(cache) == 0
    assert (cache.hits, cache.misses) == (4, 4)
    off = AnswerCache(size=0, ttl=10.0)
    off.put(_k(1), b"x")
    assert off.get(_k(1)) is None
