"""Key expiry and rotation, against the real CLI and server on both backends.

``keys rotate KEY --overlap D`` makes a successor with the same scopes and
project and sets the old key to expire after D; an expired key is refused with
its own error code (``key_expired``) on HTTP and on the WebSocket hub; ``keys
list`` shows last use and expiry. Databases made before these columns existed
are migrated in place.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from innkt_analytics.server.storage import KeyRecord, Storage
from tests._server import ServerProcess
from tests.conftest import ServerFactory
from tests.test_storage_contract import with_storage

WAIT = 30.0
#: keys are looked up without caching, and their use written often, so changes show at once
FAST = {"INNKT_KEY_CACHE_SECONDS": "0", "INNKT_KEY_USE_INTERVAL": "0.1"}


def wait_until(predicate: Callable[[], bool], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "innkt_analytics", *args, "--db", server.db],
        capture_output=True,
        text=True,
        env={**os.environ, **server.env},
        timeout=120,
    )


def post_event(server: ServerProcess, key: str) -> httpx.Response:
    event = {"eventId": str(uuid.uuid4()), "eventType": "t", "timestamp": "2026-11-27T00:00:00Z"}
    return httpx.post(
        server.url + "/v1/events",
        json=event,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def listed_row(server: ServerProcess, key_id: str) -> str:
    result = cli(server, "keys", "list")
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith(key_id)]
    return row


def create(server: ServerProcess, *args: str) -> tuple[str, str]:
    made = cli(server, "keys", "create", *args)
    assert made.returncode == 0, made.stderr
    lines = made.stdout.strip().splitlines()
    found = re.search(r"(key_\w+)", lines[-2])
    assert found is not None
    return found.group(1), lines[-1]


def rotate(server: ServerProcess, key_id: str, overlap: str) -> tuple[str, str, str]:
    done = cli(server, "keys", "rotate", key_id, "--overlap", overlap)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    found = re.search(r"created (key_\w+)", done.stdout)
    assert found is not None
    return found.group(1), lines[-1], done.stdout


def test_rotate_keeps_scopes_and_project_and_expires_the_old_key_after_the_overlap(
    storage_url: str, server_factory: ServerFactory
) -> None:
    server = server_factory(env=FAST, db=storage_url)
    old_id, old = create(server, "--scope", "write", "--project", "shop", "--name", "checkout")
    assert post_event(server, old).is_success

    # last use is recorded and listed
    wait_until(lambda: "last-used=-" not in listed_row(server, old_id), "the key's last use")
    assert "expires=-" in listed_row(server, old_id)

    new_id, new, out = rotate(server, old_id, "7d")
    assert new_id != old_id
    assert "project=shop" in out
    assert "scopes=write" in out
    # both work during the overlap; the successor has the same scopes and project
    assert post_event(server, old).is_success
    assert post_event(server, new).is_success
    read = httpx.get(server.url + "/v1/events", headers={"Authorization": f"Bearer {new}"})
    assert read.status_code == 403
    old_row, new_row = listed_row(server, old_id), listed_row(server, new_id)
    assert " active " in old_row
    assert "shop" in new_row
    assert "checkout" in new_row
    expires = re.search(r"expires=(\S+)", old_row)
    assert expires is not None
    seven_days = time.time() + 7 * 86_400
    stamp = time.mktime(time.strptime(expires.group(1), "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert seven_days - 3600 < stamp <= seven_days + 60
    assert "expires=-" in new_row

    # an overlap of 0 ends the old key at once: refused with its own code
    newest_id, newest, _ = rotate(server, new_id, "0")
    wait_until(lambda: post_event(server, new).status_code == 401, "the expired key's refusal")
    refused = post_event(server, new)
    assert refused.json()["error"] == "key_expired"
    assert new_id in refused.json()["message"]
    assert "expired" in listed_row(server, new_id)
    assert post_event(server, newest).is_success
    assert post_event(server, old).is_success  # still inside its own 7-day overlap

    # the hub refuses it the same way
    ws = server.url.replace("http://", "ws://") + "/v1/realtime"
    with pytest.raises(InvalidStatus) as refusal:
        connect(ws, additional_headers={"Authorization": f"Bearer {new}"}).close()
    assert refusal.value.response.status_code == 401
    assert b"key_expired" in (refusal.value.response.body or b"")

    # an expired or unknown key cannot be rotated
    again = cli(server, "keys", "rotate", new_id)
    assert again.returncode == 1
    assert f"no active key {new_id}" in again.stderr
    assert cli(server, "keys", "rotate", "key_000000000000").returncode == 1
    assert newest_id != new_id


def test_keys_created_with_an_expiry_are_refused_after_it(server_factory: ServerFactory) -> None:
    server = server_factory(env=FAST)
    key_id, secret = create(server, "--scope", "write", "--expires-in", "1s")
    wait_until(lambda: post_event(server, secret).status_code == 401, "the key to expire")
    assert post_event(server, secret).json()["error"] == "key_expired"
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    (shown,) = [
        k
        for k in httpx.get(server.url + "/v1/keys", headers=admin).json()["keys"]
        if k["keyId"] == key_id
    ]
    assert shown["expiresAt"] is not None
    # a rotated key that had a lifetime passes the same lifetime on
    lived_id, _ = create(server, "--scope", "read", "--expires-in", "90d")
    renewed_id, _, _ = rotate(server, lived_id, "1h")
    expires = re.search(r"expires=(\S+)", listed_row(server, renewed_id))
    assert expires is not None
    stamp = time.mktime(time.strptime(expires.group(1), "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert time.time() + 89 * 86_400 < stamp <= time.time() + 91 * 86_400
    bad = cli(server, "keys", "create", "--scope", "write", "--expires-in", "soon")
    assert bad.returncode == 2
    assert "not a duration" in bad.stderr


def _drop_key_columns(db: str) -> None:
    """Make the database look like one created before key rotation existed."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("ALTER TABLE api_keys DROP COLUMN expires_at, DROP COLUMN last_used_at")
        return
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("ALTER TABLE api_keys DROP COLUMN expires_at")
        conn.execute("ALTER TABLE api_keys DROP COLUMN last_used_at")
        conn.commit()


