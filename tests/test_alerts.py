"""Threshold alerts: the pure engine, and the server with a real webhook receiver."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from innkt_analytics.server._alerts import (
    AlertEngine,
    AlertRule,
    AlertSettings,
    AlertStatus,
    validate_rule,
)
from innkt_analytics.shared._exceptions import ConfigError
from tests._server import ServerProcess

T0 = 1_800_000_000.0  # a fixed "now" in epoch seconds for the pure tests
FAST = {"INNKT_ALERT_INTERVAL": "0.1", "INNKT_ALERT_WEBHOOK_BACKOFF": "0.01"}


def _rule(kind: str, **fields: Any) -> AlertRule:
    base: dict[str, Any] = {"name": kind, "kind": kind, "id": "r-" + kind, "project": "p"}
    return validate_rule(AlertRule(**{**base, **fields}))


# -- the engine, sans I/O -------------------------------------------------------------


def test_event_rate_fires_once_while_true_and_resolves_when_the_window_passes() -> None:
    engine = AlertEngine(started=T0)
    engine.set_rules([_rule("event_rate", event_type="fail", threshold=2, window_seconds=10)])
    engine.observe("p", [("fail", 0.0), ("fail", 0.0)], T0)
    assert engine.evaluate(T0) == []  # 2 is not more than 2
    engine.observe("p", [("fail", 0.0), ("ok", 0.0)], T0 + 1)
    (fired,) = engine.evaluate(T0 + 1)
    assert (fired.status, fired.value) == (AlertStatus.FIRING, 3.0)
    engine.observe("p", [("fail", 0.0)], T0 + 2)
    assert engine.evaluate(T0 + 2) == []  # still true: no second notice
    assert engine.evaluate(T0 + 5) == []
    assert engine.evaluate(T0 + 10) == []  # the window (T0, T0+10] still holds all four
    (resolved,) = engine.evaluate(T0 + 11)  # the first two fell out of the window
    assert (resolved.status, resolved.value) == (AlertStatus.OK, 2.0)
    assert engine.evaluate(T0 + 30) == []


def test_event_rate_counts_only_its_project_and_type() -> None:
    engine = AlertEngine(started=T0)
    engine.set_rules([_rule("event_rate", event_type="fail", threshold=0)])
    engine.observe("other", [("fail", 0.0)], T0)
    engine.observe("p", [("ok", 0.0)], T0)
    assert engine.evaluate(T0) == []
    engine.observe("p", [("fail", 0.0)], T0)
    assert [n.status for n in engine.evaluate(T0)] == [AlertStatus.FIRING]


def test_ingest_lag_uses_the_mean_over_the_window() -> None:
    engine = AlertEngine(started=T0)
    engine.set_rules([_rule("ingest_lag", threshold=60, window_seconds=30)])
    engine.observe("p", [("a", 10.0), ("b", 20.0)], T0)
    assert engine.evaluate(T0) == []
    engine.observe("p", [("a", 300.0)], T0 + 1)
    (fired,) = engine.evaluate(T0 + 1)
    assert fired.status is AlertStatus.FIRING
    assert fired.value == pytest.approx(110.0)
    # No events in the window: nothing is late, so the alert resolves.
    (resolved,) = engine.evaluate(T0 + 40)
    assert resolved.status is AlertStatus.OK


def test_no_events_counts_silence_from_start_then_from_the_last_event() -> None:
    engine = AlertEngine(started=T0)
    rule = _rule("no_events", window_seconds=60, created_at=int((T0 - 3600) * 1000))
    engine.set_rules([rule])
    # Nothing seen since this process started 30 s ago: not silent long enough.
    assert engine.evaluate(T0 + 30) == []
    (fired,) = engine.evaluate(T0 + 61)
    assert (fired.status, fired.value) == (AlertStatus.FIRING, 61.0)
    engine.observe("p", [("x", 0.0)], T0 + 70)
    (resolved,) = engine.evaluate(T0 + 71)
    assert resolved.status is AlertStatus.OK
    assert [n.status for n in engine.evaluate(T0 + 131)] == [AlertStatus.FIRING]


def test_no_events_of_one_type_and_a_rule_newer_than_the_process() -> None:
    engine = AlertEngine(started=T0)
    rule = _rule(
        "no_events", event_type="heartbeat", window_seconds=10, created_at=int((T0 + 100) * 1000)
    )
    engine.set_rules([rule])
    engine.observe("p", [("other", 0.0)], T0 + 105)
    assert engine.evaluate(T0 + 109) == []  # silence counts from the rule's creation
    assert [n.status for n in engine.evaluate(T0 + 110)] == [AlertStatus.FIRING]


def test_set_rules_keeps_states_and_forgets_removed_rules() -> None:
    engine = AlertEngine(started=T0)
    rate = _rule("event_rate", event_type="e", threshold=0)
    engine.set_rules([rate])
    engine.observe("p", [("e", 0.0)], T0)
    assert len(engine.evaluate(T0)) == 1
    engine.set_rules([rate, _rule("ingest_lag", threshold=5)])
    assert engine.evaluate(T0) == []  # reloading the same rule does not re-fire it
    engine.set_rules([])
    engine.set_rules([rate])
    # A new life: counts of a type are kept only while some rule watches it.
    assert engine.evaluate(T0) == []
    engine.observe("p", [("e", 0.0)], T0 + 1)
    assert [n.status for n in engine.evaluate(T0 + 1)] == [AlertStatus.FIRING]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "event_rate"}, "eventType"),
        ({"kind": "event_rate", "event_type": "x", "threshold": -1}, "threshold"),
        ({"kind": "ingest_lag", "threshold": 0}, "threshold"),
        ({"kind": "event_rate", "event_type": "x", "window_seconds": 0.5}, "windowSeconds"),
        ({"kind": "ingest_lag", "threshold": 1, "window_seconds": 7200}, "windowSeconds"),
        ({"kind": "no_events", "webhook_url": "ftp://example.com/x"}, "webhookUrl"),
        ({"kind": "no_events", "webhook_url": "http:///nohost"}, "webhookUrl"),
    ],
)
def test_validate_rule_names_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_rule(AlertRule(name="r", **fields))
    assert caught.value.field == field


def test_settings_from_env() -> None:
    settings = AlertSettings.from_env({"INNKT_ALERT_INTERVAL": "0.5"})
    assert settings.interval == 0.5
    with pytest.raises(ConfigError) as caught:
        AlertSettings.from_env({"INNKT_ALERT_WEBHOOK_ATTEMPTS": "many"})
    assert caught.value.field == "INNKT_ALERT_WEBHOOK_ATTEMPTS"
    with pytest.raises(ConfigError):
        AlertSettings.from_env({"INNKT_ALERT_INTERVAL": "-1"})


# -- the server, with a real webhook receiver ------------------------------------------


class Receiver:
    """A tiny HTTP server that records webhook POSTs and answers from a script."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # answers to give first; then 200
        self._cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._cond:
                    receiver.posts.append((dict(self.headers.items()), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.posts) >= n, timeout)
            return [json.loads(body) for _, body in self.posts]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def alert_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(env=FAST)


