"""Size limits, bad bodies, content types, gzip bombs and rate limits on the real server."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests._server import ServerProcess
from tests.conftest import ServerFactory

JSON_CT = {"Content-Type": "application/json"}


def uid() -> str:
    return uuid.uuid4().hex


def event(event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "eventType": "limit-test",
        "timestamp": "2026-11-27T11:00:00Z",
        **extra,
    }


def post(server: ServerProcess, path: str, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        server.url + path,
        content=content,
        headers={**server.headers("write"), **JSON_CT, **headers},
        timeout=30,
    )


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Every error is JSON: {"error": code, "message": text}."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert isinstance(body["error"], str)
    assert isinstance(body["message"], str)
    if code is not None:
        assert body["error"] == code, body
    return body


def peak_rss_kib(server: ServerProcess) -> int:
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


# -- gzip ------------------------------------------------------------------------


def test_gzip_bomb_is_413_without_inflating_memory(shared_server: ServerProcess) -> None:
    bomb = gzip.compress(b"\0" * 100_000_000, compresslevel=9)
    assert len(bomb) < 150_000
    post(shared_server, "/v1/events/batch", json.dumps({"events": []}).encode())
    before = peak_rss_kib(shared_server)
    for path in ("/v1/events/batch", "/v1/events"):
        r = post(shared_server, path, bomb, **{"Content-Encoding": "gzip"})
        assert_error(r, 413, "payload_too_large")
    growth_mib = (peak_rss_kib(shared_server) - before) / 1024
    # Decompressing the bomb would need 100 MiB; the bounded decoder stops at 1 MiB.
    assert growth_mib < 30, f"server peak memory grew by {growth_mib:.0f} MiB"


@pytest.mark.parametrize(
    "data",
    [
        b"\x1f\x8b\x08\x00garbage-after-the-magic",
        b"plain text, not gzip",
        # truncated; mtime=0: the same bytes, so the same test id, in every pytest-xdist
        # worker (the header's time would differ across a second boundary)
        gzip.compress(json.dumps({"events": [event("t")]}).encode(), mtime=0)[:-12],
    ],
)
def test_corrupt_gzip_is_400(shared_server: ServerProcess, data: bytes) -> None:
    r = post(shared_server, "/v1/events/batch", data, **{"Content-Encoding": "gzip"})
    assert_error(r, 400, "bad_gzip")


def test_unknown_content_encoding_is_415(shared_server: ServerProcess) -> None:
    body = json.dumps({"events": [event(uid())]}).encode()
    for encoding in ("br", "deflate", "gzip, gzip", "zstd"):
        r = post(shared_server, "/v1/events/batch", body, **{"Content-Encoding": encoding})
        assert_error(r, 415, "unsupported_encoding")


# -- size limits (defaults) --------------------------------------------------------


def test_oversized_event_in_a_batch_is_rejected_alone(shared_server: ServerProcess) -> None:
    big_id, small_id = uid(), uid()
    big = event(big_id, properties={"pad": "x" * (32 * 1024)})
    r = post(
        shared_server,
        "/v1/events/batch",
        json.dumps({"events": [event(small_id), big]}).encode(),
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["accepted"] == 1
    (rejection,) = answer["rejected"]
    assert (rejection["index"], rejection["eventId"]) == (1, big_id)
    assert "32768" in rejection["error"]
    ids = set(shared_server.event_ids())
    assert small_id in ids
    assert big_id not in ids


def test_oversized_single_event_is_413(shared_server: ServerProcess) -> None:
    eid = uid()
    big = event(eid, properties={"pad": "x" * (32 * 1024)})
    r = post(shared_server, "/v1/events", json.dumps(big).encode())
    assert_error(r, 413, "payload_too_large")
    assert eid not in shared_server.event_ids()


def test_event_just_under_the_limit_is_accepted(shared_server: ServerProcess) -> None:
    eid = uid()
    ev = event(eid, properties={"pad": ""})
    size = len(json.dumps(ev, separators=(",", ":")))
    ev["properties"]["pad"] = "x" * (32 * 1024 - size)
    data = json.dumps(ev, separators=(",", ":")).encode()
    assert len(data) == 32 * 1024
    r = post(shared_server, "/v1/events", data)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1


def test_body_over_1_mib_is_413(shared_server: ServerProcess) -> None:
    ids = [uid() for _ in range(40)]
    events = [event(i, properties={"pad": "x" * 30_000}) for i in ids]
    data = json.dumps({"events": events}).encode()
    assert len(data) > 1024 * 1024
    assert_error(post(shared_server, "/v1/events/batch", data), 413, "payload_too_large")

    # Without Content-Length (chunked), the server must still stop at the limit.
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    r = httpx.post(
        shared_server.url + "/v1/events/batch",
        content=chunks(),
        headers={**shared_server.headers(), **JSON_CT},
    )
    assert "content-length" not in r.request.headers
    assert_error(r, 413)
    # Small when compressed, too big once decompressed.
    r = post(shared_server, "/v1/events/batch", gzip.compress(data), **{"Content-Encoding": "gzip"})
    assert_error(r, 413, "payload_too_large")
    assert not set(ids) & set(shared_server.event_ids())


def test_batch_event_count_limit(shared_server: ServerProcess) -> None:
    prefix = uid()
    at_limit = [event(f"{prefix}-{i}") for i in range(2500)]
    r = post(shared_server, "/v1/events/batch", json.dumps({"events": at_limit}).encode())
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2500
    over = [event(f"{prefix}-over-{i}") for i in range(2501)]
    r = post(shared_server, "/v1/events/batch", json.dumps({"events": over}).encode())
    assert_error(r, 413, "too_many_events")
    assert not any(i.startswith(f"{prefix}-over-") for i in shared_server.event_ids())


def test_limits_are_configurable(server_factory: ServerFactory) -> None:
    server = server_factory(
        env={
            "INNKT_MAX_EVENT_BYTES": "300",
            "INNKT_MAX_BODY_BYTES": "2000",
            "INNKT_MAX_BATCH_EVENTS": "3",
        }
    )
    three = {"events": [event(f"c{i}") for i in range(3)]}
    assert post(server, "/v1/events/batch", json.dumps(three).encode()).json()["accepted"] == 3
    four = {"events": [event(f"d{i}") for i in range(4)]}
    assert_error(post(server, "/v1/events/batch", json.dumps(four).encode()), 413)

    big = event("big", properties={"pad": "x" * 300})
    r = post(server, "/v1/events/batch", json.dumps({"events": [big, event("ok")]}).encode())
    assert r.json()["rejected"][0]["eventId"] == "big"
    assert_error(post(server, "/v1/events", json.dumps(big).encode()), 413)

    body = json.dumps({"events": [event("e", properties={"pad": "x" * 2000})]}).encode()
    assert_error(post(server, "/v1/events/batch", body), 413, "payload_too_large")
    assert sorted(server.event_ids()) == ["c0", "c1", "c2", "ok"]


# -- malformed bodies and content types ---------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/v1/events/batch", b"{"),
        ("/v1/events/batch", b""),
        ("/v1/events/batch", b"null"),
        ("/v1/events/batch", b"[]"),
        ("/v1/events/batch", b'{"events": "many"}'),
        ("/v1/events/batch", b'{"events": [], "sentAt": 12}'),
        ("/v1/events/batch", b'{"events": [{"eventId": 1, "eventType": "t"}]}'),
        ("/v1/events/batch", b'{"events": [' + b"[" * 100_000),
        ("/v1/events/batch", b'{"events":[{"eventId":"\xff","eventType":"t"}]}'),
        ("/v1/events", b"{"),
        ("/v1/events", b"[]"),
        ("/v1/events", b'{"eventId": "x", "eventType": "t", "timestamp": 5}'),
        ("/v1/events", b'{"eventId": "x", "eventType": "t", "timestamp": "2026-01-01T00:00Z",'),
        ("/v1/events", b'{"eventId": "x", "eventType": ["t"], "timestamp": "2026-01-01T00:00Z"}'),
        ("/v1/events", b'{"eventId": "x", "eventType": "t", "timestamp": "2026-13-01T00:00Z"}'),
        ("/v1/events", b'{"eventId": "x", "eventType": "t", "timestamp": "2026-01-01T00:00:00"}'),
    ],
)
def test_malformed_bodies_are_400(shared_server: ServerProcess, path: str, data: bytes) -> None:
    assert_error(post(shared_server, path, data), 400)


def test_nesting_deeper_than_64_is_400(shared_server: ServerProcess) -> None:
    eid = uid()
    base = json.dumps(event(eid))[:-1]
    # The event is level 1 and properties level 2: 62 more levels make 64 in all.
    ok = f'{base}, "properties": {{"a": {nested(62)}}}}}'.encode()
    deep = f'{base}, "properties": {{"a": {nested(63)}}}}}'.encode()
    assert_error(post(shared_server, "/v1/events", deep), 400)
    r = post(shared_server, "/v1/events/batch", b'{"events": [' + deep + b"]}")
    assert r.json()["rejected"][0]["error"] == "JSON nesting deeper than 64"
    r = post(shared_server, "/v1/events", ok)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "json"],
)
def test_wrong_content_type_is_415(shared_server: ServerProcess, content_type: str | None) -> None:
    headers = shared_server.headers()
    if content_type is not None:
        headers["Content-Type"] = content_type
    data = json.dumps({"events": [event(uid())]}).encode()
    for path in ("/v1/events/batch", "/v1/events"):
        r = httpx.post(shared_server.url + path, content=data, headers=headers)
        assert_error(r, 415, "unsupported_media_type")


def test_json_content_type_variants_are_accepted(shared_server: ServerProcess) -> None:
    for content_type in (
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.innkt+json",
    ):
        data = json.dumps({"events": [event(uid())]}).encode()
        r = post(shared_server, "/v1/events/batch", data, **{"Content-Type": content_type})
        assert r.status_code == 200, (content_type, r.text)


def test_unknown_routes_and_methods_are_json_errors(shared_server: ServerProcess) -> None:
    assert_error(httpx.get(shared_server.url + "/v1/nope"), 404)
    assert_error(httpx.delete(shared_server.url + "/v1/events/batch"), 405)


# -- rate limiting -----------------------------------------------------------------


def test_rate_limit_per_key(server_factory: ServerFactory) -> None:
    server = server_factory(
        env={"INNKT_RATE_LIMIT_PER_SECOND": "0.01", "INNKT_RATE_LIMIT_BURST": "3"}
    )
    data = json.dumps({"events": [event("r")]}).encode()
    for _ in range(3):
        assert post(server, "/v1/events/batch", data).status_code == 200
    limited = post(server, "/v1/events/batch", data)
    body = assert_error(limited, 429, "rate_limited")
    # 1 token at 0.01/s is 100 s away: the header and the body both say so.
    assert int(limited.headers["Retry-After"]) == 100
    assert body["retryAfter"] == 100
    # Other keys have their own buckets.
    other = server.create_key("write")
    r = httpx.post(
        server.url + "/v1/events/batch",
        content=data,
        headers={"X-API-Key": other, **JSON_CT},
    )
    assert r.status_code == 200, r.text
    r = httpx.get(server.url + "/v1/events", headers=server.headers("read"))
    assert r.status_code == 200
    # The limited key is still limited, and health is never rate limited.
    assert post(server, "/v1/events/batch", data).status_code == 429
    assert httpx.get(server.url + "/v1/health", headers=server.headers("write")).status_code == 200
