"""The Segment-compatible API, driven by the real analytics-python SDK and by raw HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import logging
import threading
import time
import uuid
from typing import Any

import httpx
import msgspec
import pytest
from segment.analytics import Client  # type: ignore[import-untyped]
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from innkt_analytics.server._segment import SegmentMessage, parse_segment, translate_message
from innkt_analytics.shared._protocol import Limits
from tests._server import ServerProcess

NOW = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.UTC)


def _events(server: ServerProcess, **query: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {**query, "limit": "1000", **({"cursor": cursor} if cursor else {})}
        r = httpx.get(server.url + "/v1/events", params=params, headers=server.headers("read"))
        assert r.status_code == 200, r.text
        out += r.json()["events"]
        cursor = r.json()["nextCursor"]
        if cursor is None:
            return out


class _Errors:
    """Collects the SDK's on_error calls (it reports failures only through this hook)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        with self._lock:
            self.errors.append(f"{error!r} ({len(batch)} messages)")


def _client(server: ServerProcess, errors: _Errors, **options: Any) -> Client:
    return Client(
        write_key=server.write_key,
        host=server.url,
        on_error=errors,
        upload_interval=0.05,
        **options,
    )


def _unique() -> str:
    return uuid.uuid4().hex[:12]


# -- the real SDK -------------------------------------------------------------------


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_sdk_calls_of_every_type_arrive_mapped(
    shared_server: ServerProcess, use_gzip: bool
) -> None:
    user = "user-" + _unique()
    errors = _Errors()
    client = _client(shared_server, errors, gzip=use_gzip)
    context = {"device": {"model": "Pixel 9", "type": "android"}, "sessionId": "sess-1"}
    try:
        client.track(
            user, "Order Completed", {"total": 42.5}, context=dict(context), message_id=user + "-t"
        )
        client.identify(user, {"plan": "pro"}, message_id=user + "-i")
        client.page(user, "Docs", "Install", {"path": "/install"}, message_id=user + "-p")
        client.screen(user, None, "Home", message_id=user + "-s")
        client.group(user, "acme", {"employees": 40}, message_id=user + "-g")
        client.alias("anon-" + user, user, message_id=user + "-a")
        client.flush()
    finally:
        client.join()
    assert errors.errors == []

    by_id = {e["eventId"]: e for e in _events(shared_server, userId=user)}
    assert sorted(by_id) == sorted(user + s for s in ("-t", "-i", "-p", "-s", "-g", "-a"))
    track = by_id[user + "-t"]
    assert track["eventType"] == "Order Completed"
    assert track["properties"] == {"total": 42.5}
    assert track["deviceInfo"] == {"model": "Pixel 9", "type": "android"}
    assert track["sessionId"] == "sess-1"
    assert track["context"]["library"]["name"] == "analytics-python"
    assert "device" not in track["context"]
    assert by_id[user + "-i"]["eventType"] == "identify"
    assert by_id[user + "-i"]["properties"] == {"plan": "pro"}
    page = by_id[user + "-p"]
    assert page["eventType"] == "page"
    assert page["properties"] == {"path": "/install", "name": "Install", "category": "Docs"}
    assert by_id[user + "-s"]["eventType"] == "screen"
    assert by_id[user + "-s"]["properties"] == {"name": "Home"}
    group = by_id[user + "-g"]
    assert (group["eventType"], group["properties"]) == (
        "group",
        {"employees": 40, "groupId": "acme"},
    )
    alias = by_id[user + "-a"]
    assert (alias["eventType"], alias["properties"]) == ("alias", {"previousId": "anon-" + user})
    # The SDK stamps sentAt on each batch, so the server corrected the clock.
    assert all(e["sentAt"] is not None for e in by_id.values())


