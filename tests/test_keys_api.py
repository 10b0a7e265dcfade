"""Key management over HTTP: admin only, scoped to the admin's project, secrets shown once."""

from __future__ import annotations

import httpx

from tests.conftest import ServerFactory


def test_create_use_list_and_revoke_a_key(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_KEY_CACHE_SECONDS": "0"})
    admin = server.headers("admin")
    r = httpx.post(
        server.url + "/v1/keys", headers=admin, json={"scopes": ["write"], "name": "ios app"}
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["scopes"] == ["write"]
    assert created["project"] == "default"
    key = created["key"]
    event = {"eventId": "k1", "eventType": "t", "timestamp": "2026-01-01T00:00:00Z"}
    r = httpx.post(
        server.url + "/v1/events", headers={"Authorization": f"Bearer {key}"}, json=event
    )
    assert r.status_code == 200

    listed = httpx.get(server.url + "/v1/keys", headers=admin).json()["keys"]
    mine = [k for k in listed if k["keyId"] == created["keyId"]]
    assert mine
    assert mine[0]["name"] == "ios app"
    assert all("key" not in k and "keyHash" not in k for k in listed)

    r = httpx.delete(server.url + f"/v1/keys/{created['keyId']}", headers=admin)
    assert r.status_code == 200
    r = httpx.post(
        server.url + "/v1/events", headers={"Authorization": f"Bearer {key}"}, json=event
    )
    assert r.status_code == 401
    r = httpx.delete(server.url + f"/v1/keys/{created['keyId']}", headers=admin)
    assert r.status_code == 409


def test_key_api_needs_admin_and_stays_in_project(server_factory: ServerFactory) -> None:
    server = server_factory()
    for scope in ("write", "read"):
        r = httpx.get(server.url + "/v1/keys", headers=server.headers(scope))
        assert r.status_code == 403
    other_admin = server.create_key("admin", project="other")
    other = {"Authorization": f"Bearer {other_admin}"}
    listed = httpx.get(server.url + "/v1/keys", headers=other).json()["keys"]
    assert {k["project"] for k in listed} == {"other"}
    default_ids = [
        k["keyId"]
        for k in httpx.get(server.url + "/v1/keys", headers=server.headers("admin")).json()["keys"]
    ]
    r = httpx.delete(server.url + f"/v1/keys/{default_ids[0]}", headers=other)
    assert r.status_code == 404
    r = httpx.post(server.url + "/v1/keys", headers=other, json={"scopes": ["root"]})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_key_request"
