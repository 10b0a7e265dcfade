"""API keys: both header forms, scopes, project isolation and revocation."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests._server import ServerProcess
from tests.conftest import ServerFactory


def uid() -> str:
    return uuid.uuid4().hex


def event(event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "eventType": "auth-test",
        "timestamp": "2026-11-27T11:00:00Z",
        **extra,
    }


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def cli_create_key(server: ServerProcess, scope: str, project: str) -> tuple[str, str]:
    """(key id, secret) from the real CLI."""
    out = subprocess.run(
        [
            *(sys.executable, "-m", "innkt_analytics", "keys", "create"),
            *("--scope", scope, "--project", project, "--db", server.db),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **server.env},
    ).stdout.splitlines()
    key_id = out[-2].split()[1]
    assert key_id.startswith("key_")
    return key_id, out[-1]


def test_bearer_and_x_api_key_both_work(shared_server: ServerProcess) -> None:
    key = shared_server.write_key
    url = shared_server.url + "/v1/events"
    for headers in (
        {"Authorization": f"Bearer {key}"},
        {"Authorization": f"bearer   {key}"},
        {"X-API-Key": key},
    ):
        r = httpx.post(url, json=event(uid()), headers=headers)
        assert r.status_code == 200, (headers, r.text)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer ik_not-a-real-key"},
        {"Authorization": "Bearer not-even-our-prefix"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-API-Key": ""},
        {"X-API-Key": "ik_" + "x" * 5000},
    ],
)
def test_missing_or_invalid_key_is_401(
    shared_server: ServerProcess, headers: dict[str, str]
) -> None:
    eid = uid()
    for method, path, kwargs in (
        ("POST", "/v1/events", {"json": event(eid)}),
        ("POST", "/v1/events/batch", {"json": {"events": [event(eid)]}}),
        ("GET", "/v1/events", {}),
        ("GET", "/v1/stats", {}),
        ("GET", "/v1/config", {}),
        ("PUT", "/v1/config", {"json": {"batchSize": 5}}),
    ):
        r = httpx.request(method, shared_server.url + path, headers=headers, **kwargs)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"] == "unauthorized"
    assert eid not in shared_server.event_ids()


def test_a_key_from_the_headers_wrong_scheme_is_not_used(shared_server: ServerProcess) -> None:
    # "Authorization: Basic" with a valid X-API-Key beside it: the explicit
    # Authorization header wins, and it is not a bearer token.
    r = httpx.post(
        shared_server.url + "/v1/events",
        json=event(uid()),
        headers={"Authorization": "Basic abc", "X-API-Key": shared_server.write_key},
    )
    assert r.status_code == 401


def test_scopes(shared_server: ServerProcess) -> None:
    s = shared_server
    write, read, admin = bearer(s.write_key), bearer(s.read_key), bearer(s.admin_key)
    ingest = {"json": {"events": [event(uid())]}}
    cases: list[tuple[dict[str, str], str, str, dict[str, Any], int]] = [
        (write, "POST", "/v1/events/batch", ingest, 200),
        (read, "POST", "/v1/events/batch", ingest, 403),
        (read, "POST", "/v1/events", {"json": event(uid())}, 403),
        (admin, "POST", "/v1/events/batch", {"json": {"events": [event(uid())]}}, 200),
        (write, "GET", "/v1/events", {}, 403),
        (write, "GET", "/v1/stats", {}, 403),
        (read, "GET", "/v1/events", {}, 200),
        (read, "GET", "/v1/stats", {}, 200),
        (admin, "GET", "/v1/events", {}, 200),
        (write, "GET", "/v1/config", {}, 200),
        (read, "GET", "/v1/config", {}, 200),
        (write, "PUT", "/v1/config", {"json": {}}, 403),
        (read, "PUT", "/v1/config", {"json": {}}, 403),
    ]
    for headers, method, path, kwargs, status in cases:
        r = httpx.request(method, s.url + path, headers=headers, **kwargs)
        assert r.status_code == status, (headers, method, path, r.text)
        if status == 403:
            assert r.json()["error"] == "forbidden"


def test_projects_are_isolated(shared_server: ServerProcess) -> None:
    s = shared_server
    project = "proj-" + uid()[:8]
    with ThreadPoolExecutor(3) as pool:  # each is a CLI process: start them together
        write_b, read_b, admin_b = pool.map(
            lambda scope: s.create_key(scope, project), ("write", "read", "admin")
        )
    shared_id = uid()  # the same eventId in both projects is two different events
    only_b = uid()
    r = httpx.post(
        s.url + "/v1/events/batch",
        json={"events": [event(shared_id, sessionId="sb"), event(only_b, sessionId="sb")]},
        headers=bearer(write_b),
    )
    assert r.json()["accepted"] == 2
    r = httpx.post(s.url + "/v1/events", json=event(shared_id), headers=s.headers("write"))
    assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": []}

    b_events = httpx.get(s.url + "/v1/events", params={"limit": 1000}, headers=bearer(read_b))
    assert sorted(e["eventId"] for e in b_events.json()["events"]) == sorted([shared_id, only_b])
    a_view = httpx.get(s.url + "/v1/events", params={"sessionId": "sb"}, headers=s.headers("read"))
    assert a_view.json()["events"] == []
    assert only_b not in s.event_ids("default")
    assert s.event_ids(project) == [shared_id, only_b]
    b_stats = httpx.get(s.url + "/v1/stats", headers=bearer(read_b)).json()
    assert b_stats["total"] == 2

    # Config is per project as well.
    r = httpx.put(s.url + "/v1/config", json={"batchSize": 7}, headers=bearer(admin_b))
    assert r.status_code == 200
    assert httpx.get(s.url + "/v1/config", headers=bearer(write_b)).json()["batchSize"] == 7
    assert httpx.get(s.url + "/v1/config", headers=s.headers("write")).json()["batchSize"] != 7


def test_revoked_key_is_refused(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_KEY_CACHE_SECONDS": "0"})
    key_id, secret = cli_create_key(server, "write", "default")
    url = server.url + "/v1/events"
    assert httpx.post(url, json=event("before"), headers=bearer(secret)).status_code == 200
    subprocess.run(
        [sys.executable, "-m", "innkt_analytics", "keys", "revoke", key_id, "--db", server.db],
        check=True,
        capture_output=True,
        env={**os.environ, **server.env},
    )
    r = httpx.post(url, json=event("after"), headers=bearer(secret))
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    assert server.event_ids() == ["before"]
    # Other keys keep working.
    assert httpx.post(url, json=event("other"), headers=server.headers()).status_code == 200


def test_revocation_takes_effect_after_the_cache_time(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_KEY_CACHE_SECONDS": "0.5"})
    key_id, secret = cli_create_key(server, "read", "default")
    url = server.url + "/v1/events"
    assert httpx.get(url, headers=bearer(secret)).status_code == 200
    subprocess.run(
        [sys.executable, "-m", "innkt_analytics", "keys", "revoke", key_id, "--db", server.db],
        check=True,
        capture_output=True,
        env={**os.environ, **server.env},
    )
    # Within the cache time the cached record may still answer; after it, never.
    deadline = time.monotonic() + 10
    while httpx.get(url, headers=bearer(secret)).status_code == 200:
        assert time.monotonic() < deadline, "revoked key still accepted after 10 s"
        time.sleep(0.05)
    assert httpx.get(url, headers=bearer(secret)).status_code == 401
