"""A real TCP fault proxy between the SDK and the real server.

It listens on a free local port and forwards HTTP/1.1 requests (keep-alive,
``Content-Length`` or chunked) to the upstream server over real sockets, so
the SDK under test and the server both see genuine TCP behaviour. Faults are
applied per request:

    PASS           forward the request and relay the answer
    DELAY          wait ``delay`` seconds, then forward (the client may time out
                   while the server still stores the batch later)
    BLACKHOLE      read the request, never answer, never forward
    RESET          read the request head, then reset the connection (RST); the
                   server never sees the request
    LOSE_RESPONSE  forward, let the server answer (and store!), then reset the
                   client connection instead of relaying the answer
    RESPOND        answer with a given status/headers/body without forwarding
                   (for exact 503/429 + Retry-After cases)

``set_mode()`` sets the fault for every request; ``queue()`` (and the helpers
``respond``/``reset_next``/``lose_next_response``) set faults for the next
matching requests only. ``match`` restricts a fault to paths with that prefix,
e.g. ``"/v1/events"`` leaves health probes alone. The event loop runs in a
background thread; ``start()``/``stop()`` (or ``with``) from any test.

The end of the module has the small helpers the SDK tests share: fast
settings (delays scaled down, never mocked) and reads of the server's and the
SDK queue's SQLite files.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from innkt_analytics.sdk._config import BackendConfig, QueueMode

__all__ = [
    "FAST",
    "Fault",
    "FaultProxy",
    "Rule",
    "Seen",
    "fast_config",
    "queued",
    "stored",
    "wait_for",
]


class Fault(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    RESET = "reset"
    LOSE_RESPONSE = "lose_response"
    RESPOND = "respond"


@dataclass(frozen=True)
class Rule:
    fault: Fault
    delay: float = 0.0
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: apply only to requests whose path starts with this
    match: str | None = None

    def applies(self, path: str) -> bool:
        return self.match is None or path.startswith(self.match)


@dataclass(frozen=True)
class Seen:
    """One request the proxy saw: when (monotonic), what, and the fault applied."""

    at: float
    method: str
    path: str
    fault: Fault
    headers: dict[str, str] = field(default_factory=dict)


_REASONS = {200: "OK", 408: "Request Timeout", 413: "Payload Too Large", 429: "Too Many Requests"}


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.seen: list[Seen] = []
        #: (monotonic time, path, status) of every answer relayed or injected
        self.answers: list[tuple[float, str, int]] = []
        self._default = Rule(Fault.PASS)
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control, from the test's thread ------------------------------------------------

    def set_mode(self, fault: Fault, *, delay: float = 0.0, match: str | None = None) -> None:
        with self._lock:
            self._default = Rule(fault, delay=delay, match=match)

    def queue(self, rule: Rule, times: int = 1) -> None:
        with self._lock:
            self._rules.extend([rule] * times)

    def respond(
        self,
        status: int,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        times: int = 1,
        match: str | None = "/v1/events",
    ) -> None:
        rule = Rule(
            Fault.RESPOND,
            status=status,
            headers=tuple((headers or {}).items()),
            body=body,
            match=match,
        )
        self.queue(rule, times)

    def reset_next(self, times: int = 1, *, match: str | None = "/v1/events") -> None:
        self.queue(Rule(Fault.RESET, match=match), times)

    def lose_next_response(self, times: int = 1, *, match: str | None = "/v1/events") -> None:
        self.queue(Rule(Fault.LOSE_RESPONSE, match=match), times)

    def requests(self, path_prefix: str = "/v1/events") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path.startswith(path_prefix)]

    def _answered(self, path: str, status: int) -> None:
        with self._lock:
            self.answers.append((time.monotonic(), path, status))

    def statuses(self, path_prefix: str = "/v1/events") -> list[int]:
        with self._lock:
            return [status for _, path, status in self.answers if path.startswith(path_prefix)]

    def _pick(self, path: str) -> Rule:
        with self._lock:
            for i, rule in enumerate(self._rules):
                if rule.applies(path):
                    del self._rules[i]
                    return rule
            default = self._default
        return default if default.applies(path) else Rule(Fault.PASS)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the proxy --------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, path, headers = _parse_head(head)
                rule = self._pick(path)
                with self._lock:
                    self.seen.append(Seen(time.monotonic(), method, path, rule.fault, headers))
                if rule.fault is Fault.RESET:
                    _reset(writer)
                    return
                body = await _read_body(reader, headers)
                if rule.fault is Fault.BLACKHOLE:
                    with contextlib.suppress(ConnectionError):
                        while await reader.read(65536):
                            pass
                    return
                if rule.fault is Fault.RESPOND:
                    self._answered(path, rule.status)
                    writer.write(_response(rule))
                    await writer.drain()
                    continue
                if rule.fault is Fault.DELAY:
                    await asyncio.sleep(rule.delay)
                if upstream is None:
                    upstream = await asyncio.open_connection(*self.upstream)
                up_reader, up_writer = upstream
                up_writer.write(head + body)
                await up_writer.drain()
                answer = await _read_response(up_reader)
                if rule.fault is Fault.LOSE_RESPONSE:
                    _reset(writer)
                    return
                self._answered(path, int(answer.split(b" ", 2)[1]))
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            _reset(writer)
        finally:
            self._conns.discard(task)
            if upstream is not None:
                upstream[1].close()
            writer.close()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return await _read_chunked(reader)
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        out += line
        size = int(line.split(b";", 1)[0].strip(), 16)
        data = await reader.readexactly(size + 2)
        out += data
        if size == 0:
            return bytes(out)


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    _, _, headers = _parse_head(head.replace(b"HTTP/1.1 ", b"GET ", 1))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return head + await _read_chunked(reader)
    length = headers.get("content-length")
    if length is None:
        return head + await reader.read()
    return head + (await reader.readexactly(int(length)) if int(length) else b"")


def _response(rule: Rule) -> bytes:
    reason = _REASONS.get(rule.status, "Injected")
    lines = [f"HTTP/1.1 {rule.status} {reason}"]
    names = {k.lower() for k, _ in rule.headers}
    lines += [f"{k}: {v}" for k, v in rule.headers]
    if "content-type" not in names:
        lines.append("content-type: application/json")
    lines.append(f"content-length: {len(rule.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + rule.body


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER 0 makes close() send RST instead of FIN: a connection reset, not an EOF.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- helpers shared by the SDK tests -------------------------------------------------------

#: delays scaled down so that retries and probes take milliseconds, not seconds
FAST: dict[str, Any] = {
    "retry_delay": 0.01,
    "max_retry_delay": 0.1,
    "sync_interval": 0.05,
    "commit_interval": 0.01,
    "timeout": 10.0,  # generous: only the tests about timeouts set a short one
    "config_refresh_interval": 0,
    "shutdown_timeout": 20.0,
    "atexit_timeout": 5.0,
}


def fast_config(url: str, key: str, queue: Path | None, **options: Any) -> BackendConfig:
    settings: dict[str, Any] = {**FAST, "queue_path": queue, **options}
    if queue is None:
        settings.setdefault("queue_mode", QueueMode.MEMORY)
    return BackendConfig(base_url=url, api_key=key, **settings)


def stored(db_path: str, session: str) -> list[int]:
    """The ``properties.i`` of every stored event of a session, sorted (duplicates kept)."""
    from tests._server import sqlite_events

    rows = sqlite_events(db_path, "payload", "session_id = ?", (session,))
    return sorted(json.loads(r[0])["properties"]["i"] for r in rows)  # type: ignore[arg-type]


def queued(queue_path: Path) -> int:
    """Events waiting in an SDK queue file, read with a separate connection."""
    with contextlib.closing(sqlite3.connect(queue_path)) as db:
        return int(db.execute("SELECT coalesce(sum(count), 0) FROM queue").fetchone()[0])


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll until ``predicate()`` holds or ``timeout`` passes (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
