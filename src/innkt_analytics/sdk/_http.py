"""HTTP/1.1 for the SDK's sender: h11's sans-I/O protocol behind a socket and an asyncio front.

The sender makes a few small requests (a batch POST, a health GET, a config
GET) to one origin. A full client (httpx pulls seven distributions and costs
~70 ms to import) is not worth it for that; h11 is one small pure-Python
distribution that does the protocol, and the two fronts below only move bytes.

Both fronts keep up to ``MAX_IDLE`` keep-alive connections; one that the server
closed while it sat idle is noticed before reuse and replaced. Every failure is
an ``OSError`` at the edge (``TimeoutError`` for timeouts, ``ssl.SSLError`` for
TLS, ``ConnectionError`` for protocol errors), so the transport converts one
exception family. Certificates are always verified: with the caller's
``ssl.SSLContext``, else with ``ssl.create_default_context()`` (the system's
trust store). Proxy environment variables are not read.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import h11

if TYPE_CHECKING:
    # Imported where used: a thread-only app (the sync service) never loads asyncio.
    import asyncio

__all__ = ["AsyncHttpClient", "HttpResponse", "Origin", "SyncHttpClient"]

#: keep-alive connections kept per client (one sender per service)
MAX_IDLE: Final = 2
_CHUNK: Final = 65536


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One answer: status, headers with lower-case names, the whole body."""

    status: int
    headers: Mapping[str, str]
    content: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go, parsed once from the base URL."""

    tls: bool
    host: str
    port: int
    #: the base URL's path, without a trailing slash ("" for the root)
    prefix: str
    #: the Host header
    authority: str

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        """Raises ``ValueError`` for anything but an http(s) URL with a host."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        authority = shown if port == (443 if tls else 80) else f"{shown}:{port}"
        return cls(tls, host, port, parts.path.rstrip("/"), authority)


def _request_events(
    origin: Origin, method: str, path: str, headers: Mapping[str, str], body: bytes
) -> list[h11.Event]:
    fields = [("Host", origin.authority), *headers.items()]
    if method != "GET" or body:
        fields.append(("Content-Length", str(len(body))))
    events: list[h11.Event] = [
        h11.Request(method=method, target=origin.prefix + path, headers=fields)
    ]
    if body:
        events.append(h11.Data(data=body))
    events.append(h11.EndOfMessage())
    return events


class _Reader:
    """Collects one response from h11 events; ``feed`` returns True when it is complete."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()

    def feed(self, event: h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]) -> bool:
        if isinstance(event, h11.Response):
            self.status = event.status_code
            self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
        elif isinstance(event, h11.Data):
            self.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return True
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("the server closed the connection before the answer ended")
        return False

    def response(self) -> HttpResponse:
        return HttpResponse(self.status, self.headers, bytes(self.body))


def _reusable(conn: h11.Connection) -> bool:
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
        return True
    return False


def default_context() -> ssl.SSLContext:
    """The verifying context used when the caller gave none."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


class SyncHttpClient:
    """Blocking requests over sockets; safe to call from several threads."""

    def __init__(self, base_url: str, timeout: float, context: ssl.SSLContext | None) -> None:
        self.origin = Origin.parse(base_url)
        self.timeout = timeout
        self._context = context
        self._idle: list[tuple[socket.socket, h11.Connection]] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
    ) -> HttpResponse:
        """Send one request and read the whole answer. Raises ``OSError``."""
        sock, conn = self._checkout()
        try:
            for outgoing in _request_events(self.origin, method, path, headers, body):
                data = conn.send(outgoing)
                if data:
                    sock.sendall(data)
            reader = _Reader()
            while True:
                incoming = conn.next_event()
                if incoming is h11.NEED_DATA:
                    conn.receive_data(sock.recv(_CHUNK))
                elif reader.feed(incoming):
                    break
        except h11.ProtocolError as exc:
            sock.close()
            raise ConnectionError(f"HTTP protocol error: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        self._checkin(sock, conn)
        return reader.response()

    def _checkout(self) -> tuple[socket.socket, h11.Connection]:
        with self._lock:
            if self._closed:
                raise ConnectionError("the HTTP client is closed")
            while self._idle:
                sock, conn = self._idle.pop()
                # Readable while idle means the server closed it (or broke the protocol).
                if select.select([sock], [], [], 0)[0]:
                    sock.close()
                    continue
                return sock, conn
        origin = self.origin
        sock = socket.create_connection((origin.host, origin.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if origin.tls:
                context = self._context or default_context()
                sock = context.wrap_socket(sock, server_hostname=origin.host)
        except BaseException:
            sock.close()
            raise
        return sock, h11.Connection(h11.CLIENT)

    def _checkin(self, sock: socket.socket, conn: h11.Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE and _reusable(conn):
                self._idle.append((sock, conn))
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock, _ in idle:
            sock.close()


class AsyncHttpClient:
    """The asyncio front: the same requests over ``asyncio`` streams."""

    def __init__(self, base_url: str, timeout: float, context: ssl.SSLContext | None) -> None:
        self.origin = Origin.parse(base_url)
        self.timeout = timeout
        self._context = context
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]] = []
        self._closed = False

    async def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
    ) -> HttpResponse:
        """Send one request and read the whole answer. Raises ``OSError``."""
        import asyncio

        reader, writer, conn = await self._checkout()
        timeout = self.timeout
        try:
            for outgoing in _request_events(self.origin, method, path, headers, body):
                data = conn.send(outgoing)
                if data:
                    writer.write(data)
            await asyncio.wait_for(writer.drain(), timeout)
            collected = _Reader()
            while True:
                incoming = conn.next_event()
                if incoming is h11.NEED_DATA:
                    conn.receive_data(await asyncio.wait_for(reader.read(_CHUNK), timeout))
                elif collected.feed(incoming):
                    break
        except h11.ProtocolError as exc:
            writer.close()
            raise ConnectionError(f"HTTP protocol error: {exc}") from exc
        except BaseException:
            writer.close()
            raise
        if not self._closed and len(self._idle) < MAX_IDLE and _reusable(conn):
            self._idle.append((reader, writer, conn))
        else:
            writer.close()
        return collected.response()

    async def _checkout(
        self,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]:
        import asyncio

        if self._closed:
            raise ConnectionError("the HTTP client is closed")
        while self._idle:
            reader, writer, conn = self._idle.pop()
            # Data or EOF while idle means the server closed it (or broke the protocol).
            if reader.at_eof() or writer.is_closing() or _buffered(reader):
                writer.close()
                continue
            return reader, writer, conn
        origin = self.origin
        context = (self._context or default_context()) if origin.tls else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                origin.host,
                origin.port,
                ssl=context,
                server_hostname=origin.host if context is not None else None,
            ),
            self.timeout,
        )
        return reader, writer, h11.Connection(h11.CLIENT)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for _, writer, _ in idle:
            writer.close()


def _buffered(reader: asyncio.StreamReader) -> bool:
    # StreamReader has no public "bytes waiting" query; its buffer is the only way to
    # tell an idle connection that received something (an early close notice) apart.
    return bool(getattr(reader, "_buffer", b""))
