"""Hostile connections over raw sockets: slow or silent clients, huge heads, too many
connections. Each is closed or answered (JSON) within a generous bound; the limits
are the INNKT_HTTP_* settings, set short here."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests._server import ServerProcess

#: far above the settings below: a server that never gives up fails, a slow machine does not
BOUND = 20.0
LIMITS = {
    # long enough that the 200 connections of the cap test are all open before the
    # first idle ones close, even on a slow machine
    "INNKT_HTTP_IDLE_TIMEOUT": "3",
    "INNKT_HTTP_HEADER_TIMEOUT": "1",
    "INNKT_HTTP_BODY_TIMEOUT": "1.5",
    "INNKT_HTTP_MAX_HEADER_BYTES": "8192",
    "INNKT_HTTP_MAX_CONNECTIONS": "50",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("hostile")
    server = ServerProcess(tmp / "h.db", log_dir=tmp / "logs", env=LIMITS).start()
    yield server
    server.stop()


def _connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=BOUND)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a timeout here fails the test."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def _json_status(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower()
    parsed: dict[str, object] = json.loads(body)
    return status, parsed


def test_a_connection_that_sends_nothing_is_closed(limited: ServerProcess) -> None:
    with _connect(limited) as sock:
        assert _read_until_closed(sock) == b""


def test_a_head_sent_too_slowly_is_answered_408(limited: ServerProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # never finished
        status, body = _json_status(_read_until_closed(sock))
    assert status == 408
    assert body["error"] == "request_timeout"


def test_a_body_shorter_than_its_content_length_is_answered_408(limited: ServerProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(
            b"POST /v1/events/batch HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + limited.write_key.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"events": ['
        )
        status, body = _json_status(_read_until_closed(sock))
    assert status == 408
    assert body["error"] == "request_timeout"


def test_a_chunked_body_trickled_byte_by_byte_is_cut_off(limited: ServerProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(
            b"POST /v1/events/batch HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + limited.write_key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        deadline = time.monotonic() + BOUND
        answer = b""
        sock.settimeout(0.3)
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"1\r\n \r\n")  # one byte of body at a time, forever
            except OSError:
                break  # the server closed the connection
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break  # closed while bytes were in flight: the reset may eat the answer
            if not chunk:
                break
            answer += chunk
        else:
            pytest.fail("the trickling connection was never closed")
    if answer:
        assert _json_status(answer)[0] == 408


def test_a_huge_request_head_is_refused_431(limited: ServerProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(1024):  # up to 1 MiB, unless the server closes first
                sock.sendall(b"a" * 1024)
        except OSError:
            pass
        answer = _read_until_closed(sock)
    status, body = _json_status(answer)
    assert status == 431
    assert body["error"] == "headers_too_large"


def test_a_huge_head_sent_in_one_piece_is_refused_431(limited: ServerProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        status, _ = _json_status(_read_until_closed(sock))
    assert status == 431


def test_connections_beyond_the_cap_are_refused_and_idle_ones_closed(
    limited: ServerProcess,
) -> None:
    silent = [_connect(limited) for _ in range(200)]
    try:
        answers = [_read_until_closed(sock) for sock in silent]
    finally:
        for sock in silent:
            sock.close()
    refused = [a for a in answers if a]
    # the cap is 50: at least the 150 beyond it were answered 503 at once, the rest closed idle
    assert len(refused) >= 150
    assert all(_json_status(a)[0] == 503 for a in refused)
    # and the server still serves
    assert httpx.get(limited.url + "/v1/health", timeout=BOUND).status_code == 200


def test_keep_alive_requests_still_work(limited: ServerProcess) -> None:
    with httpx.Client(base_url=limited.url, timeout=BOUND) as client:
        for _ in range(3):
            assert client.get("/v1/health").status_code == 200
        r = client.post(
            "/v1/events/batch",
            headers={"Authorization": f"Bearer {limited.write_key}"},
            json={"events": []},
        )
        assert r.status_code < 500


def test_the_defaults_are_safe() -> None:
    from innkt_analytics.server._settings import ServerSettings

    s = ServerSettings()
    assert 0 < s.http_idle_timeout <= 120
    assert 0 < s.http_header_timeout <= 120
    assert 0 < s.http_body_timeout <= 600
    assert 1024 <= s.http_max_header_bytes <= 1024 * 1024
    assert s.http_max_connections > 0


def test_the_uvicorn_internals_the_guard_relies_on_are_there() -> None:
    # _connguard subclasses uvicorn's httptools protocol (not public API; pyproject
    # bounds uvicorn's version): a rename fails here by name, not as a hang above.
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    for name in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_headers_complete",
        "on_message_complete",
        "on_response_complete",
        "send_400_response",
        "handle_websocket_upgrade",
        "_unset_keepalive_if_required",
    ):
        assert callable(getattr(HttpToolsProtocol, name, None)), name
    for name in ("response_started", "response_complete", "disconnected", "message_event"):
        assert name in RequestResponseCycle.__init__.__code__.co_names, name
    assigned = {
        *HttpToolsProtocol.__init__.__code__.co_names,
        *HttpToolsProtocol.connection_made.__code__.co_names,
        *HttpToolsProtocol.on_message_begin.__code__.co_names,
    }
    for name in ("cycle", "transport", "loop", "logger", "flow", "url", "headers"):
        assert name in assigned, name
    assert "timeout_keep_alive_task" in assigned


def _read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, read to its end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_body_sent_after_an_early_answer_is_not_taken_for_a_huge_head(
    limited: ServerProcess,
) -> None:
    # A bad key is answered 401 before the body is read; the client goes on sending
    # the body (64 KiB, far more than INNKT_HTTP_MAX_HEADER_BYTES here), then reuses
    # the connection. Those bytes are the body, not the next request's head.
    body = b'{"events": [' + b" " * (64 * 1024) + b"]}"
    with _connect(limited) as sock:
        sock.sendall(
            b"POST /v1/events/batch HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer ik_nope_nope_nope\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        first = _read_response(sock)
        assert first.startswith(b"HTTP/1.1 401"), first
        sock.sendall(body)
        sock.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        second = _read_response(sock)
    assert second.startswith(b"HTTP/1.1 200"), second
