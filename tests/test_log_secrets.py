"""No API key reaches the server's output at any log level or format: the real server at
debug (and trace) level, with keys in every place a client can put one, HTTP and WebSocket."""

from __future__ import annotations

import base64
import signal
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests._server import ServerProcess

WAIT = 30.0
#: a key-shaped string the server never issued: a client's mistake must not leak either
STRANGER = "ik_Str4ngerKeyThatLooksReal_0123456789abcdefXYZ"


def _use_keys_everywhere(server: ServerProcess) -> None:
    url = server.url
    write, read, admin = server.write_key, server.read_key, server.admin_key
    event = {"eventId": "s1", "eventType": "t", "timestamp": "2026-11-27T00:00:00Z"}
    with httpx.Client(base_url=url, timeout=WAIT) as http:
        http.post("/v1/events", json=event, headers={"Authorization": f"Bearer {write}"})
        http.post("/v1/events", json=event, headers={"X-API-Key": write})
        http.get("/v1/events", headers={"Authorization": f"bearer {read}"})
        http.get("/v1/keys", headers={"Authorization": f"Bearer {admin}"})
        http.get("/v1/events", headers={"Authorization": f"Bearer {STRANGER}"})
        http.get(f"/v1/events?key={STRANGER}&api_key={read}")
        http.get(f"/v1/nothing/{STRANGER}")
        # Segment: the write key as the Basic user name, as the password, and in the body
        basic = base64.b64encode(f"{write}:".encode()).decode()
        http.post(
            "/v1/track",
            json={"event": "e", "userId": "u"},
            headers={"Authorization": f"Basic {basic}"},
        )
        pw = base64.b64encode(f":{write}".encode()).decode()
        http.post(
            "/v1/track",
            json={"event": "e", "userId": "u"},
            headers={"Authorization": f"Basic {pw}"},
        )
        http.post(
            "/v1/batch",
            json={"batch": [{"type": "track", "event": "e", "userId": "u"}], "writeKey": write},
        )
    ws = url.replace("http", "ws", 1) + "/v1/realtime"
    # a header (SDKs) and a subprotocol (browsers); then a bad key of each kind
    for key in (read, STRANGER):
        try:
            with connect(
                ws, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=WAIT
            ):
                pass
        except Exception:  # noqa: S110 - refused is fine: what matters is the log
            pass
        try:
            with connect(
                ws,
                subprotocols=["innkt.v1", f"bearer.{key}"],  # type: ignore[list-item]
                open_timeout=WAIT,
            ):
                pass
        except Exception:  # noqa: S110
            pass


@pytest.mark.parametrize(
    "args",
    [
        ("--log-level", "debug"),
        ("--log-level", "trace"),
        ("--log-format", "json", "--log-level", "debug"),
    ],
    ids=["text-debug", "text-trace", "json-debug"],
)
def test_no_key_in_any_log(tmp_path: Path, args: tuple[str, ...]) -> None:
    server = ServerProcess(tmp_path / "s.db", log_dir=tmp_path / "logs", args=args).start()
    try:
        secrets = [server.write_key, server.read_key, server.admin_key, STRANGER]
        _use_keys_everywhere(server)
    finally:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)  # shutdown logs too
        server.proc.wait(WAIT)
    text = server.log.read_text(errors="replace")
    # the bootstrap keys are printed once, to stdout, by design (docs/operations.md)
    logged = "\n".join(line for line in text.splitlines() if not line.startswith("created "))
    assert "authorization" in logged.lower()  # the debug output did show the headers
    for secret in secrets:
        assert secret not in logged
        assert secret[3:20] not in logged  # not even a recognisable part of it
        b64 = base64.b64encode(f"{secret}:".encode()).decode()
        assert b64[:20] not in logged  # nor its Basic-auth form
    assert "[redacted]" in logged