def test_rate_limited_sdk_delivers_every_message_exactly_once(
    server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_factory(env={"INNKT_RATE_LIMIT_PER_SECOND": "3", "INNKT_RATE_LIMIT_BURST": "1"})
    errors = _Errors()
    client = _client(server, errors, upload_size=3)
    ids = [f"rl-{i:03d}" for i in range(9)]
    caplog.set_level(logging.DEBUG, logger="segment")
    try:
        for mid in ids:
            client.track("u-rl", "Tick", {"i": mid}, message_id=mid)
        client.flush()
    finally:
        client.join()
    assert errors.errors == []
    # The server did push back (429 + Retry-After), and the SDK waited and resent.
    assert any("Rate-limited" in r.getMessage() for r in caplog.records)
    assert sorted(server.event_ids()) == ids


def test_retry_after_a_lost_answer_is_stored_once(backend_server: ServerProcess) -> None:
    """SIGSTOP the server so the SDK times out and resends batches the server later reads."""
    server = backend_server
    errors = _Errors()
    client = _client(server, errors, upload_size=5, timeout=0.5, max_retries=20)
    ids = [f"lost-{i:02d}" for i in range(20)]
    server.pause()
    try:
        for mid in ids:
            client.track("u-lost", "Tick", message_id=mid)
        time.sleep(2.0)  # let the SDK time out and retry against the stopped server
    finally:
        server.resume()
    try:
        client.flush()
    finally:
        client.join()
    assert errors.errors == []
    assert sorted(server.event_ids()) == ids


# -- raw HTTP: auth, routes, bodies -------------------------------------------------


def _basic(key: str, *, in_password: bool = False) -> dict[str, str]:
    pair = f":{key}" if in_password else f"{key}:"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def test_write_key_by_basic_user_password_body_and_bearer(shared_server: ServerProcess) -> None:
    user = "keys-" + _unique()
    key = shared_server.write_key
    msg = {"userId": user, "event": "Key Test"}
    answers = [
        httpx.post(
            shared_server.url + "/v1/track",
            json={**msg, "messageId": user + "1"},
            headers=_basic(key),
        ),
        httpx.post(
            shared_server.url + "/v1/track",
            json={**msg, "messageId": user + "2"},
            headers=_basic(key, in_password=True),
        ),
        httpx.post(
            shared_server.url + "/v1/track", json={**msg, "messageId": user + "3", "writeKey": key}
        ),
        httpx.post(
            shared_server.url + "/v1/track",
            json={**msg, "messageId": user + "4"},
            headers=shared_server.headers("write"),
        ),
    ]
    assert [(r.status_code, r.json()["success"]) for r in answers] == [(200, True)] * 4
    assert len(_events(shared_server, userId=user)) == 4


def test_analytics_js_style_text_plain_short_routes(shared_server: ServerProcess) -> None:
    """analytics.js posts text/plain to /v1/t, /v1/p ... with writeKey and sentAt in the body."""
    user = "ajs-" + _unique()
    key = shared_server.write_key
    base = {
        "userId": user,
        "writeKey": key,
        "sentAt": NOW.isoformat(),
        "timestamp": NOW.isoformat(),
    }
    sent = {
        "t": {**base, "event": "Clicked", "messageId": user + "t"},
        "p": {**base, "name": "Pricing", "messageId": user + "p"},
        "i": {**base, "traits": {"email": "a@b.c"}, "messageId": user + "i"},
    }
    for route, body in sent.items():
        r = httpx.post(
            shared_server.url + "/v1/" + route,
            content=json.dumps(body),
            headers={"Content-Type": "text/plain", "Origin": "https://shop.example"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "https://shop.example"
    types = sorted(e["eventType"] for e in _events(shared_server, userId=user))
    assert types == ["Clicked", "identify", "page"]


def test_batch_context_merges_and_duplicates_are_counted(shared_server: ServerProcess) -> None:
    user = "dup-" + _unique()
    body = {
        "batch": [
            {
                "type": "track",
                "event": "A",
                "userId": user,
                "messageId": user + "a",
                "context": {"app": {"version": "2"}},
            },
            {"type": "track", "event": "B", "userId": user, "messageId": user + "b"},
        ],
        "context": {"app": {"version": "1"}, "locale": "de-DE"},
    }
    url, headers = shared_server.url + "/v1/batch", _basic(shared_server.write_key)
    first = httpx.post(url, json=body, headers=headers)
    again = httpx.post(
        url,
        content=gzip.compress(json.dumps(body).encode()),
        headers={**headers, "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert (first.json()["accepted"], first.json()["duplicates"]) == (2, 0)
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 2)
    by_id = {e["eventId"]: e for e in _events(shared_server, userId=user)}
    assert by_id[user + "a"]["context"] == {"app": {"version": "2"}, "locale": "de-DE"}
    assert by_id[user + "b"]["context"] == {"app": {"version": "1"}, "locale": "de-DE"}


def test_clock_skew_is_corrected_like_native_batches(shared_server: ServerProcess) -> None:
    """A device clock one hour behind: the events happened 10 s before the batch was sent.

    RudderStack's shape (originalTimestamp) and Segment's (timestamp alone) are both
    corrected by sentAt; an explicit timestamp next to originalTimestamp is kept as sent,
    as rudder-server does (see also test_segment_clients.py with the real SDKs).
    """
    user = "skew-" + _unique()
    device_now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    happened = (device_now - dt.timedelta(seconds=10)).isoformat()
    body = {
        "batch": [
            {"type": "track", "event": "Rudder", "userId": user, "originalTimestamp": happened},
            {"type": "track", "event": "Segment", "userId": user, "timestamp": happened},
            {
                "type": "track",
                "event": "Backfill",
                "userId": user,
                "originalTimestamp": happened,
                "timestamp": "2001-01-01T00:00:00Z",
            },
        ],
        "sentAt": device_now.isoformat(),
    }
    r = httpx.post(
        shared_server.url + "/v1/batch", json=body, headers=_basic(shared_server.write_key)
    )
    assert r.status_code == 200, r.text
    by_type = {e["eventType"]: e for e in _events(shared_server, userId=user)}
    for name in ("Rudder", "Segment"):
        received = dt.datetime.fromisoformat(by_type[name]["receivedAt"])
        corrected = dt.datetime.fromisoformat(by_type[name]["correctedTimestamp"])
        # received - (sentAt - device time)
        ten_seconds = abs((received - corrected) - dt.timedelta(seconds=10))
        assert ten_seconds <= dt.timedelta(milliseconds=2), name
    backfill = dt.datetime.fromisoformat(by_type["Backfill"]["correctedTimestamp"])
    assert backfill == dt.datetime(2001, 1, 1, tzinfo=dt.UTC)


def test_errors_speak_both_dialects(shared_server: ServerProcess) -> None:
    url = shared_server.url
    missing = httpx.post(url + "/v1/batch", json={"batch": []})
    assert missing.status_code == 401
    assert missing.json()["code"] == missing.json()["error"] == "unauthorized"
    assert missing.json()["success"] is False
    forbidden = httpx.post(
        url + "/v1/track",
        json={"event": "x", "userId": "u"},
        headers=_basic(shared_server.read_key),
    )
    assert forbidden.status_code == 403
    bad = httpx.post(
        url + "/v1/batch",
        content=b"{nope",
        headers={**_basic(shared_server.write_key), "Content-Type": "application/json"},
    )
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_batch")
    for path in ("/v1/track", "/v1/batch"):
        body = (
            b'{"event":"e","userId":"\xff"}'
            if path == "/v1/track"
            else (b'{"batch":[{"type":"track","event":"e","userId":"\xff"}]}')
        )
        not_utf8 = httpx.post(
            url + path,
            content=body,
            headers={**_basic(shared_server.write_key), "Content-Type": "application/json"},
        )
        assert not_utf8.status_code == 400, (path, not_utf8.text)
    invalid = httpx.post(
        url + "/v1/batch",
        headers=_basic(shared_server.write_key),
        json={
            "batch": [
                {"type": "track", "userId": "u"},
                {"type": "nope", "userId": "u"},
                {"type": "identify"},
            ],
        },
    )
    assert invalid.status_code == 400
    assert [r["index"] for r in invalid.json()["rejected"]] == [0, 1, 2]
    assert "event" in invalid.json()["rejected"][0]["error"]


def test_partly_invalid_batch_stores_the_valid_messages(shared_server: ServerProcess) -> None:
    user = "part-" + _unique()
    r = httpx.post(
        shared_server.url + "/v1/batch",
        headers=_basic(shared_server.write_key),
        json={
            "batch": [
                {"type": "track", "event": "Good", "userId": user, "messageId": user},
                {"type": "track", "event": "x" * 200, "userId": user, "messageId": user + "long"},
                {"type": "track", "event": "Bad time", "userId": user, "timestamp": "yesterday"},
            ],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    assert [x["index"] for x in r.json()["rejected"]] == [1, 2]
    assert r.json()["rejected"][0]["eventId"] == user + "long"
    assert [e["eventId"] for e in _events(shared_server, userId=user)] == [user]


def test_limits_apply(server_factory: Any) -> None:
    server = server_factory(env={"INNKT_MAX_EVENT_BYTES": "2048", "INNKT_MAX_BATCH_EVENTS": "3"})
    headers = _basic(server.write_key)
    big = httpx.post(
        server.url + "/v1/track",
        headers=headers,
        json={"event": "Big", "userId": "u", "properties": {"blob": "x" * 4000}},
    )
    assert big.status_code == 400
    assert "over the limit" in big.json()["rejected"][0]["error"]
    many = httpx.post(
        server.url + "/v1/batch",
        headers=headers,
        json={
            "batch": [{"type": "track", "event": "E", "userId": "u"}] * 4,
        },
    )
    assert (many.status_code, many.json()["code"]) == (413, "too_many_events")
    assert server.count_events() == 0


def test_rate_limit_answers_retryable_429(server_factory: Any) -> None:
    server = server_factory(
        env={"INNKT_RATE_LIMIT_PER_SECOND": "0.01", "INNKT_RATE_LIMIT_BURST": "1"}
    )
    body = {"event": "E", "userId": "u"}
    first = httpx.post(server.url + "/v1/track", json=body, headers=_basic(server.write_key))
    second = httpx.post(server.url + "/v1/track", json=body, headers=_basic(server.write_key))
    assert first.status_code == 200
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1
    assert second.json()["code"] == "rate_limited"


def test_segment_events_reach_realtime_subscribers(shared_server: ServerProcess) -> None:
    """The observers of the ingest path see Segment traffic like any other."""
    event_type = "Live " + _unique()
    with connect(
        shared_server.url.replace("http://", "ws://") + "/v1/realtime",
        subprotocols=[Subprotocol("innkt.v1")],
        additional_headers=shared_server.headers("read"),
    ) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": "s1",
                    "payload": {"streams": ["event"], "eventTypes": [event_type]},
                }
            )
        )
        while json.loads(ws.recv(timeout=10))["type"] != "subscribed":
            pass
        r = httpx.post(
            shared_server.url + "/v1/track",
            headers=_basic(shared_server.write_key),
            json={"event": event_type, "userId": "rt", "messageId": event_type},
        )
        assert r.status_code == 200, r.text
        while True:
            envelope = json.loads(ws.recv(timeout=10))
            if envelope["type"] == "event":
                break
    (event,) = envelope["payload"]["events"]
    assert (event["eventId"], event["eventType"], event["userId"]) == (event_type, event_type, "rt")


@pytest.mark.redis
def test_rate_limit_shared_in_redis_applies_to_segment_routes(
    server_factory: Any, redis_url: str
) -> None:
    """Two instances, one bucket: the second request is refused by the *other* server."""
    env = {
        "INNKT_RATE_LIMIT_STORE": redis_url,
        "INNKT_RATE_LIMIT_PER_SECOND": "0.01",
        "INNKT_RATE_LIMIT_BURST": "1",
    }
    a = server_factory(env=env)
    b = server_factory(env=env, db=a.db_path)
    body = {"event": "E", "userId": "u"}
    key = _basic(a.write_key)
    first = httpx.post(a.url + "/v1/track", json=body, headers=key)
    second = httpx.post(b.url + "/v1/track", json=body, headers=key)
    assert (first.status_code, second.status_code) == (200, 429)
    assert second.json()["code"] == "rate_limited"


# -- the pure translation -------------------------------------------------------------


def _translate(msg: dict[str, Any], **kwargs: Any) -> Any:
    raw = msgspec.json.encode(msg)
    return translate_message(
        msgspec.json.decode(raw, type=SegmentMessage), raw, received=NOW, **kwargs
    )


def test_translate_ids_sessions_and_times() -> None:
    out = _translate(
        {
            "type": "track",
            "event": "E",
            "userId": 42,
            "anonymousId": 7.0,
            "messageId": 1234,
            "context": {"session": {"id": 99}},
        }
    )
    assert (out.event.user_id, out.event.anonymous_id, out.event.event_id) == ("42", "7", "1234")
    assert out.event.session_id == "99"
    # No client time: it happened when received, and no skew correction applies.
    assert (out.event.timestamp, out.sent_at) == (NOW, None)
    anon = _translate({"type": "identify", "anonymousId": "a1", "timestamp": "2026-11-27T11:00:00"})
    assert anon.event.session_id == "a1"
    assert anon.event.timestamp == dt.datetime(2026, 11, 27, 11, tzinfo=dt.UTC)


def test_translate_times_follow_rudder_server() -> None:
    """originalTimestamp is corrected by sentAt unless the app gave timestamp (kept as is)."""
    sent = "2026-11-27T11:00:10Z"
    call = {"type": "track", "event": "E", "userId": "u", "sentAt": sent}
    rudder = _translate({**call, "originalTimestamp": "2026-11-27T11:00:00Z"})
    assert (rudder.event.timestamp, rudder.sent_at) == (
        dt.datetime(2026, 11, 27, 11, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 27, 11, 0, 10, tzinfo=dt.UTC),
    )
    backfill = _translate(
        {**call, "originalTimestamp": "2026-11-27T11:00:00Z", "timestamp": "2020-01-01T00:00:00Z"}
    )
    assert (backfill.event.timestamp, backfill.sent_at) == (
        dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        None,
    )
    segment = _translate({**call, "timestamp": "2020-01-01T00:00:00Z"})
    assert segment.sent_at == dt.datetime(2026, 11, 27, 11, 0, 10, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="timestamp"):
        _translate({**call, "originalTimestamp": "2026-11-27T11:00:00Z", "timestamp": "later"})


def test_translate_identify_traits_from_context_traits() -> None:
    """rudder-sdk-python sends an identify's traits only as context.traits."""
    nested = _translate(
        {"type": "identify", "userId": "u", "context": {"traits": {"plan": "pro"}, "ip": "x"}}
    )
    assert (nested.event.properties, nested.event.context) == ({"plan": "pro"}, {"ip": "x"})
    both = _translate(
        {
            "type": "identify",
            "userId": "u",
            "traits": {"plan": "team", "seats": 3},
            "context": {"traits": {"plan": "pro", "email": "a@b.c"}},
        }
    )
    # the top-level traits win where both name a trait
    assert both.event.properties == {"plan": "team", "email": "a@b.c", "seats": 3}
    track = _translate(
        {"type": "track", "event": "E", "userId": "u", "context": {"traits": {"plan": "pro"}}}
    )
    assert (track.event.properties, track.event.context) == ({}, {"traits": {"plan": "pro"}})


def test_translate_route_type_wins_and_batch_sent_at_applies() -> None:
    sent = NOW - dt.timedelta(minutes=5)
    out = _translate(
        {"type": "identify", "event": "Clicked", "userId": "u", "timestamp": NOW.isoformat()},
        kind="track",
        batch_sent_at=sent,
    )
    assert (out.event.event_type, out.sent_at) == ("Clicked", sent)
    own = _translate(
        {
            "type": "track",
            "event": "E",
            "userId": "u",
            "timestamp": NOW.isoformat(),
            "sentAt": NOW.isoformat(),
        },
        batch_sent_at=sent,
    )
    assert own.sent_at == NOW


def test_missing_message_id_is_a_stable_hash() -> None:
    msg = {"type": "track", "event": "E", "userId": "u", "timestamp": NOW.isoformat()}
    first, second = _translate(msg), _translate(msg)
    other = _translate({**msg, "event": "F"})
    assert first.event.event_id == second.event.event_id != other.event.event_id
    assert first.event.event_id.startswith("seg-")


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        ({"type": "track", "userId": "u"}, "event"),
        ({"type": "page"}, "userId or anonymousId"),
        ({"type": "group", "userId": "u"}, "groupId"),
        ({"type": "alias", "userId": "u"}, "previousId"),
        ({"type": "track", "event": "E", "userId": "u", "messageId": "m" * 129}, "messageId"),
        ({"type": "track", "event": "E", "userId": "u", "sentAt": "soon"}, "sentAt"),
        ({"type": "shout", "userId": "u"}, "type"),
    ],
)
def test_translate_rejects(msg: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        _translate(msg)


def test_parse_segment_groups_by_sent_at_and_keeps_indices() -> None:
    messages = [
        (
            msgspec.json.encode(
                {
                    "type": "track",
                    "event": "A",
                    "userId": "u",
                    "messageId": "a",
                    "timestamp": NOW.isoformat(),
                }
            ),
            None,
        ),
        (b"{broken", None),
        (
            msgspec.json.encode(
                {
                    "type": "track",
                    "event": "B",
                    "userId": "u",
                    "messageId": "b",
                    "timestamp": NOW.isoformat(),
                    "sentAt": (NOW + dt.timedelta(seconds=30)).isoformat(),
                }
            ),
            None,
        ),
    ]
    received = NOW + dt.timedelta(hours=1)
    groups = parse_segment(messages, Limits(), received, batch_sent_at=NOW)
    assert [[v.index for v in g.valid] for g in groups] == [[0], [2]]
    assert [r.index for r in groups[0].rejected] == [1]
    corrected = {v.event.event_id: v.corrected for g in groups for v in g.valid}
    assert corrected == {"a": received, "b": received - dt.timedelta(seconds=30)}
