"""POST /v1/insights/* on the real server, over SQLite and PostgreSQL.

Events go in through the ingest API (one of them sent twice, one in another project);
each answer must equal the reference implementation's over the same events.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import msgspec
import pytest

from innkt_analytics.server.insights import InsightEvent, parse_query, run_reference
from tests._server import ServerProcess

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def _events() -> list[dict[str, Any]]:
    out = []
    for i in range(40):
        user = f"u{i % 5}"
        etype = ["view", "signup", "view", "buy"][(i * 7) % 4]
        ts = T0 + dt.timedelta(hours=i * 5 + (i % 3))
        ev: dict[str, Any] = {
            "eventId": f"ev{i}",
            "eventType": etype,
            "timestamp": ts.isoformat().replace("+00:00", "Z"),
            "userId": user,
            "sessionId": f"s{i // 4}",
            "properties": {"plan": ["free", "pro"][i % 2], "amount": i},
            "context": {"locale": "fr" if i % 3 else "en"},
        }
        out.append(ev)
    return out


def _as_insight(project: str, ev: dict[str, Any]) -> InsightEvent:
    ts = dt.datetime.fromisoformat(ev["timestamp"])
    return InsightEvent(
        project=project,
        event_id=ev["eventId"],
        event_type=ev["eventType"],
        timestamp=int(ts.timestamp() * 1000),
        user_id=ev.get("userId"),
        session_id=ev.get("sessionId"),
        properties=ev.get("properties", {}),
        context=ev.get("context", {}),
    )


RANGE = {"dateFrom": "2026-03-03", "dateTo": "2026-03-09", "timezone": "Europe/Paris"}
QUERIES: list[tuple[str, dict[str, Any]]] = [
    (
        "trends",
        RANGE
        | {
            "series": [
                {"event": "view"},
                {"math": "unique_users"},
                {"math": "p90", "mathProperty": "amount"},
            ],
            "breakdown": {"property": "plan"},
            "compare": True,
            "filters": [{"key": "locale", "op": "eq", "value": "fr", "source": "context"}],
        },
    ),
    (
        "funnels",
        RANGE | {"steps": [{"event": "view"}, {"event": "signup"}, {"event": "buy"}]},
    ),
    ("retention", RANGE | {"target": {"event": "signup"}, "periods": 4}),
    ("paths", RANGE | {"start": {"event": "signup"}, "steps": 3}),
    ("lifecycle", RANGE | {"event": {"event": "view"}}),
    ("stickiness", RANGE | {"event": {"event": "view"}}),
]


def test_answers_equal_the_reference(backend_server: ServerProcess) -> None:
    events = _events()
    url = backend_server.url
    for batch in (events, events[:5]):  # the second send is all duplicates
        r = httpx.post(
            url + "/v1/events/batch", json={"events": batch}, headers=backend_server.headers()
        )
        assert r.status_code == 200, r.text
    other = backend_server.create_key("write", "insights-other")
    stranger = {**events[0], "eventId": "ev-other", "eventType": "signup"}
    r = httpx.post(url + "/v1/events", json=stranger, headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 200, r.text
    log = [_as_insight("default", e) for e in events] + [_as_insight("x", stranger)]
    answers = {}
    for kind, body in QUERIES:
        r = httpx.post(
            f"{url}/v1/insights/{kind}", json=body, headers=backend_server.headers("read")
        )
        assert r.status_code == 200, (kind, r.text)
        expected = run_reference(parse_query(kind, msgspec.json.encode(body)), log, "default")
        assert r.json() == msgspec.to_builtins(expected), kind
        answers[kind] = r.json()
    # not empty answers: the comparisons above mean something
    assert answers["funnels"]["steps"][2]["count"] > 0
    # every user viewed before dateFrom: read with its history, nobody is new
    assert answers["lifecycle"]["new"] == [0] * 6
    assert sum(answers["lifecycle"]["resurrecting"]) > 0
    assert any(s["values"] != [0] * 6 for s in answers["trends"]["previous"])
    assert answers["paths"]["edges"]
    assert sum(answers["stickiness"]["actors"]) == 5


@pytest.fixture(scope="module")
def read_headers(shared_server: ServerProcess) -> dict[str, str]:
    return shared_server.headers("read")


@pytest.mark.parametrize(
    ("path", "body", "status", "error", "message"),
    [
        (
            "funnels",
            RANGE | {"steps": [{}, {}, {"filters": [{"key": "a", "op": "foo", "value": 1}]}]},
            400,
            "invalid_query",
            "steps[2].filters[0].op: unknown operator 'foo'",
        ),
        (
            "trends",
            RANGE | {"series": [{}], "timezone": "Nowhere/City"},
            400,
            "invalid_query",
            "timezone: unknown time zone 'Nowhere/City'",
        ),
        ("paths", b"{not json", 400, "invalid_query", None),
        ("cohorts", RANGE, 404, None, None),
    ],
)
def test_bad_queries(
    shared_server: ServerProcess,
    read_headers: dict[str, str],
    path: str,
    body: Any,
    status: int,
    error: str | None,
    message: str | None,
) -> None:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    headers = read_headers | {"Content-Type": "application/json"}
    r = httpx.post(f"{shared_server.url}/v1/insights/{path}", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    if error is not None:
        assert r.json()["error"] == error
    if message is not None:
        assert r.json()["message"] == message


def test_read_scope_and_json_body(shared_server: ServerProcess) -> None:
    url = shared_server.url + "/v1/insights/lifecycle"
    assert httpx.post(url, json=RANGE).status_code == 401
    assert httpx.post(url, json=RANGE, headers=shared_server.headers("write")).status_code == 403
    r = httpx.post(url, content=b"x", headers=shared_server.headers("read"))
    assert r.status_code == 415, r.text


def test_a_deleted_user_leaves_the_answers(server: ServerProcess) -> None:
    """Insights read the storage as it is now: no stale answer after a deletion."""
    events = _events()
    r = httpx.post(
        server.url + "/v1/events/batch", json={"events": events}, headers=server.headers()
    )
    assert r.status_code == 200, r.text
    body = RANGE | {"series": [{"math": "unique_users"}], "interval": "month"}
    url, read = server.url + "/v1/insights/trends", server.headers("read")
    assert httpx.post(url, json=body, headers=read).json()["series"][0]["values"] == [5]
    r = httpx.delete(server.url + "/v1/users/u3", headers=server.headers("admin"))
    assert r.status_code == 200, r.text
    assert httpx.post(url, json=body, headers=read).json()["series"][0]["values"] == [4]
    log = [_as_insight("default", e) for e in events if e["userId"] != "u3"]
    expected = run_reference(parse_query("trends", msgspec.json.encode(body)), log, "default")
    assert httpx.post(url, json=body, headers=read).json() == msgspec.to_builtins(expected)


def test_postgres_answers_422_past_the_hot_events_a_query_may_load(
    storage_url: str, server_factory: Any
) -> None:
    """``INNKT_INSIGHTS_MAX_EVENTS`` bounds the hot rows (not yet compacted into
    segments) one query copies into memory on PostgreSQL: with compaction held back
    (another session holds the segment lock), a range of more is 422
    ``query_too_large``, a narrower one is answered; once compacted, the whole range is
    answered. SQLite reads its hot rows in place and is bounded by DuckDB's memory
    limit only."""
    server = server_factory(env={"INNKT_INSIGHTS_MAX_EVENTS": "20"}, db=storage_url)
    events = _events()  # 28 in the range, 9 in its first two days
    url, read = server.url + "/v1/insights/trends", server.headers("read")
    body = RANGE | {"series": [{"event": "view"}], "interval": "month"}

    def ingest() -> None:
        r = httpx.post(
            server.url + "/v1/events/batch", json={"events": events}, headers=server.headers()
        )
        assert r.status_code == 200, r.text

    if not storage_url.startswith("postgresql"):
        ingest()
        r = httpx.post(url, json=body, headers=read)
        assert r.status_code == 200, r.text
        assert r.json()["series"][0]["values"][0] > 0
        return
    import psycopg

    from innkt_analytics.server.storage._pg_schema import SEGMENT_LOCK

    with psycopg.connect(storage_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (SEGMENT_LOCK,))
        ingest()
        r = httpx.post(url, json=body, headers=read)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "query_too_large"
        assert "20 hot events" in r.json()["message"]
        # a narrower range of at most 20 events is answered
        narrow = body | {"dateTo": "2026-03-05"}
        r = httpx.post(url, json=narrow, headers=read)
        assert r.status_code == 200, r.text
        assert r.json()["series"][0]["values"][0] > 0
        holder.execute("SELECT pg_advisory_unlock(%s)", (SEGMENT_LOCK,))
        for _ in range(300):  # the server compacts them within its compact_age (2 s)
            if holder.execute("SELECT count(*) FROM events").fetchone() == (0,):
                break
            time.sleep(0.05)
    r = httpx.post(url, json=body, headers=read)
    assert r.status_code == 200, r.text
    log = [_as_insight("default", e) for e in events]
    expected = run_reference(parse_query("trends", msgspec.json.encode(body)), log, "default")
    assert r.json() == msgspec.to_builtins(expected)
