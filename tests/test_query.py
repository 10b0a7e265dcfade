"""GET /v1/events (filters, cursor pagination) and GET /v1/stats on the real server."""

from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests._server import ServerProcess

# (eventId, eventType, sessionId, userId, timestamp): one project holds exactly these.
DATA: list[tuple[str, str, str | None, str | None, str]] = [
    ("a1", "page_view", "s1", "u1", "2026-03-01T10:00:05Z"),
    ("a2", "page_view", "s1", "u1", "2026-03-01T10:00:59.999Z"),
    ("a3", "click", "s1", "u1", "2026-03-01T10:01:00Z"),
    ("a4", "click", "s2", "u2", "2026-03-01T10:30:00Z"),
    ("a5", "purchase", "s2", "u2", "2026-03-01T11:15:00Z"),
    ("a6", "page_view", "s3", None, "2026-03-01T23:59:59.999Z"),
    ("a7", "page_view", "s4", "u1", "2026-03-02T00:00:00Z"),
    ("a8", "click", None, "u3", "2026-03-02T08:00:00Z"),
]


@dataclass
class Project:
    url: str
    read: dict[str, str]

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, headers=self.read)

    def ids(self, **params: Any) -> list[str]:
        r = self.get("/v1/events", **params)
        assert r.status_code == 200, r.text
        return [e["eventId"] for e in r.json()["events"]]


@pytest.fixture(scope="module")
def project(shared_server: ServerProcess) -> Project:
    """A fresh project on the shared server holding exactly DATA."""
    name = "query-" + uuid.uuid4().hex[:8]
    with ThreadPoolExecutor(2) as pool:  # each is a CLI process: start them together
        write, read = pool.map(lambda s: shared_server.create_key(s, name), ("write", "read"))
    events = []
    for eid, etype, session, user, ts in DATA:
        ev: dict[str, Any] = {"eventId": eid, "eventType": etype, "timestamp": ts}
        if session:
            ev["sessionId"] = session
        if user:
            ev["userId"] = user
        events.append(ev)
    r = httpx.post(
        shared_server.url + "/v1/events/batch",
        json={"events": events},
        headers={"Authorization": f"Bearer {write}"},
    )
    assert r.json()["accepted"] == len(DATA)
    return Project(shared_server.url, {"Authorization": f"Bearer {read}"})


def t(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- filters -----------------------------------------------------------------------


def test_all_events_oldest_first(project: Project) -> None:
    assert project.ids() == [d[0] for d in DATA]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"eventType": "page_view"}, ["a1", "a2", "a6", "a7"]),
        ({"eventType": "nope"}, []),
        ({"sessionId": "s2"}, ["a4", "a5"]),
        ({"userId": "u1"}, ["a1", "a2", "a3", "a7"]),
        ({"userId": "u1", "eventType": "page_view"}, ["a1", "a2", "a7"]),
        ({"since": "2026-03-01T11:15:00Z"}, ["a5", "a6", "a7", "a8"]),  # inclusive
        ({"until": "2026-03-01T10:01:00Z"}, ["a1", "a2"]),  # exclusive
        (
            {"since": "2026-03-01T10:00:59.999Z", "until": "2026-03-01T10:30:00.001Z"},
            ["a2", "a3", "a4"],
        ),
        ({"since": "2026-03-02T01:00:00+01:00"}, ["a7", "a8"]),  # offsets honoured
        ({"since": "2026-03-02T00:00:00"}, ["a7", "a8"]),  # no offset: UTC
        ({"since": "2026-03-02", "sessionId": "s4"}, ["a7"]),
        ({"sessionId": "s1", "until": "2026-03-01T10:00:06Z"}, ["a1"]),
    ],
)
def test_filters(project: Project, params: dict[str, str], expected: list[str]) -> None:
    assert project.ids(**params) == expected


def test_event_fields(project: Project) -> None:
    (got,) = project.get("/v1/events", userId="u3").json()["events"]
    assert got["eventId"] == "a8"
    assert got["eventType"] == "click"
    assert t(got["timestamp"]) == t("2026-03-02T08:00:00Z")
    assert t(got["correctedTimestamp"]) == t("2026-03-02T08:00:00Z")
    assert got["sentAt"] is None
    assert got["future"] is False
    assert t(got["receivedAt"]) > t("2026-11-01T00:00:00Z")


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"until": "2026-99-01"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "²"},
        {"cursor": "not-a-cursor"},
        {"cursor": "LTE="},  # base64 of "-1"
        {"cursor": "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"},  # a number beyond 64 bits
    ],
)
def test_bad_query_parameters_are_400(project: Project, params: dict[str, str]) -> None:
    r = project.get("/v1/events", **params)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_parameter"
    assert r.json()["message"].split(":")[0] in params


# -- pagination ----------------------------------------------------------------------


def page_through(server: ServerProcess, params: dict[str, Any]) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        query = dict(params)
        if cursor is not None:
            query["cursor"] = cursor
        r = httpx.get(server.url + "/v1/events", params=query, headers=server.headers("read"))
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append([e["eventId"] for e in body["events"]])
        cursor = body["nextCursor"]
        if cursor is None:
            return pages
        assert len(pages) < 1000, "pagination does not end"


