"""The ``innkt-analytics`` command, run for real in subprocesses."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._server import ServerProcess

CLI = [sys.executable, "-m", "innkt_analytics"]
KEY_LINE = re.compile(r"^created (admin|write|read) key \(project 'default'\): (ik_\S+)$")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Serve:
    """``innkt-analytics serve`` in a subprocess; ``lines`` is its output up to the URL."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: list[str] = []
        self.url = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                break

    def keys(self) -> dict[str, str]:
        return {m.group(1): m.group(2) for m in map(KEY_LINE.match, self.lines) if m}

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then (exit status, the rest of the output)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rest, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, _ = self.proc.communicate()
        return self.proc.returncode, rest or ""


@pytest.fixture
def serve() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for s in started:
        s.stop()


def test_serve_prints_url_and_first_start_keys(tmp_path: Path, serve: list[Serve]) -> None:
    db = str(tmp_path / "cli.db")
    first = Serve("--port", "0", "--db", db)
    serve.append(first)
    assert first.url.startswith("http://127.0.0.1:"), first.lines
    keys = first.keys()
    assert set(keys) == {"admin", "write", "read"}
    assert len(set(keys.values())) == 3
    assert httpx.get(first.url + "/v1/health").json() == {"status": "ok"}
    r = httpx.post(
        first.url + "/v1/events",
        json={"eventId": "cli", "eventType": "t", "timestamp": "2026-11-27T00:00:00Z"},
        headers={"Authorization": f"Bearer {keys['write']}"},
    )
    assert r.status_code == 200
    # SIGTERM shuts down gracefully; uvicorn then re-raises the signal to exit with it.
    status, rest = first.stop()
    assert status in (0, -signal.SIGTERM)
    assert "Traceback" not in rest

    second = Serve("--port", "0", "--db", db)
    serve.append(second)
    assert second.url
    assert second.keys() == {}  # keys are shown once, on the first start only
    r = httpx.get(second.url + "/v1/events", headers={"Authorization": f"Bearer {keys['read']}"})
    assert [e["eventId"] for e in r.json()["events"]] == ["cli"]


def test_serve_honours_innkt_environment(tmp_path: Path, serve: list[Serve]) -> None:
    port = free_port()
    db = tmp_path / "env.db"
    s = Serve(env={"INNKT_DB": str(db), "INNKT_PORT": str(port), "INNKT_HOST": "127.0.0.1"})
    serve.append(s)
    assert s.url == f"http://127.0.0.1:{port}"
    assert db.exists()
    # Command-line options win over the environment.
    other = Serve("--port", "0", "--db", str(tmp_path / "opt.db"), env={"INNKT_PORT": str(port)})
    serve.append(other)
    assert other.url
    assert other.url != s.url
    assert (tmp_path / "opt.db").exists()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"INNKT_PORT": "eighty"}, "INNKT_PORT"),
        ({"INNKT_RATE_LIMIT_BURST": "0"}, "rate_limit_burst"),
    ],
)
def test_bad_settings_exit_2_naming_them(tmp_path: Path, env: dict[str, str], named: str) -> None:
    result = run("serve", "--db", str(tmp_path / "x.db"), env=env)
    assert result.returncode == 2
    assert named in result.stderr


def test_serve_on_a_busy_port_fails_cleanly(tmp_path: Path, shared_server: ServerProcess) -> None:
    result = run("serve", "--port", str(shared_server.port), "--db", str(tmp_path / "busy.db"))
    assert result.returncode == 1
    assert "cannot bind" in result.stderr


def test_keys_create_list_revoke(shared_server: ServerProcess) -> None:
    project = "cli-" + os.urandom(4).hex()
    created = run(
        "keys", "create", "--scope", "read", "--scope", "write", "--project", project,
        "--name", "both ways", "--db", shared_server.db,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    lines = created.stdout.strip().splitlines()
    secret = lines[-1]
    assert secret.startswith("ik_")
    key_id = re.search(r"(key_\w+)", lines[-2])
    assert key_id is not None
    key_id_text = key_id.group(1)

    # The new key works against the running server, with both scopes, in its project.
    headers = {"X-API-Key": secret}
    ev = {"eventId": "k1", "eventType": "t", "timestamp": "2026-11-27T00:00:00Z"}
    assert httpx.post(shared_server.url + "/v1/events", json=ev, headers=headers).is_success
    got = httpx.get(shared_server.url + "/v1/events", headers=headers).json()["events"]
    assert [e["eventId"] for e in got] == ["k1"]
    assert httpx.put(shared_server.url + "/v1/config", json={}, headers=headers).status_code == 403

    listed = run("keys", "list", "--project", project, "--db", shared_server.db)
    assert listed.returncode == 0
    (row,) = listed.stdout.strip().splitlines()
    assert key_id_text in row
    assert "read,write" in row
    assert "active" in row
    assert "both ways" in row
    assert secret not in listed.stdout
    revoked = run("keys", "revoke", key_id_text, "--db", shared_server.db)
    assert revoked.returncode == 0
    assert f"revoked {key_id_text}" in revoked.stdout
    row = run("keys", "list", "--project", project, "--db", shared_server.db).stdout
    assert "revoked" in row
    again = run("keys", "revoke", key_id_text, "--db", shared_server.db)
    assert again.returncode == 1
    assert key_id_text in again.stderr


def test_keys_use_innkt_db_from_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "envkeys.db"
    created = run("keys", "create", "--scope", "admin", env={"INNKT_DB": str(db)})
    assert created.returncode == 0, created.stderr
    assert db.exists()
    listed = run("keys", "list", env={"INNKT_DB": str(db)})
    assert "admin" in listed.stdout
    assert len(listed.stdout.strip().splitlines()) == 1


def test_keys_create_refuses_unknown_or_missing_scopes(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    result = run("keys", "create", "--scope", "read", "--scope", "superuser", "--db", str(db))
    assert result.returncode == 2
    assert "scope" in result.stderr
    result = run("keys", "create", "--db", str(db))
    assert result.returncode == 2
    assert not db.exists()  # refused before touching the database


def test_python_dash_m_and_the_console_script() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout
    assert "keys" in result.stdout
    assert run("keys", "--help").returncode == 0
    script = shutil.which("innkt-analytics")
    if script is None:
        pytest.skip("the innkt-analytics script is not on PATH (package not installed)")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "serve" in result.stdout
