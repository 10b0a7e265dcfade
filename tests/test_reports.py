"""Scheduled reports: the schedule around DST, validation, and delivery to a real webhook
receiver and a real SMTP server (aiosmtpd), through the server and through the scheduler."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from innkt_analytics.server._kv import make_kv
from innkt_analytics.server._reports import (
    ReportQuery,
    ReportService,
    ReportSpec,
    next_run,
    previous_run,
    scheduled_at,
    validate_report,
)
from innkt_analytics.server._settings import ServerSettings
from innkt_analytics.server.storage import make_storage
from innkt_analytics.shared._exceptions import ConfigError
from tests._server import ServerProcess
from tests.test_alerts import Receiver

UTC = dt.UTC


def _spec(**fields: Any) -> ReportSpec:
    base: dict[str, Any] = {
        "name": "r",
        "queries": [ReportQuery(kind="stickiness", query={})],
        "webhook_url": "http://127.0.0.1:9/x",
    }
    return ReportSpec(**{**base, **fields})


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


# -- the schedule, pure ------------------------------------------------------------------


def test_daily_at_nine_in_paris_keeps_the_wall_clock_across_dst() -> None:
    spec = _spec(hour=9, timezone="Europe/Paris")
    # 29 March 2026: clocks go from 02:00 CET to 03:00 CEST; 25 October back again
    assert scheduled_at(spec, dt.date(2026, 3, 28)) == _utc(2026, 3, 28, 8)
    assert scheduled_at(spec, dt.date(2026, 3, 29)) == _utc(2026, 3, 29, 7)
    assert scheduled_at(spec, dt.date(2026, 10, 25)) == _utc(2026, 10, 25, 8)
    assert next_run(spec, _utc(2026, 3, 28, 8)) == (dt.date(2026, 3, 29), _utc(2026, 3, 29, 7))
    assert next_run(spec, _utc(2026, 3, 28, 7, 59)) == (dt.date(2026, 3, 28), _utc(2026, 3, 28, 8))
    assert previous_run(spec, _utc(2026, 3, 29, 7)) == (dt.date(2026, 3, 29), _utc(2026, 3, 29, 7))
    assert previous_run(spec, _utc(2026, 3, 29, 6, 59)) == (
        dt.date(2026, 3, 28),
        _utc(2026, 3, 28, 8),
    )
    # the day after the change: 23 hours between runs in spring, 25 in autumn
    spring = next_run(spec, _utc(2026, 3, 28, 8))[1] - _utc(2026, 3, 28, 8)
    autumn = next_run(spec, _utc(2026, 10, 24, 7))[1] - _utc(2026, 10, 24, 7)
    assert (spring, autumn) == (dt.timedelta(hours=23), dt.timedelta(hours=25))


def test_an_hour_in_the_gap_moves_forward_and_a_repeated_hour_runs_once() -> None:
    spec = _spec(hour=2, timezone="Europe/Paris")
    # 02:00 does not exist on 29 March: the run is at 03:00 CEST (01:00 UTC)
    assert scheduled_at(spec, dt.date(2026, 3, 29)) == _utc(2026, 3, 29, 1)
    # 02:00 happens twice on 25 October: the first (CEST, 00:00 UTC) only
    assert scheduled_at(spec, dt.date(2026, 10, 25)) == _utc(2026, 10, 25, 0)
    runs = []
    now = _utc(2026, 10, 23, 12)
    for _ in range(4):
        now = next_run(spec, now)[1]
        runs.append(now)
    assert runs == [
        _utc(2026, 10, 24, 0),
        _utc(2026, 10, 25, 0),
        _utc(2026, 10, 26, 1),
        _utc(2026, 10, 27, 1),
    ]


def test_weekly_on_monday_in_new_york_across_the_november_change() -> None:
    spec = _spec(frequency="weekly", weekday="monday", hour=8, timezone="America/New_York")
    assert scheduled_at(spec, dt.date(2026, 10, 27)) is None  # a Tuesday
    # Monday 26 October 08:00 EDT, then Monday 2 November 08:00 EST (1 November: back)
    first = next_run(spec, _utc(2026, 10, 21))
    assert first == (dt.date(2026, 10, 26), _utc(2026, 10, 26, 12))
    assert next_run(spec, first[1]) == (dt.date(2026, 11, 2), _utc(2026, 11, 2, 13))
    assert previous_run(spec, _utc(2026, 11, 2, 12, 59)) == first


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"frequency": "weekly"}, "weekday"),
        ({"weekday": "monday"}, "weekday"),
        ({"webhook_url": "ftp://example.com/x"}, "webhookUrl"),
        ({"webhook_url": None}, "webhookUrl"),
        (
            {"queries": [ReportQuery(kind="trends", query={"series": []})]},
            "queries[0].query.series",
        ),
        (
            {
                "queries": [
                    ReportQuery(kind="trends", query={"series": [{"event": "a"}], "dateFrom": "x"})
                ]
            },
            "queries[0].query.dateFrom",
        ),
        (
            {
                "queries": [
                    ReportQuery(kind="funnels", query={"steps": [{"event": "a"}], "oops": 1})
                ]
            },
            "queries[0].query.oops",
        ),
        (
            {
                "lookback_days": 7,
                "queries": [
                    ReportQuery(kind="trends", query={"series": [{}], "interval": "minute"})
                ],
            },
            "queries[0].query.dateTo",
        ),
    ],
)
def test_validation_names_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_report(_spec(**fields))
    assert caught.value.field == field


# -- a real SMTP server ----------------------------------------------------------------


class Mailbox:
    """aiosmtpd on a free local port; keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self._cond = threading.Condition()
        box = self

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                content = envelope.original_content or b""
                message = email.message_from_bytes(content, policy=email.policy.default)
                with box._cond:
                    box.messages.append((list(envelope.rcpt_tos), message))
                    box._cond.notify_all()
                return "250 OK"

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def wait_for(self, n: int, timeout: float = 20.0) -> list[tuple[list[str], EmailMessage]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    yield box
    box.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _smtp_env(box: Mailbox) -> dict[str, str]:
    return {
        "INNKT_SMTP_HOST": "127.0.0.1",
        "INNKT_SMTP_PORT": str(box.port),
        "INNKT_SMTP_SECURITY": "none",
        "INNKT_SMTP_FROM": "reports@innkt.test",
        "INNKT_REPORT_INTERVAL": "0",
    }


def _events(server: ServerProcess, day: dt.date) -> str:
    """Yesterday's events: views at 10:00 by ann, bob, cat; signups at 10:20 (ann) and
    14:00 (bob); cat comes back the same day. Returns the run's tag."""
    run = uuid.uuid4().hex[:8]
    at = dt.datetime.combine(day, dt.time(10), tzinfo=UTC)
    plan = [
        ("view", "ann", 0),
        ("view", "bob", 0),
        ("view", "cat", 0),
        ("signup", "ann", 20),
        ("signup", "bob", 240),
        ("view", "cat", 300),
    ]
    events = [
        {
            "eventId": f"{run}-{i}",
            "eventType": t,
            "userId": f"{u}-{run}",
            "timestamp": (at + dt.timedelta(minutes=m)).isoformat(),
            "properties": {"run": run},
        }
        for i, (t, u, m) in enumerate(plan)
    ]
    r = httpx.post(
        server.url + "/v1/events/batch", json={"events": events}, headers=server.headers("write")
    )
    assert r.status_code == 200, r.text
    return run


def test_send_delivers_by_webhook_and_email_with_the_right_numbers(
    server_factory: Callable[..., ServerProcess], mailbox: Mailbox, receiver: Receiver
) -> None:
    server = server_factory(env=_smtp_env(mailbox))
    yesterday = dt.datetime.now(UTC).date() - dt.timedelta(days=1)
    run = _events(server, yesterday)
    only = [{"key": "run", "op": "eq", "value": run}]
    body = {
        "name": "Daily product",
        "timezone": "UTC",
        "hour": 7,
        "webhookUrl": receiver.url,
        "webhookSecret": "s3cret",
        "emails": ["team@innkt.test"],
        "queries": [
            {
                "kind": "trends",
                "title": "Views and signups by hour",
                "query": {
                    "interval": "hour",
                    "series": [{"event": "view"}, {"event": "signup"}],
                    "filters": only,
                },
            },
            {
                "kind": "funnels",
                "title": "View to signup",
                "query": {"steps": [{"event": "view"}, {"event": "signup"}], "filters": only},
            },
            {"kind": "retention", "title": "Retention", "query": {"periods": 2, "filters": only}},
        ],
    }
    admin = server.headers("admin")
    r = httpx.post(server.url + "/v1/reports", json=body, headers=admin)
    assert r.status_code == 201, r.text
    report = r.json()
    assert report["id"].startswith("rpt_")
    assert "webhookSecret" not in report
    assert report["hasWebhookSecret"] is True
    next_at = dt.datetime.fromisoformat(report["nextRun"])
    assert (next_at.hour, next_at.minute) == (7, 0)
    assert next_at > dt.datetime.now(UTC)

    sent = httpx.post(f"{server.url}/v1/reports/{report['id']}/send", headers=admin, timeout=60)
    assert sent.status_code == 200, sent.text
    outcome = sent.json()
    assert outcome["ok"] is True, outcome
    assert (outcome["dateFrom"], outcome["dateTo"]) == (
        yesterday.isoformat(),
        (yesterday + dt.timedelta(days=1)).isoformat(),
    )
    assert sorted(d["target"] for d in outcome["deliveries"]) == ["email", "webhook"]

    # the webhook: the results as the insights routes answer them
    (payload,) = receiver.wait_for(1)
    trends, funnel, retention = (r["result"] for r in payload["results"])
    assert len(trends["buckets"]) == 24
    views, signups = (s["values"] for s in trends["series"])
    assert (views[10], views[15], sum(views)) == (3, 1, 4)
    assert (signups[10], signups[14], sum(signups)) == (1, 1, 2)
    assert [s["count"] for s in funnel["steps"]] == [3, 2]
    assert retention["cohorts"][0]["values"][0] == 3
    headers = receiver.posts[0][0]
    assert headers["X-Innkt-Report"] == report["id"]
    assert headers["X-Innkt-Signature"].startswith("sha256=")

    # the e-mail: multipart/alternative, a text table and HTML with inline SVG charts
    ((rcpt, message),) = mailbox.wait_for(1)
    assert rcpt == ["team@innkt.test"]
    assert message["From"] == "reports@innkt.test"
    assert "Daily product" in message["Subject"]
    assert message.get_content_type() == "multipart/alternative"
    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None
    assert html_part is not None
    text, page = text_part.get_content(), html_part.get_content()
    hour10 = next(line for line in text.splitlines() if line.startswith(f"{yesterday}T10:00"))
    assert hour10.split()[1:] == ["3", "1"]  # views, signups
    assert "66.7%" in text  # 2 of 3 viewers signed up
    assert page.count("<svg") == 2  # the trend's lines and the funnel's bars
    assert "<polyline" in page
    assert "<rect" in page
    assert "background:rgba(37,99,235,1.00)" in page  # the retention heat map's first cell
    for external in ("src=", "href=", "url(", "@import"):  # nothing loaded from elsewhere
        assert external not in page

    shown = httpx.get(f"{server.url}/v1/reports/{report['id']}", headers=server.headers("read"))
    status = shown.json()["status"]
    assert status["lastError"] is None
    assert status["lastRun"] > 0
    listed = httpx.get(server.url + "/v1/reports", headers=server.headers("read")).json()
    assert [x["id"] for x in listed["reports"]] == [report["id"]]


def test_report_routes_scopes_validation_update_and_delete(server: ServerProcess) -> None:
    url = server.url + "/v1/reports"
    body = {"name": "r", "queries": [{"kind": "lifecycle", "query": {}}], "emails": ["a@b.c"]}
    assert httpx.post(url, json=body, headers=server.headers("read")).status_code == 403
    bad = httpx.post(url, json={**body, "hour": 24}, headers=server.headers("admin"))
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_report")
    assert "hour" in bad.json()["message"]
    bad = httpx.post(
        url,
        json={**body, "queries": [{"kind": "paths", "query": {"start": {"event": 5}}}]},
        headers=server.headers("admin"),
    )
    assert bad.status_code == 400
    assert bad.json()["message"].startswith("queries[0].query.start.event:"), bad.json()
    made = httpx.post(url, json=body, headers=server.headers("admin")).json()
    one = f"{url}/{made['id']}"
    weekly = {**body, "frequency": "weekly", "weekday": "friday"}
    replaced = httpx.put(one, json=weekly, headers=server.headers("admin"))
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["weekday"] == "friday"
    assert replaced.json()["createdAt"] == made["createdAt"]
    # no SMTP server configured: sending says so, and the status keeps the error
    sent = httpx.post(one + "/send", headers=server.headers("admin")).json()
    assert sent["ok"] is False
    assert "INNKT_SMTP_HOST" in sent["error"]
    status = httpx.get(one, headers=server.headers("read")).json()["status"]
    assert "INNKT_SMTP_HOST" in status["lastError"]
    assert httpx.delete(one, headers=server.headers("admin")).status_code == 204
    assert httpx.get(one, headers=server.headers("read")).status_code == 404
    assert httpx.post(one + "/send", headers=server.headers("admin")).status_code == 404


# -- the scheduler, in process over a real database ----------------------------------------


def _service(
    url: str, **settings: Any
) -> tuple[ReportService, Callable[[], Any], Callable[[], Any]]:
    kv, storage = make_kv(url), make_storage(url)
    service = ReportService(kv, storage, ServerSettings(db=url, **settings))

    async def open_() -> None:
        await storage.open()
        await kv.open()

    async def close() -> None:
        await service.stop()
        await kv.close()
        await storage.close()

    return service, open_, close


def test_the_scheduler_sends_once_per_period_across_instances(
    storage_url: str, receiver: Receiver
) -> None:
    a, open_a, close_a = _service(storage_url)
    b, open_b, close_b = _service(storage_url)

    async def scenario() -> None:
        await open_a()
        await open_b()
        try:
            spec = _spec(webhook_url=receiver.url, hour=6)
            report = await a.save("p", spec)
            assert report is not None
            later = dt.datetime.now(UTC) + dt.timedelta(days=1)
            # due at the latest 06:00 before `later`: both instances try at once
            started = await asyncio.gather(a.tick(later), b.tick(later), a.tick(later))
            assert sum(len(s) for s in started) == 1
            await a.drain()
            await b.drain()
            assert await a.tick(later) == []  # sent already
            assert await b.tick(later) == []
            status = (await a.status(report))[1]
            day, at = previous_run(report, later)
            assert status.last_period == f"{day.isoformat()}T06:00"
            assert status.last_period_at == int(at.timestamp() * 1000)
            assert status.last_error is None
            # the next day is the next period
            assert len(await b.tick(later + dt.timedelta(days=1))) == 1
            await b.drain()
        finally:
            await close_a()
            await close_b()

    asyncio.run(scenario())
    posts = receiver.wait_for(2)
    assert len(posts) == 2
    assert posts[0]["dateTo"] < posts[1]["dateTo"]


def test_a_failing_webhook_is_retried_and_the_status_shows_the_error(
    tmp_path: Path, receiver: Receiver
) -> None:
    service, open_, close = _service(
        str(tmp_path / "db.sqlite"), report_attempts=3, report_backoff=0.01
    )
    receiver.statuses = [500, 502, 503, 503, 200]

    async def scenario() -> tuple[Any, Any]:
        await open_()
        try:
            report = await service.save("p", _spec(webhook_url=receiver.url))
            assert report is not None
            later = dt.datetime.now(UTC) + dt.timedelta(days=1)
            assert await service.tick(later) == [report.id]
            await service.drain()
            failed = (await service.status(report))[1]
            # the next period: one more 503, then a 200
            assert await service.tick(later + dt.timedelta(days=1)) == [report.id]
            await service.drain()
            return failed, (await service.status(report))[1]
        finally:
            await close()

    failed, recovered = asyncio.run(scenario())
    assert failed.last_error == "webhook: HTTP 503"
    (delivery,) = failed.deliveries
    assert (delivery["ok"], delivery["attempts"], delivery["status"]) == (False, 3, 503)
    assert recovered.last_error is None
    assert (recovered.deliveries[0]["ok"], recovered.deliveries[0]["attempts"]) == (True, 2)
    assert len(receiver.wait_for(5)) == 5
    assert msgspec.json.decode(receiver.posts[0][1])["name"] == "r"
