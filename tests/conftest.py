"""Shared fixtures: a real server in a subprocess, and the machine's services.

Tests that need PostgreSQL or Redis skip with the reason when the service is
not reachable, unless ``INNKT_REQUIRE_SERVICES=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from innkt_analytics import AnalyticsBackendService
from tests._server import ServerProcess

PG_URL = os.environ.get("INNKT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("INNKT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("INNKT_REQUIRE_SERVICES") == "1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or fail under INNKT_REQUIRE_SERVICES=1) when a service is not listening."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " and INNKT_REQUIRE_SERVICES=1")
    pytest.skip(message)


@pytest.fixture
def pg_url() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return PG_URL


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def services() -> Iterator[list[AnalyticsBackendService]]:
    """SDK services a test starts; each is shut down (bounded) at the end."""
    made: list[AnalyticsBackendService] = []
    yield made
    for service in made:
        service.shutdown(2)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers with custom env; all are killed at the end of the test."""
    started: list[ServerProcess] = []

    def make(
        env: dict[str, str] | None = None, db: str | None = None, port: int = 0
    ) -> ServerProcess:
        n = len(started)
        proc = ServerProcess(
            db or str(tmp_path / f"server{n}.db"),
            log_dir=tmp_path / "logs",
            env=env,
            port=port,
        )
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        if proc.running:
            proc.resume()
        proc.kill()


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    """A fresh server on a fresh SQLite database (keys: .write_key/.read_key/.admin_key)."""
    return server_factory()


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the whole session, for tests that only add data of their own."""
    base = tmp_path_factory.mktemp("shared")
    proc = ServerProcess(
        str(base / "shared.db"),
        log_dir=base / "logs",
        env={"INNKT_RATE_LIMIT_PER_SECOND": "0"},
    )
    proc.start()
    yield proc
    proc.kill()


# -- PostgreSQL: a fresh database per test, and the storage backends as a parameter ------


def _pg_admin(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    import urllib.parse
    import uuid

    name = f"innkt_test_{uuid.uuid4().hex[:16]}"
    # template0 accepts no connections, so parallel creations never find it busy
    _pg_admin(pg_url, f'CREATE DATABASE "{name}" TEMPLATE template0')
    parts = urllib.parse.urlsplit(pg_url)
    yield urllib.parse.urlunsplit(parts._replace(path="/" + name))
    _pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database for each storage backend: a SQLite path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "storage.db")
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
def backend_server(storage_url: str, server_factory: ServerFactory) -> ServerProcess:
    """A fresh server on each storage backend in turn: SQLite, then PostgreSQL.

    Use it instead of ``server`` in API tests that must pass on both backends.
    """
    return server_factory(db=storage_url)
