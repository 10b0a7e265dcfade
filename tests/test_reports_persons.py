"""A scheduled report counts persons as ``POST /v1/insights/...`` does (issues 15, 19).

Journeys where anonymous -> identified matters: a signup sent anonymously, the purchase
signed in, an identify between them; a person on two devices. By id the funnel shows
no conversion; by person, and so in the report, it does.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests._server import ServerProcess
from tests.test_alerts import Receiver

UTC = dt.UTC


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _event(kind: str, at: dt.datetime, **ids: str) -> dict[str, Any]:
    return {"eventId": uuid.uuid4().hex, "eventType": kind, "timestamp": at.isoformat(), **ids}


def _journeys(day: dt.date) -> list[dict[str, Any]]:
    at = dt.datetime.combine(day, dt.time(9), tzinfo=UTC)
    minutes = [at + dt.timedelta(minutes=m) for m in range(0, 600, 10)]
    return [
        # ann: anonymous signup, identify, signed-in purchase
        _event("view", minutes[0], anonymousId="anon-ann"),
        _event("signup", minutes[1], anonymousId="anon-ann"),
        _event("identify", minutes[2], anonymousId="anon-ann", userId="ann"),
        _event("buy", minutes[3], userId="ann"),
        # bob: the phone anonymous, identified on the laptop later; buys on the laptop
        _event("view", minutes[4], anonymousId="phone-bob"),
        _event("signup", minutes[5], anonymousId="phone-bob"),
        _event("identify", minutes[6], anonymousId="laptop-bob", userId="bob"),
        _event("identify", minutes[7], anonymousId="phone-bob", userId="bob"),
        _event("buy", minutes[8], anonymousId="laptop-bob", userId="bob"),
        _event("view", minutes[9], userId="bob"),
        # cat: never identified
        _event("view", minutes[10], anonymousId="anon-cat"),
        _event("signup", minutes[11], anonymousId="anon-cat"),
    ]


QUERIES: list[dict[str, Any]] = [
    {"kind": "funnels", "query": {"steps": [{"event": "signup"}, {"event": "buy"}]}},
    {
        "kind": "trends",
        "query": {"interval": "hour", "series": [{"math": "unique_users"}, {"event": "buy"}]},
    },
    {"kind": "retention", "query": {"target": {"event": "buy"}, "periods": 1}},
    {"kind": "paths", "query": {"start": {"event": "signup"}, "steps": 2}},
    {"kind": "lifecycle", "query": {"event": {"event": "view"}}},
    {"kind": "stickiness", "query": {"event": {}}},
]


def _insight(server: ServerProcess, kind: str, body: dict[str, Any]) -> Any:
    r = httpx.post(
        f"{server.url}/v1/insights/{kind}", json=body, headers=server.headers("read"), timeout=60
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_a_report_counts_persons_like_the_insights_api(
    storage_url: str, server_factory: Any, receiver: Receiver
) -> None:
    server = server_factory(db=storage_url, env={"INNKT_REPORT_INTERVAL": "0"})
    # the report's yesterday is Paris's: in UTC's last hour of a day, UTC's is another
    yesterday = dt.datetime.now(ZoneInfo("Europe/Paris")).date() - dt.timedelta(days=1)
    r = httpx.post(
        server.url + "/v1/events/batch",
        json={"events": _journeys(yesterday)},
        headers=server.headers("write"),
    )
    assert r.status_code == 200, r.text
    assert not r.json()["rejected"], r.text
    spec = {
        "name": "Persons",
        "timezone": "Europe/Paris",
        "hour": 7,
        "webhookUrl": receiver.url,
        "queries": QUERIES,
    }
    admin = server.headers("admin")
    created = httpx.post(server.url + "/v1/reports", json=spec, headers=admin)
    assert created.status_code == 201, created.text
    report_id = created.json()["id"]
    sent = httpx.post(f"{server.url}/v1/reports/{report_id}/send", headers=admin, timeout=60)
    assert sent.status_code == 200, sent.text
    assert sent.json()["ok"] is True, sent.json()
    (payload,) = receiver.wait_for(1)
    window = {
        "dateFrom": payload["dateFrom"],
        "dateTo": payload["dateTo"],
        "timezone": payload["timezone"],
    }
    for item, result in zip(QUERIES, payload["results"], strict=True):
        assert "error" not in result, result
        assert result["result"] == _insight(server, item["kind"], item["query"] | window), item
    # the journeys make persons differ from ids, so the comparison above means something
    funnel = payload["results"][0]["result"]
    assert [s["count"] for s in funnel["steps"]] == [3, 2]
    by_id = _insight(server, "funnels", QUERIES[0]["query"] | window | {"countBy": "id"})
    assert [s["count"] for s in by_id["steps"]] == [3, 0]
