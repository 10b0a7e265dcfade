"""CLI error paths: one clear line, no traceback, and nothing created by mistake."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from innkt_analytics import BackendConfig
from tests._server import ServerProcess


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "innkt_analytics", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )


def test_read_commands_refuse_a_missing_database(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "nope.db"
    for args in (
        ("keys", "list"),
        ("keys", "revoke", "key_x"),
        ("export", "-o", "-"),
    ):
        result = _cli(*args, "--db", str(missing))
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.strip() == f"error: no database at {missing}"
    assert not missing.parent.exists()


def test_unusable_database_urls_are_one_line_errors(tmp_path: Path) -> None:
    for db in ("mysql://x", "postgresql://nobody@127.0.0.1:1/x"):
        result = _cli("keys", "list", "--db", db)
        assert result.returncode == 1
        assert result.stderr.startswith("error: ")
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_failed_first_start_does_not_swallow_the_bootstrap_keys(tmp_path: Path) -> None:
    db = tmp_path / "first.db"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        failed = _cli("serve", "--port", str(port), "--db", str(db))
    assert failed.returncode == 1
    assert "cannot bind" in failed.stderr
    server = ServerProcess(db, log_dir=tmp_path / "logs").start()
    try:
        assert set(server.keys) == {"admin", "write", "read"}  # printed on this start
        r = httpx.get(server.url + "/v1/config", headers=server.headers("write"))
        assert r.status_code == 200
    finally:
        server.kill()


def test_backend_config_repr_hides_the_api_key() -> None:
    config = BackendConfig(base_url="http://h", api_key="ik_SECRET_VALUE")
    assert "ik_SECRET_VALUE" not in repr(config)


def test_put_config_refuses_unknown_fields(shared_server: ServerProcess) -> None:
    admin = shared_server.headers("admin")
    before = httpx.get(shared_server.url + "/v1/config", headers=admin).json()
    r = httpx.put(shared_server.url + "/v1/config", headers=admin, json={"batch_size": 10})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_config"
    assert "batch_size" in r.json()["message"]
    assert httpx.get(shared_server.url + "/v1/config", headers=admin).json() == before
    r = httpx.put(
        shared_server.url + "/v1/config",
        headers=admin,
        json={"disabledEventTypes": [f"t{i}" for i in range(1001)]},
    )
    assert r.status_code == 400
