"""Graceful shutdown, rolling restarts, liveness and readiness, with real signals.

A real SIGTERM is sent to a real server under load from SDK services (through
tests/_proxy.py, standing in for a load balancer that moves to a second
instance) while requests are provably in flight: their headers were read and
the handler asked for the body (``Expect: 100-continue`` answered) before the
signal, their body is sent after it. Nothing acknowledged may be lost, no
in-flight request may go unanswered or get a 5xx, WebSockets are closed with
1001, and the SDKs finish their work against the second instance.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from innkt_analytics import AnalyticsBackendService
from tests._proxy import FaultProxy, fast_config, wait_for
from tests._server import ServerProcess
from tests.conftest import ServerFactory
from tests.test_postgres_server import outage

__all__ = ["outage"]  # the fixture, used by the readiness test below

WAIT = 60.0
ENV = {"INNKT_RATE_LIMIT_PER_SECOND": "0", "INNKT_SHUTDOWN_TIMEOUT": "30"}


class InFlight:
    """One ingest request whose handler is waiting for its body."""

    def __init__(self, server: ServerProcess, key: str) -> None:
        self.event_id = str(uuid.uuid4())
        event = {
            "eventId": self.event_id,
            "eventType": "in_flight",
            "timestamp": "2026-11-27T00:00:00Z",
        }
        self.body = json.dumps({"events": [event]}).encode()
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        head = (
            "POST /v1/events/batch HTTP/1.1\r\nHost: test\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(self.body)}\r\nExpect: 100-continue\r\n\r\n"
        )
        self.sock.sendall(head.encode())
        # The server says "100 Continue" only once the handler reads the body: the
        # request is then in flight, not merely waiting in a socket buffer.
        interim = self._read_head()
        assert interim.startswith(b"HTTP/1.1 100"), interim

    def _read_head(self) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError(f"closed without an answer after {data!r}")
            data += chunk
        return data

    def finish(self) -> tuple[int, dict[str, object]]:
        """Send the body; the status and JSON of the answer."""
        self.sock.sendall(self.body)
        head = self._read_head()
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = b""
        while len(body) < length:
            chunk = self.sock.recv(length - len(body))
            if not chunk:
                break
            body += chunk
        self.sock.close()
        return status, json.loads(body)


class Load:
    """SDK services tracking as fast as they can, each in its own thread."""

    def __init__(self, services: list[AnalyticsBackendService]) -> None:
        self.services = services
        self.tracked = [0] * len(services)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(services))
        ]

    def _run(self, i: int) -> None:
        service = self.services[i]
        while not self._stop.wait(0.002):
            for _ in range(5):
                service.track("load", {"i": self.tracked[i]}, user_id=f"u{i}")
                self.tracked[i] += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(WAIT)


def watch_close(ws: ClientConnection) -> Callable[[], int | None]:
    """Read ``ws`` in a thread; the function returns the close code received."""
    got: list[int | None] = []

    def run() -> None:
        try:
            while True:
                ws.recv()
        except ConnectionClosed as exc:
            got.append(exc.rcvd.code if exc.rcvd is not None else None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def code() -> int | None:
        thread.join(WAIT)
        return got[0] if got else None

    return code


def test_sigterm_under_load_loses_nothing_and_sdks_carry_on_against_a_second_instance(
    storage_url: str,
    server_factory: ServerFactory,
    tmp_path: Path,
    services: list[AnalyticsBackendService],
) -> None:
    shared = storage_url.startswith("postgresql://")
    first = server_factory(env=ENV, db=storage_url)
    write, read = first.write_key, first.read_key
    # PostgreSQL: the second instance runs alongside; SQLite: it takes over the file.
    second = server_factory(env=ENV, db=storage_url) if shared else None
    proxy = FaultProxy(first.port).start()
    try:
        for i in range(3):
            services.append(
                AnalyticsBackendService(fast_config(proxy.url, write, tmp_path / f"q{i}.db"))
            )
        hub = first.url.replace("http://", "ws://") + "/v1/realtime"
        with (
            connect(hub, additional_headers={"Authorization": f"Bearer {read}"}) as ws,
            Load(services) as load,
        ):
            close_code = watch_close(ws)
            assert wait_for(lambda: first.count_events() > 200, WAIT), "no load reached the server"
            in_flight = [InFlight(first, write) for _ in range(4)]
            assert first.proc is not None
            first.proc.send_signal(signal.SIGTERM)
            if second is not None:  # the load balancer moves on to the other instance
                proxy.upstream = ("127.0.0.1", second.port)
            answers = [request.finish() for request in in_flight]
            assert close_code() == 1001
            first.proc.wait(WAIT)
            if second is None:
                second = server_factory(env=ENV, db=storage_url)
                proxy.upstream = ("127.0.0.1", second.port)
            at_switch = second.count_events()
            assert wait_for(lambda: second.count_events() > at_switch + 200, WAIT)
        for status, body in answers:
            assert status == 200, body
            assert body["accepted"] == 1, body
        for service in services:
            assert service.flush(timeout=WAIT)
        log = first.log.read_text()
        assert "Traceback" not in log, log
        assert "timeout graceful shutdown exceeded" not in log, log
        assert first.proc.returncode in (0, -signal.SIGTERM), first.proc.returncode
    finally:
        proxy.stop()
    assert [s for s in proxy.statuses() if s >= 500] == []
    # every event tracked and every in-flight event acknowledged is stored, once
    assert second.count_events() == sum(load.tracked) + len(in_flight)


def test_readiness_goes_false_while_draining_and_liveness_stays(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env={**ENV, "INNKT_SHUTDOWN_DRAIN_SECONDS": "600"})
    assert httpx.get(server.url + "/v1/health/ready").json() == {"status": "ready"}
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: httpx.get(server.url + "/v1/health/ready").status_code == 503)
    assert httpx.get(server.url + "/v1/health/ready").json() == {"status": "draining"}
    live = httpx.get(server.url + "/v1/health/live")
    assert live.status_code == 200
    assert live.json() == {"status": "alive", "phase": "draining"}
    # still serving while the load balancer takes the instance out
    event = {"eventId": "drain-1", "eventType": "t", "timestamp": "2026-11-27T00:00:00Z"}
    posted = httpx.post(server.url + "/v1/events", json=event, headers=server.headers())
    assert posted.is_success, posted.text
    server.proc.send_signal(signal.SIGTERM)  # a second signal ends the drain delay
    server.proc.wait(WAIT)
    assert server.proc.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log.read_text()


@pytest.mark.postgres
def test_readiness_is_false_while_storage_is_unavailable(
    pg_database: str, server_factory: ServerFactory, outage: Callable[[bool], None]
) -> None:
    server = server_factory(env=ENV, db=pg_database)
    assert httpx.get(server.url + "/v1/health/ready").status_code == 200
    outage(True)
    assert wait_for(lambda: httpx.get(server.url + "/v1/health/ready").status_code == 503)
    body = httpx.get(server.url + "/v1/health/ready").json()
    assert body["status"] == "storage_unavailable"
    assert body["reason"]
    assert httpx.get(server.url + "/v1/health/live").status_code == 200
    outage(False)
    assert wait_for(lambda: httpx.get(server.url + "/v1/health/ready").status_code == 200, WAIT)
