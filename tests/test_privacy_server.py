"""Data rights on the server, on SQLite and PostgreSQL: delete, suppress, export, audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest

from tests._server import ServerProcess
from tests.conftest import ServerFactory


def _event(user: str | None, **extra: object) -> dict[str, object]:
    event: dict[str, object] = {
        "eventId": str(uuid.uuid4()),
        "eventType": "page_view",
        "sessionId": "s1",
        "timestamp": "2026-11-27T10:00:00Z",
        **extra,
    }
    if user is not None:
        event["userId"] = user
    return event


def _post(server: ServerProcess, events: list[dict[str, object]]) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/events/batch",
        headers=server.headers("write"),
        json={"events": events},
        timeout=30,
    )


def _export(server: ServerProcess, user: str) -> list[dict[str, object]]:
    r = httpx.get(server.url + f"/v1/users/{user}/export", headers=server.headers("admin"))
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


@pytest.fixture
def privacy_server(server_factory: ServerFactory, storage_url: str) -> ServerProcess:
    # key cache 0: the suppression list is re-read on every request
    return server_factory(db=storage_url, env={"INNKT_KEY_CACHE_SECONDS": "0"})


def test_delete_user_removes_data_and_suppresses(privacy_server: ServerProcess) -> None:
    server = privacy_server
    alice = [_event("alice", properties={"n": i}) for i in range(5)]
    bob = [_event("bob") for _ in range(3)]
    anonymous = [_event(None)]
    assert _post(server, alice + bob + anonymous).json()["accepted"] == 9
    assert len(_export(server, "alice")) == 5
    assert [e["properties"] for e in _export(server, "alice")] == [{"n": i} for i in range(5)]

    r = httpx.delete(server.url + "/v1/users/alice", headers=server.headers("admin"))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "userId": "alice",
        "deletedEvents": 5,
        "suppressed": True,
        "ids": ["alice"],  # the person's ids; alice has no other
    }

    assert _export(server, "alice") == []
    assert len(_export(server, "bob")) == 3  # another user's data untouched
    stats = httpx.get(server.url + "/v1/stats", headers=server.headers("read")).json()
    assert stats["total"] == 4
    assert stats["uniqueUsers"] == 1

    # New events for the deleted user are rejected per event; the rest are stored.
    late = [_event("alice"), _event("bob"), _event("alice")]
    r = _post(server, late)
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 1
    assert [(x["index"], x["eventId"], x["error"]) for x in body["rejected"]] == [
        (0, late[0]["eventId"], "suppressed"),
        (2, late[2]["eventId"], "suppressed"),
    ]
    single = httpx.post(
        server.url + "/v1/events", headers=server.headers("write"), json=_event("alice")
    )
    assert single.json()["rejected"][0]["error"] == "suppressed"
    assert _export(server, "alice") == []


def test_audit_log_records_privacy_actions(privacy_server: ServerProcess) -> None:
    server = privacy_server
    _post(server, [_event("carol")])
    _export(server, "carol")
    httpx.delete(server.url + "/v1/users/carol", headers=server.headers("admin"))
    r = httpx.get(server.url + "/v1/audit", headers=server.headers("admin"))
    assert r.status_code == 200
    entries = r.json()["entries"]
    assert [(e["action"], e["subject"]) for e in entries] == [
        ("user.delete", "carol"),
        ("user.export", "carol"),
    ]
    assert entries[0]["detail"] == {"deletedEvents": 1, "ids": ["carol"]}
    assert entries[0]["actor"].startswith("key_")
    page = httpx.get(
        server.url + "/v1/audit",
        params={"limit": 1, "before": entries[0]["seq"]},
        headers=server.headers("admin"),
    ).json()["entries"]
    assert [e["action"] for e in page] == ["user.export"]


def test_privacy_endpoints_need_admin_and_respect_projects(
    privacy_server: ServerProcess,
) -> None:
    server = privacy_server
    _post(server, [_event("dave")])
    for scope in ("write", "read"):
        h = server.headers(scope)
        assert httpx.delete(server.url + "/v1/users/dave", headers=h).status_code == 403
        assert httpx.get(server.url + "/v1/users/dave/export", headers=h).status_code == 403
        assert httpx.get(server.url + "/v1/audit", headers=h).status_code == 403
    other_admin = {"Authorization": f"Bearer {server.create_key('admin', project='other')}"}
    r = httpx.get(server.url + "/v1/users/dave/export", headers=other_admin)
    assert r.text == ""
    r = httpx.delete(server.url + "/v1/users/dave", headers=other_admin)
    assert r.json()["deletedEvents"] == 0
    assert len(_export(server, "dave")) == 1  # project "default" is untouched
    # ...and dave is suppressed only in "other"
    assert _post(server, [_event("dave")]).json()["accepted"] == 1


def test_backup_list_flags_backups_holding_deleted_users(server: ServerProcess) -> None:
    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "innkt_analytics", *args, "--db", server.db],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ),
        ).stdout

    _post(server, [_event("erin"), _event("frank")])
    cli("backup", "create")
    before = cli("backup", "list")
    assert "deleted" not in before
    httpx.delete(server.url + "/v1/users/erin", headers=server.headers("admin"))
    listed = cli("backup", "list")
    assert "contains 1 deleted user" in listed
    cli("backup", "create")
    newest, oldest = cli("backup", "list").splitlines()[:2]
    assert "deleted" not in newest
    assert "contains 1 deleted user" in oldest
