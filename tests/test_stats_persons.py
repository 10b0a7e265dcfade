"""GET /v1/stats counts persons (issue 19): ``uniqueUsers`` is the number of persons
among the events' actors (an anonymous visitor and the user it became are one), or of
raw ids with ``countBy=id``, on SQLite and PostgreSQL, on generated journeys."""

from __future__ import annotations

import datetime as dt

import httpx

from innkt_analytics.server.insights._events import InsightEvent
from tests._server import ServerProcess
from tests.test_insights_persons import _Random, _send, journey, person_roots


def _stats(server: ServerProcess, **params: str) -> httpx.Response:
    return httpx.get(
        server.url + "/v1/stats", params=params, headers=server.headers("read"), timeout=60
    )


def _actors(log: list[InsightEvent], since: int = 0) -> set[str]:
    return {
        actor
        for e in log
        if e.timestamp >= since and (actor := e.user_id or e.anonymous_id) is not None
    }


def test_unique_users_are_persons_unless_count_by_id(backend_server: ServerProcess) -> None:
    server = backend_server
    log: list[InsightEvent] = []
    for seed in range(4):
        events = journey(_Random(seed), 4, tag=f"-{seed}")
        for start in range(0, len(events), 7):  # several batches: late identifies arrive late
            _send(server, events[start : start + 7])
        log += events
    roots = person_roots(log)
    actors = _actors(log)
    persons = {roots.get(a, a) for a in actors}
    assert len(persons) < len(actors)  # the journeys merge ids: the check means something

    body = _stats(server).json()
    assert (body["uniqueUsers"], body["countBy"], body["total"]) == (
        len(persons),
        "person",
        len({e.event_id for e in log}),  # replays in the journeys are stored once
    )
    by_id = _stats(server, countBy="id").json()
    assert (by_id["uniqueUsers"], by_id["countBy"]) == (len(actors), "id")

    # a later range: a person counts once even when its root is not among the actors
    since = sorted(e.timestamp for e in log)[len(log) // 2]
    later = _actors(log, since)
    since_iso = dt.datetime.fromtimestamp(since / 1000, dt.UTC).isoformat()
    assert _stats(server, since=since_iso).json()["uniqueUsers"] == len(
        {roots.get(a, a) for a in later}
    )
    assert _stats(server, since=since_iso, countBy="id").json()["uniqueUsers"] == len(later)


def test_count_by_is_validated(shared_server: ServerProcess) -> None:
    r = _stats(shared_server, countBy="session")
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_parameter"
    assert "countBy" in r.json()["message"]