def post_events(server: ServerProcess, ids: list[str], session: str) -> None:
    events = [
        {
            "eventId": i,
            "eventType": "page",
            "sessionId": session,
            "timestamp": "2026-03-01T00:00:00Z",
        }
        for i in ids
    ]
    r = httpx.post(
        server.url + "/v1/events/batch", json={"events": events}, headers=server.headers()
    )
    assert r.json()["accepted"] == len(ids)


def test_cursor_pagination_visits_every_event_once(shared_server: ServerProcess) -> None:
    session = uuid.uuid4().hex
    ids = [f"{session}-{i:03d}" for i in range(237)]
    post_events(shared_server, ids, session)
    pages = page_through(shared_server, {"sessionId": session, "limit": 10})
    assert [len(p) for p in pages] == [10] * 23 + [7]
    assert [i for p in pages for i in p] == ids


def test_pagination_with_an_exact_multiple_of_the_page_size(
    shared_server: ServerProcess,
) -> None:
    session = uuid.uuid4().hex
    ids = [f"{session}-{i}" for i in range(20)]
    post_events(shared_server, ids, session)
    pages = page_through(shared_server, {"sessionId": session, "limit": 10})
    assert [i for p in pages for i in p] == ids
    assert all(len(p) == 10 for p in pages[:2])
    assert pages[2:] in ([], [[]])


def test_pagination_sees_events_stored_while_paging(shared_server: ServerProcess) -> None:
    session = uuid.uuid4().hex
    first = [f"{session}-a{i}" for i in range(15)]
    later = [f"{session}-b{i}" for i in range(5)]
    post_events(shared_server, first, session)
    r = httpx.get(
        shared_server.url + "/v1/events",
        params={"sessionId": session, "limit": 10},
        headers=shared_server.headers("read"),
    )
    seen = [e["eventId"] for e in r.json()["events"]]
    cursor = r.json()["nextCursor"]
    post_events(shared_server, later, session)
    while cursor is not None:
        r = httpx.get(
            shared_server.url + "/v1/events",
            params={"sessionId": session, "limit": 10, "cursor": cursor},
            headers=shared_server.headers("read"),
        )
        seen += [e["eventId"] for e in r.json()["events"]]
        cursor = r.json()["nextCursor"]
    assert seen == first + later


# -- stats ---------------------------------------------------------------------------


def series(body: dict[str, Any]) -> list[tuple[dt.datetime, int]]:
    return [(t(p["t"]), p["count"]) for p in body["series"]]


def test_stats_counts_and_uniques(project: Project) -> None:
    body = project.get("/v1/stats").json()
    assert body["total"] == 8
    assert body["byEventType"] == {"page_view": 4, "click": 3, "purchase": 1}
    assert body["uniqueSessions"] == 4
    assert body["uniqueUsers"] == 3
    assert body["bucket"] == "hour"


@pytest.mark.parametrize(
    ("bucket", "expected"),
    [
        (
            "minute",
            [
                ("2026-03-01T10:00:00Z", 2),
                ("2026-03-01T10:01:00Z", 1),
                ("2026-03-01T10:30:00Z", 1),
                ("2026-03-01T11:15:00Z", 1),
                ("2026-03-01T23:59:00Z", 1),
                ("2026-03-02T00:00:00Z", 1),
                ("2026-03-02T08:00:00Z", 1),
            ],
        ),
        (
            "hour",
            [
                ("2026-03-01T10:00:00Z", 4),
                ("2026-03-01T11:00:00Z", 1),
                ("2026-03-01T23:00:00Z", 1),
                ("2026-03-02T00:00:00Z", 1),
                ("2026-03-02T08:00:00Z", 1),
            ],
        ),
        ("day", [("2026-03-01T00:00:00Z", 6), ("2026-03-02T00:00:00Z", 2)]),
    ],
)
def test_stats_series(project: Project, bucket: str, expected: list[tuple[str, int]]) -> None:
    body = project.get("/v1/stats", bucket=bucket).json()
    assert body["bucket"] == bucket
    assert series(body) == [(t(ts), n) for ts, n in expected]


def test_stats_over_a_range(project: Project) -> None:
    body = project.get(
        "/v1/stats", since="2026-03-01T10:01:00Z", until="2026-03-02T00:00:00Z", bucket="day"
    ).json()
    assert body["total"] == 4
    assert body["byEventType"] == {"click": 2, "purchase": 1, "page_view": 1}
    assert body["uniqueSessions"] == 3
    assert body["uniqueUsers"] == 2
    assert series(body) == [(t("2026-03-01T00:00:00Z"), 4)]


def test_stats_for_one_event_type(project: Project) -> None:
    body = project.get("/v1/stats", eventType="click", bucket="day").json()
    assert body["byEventType"] == {"click": 3}
    assert body["uniqueUsers"] == 3
    assert series(body) == [(t("2026-03-01T00:00:00Z"), 2), (t("2026-03-02T00:00:00Z"), 1)]


def test_stats_of_an_empty_range(project: Project) -> None:
    body = project.get("/v1/stats", since="2030-01-01T00:00:00Z").json()
    assert body == {
        "total": 0,
        "byEventType": {},
        "series": [],
        "uniqueSessions": 0,
        "uniqueUsers": 0,
        "countBy": "person",
        "bucket": "hour",
    }


@pytest.mark.parametrize("params", [{"bucket": "week"}, {"since": "soon"}, {"until": "x"}])
def test_bad_stats_parameters_are_400(project: Project, params: dict[str, str]) -> None:
    r = project.get("/v1/stats", **params)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_parameter"
