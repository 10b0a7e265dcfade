"""GET /v1/health, and what the server does when its disk is full."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from innkt_analytics import __version__
from tests._server import ServerProcess
from tests.conftest import ServerFactory


def event(event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "eventType": "health-test",
        "timestamp": "2026-11-27T11:00:00Z",
        **extra,
    }


def test_health_without_a_key_says_only_ok(shared_server: ServerProcess) -> None:
    r = httpx.get(shared_server.url + "/v1/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer ik_wrong"}, {"X-API-Key": "nonsense"}, {"Authorization": "Basic x"}],
)
def test_health_with_a_bad_key_is_still_only_ok(
    shared_server: ServerProcess, headers: dict[str, str]
) -> None:
    r = httpx.get(shared_server.url + "/v1/health", headers=headers)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_health_with_a_write_key_shows_only_the_version(shared_server: ServerProcess) -> None:
    # The SDK checks health with its write key and reports the server version.
    r = httpx.get(shared_server.url + "/v1/health", headers=shared_server.headers("write"))
    assert r.json() == {"status": "ok", "version": __version__}


def test_health_details_for_read_and_admin_keys(server: ServerProcess) -> None:
    events = [event(f"h{i}", properties={"pad": "x" * 100}) for i in range(25)]
    r = httpx.post(
        server.url + "/v1/events/batch", json={"events": events}, headers=server.headers()
    )
    assert r.json()["accepted"] == 25
    for scope in ("read", "admin"):
        body = httpx.get(server.url + "/v1/health", headers=server.headers(scope)).json()
        assert body["status"] == "ok"
        assert body["version"] == __version__
        assert body["uptimeSeconds"] > 0
        storage = body["storage"]
        assert storage["backend"] == "sqlite"
        assert storage["status"] == "ok"
        assert storage["reason"] is None
        assert storage["sizeBytes"] > 25 * 100
        assert storage["events"] == 25
        assert body["ingestRatePerSecond"] > 0


def test_health_event_count_survives_a_restart(server: ServerProcess) -> None:
    events = [event(f"r{i}") for i in range(7)]
    httpx.post(server.url + "/v1/events/batch", json={"events": events}, headers=server.headers())
    server.restart()
    body = httpx.get(server.url + "/v1/health", headers=server.headers("read")).json()
    assert body["storage"]["events"] == 7


# -- a full disk ---------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs, so the database can really run out of space (root ignores chmod)."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    block = b"\xa5" * 65536
    with open(path, "wb", buffering=0) as f:
        for size in (len(block), 512):  # then the last partial block too
            while True:
                try:
                    f.write(block[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break


def test_full_disk_gives_503_then_recovers_without_restart(
    server_factory: ServerFactory, small_fs: Path
) -> None:
    server = server_factory(db=str(small_fs / "events.db"))
    url, headers = server.url + "/v1/events/batch", server.headers()
    ok = httpx.post(url, json={"events": [event("before")]}, headers=headers)
    assert ok.status_code == 200

    filler = small_fs / "filler"
    fill(filler)
    refused = None
    for n in range(200):  # a few batches until the WAL cannot grow any more
        batch = [event(f"full-{n}-{i}", properties={"pad": "y" * 2000}) for i in range(50)]
        r = httpx.post(url, json={"events": batch}, headers=headers, timeout=30)
        if r.status_code != 200:
            refused = r
            break
    assert refused is not None, "the server never noticed the full disk"
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"] == "storage_unavailable"
    assert "full" in refused.json()["message"]

    health = httpx.get(server.url + "/v1/health")
    assert health.status_code == 503
    assert int(health.headers["Retry-After"]) >= 1
    body = health.json()
    assert body["status"] == "degraded"
    assert body["storage"]["status"] == "full"
    assert "full" in body["storage"]["reason"]

    # Free the space: the same server process ingests again.
    filler.unlink()
    again = httpx.post(url, json={"events": [event("after")]}, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["accepted"] == 1
    health = httpx.get(server.url + "/v1/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ids = server.event_ids()
    assert "before" in ids
    assert "after" in ids
    assert len(ids) == len(set(ids))


def test_health_recovers_after_a_full_disk_even_without_new_writes(
    server_factory: ServerFactory, small_fs: Path
) -> None:
    """Once space is free, health must not keep saying "full" just because no
    client has written since (clients wait for health before retrying)."""
    server = server_factory(db=str(small_fs / "events.db"))
    url, headers = server.url + "/v1/events/batch", server.headers()
    filler = small_fs / "filler"
    fill(filler)
    for n in range(200):
        batch = [event(f"f-{n}-{i}", properties={"pad": "y" * 2000}) for i in range(50)]
        if httpx.post(url, json={"events": batch}, headers=headers).status_code == 503:
            break
    assert httpx.get(server.url + "/v1/health").status_code == 503
    filler.unlink()
    health = httpx.get(server.url + "/v1/health")
    assert health.status_code == 200, health.text


def test_head_health_for_load_balancers(shared_server: ServerProcess) -> None:
    r = httpx.head(shared_server.url + "/v1/health")
    assert r.status_code == 200
    assert r.content == b""
