"""One real server process on PostgreSQL: the API end to end (on both backends,
through the ``backend_server`` fixture), PostgreSQL going away and coming back,
backups with pg_dump, and rate limits kept in Redis (or not, when Redis is gone).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests._server import ServerProcess
from tests.conftest import ServerFactory


def events(*ids: str, day: str = "2026-11-02") -> dict[str, Any]:
    return {
        "events": [
            {
                "eventId": i,
                "eventType": "signup" if i.endswith("0") else "page",
                "sessionId": f"s-{i[-1]}",
                "timestamp": f"{day}T10:00:00Z",
            }
            for i in ids
        ]
    }


def post(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/v1/events/batch", headers=server.headers("write"), json=body)


@pytest.fixture
def outage(pg_url: str, pg_database: str) -> Iterator[Callable[[bool], None]]:
    """``outage(True)``: the server's database refuses connections and its open
    ones are terminated; ``outage(False)``: it is back."""
    name = urllib.parse.urlsplit(pg_database).path.lstrip("/")

    def switch(on: bool) -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if on else "true"}')
            if on:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )

    yield switch
    switch(False)


def test_ingest_query_and_stats_on_each_backend(backend_server: ServerProcess) -> None:
    server = backend_server
    r = post(server, events("a0", "a1", "a2"))
    assert r.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert post(server, events("a2", "a3")).json()["duplicates"] == 1
    assert server.event_ids() == ["a0", "a1", "a2", "a3"]
    read = server.headers("read")
    page = httpx.get(server.url + "/v1/events", headers=read, params={"limit": 3}).json()
    assert [e["eventId"] for e in page["events"]] == ["a0", "a1", "a2"]
    rest = httpx.get(
        server.url + "/v1/events", headers=read, params={"cursor": page["nextCursor"]}
    ).json()
    assert [e["eventId"] for e in rest["events"]] == ["a3"]
    assert rest["nextCursor"] is None
    stats = httpx.get(server.url + "/v1/stats", headers=read, params={"bucket": "day"}).json()
    assert stats["total"] == 4
    assert stats["byEventType"] == {"page": 3, "signup": 1}
    assert stats["uniqueSessions"] == 4
    health = httpx.get(server.url + "/v1/health", headers=read).json()
    assert health["storage"]["backend"] == ("postgresql" if server.is_postgres else "sqlite")
    assert health["storage"]["events"] == 4


@pytest.mark.postgres
def test_postgres_outage_answers_503_and_recovers_by_itself(
    pg_database: str, outage: Callable[[bool], None], server_factory: ServerFactory
) -> None:
    server = server_factory(
        db=pg_database,
        env={"INNKT_UNAVAILABLE_RETRY_AFTER": "2", "INNKT_KEY_CACHE_SECONDS": "600"},
    )
    assert post(server, events("b1")).status_code == 200
    outage(True)
    r = post(server, events("b2", "b3"))
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "2"
    assert r.json()["error"] == "storage_unavailable"
    health = httpx.get(server.url + "/v1/health")
    assert health.status_code == 503
    assert health.headers["Retry-After"] == "2"
    assert health.json()["storage"]["status"] == "unavailable"
    assert "PostgreSQL" in health.json()["storage"]["reason"]
    outage(False)
    r = post(server, events("b1", "b2", "b3"))  # the SDK's retry of the same batch
    assert r.json() == {"accepted": 2, "duplicates": 1, "rejected": []}
    assert httpx.get(server.url + "/v1/health").json() == {"status": "ok"}
    assert server.event_ids() == ["b1", "b2", "b3"]


def test_a_server_started_before_postgresql_waits_for_it(
    pg_database: str, outage: Callable[[bool], None], tmp_path: Path
) -> None:
    outage(True)
    # Told not to wait, it gives up at once with the reason.
    impatient = ServerProcess(
        pg_database, log_dir=tmp_path / "logs", env={"INNKT_STORAGE_STARTUP_WAIT": "0"}
    )
    with pytest.raises(RuntimeError, match="cannot open storage"):
        impatient.start(timeout=30)
    # By default it keeps trying, says so, and starts once PostgreSQL lets it in.
    server = ServerProcess(pg_database, log_dir=tmp_path / "logs")
    started: list[BaseException | None] = []
    starter = threading.Thread(
        target=lambda: started.append(_start_or_error(server, timeout=60)), daemon=True
    )
    starter.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            log = server.log.read_text(errors="replace") if hasattr(server, "log") else ""
            if "waiting for storage" in log:
                break
            time.sleep(0.1)
        assert "PostgreSQL unavailable" in log
        assert server.running  # still waiting, not exited
        outage(False)
        starter.join(60)
        assert started == [None]
        assert post(server, events("w1")).status_code == 200
        assert server.event_ids() == ["w1"]
    finally:
        server.kill()


def _start_or_error(server: ServerProcess, timeout: float) -> BaseException | None:
    try:
        server.start(timeout=timeout)
    except BaseException as exc:  # reported to the test's thread
        return exc
    return None


@pytest.mark.postgres
def test_backup_with_pg_dump_and_restore_as_operations_md_says(
    pg_url: str, pg_database: str, tmp_path: Path, server_factory: ServerFactory
) -> None:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump/pg_restore are not installed")
    server = server_factory(db=pg_database)
    assert post(server, events("r0", "r1")).json()["accepted"] == 2
    with psycopg.connect(pg_database, autocommit=True) as conn:
        for _ in range(300):  # compacted into a segment within compact_age (2 s)
            if conn.execute("SELECT count(*) FROM events").fetchone() == (0,):
                break
            time.sleep(0.05)
        assert conn.execute("SELECT sum(rows) FROM segments").fetchone() == (2,)
    # the dump holds events in a segment and one still hot
    assert post(server, events("r2")).json()["accepted"] == 1
    dump = tmp_path / "innkt.dump"
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump), pg_database], check=True)
    server.kill()
    name = f"innkt_restore_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    restored = urllib.parse.urlunsplit(urllib.parse.urlsplit(pg_url)._replace(path="/" + name))
    try:
        subprocess.run(["pg_restore", "-d", restored, str(dump)], check=True)
        again = server_factory(db=restored)
        again.keys = dict(server.keys)  # the keys came back with the data
        # what an SDK resends after the restore is recognised; new events follow the old
        r = post(again, events("r1", "r2", "r3"))
        assert r.json() == {"accepted": 1, "duplicates": 2, "rejected": []}
        assert again.event_ids() == ["r0", "r1", "r2", "r3"]
        again.kill()
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.redis
def test_rate_limit_kept_in_redis(server_factory: ServerFactory, redis_url: str) -> None:
    server = server_factory(
        env={
            "INNKT_RATE_LIMIT_STORE": redis_url,
            "INNKT_RATE_LIMIT_PER_SECOND": "0.01",
            "INNKT_RATE_LIMIT_BURST": "3",
        }
    )
    codes = [post(server, events(f"c{i}")).status_code for i in range(4)]
    assert codes == [200, 200, 200, 429]
    r = post(server, events("c9"))
    assert r.json()["error"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1
    section = httpx.get(server.url + "/v1/health", headers=server.headers("read")).json()
    assert section["rateLimit"]["state"] == "shared"


def test_rate_limit_falls_back_per_instance_when_redis_is_unreachable(
    server_factory: ServerFactory,
) -> None:
    # Nothing listens on port 1: every Redis call fails at once.
    server = server_factory(
        env={
            "INNKT_RATE_LIMIT_STORE": "redis://127.0.0.1:1/0",
            "INNKT_RATE_LIMIT_PER_SECOND": "0.01",
            "INNKT_RATE_LIMIT_BURST": "2",
        }
    )
    codes = [post(server, events(f"d{i}")).status_code for i in range(3)]
    assert codes == [200, 200, 429]
    section = httpx.get(server.url + "/v1/health", headers=server.headers("read")).json()
    assert section["rateLimit"]["state"] == "local"
    assert section["rateLimit"]["reason"]
    assert section["rateLimit"]["fallbacks"] >= 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_rate_limits_are_shared_again_when_redis_comes_back(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    server = server_factory(
        env={
            "INNKT_RATE_LIMIT_STORE": f"redis://127.0.0.1:{port}/0",
            "INNKT_RATE_LIMIT_PER_SECOND": "0.01",
            "INNKT_RATE_LIMIT_BURST": "100",
        }
    )
    read = server.headers("read")
    assert post(server, events("e1")).status_code == 200
    assert (
        httpx.get(server.url + "/v1/health", headers=read).json()["rateLimit"]["state"] == "local"
    )
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        state = "local"
        for _ in range(100):  # Redis is tried again a second after the failure
            assert post(server, events("e2")).status_code == 200
            state = httpx.get(server.url + "/v1/health", headers=read).json()["rateLimit"]["state"]
            if state == "shared":
                break
            time.sleep(0.1)
        assert state == "shared"
    finally:
        redis.terminate()
        redis.wait(10)


def test_a_rate_limit_store_that_is_not_redis_is_refused(
    server_factory: ServerFactory,
) -> None:
    with pytest.raises(RuntimeError, match="rate_limit_store"):
        server_factory(env={"INNKT_RATE_LIMIT_STORE": "memcached://127.0.0.1"})
