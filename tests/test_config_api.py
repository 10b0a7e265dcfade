"""GET/PUT /v1/config on the real server: defaults, validation, versions, scopes."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from innkt_analytics import ClientConfig
from tests._server import ServerProcess


def defaults() -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(ClientConfig())
    return out


def test_default_config_with_any_key(server: ServerProcess) -> None:
    for scope in ("write", "read", "admin"):
        r = httpx.get(server.url + "/v1/config", headers=server.headers(scope))
        assert r.status_code == 200, r.text
        assert r.json() == defaults()
    body = httpx.get(server.url + "/v1/config", headers=server.headers("read")).json()
    assert body["batchSize"] == 50
    assert body["samplingRate"] == 1.0
    assert body["version"] == 0


def test_put_stores_and_bumps_the_version(server: ServerProcess) -> None:
    url, admin = server.url + "/v1/config", server.headers("admin")
    new = {
        "batchSize": 200,
        "syncInterval": 5.5,
        "samplingRate": 0.25,
        "disabledEventTypes": ["debug", "noise"],
        "realtimeInterval": 0.5,
    }
    r = httpx.put(url, json=new, headers=admin)
    assert r.status_code == 200, r.text
    first = r.json()
    assert {k: first[k] for k in new} == new
    assert first["version"] == 1
    # Every key of the project sees it.
    assert httpx.get(url, headers=server.headers("write")).json() == first

    # A client cannot pick the version; the server increments it.
    r = httpx.put(url, json={**new, "batchSize": 10, "version": 99}, headers=admin)
    assert r.json()["version"] == 2
    assert r.json()["batchSize"] == 10
    assert httpx.get(url, headers=server.headers("read")).json()["version"] == 2

    # Fields left out take their defaults: PUT replaces the whole config.
    r = httpx.put(url, json={"samplingRate": 0.5}, headers=admin)
    assert r.json() == {**defaults(), "samplingRate": 0.5, "version": 3}


def test_config_survives_a_restart(server: ServerProcess) -> None:
    url = server.url + "/v1/config"
    httpx.put(url, json={"batchSize": 77}, headers=server.headers("admin"))
    server.restart()
    body = httpx.get(server.url + "/v1/config", headers=server.headers("read")).json()
    assert (body["batchSize"], body["version"]) == (77, 1)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"batchSize": 0}, "batchSize"),
        ({"batchSize": 2501}, "batchSize"),
        ({"batchSize": "ten"}, "batchSize"),
        ({"batchSize": 1.5}, "batchSize"),
        ({"syncInterval": 0}, "syncInterval"),
        ({"syncInterval": -1}, "syncInterval"),
        ({"samplingRate": 1.01}, "samplingRate"),
        ({"samplingRate": -0.1}, "samplingRate"),
        ({"samplingRate": None}, "samplingRate"),
        ({"disabledEventTypes": "debug"}, "disabledEventTypes"),
        ({"disabledEventTypes": [""]}, "disabledEventTypes"),
        ({"disabledEventTypes": [1]}, "disabledEventTypes"),
        ({"realtimeInterval": 0.001}, "realtimeInterval"),
    ],
)
def test_bad_values_are_400_naming_the_field(
    shared_server: ServerProcess, body: dict[str, Any], field: str
) -> None:
    url = shared_server.url + "/v1/config"
    before = httpx.get(url, headers=shared_server.headers("read")).json()
    r = httpx.put(url, json=body, headers=shared_server.headers("admin"))
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["error"] == "invalid_config"
    assert field in error["message"]
    # Nothing was stored.
    assert httpx.get(url, headers=shared_server.headers("read")).json() == before


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"null", b'"config"', b"\xff\xfe"])
def test_malformed_config_bodies_are_400(shared_server: ServerProcess, body: bytes) -> None:
    r = httpx.put(
        shared_server.url + "/v1/config",
        content=body,
        headers={**shared_server.headers("admin"), "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_config"


def test_config_needs_json(shared_server: ServerProcess) -> None:
    r = httpx.put(
        shared_server.url + "/v1/config",
        content=b"batchSize=5",
        headers={
            **shared_server.headers("admin"),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert r.status_code == 415


def test_only_admin_may_change_config(server: ServerProcess) -> None:
    url = server.url + "/v1/config"
    for scope in ("write", "read"):
        r = httpx.put(url, json={"batchSize": 5}, headers=server.headers(scope))
        assert r.status_code == 403
        assert r.json()["error"] == "forbidden"
    assert httpx.get(url, headers=server.headers("read")).json() == defaults()
