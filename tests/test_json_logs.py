"""``serve --log-format json``: one JSON object per log line, request ids, no secrets.

The real server runs with JSON logs at INFO (access records included) and
at DEBUG; the test sends requests carrying keys in every place a client might
put them and checks what reached the log.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests._server import ServerProcess

WAIT = 30.0
LEAKED_KEY = "ik_" + "S3cretNotARealKeyButLongEnough_123"  # a key-shaped string


def json_server(tmp_path: Path, level: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / f"{level}.db",
        log_dir=tmp_path / "logs",
        args=("--log-format", "json", "--log-level", level),
    ).start()


def log_records(server: ServerProcess) -> list[dict[str, object]]:
    records = []
    for line in server.log.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # every JSON-looking line parses
    return records


@pytest.mark.parametrize("level", ["info", "debug"])
def test_json_logs_carry_request_ids_and_never_secrets(tmp_path: Path, level: str) -> None:
    server = json_server(tmp_path, level)
    try:
        secrets = [server.write_key, server.read_key, server.admin_key, LEAKED_KEY]
        event = {"eventId": "j1", "eventType": "t", "timestamp": "2026-11-27T00:00:00Z"}
        mine = httpx.post(
            server.url + "/v1/events",
            json=event,
            headers={**server.headers("write"), "X-Request-ID": "client-req-42"},
        )
        assert mine.status_code == 200
        assert mine.headers["x-request-id"] == "client-req-42"
        fresh = httpx.get(server.url + "/v1/health/live")
        generated = fresh.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        # an unusable client id is replaced, not echoed
        odd = httpx.get(server.url + "/v1/health/live", headers={"X-Request-ID": "a b\tc"})
        assert odd.headers["x-request-id"] != "a b\tc"
        # keys where they should not be: query string, path, a bad bearer, X-API-Key
        httpx.get(server.url + f"/v1/events?key={LEAKED_KEY}", headers=server.headers("read"))
        httpx.get(server.url + f"/v1/nothing/{LEAKED_KEY}")
        httpx.get(server.url + "/v1/events", headers={"Authorization": f"Bearer {LEAKED_KEY}"})
        httpx.get(server.url + "/v1/events", headers={"X-API-Key": LEAKED_KEY})
        deadline = time.monotonic() + WAIT
        while not any(r.get("requestId") == "client-req-42" for r in log_records(server)):
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.05)
    finally:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)  # the shutdown logs too
        server.proc.wait(WAIT)

    records = log_records(server)
    (access,) = [r for r in records if r.get("requestId") == "client-req-42"]
    assert access["logger"] == "innkt_analytics.access"
    assert access["route"] == "/v1/events"
    assert access["status"] == 200
    assert access["level"] == "info"
    assert {"time", "message", "durationMs"} <= access.keys()
    assert any(r.get("requestId") == generated for r in records)
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's own lines too
    text = server.log.read_text()
    # the only non-JSON output is the start banner on stdout (keys shown once, by design)
    banner = [line for line in text.splitlines() if line and not line.startswith("{")]
    assert all(
        line.startswith(("innkt-analytics ", "created ", "keys are shown", "listening on "))
        for line in banner
    ), banner
    logged = "\n".join(line for line in text.splitlines() if line.startswith("{"))
    for secret in secrets:
        assert secret not in logged
        assert secret[3:20] not in logged  # not even a recognisable part of it
    assert "[redacted]" in logged  # the leaked key was there and was masked


def test_a_bad_log_format_is_refused(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "x.db", log_dir=tmp_path / "logs", args=("--log-format", "xml")
    )
    with pytest.raises(RuntimeError, match="log_format"):
        server.start(timeout=60)