def _post_events(server: ServerProcess, event_type: str, n: int, age: float = 0.0) -> None:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
    events = [
        {
            "eventId": uuid.uuid4().hex,
            "eventType": event_type,
            "sessionId": "s1",
            "timestamp": when.isoformat(),
        }
        for _ in range(n)
    ]
    r = httpx.post(
        server.url + "/v1/events/batch", json={"events": events}, headers=server.headers("write")
    )
    assert r.status_code == 200, r.text


def _create(server: ServerProcess, rule: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(server.url + "/v1/alerts/rules", json=rule, headers=server.headers("admin"))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def _realtime(server: ServerProcess) -> ClientConnection:
    ws = connect(
        server.url.replace("http://", "ws://") + "/v1/realtime",
        subprotocols=[Subprotocol("innkt.v1")],
        additional_headers=server.headers("read"),
    )
    return ws


def _alert_messages(ws: ClientConnection, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(found) < n and time.monotonic() < deadline:
        try:
            envelope = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        except TimeoutError:
            break
        if envelope["type"] == "alert":
            found.append(envelope["payload"])
    return found


def test_event_rate_alert_fires_webhook_and_realtime_once_then_resolves(
    alert_server: ServerProcess, receiver: Receiver
) -> None:
    rule = _create(
        alert_server,
        {
            "name": "Checkout failures",
            "kind": "event_rate",
            "eventType": "checkout_failed",
            "threshold": 2,
            "windowSeconds": 2,
            "webhookUrl": receiver.url,
            "webhookSecret": "s3cret",
        },
    )
    assert rule["id"].startswith("alr_")
    assert "webhookSecret" not in rule
    assert rule["hasWebhookSecret"] is True
    with _realtime(alert_server) as ws:
        _post_events(alert_server, "checkout_failed", 2)
        _post_events(alert_server, "page_view", 5)
        _post_events(alert_server, "checkout_failed", 1)
        # The condition stays true for ~2 s (many evaluations), then the window passes.
        posts = receiver.wait_for(2)
        live = _alert_messages(ws, 2)
    assert [p["status"] for p in posts] == ["firing", "resolved"]
    assert [p["status"] for p in live] == ["firing", "resolved"]
    firing = posts[0]
    assert firing["ruleId"] == rule["id"]
    assert (firing["eventType"], firing["value"], firing["threshold"]) == ("checkout_failed", 3, 2)
    assert live[0] == firing
    headers, body = receiver.posts[0]
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Innkt-Signature"] == "sha256=" + expected
    assert headers["Content-Type"] == "application/json"
    listed = httpx.get(alert_server.url + "/v1/alerts/rules", headers=alert_server.headers("admin"))
    (shown,) = listed.json()["rules"]
    assert shown["status"] == "ok"
    assert shown["lastDelivery"]["ok"] is True
    assert shown["lastDelivery"]["alertStatus"] == "resolved"


def test_no_events_alert_fires_after_silence_and_resolves_on_traffic(
    alert_server: ServerProcess, receiver: Receiver
) -> None:
    _create(
        alert_server,
        {"name": "Silence", "kind": "no_events", "windowSeconds": 1, "webhookUrl": receiver.url},
    )
    assert [p["status"] for p in receiver.wait_for(1)] == ["firing"]
    active = httpx.get(alert_server.url + "/v1/alerts", headers=alert_server.headers("read"))
    assert [a["name"] for a in active.json()["firing"]] == ["Silence"]
    _post_events(alert_server, "anything", 1)
    assert [p["status"] for p in receiver.wait_for(2)] == ["firing", "resolved"]
    recent = httpx.get(alert_server.url + "/v1/alerts", headers=alert_server.headers("read"))
    assert recent.json()["firing"] == []
    assert [a["status"] for a in recent.json()["recent"]][:2] == ["resolved", "firing"]


def test_ingest_lag_alert_from_late_events(alert_server: ServerProcess, receiver: Receiver) -> None:
    _create(
        alert_server,
        {
            "name": "Late data",
            "kind": "ingest_lag",
            "threshold": 60,
            "windowSeconds": 1,
            "webhookUrl": receiver.url,
        },
    )
    _post_events(alert_server, "offline_replay", 3, age=600)  # a device back after 10 min
    posts = receiver.wait_for(2)
    assert [p["status"] for p in posts] == ["firing", "resolved"]
    assert posts[0]["value"] >= 600


def test_webhook_is_retried_on_server_errors(
    alert_server: ServerProcess, receiver: Receiver
) -> None:
    receiver.statuses = [503, 500]
    rule = _create(
        alert_server,
        {"name": "Retry", "kind": "no_events", "windowSeconds": 1, "webhookUrl": receiver.url},
    )
    posts = receiver.wait_for(3)
    assert [p["status"] for p in posts] == ["firing"] * 3
    assert len({body for _, body in receiver.posts}) == 1  # the same notice each time
    deadline = time.monotonic() + 10
    delivery = None
    while time.monotonic() < deadline and not delivery:
        listed = httpx.get(
            alert_server.url + "/v1/alerts/rules", headers=alert_server.headers("admin")
        )
        delivery = listed.json()["rules"][0]["lastDelivery"]
        time.sleep(0.05)
    assert delivery is not None
    assert (delivery["ok"], delivery["attempts"], delivery["status"]) == (True, 3, 200)
    assert listed.json()["rules"][0]["id"] == rule["id"]


def test_rules_api_scopes_validation_delete_and_restart(backend_server: ServerProcess) -> None:
    server = backend_server
    url = server.url + "/v1/alerts/rules"
    body = {"name": "r", "kind": "event_rate", "eventType": "e", "threshold": 5}
    assert httpx.post(url, json=body, headers=server.headers("read")).status_code == 403
    assert httpx.get(url, headers=server.headers("write")).status_code == 403
    bad = httpx.post(url, json={**body, "eventType": None}, headers=server.headers("admin"))
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_rule")
    assert "eventType" in bad.json()["message"]
    unknown = httpx.post(url, json={**body, "kind": "vibes"}, headers=server.headers("admin"))
    assert unknown.status_code == 400
    not_utf8 = httpx.post(
        url,
        content=b'{"name":"\xff","kind":"no_events"}',
        headers={**server.headers("admin"), "Content-Type": "application/json"},
    )
    assert not_utf8.status_code == 400
    keep = _create(server, body)
    gone = _create(server, {**body, "name": "gone"})
    assert httpx.delete(f"{url}/{gone['id']}", headers=server.headers("admin")).status_code == 204
    again = httpx.delete(f"{url}/{gone['id']}", headers=server.headers("admin"))
    assert again.status_code == 404
    other_admin = server.create_key("admin", project="other")
    foreign = httpx.get(url, headers={"Authorization": f"Bearer {other_admin}"})
    assert foreign.json()["rules"] == []
    server.restart()
    listed = httpx.get(url, headers=server.headers("admin")).json()["rules"]
    assert [r["id"] for r in listed] == [keep["id"]]
    health = httpx.get(server.url + "/v1/health", headers=server.headers("read")).json()
    assert health["alerts"]["rules"] == 1
