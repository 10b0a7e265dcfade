"""Anomaly alert rules in the server: hourly series from storage, the detector, the webhook."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest

from innkt_analytics.server._alerts import AlertRule, validate_rule
from innkt_analytics.shared._exceptions import ConfigError
from tests._server import ServerProcess
from tests.test_alerts import Receiver

ENV = {
    "INNKT_ALERT_INTERVAL": "0.1",
    "INNKT_ALERT_WEBHOOK_BACKOFF": "0.01",
    "INNKT_ALERT_ANOMALY_GRACE": "0",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _post(server: ServerProcess, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 2000):
        r = httpx.post(
            server.url + "/v1/events/batch",
            json={"events": events[i : i + 2000]},
            headers=server.headers("write"),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == len(events[i : i + 2000])


def _hour_of_events(start: dt.datetime, counts: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {
            "eventId": uuid.uuid4().hex,
            "eventType": event_type,
            "userId": f"u{n}",
            "timestamp": (start + dt.timedelta(seconds=n * 3600 // max(1, count))).isoformat(),
        }
        for event_type, count in counts.items()
        for n in range(count)
    ]


def _last_full_hour() -> dt.datetime:
    """The start of the last complete hour (waiting out minute 59, so that hour does
    not change while the test runs)."""
    now = dt.datetime.now(dt.UTC)
    if now.minute == 59:
        time.sleep(61 - now.second)
        now = dt.datetime.now(dt.UTC)
    return now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)


def _history(last: dt.datetime, counts: dict[str, int]) -> list[dict[str, Any]]:
    """Four days of the same hourly ``counts`` before ``last``: too short for weeks,
    long enough for the hour-of-day pool."""
    events = []
    for h in range(96, 0, -1):
        events += _hour_of_events(last - dt.timedelta(hours=h), counts)
    return events


def test_a_spike_in_the_last_hour_is_sent_with_its_expected_range(
    server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    last = _last_full_hour()
    server = server_factory(env=ENV)
    events = _history(last, {"page_view": 30, "steady": 40, "rare": 3})
    # the hour evaluated: page views x 10; the quiet type x 5 (below the minimum volume)
    events += _hour_of_events(last, {"page_view": 300, "steady": 40, "rare": 15})
    _post(server, events)
    rule = {
        "name": "Unusual traffic",
        "kind": "anomaly",
        "webhookUrl": receiver.url,
        "series": [{"event": "page_view", "math": "unique_users"}],
    }
    r = httpx.post(server.url + "/v1/alerts/rules", json=rule, headers=server.headers("admin"))
    assert r.status_code == 201, r.text
    posts = receiver.wait_for(2)
    by_series = {p["series"]: p for p in posts}
    assert set(by_series) == {"event:page_view", "series:0"}
    spike = by_series["event:page_view"]
    assert spike["eventType"] == "page_view"
    assert (spike["kind"], spike["status"], spike["direction"]) == ("anomaly", "firing", "spike")
    assert (spike["value"], spike["expected"], spike["baseline"]) == (300.0, 30.0, "hour_of_day")
    assert spike["expectedLow"] < 30 < spike["expectedHigh"] < 300
    assert spike["hour"] == last.isoformat()
    users = by_series["series:0"]
    assert (users["value"], users["expected"]) == (300.0, 30.0)  # u0 … u299 this hour
    # evaluated once per hour: more evaluations send nothing more
    health: dict[str, Any] = {}
    seen = None
    for _ in range(200):
        health = httpx.get(server.url + "/v1/health", headers=server.headers("read")).json()
        if seen is None:
            seen = health["alerts"]["lastEvaluation"]
        elif health["alerts"]["lastEvaluation"] > seen:
            break
        time.sleep(0.05)
    assert health["alerts"]["anomalies"]["raised"] == 2
    assert len(receiver.posts) == 2
    recent = httpx.get(server.url + "/v1/alerts", headers=server.headers("read")).json()["recent"]
    assert {a["series"] for a in recent} == {"event:page_view", "series:0"}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "no_events", "series": [{"event": "a"}]}, "series"),
        ({"kind": "anomaly", "series": [{"event": "a", "math": "sum"}]}, "series[0].mathProperty"),
    ],
)
def test_anomaly_rule_validation_names_the_field(fields: dict[str, Any], field: str) -> None:
    rule = msgspec.convert({"name": "r", **fields}, AlertRule)
    with pytest.raises(ConfigError) as caught:
        validate_rule(rule)
    assert caught.value.field == field


def test_an_insights_series_counts_persons_like_the_api(
    server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    """The unique users of a watched series are persons: in the hour evaluated 150
    people browse anonymously and then signed in (identify links the two ids), so
    300 ids but 150 persons."""
    last = _last_full_hour()
    server = server_factory(env=ENV)
    events = _history(last, {"page_view": 30})
    for n in range(150):
        at = last + dt.timedelta(seconds=n * 20)
        for extra in (
            {"eventType": "page_view", "anonymousId": f"a{n}"},
            {"eventType": "identify", "anonymousId": f"a{n}", "userId": f"u{n}"},
            {"eventType": "page_view", "userId": f"u{n}"},
        ):
            events.append({"eventId": uuid.uuid4().hex, "timestamp": at.isoformat(), **extra})
    _post(server, events)
    rule = {
        "name": "Users",
        "kind": "anomaly",
        "eventType": "page_view",
        "webhookUrl": receiver.url,
        "series": [{"event": "page_view", "math": "unique_users"}],
    }
    r = httpx.post(server.url + "/v1/alerts/rules", json=rule, headers=server.headers("admin"))
    assert r.status_code == 201, r.text
    posts = receiver.wait_for(2)
    by_series = {p["series"]: p for p in posts}
    assert by_series["event:page_view"]["value"] == 300.0  # events
    assert by_series["series:0"]["value"] == 150.0  # persons, not the 300 ids