def test_a_database_from_before_key_rotation_is_migrated_in_place(
    storage_url: str, server_factory: ServerFactory
) -> None:
    server = server_factory(env=FAST, db=storage_url)
    write = server.write_key
    assert post_event(server, write).is_success
    server.stop()
    _drop_key_columns(storage_url)
    server.start()
    assert post_event(server, write).is_success  # the old key still works after migrating
    result = cli(server, "keys", "list")
    assert result.returncode == 0, result.stderr
    assert "last-used=" in result.stdout
    wait_until(
        lambda: any(
            "bootstrap write" in line and "last-used=-" not in line
            for line in cli(server, "keys", "list").stdout.splitlines()
        ),
        "the migrated key's last use",
    )


def test_storage_expiry_never_extends_and_use_never_goes_back(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        record = KeyRecord("k1", "p", "n", frozenset({"write"}), "h1", 1, expires_at=None)
        await s.create_key(record)
        assert await s.expire_key("k1", 5000)
        assert await s.expire_key("k1", 9000)  # later than it has: kept at 5000
        await s.record_key_use({"k1": 700})
        await s.record_key_use({"k1": 600, "unknown": 1})
        found = await s.find_key("h1")
        assert found is not None
        assert (found.expires_at, found.last_used_at) == (5000, 700)
        assert await s.revoke_key("k1", 800)
        assert not await s.expire_key("k1", 100)  # revoked keys are left alone
        assert not await s.expire_key("nope", 100)

    with_storage(storage_url, body)


def test_rotate_over_the_http_api(server_factory: ServerFactory) -> None:
    server = server_factory(env=FAST)
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    old_id, old = create(server, "--scope", "write", "--name", "app")
    url = server.url + f"/v1/keys/{old_id}/rotate"
    assert httpx.post(url, json={}, headers=server.headers("write")).status_code == 403
    assert httpx.post(url, json={"overlapSeconds": -1}, headers=admin).status_code == 400
    other_id, _ = create(server, "--scope", "write", "--project", "elsewhere")
    elsewhere = server.url + f"/v1/keys/{other_id}/rotate"
    assert httpx.post(elsewhere, json={}, headers=admin).status_code == 404

    kept = httpx.post(url, json={}, headers=admin)  # the default overlap: 7 days
    assert kept.status_code == 201, kept.text
    body = kept.json()
    assert body["scopes"] == ["write"]
    assert body["name"] == "app"
    assert body["replaces"]["keyId"] == old_id
    week = body["replaces"]["expiresAt"] - time.time() * 1000
    assert 6.9 * 86_400_000 < week <= 7 * 86_400_000
    assert post_event(server, old).is_success
    successor = body["key"]
    assert post_event(server, successor).is_success

    now = httpx.post(
        server.url + f"/v1/keys/{body['keyId']}/rotate", json={"overlapSeconds": 0}, headers=admin
    )
    assert now.status_code == 201
    refused = post_event(server, successor)
    assert refused.status_code == 401
    assert refused.json()["error"] == "key_expired"
    assert post_event(server, now.json()["key"]).is_success
    again = httpx.post(server.url + f"/v1/keys/{body['keyId']}/rotate", json={}, headers=admin)
    assert again.status_code == 404


def read_until_closed(ws: ClientConnection) -> None:
    """Read messages (live updates keep coming) until the server closes; fail after WAIT."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        ws.recv(timeout=WAIT)
    raise AssertionError("the connection stayed open")


def test_a_websocket_on_a_key_that_expires_is_closed(server_factory: ServerFactory) -> None:
    server = server_factory(env=FAST)
    key_id, key = create(server, "--scope", "read")
    hub = server.url.replace("http://", "ws://") + "/v1/realtime"
    with connect(hub, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        rotate(server, key_id, "0")
        with pytest.raises(ConnectionClosed) as closed:
            read_until_closed(ws)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "API key expired")
