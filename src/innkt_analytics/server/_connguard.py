"""Connection limits that uvicorn does not enforce: the HTTP protocol ``serve`` uses.

uvicorn (httptools) bounds neither the size of a request head nor the time a
client may take to send it or its body, and closes an idle connection only
after a first response. So a client that opens connections and sends nothing,
sends its headers a byte at a time, announces a ``Content-Length`` it never
sends, or trickles a chunked body, holds a connection (and a file descriptor)
for ever. ``guarded_protocol`` returns uvicorn's protocol with:

- a cap on open HTTP connections: one more is answered 503 and closed;
- an idle timeout: a connection with no request under way is closed (a new
  connection that sends nothing, and keep-alive between requests);
- a head timeout and a head size limit: 408 or 431, then closed;
- a body timeout from the end of the head to the end of the body: 408 if no
  response was started (the handler then sees a disconnect), else closed.

Every answer is a JSON error body like the API's. WebSocket connections leave
the guard when they upgrade; the hub has its own limits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from innkt_analytics.shared._protocol import ErrorBody

__all__ = ["ConnectionLimits", "guarded_protocol"]

#: how long a refused connection's further input is read and dropped before it is closed
LINGER_SECONDS: Final = 2.0
_REASONS: Final = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one HTTP connection may take (seconds and bytes); see ``ServerSettings``."""

    max_connections: int
    idle_timeout: float
    header_timeout: float
    body_timeout: float
    max_header_bytes: int


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing; httptools wraps it, see send_400_response."""


def _error(status: int, code: str, message: str) -> bytes:
    body = msgspec.json.encode(ErrorBody(error=code, message=message))
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class _Count:
    open = 0


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``limits``; give it to ``uvicorn.Config(http=...)``."""
    count = _Count()

    class GuardedProtocol(HttpToolsProtocol):
        _counted = False
        _timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _in_head = False
        _refusal: bytes | None = None
        _discarding = False
        #: the last request's body has been read to its end (a new head may follow)
        _body_done = True

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if count.open >= limits.max_connections:
                self.logger.warning("Refused a connection: %d are open", count.open)
                transport.write(_error(503, "too_many_connections", "too many open connections"))
                transport.close()
                return
            count.open += 1
            self._counted = True
            self._arm(limits.idle_timeout, self._on_idle)

        def connection_lost(self, exc: Exception | None) -> None:
            self._leave()
            super().connection_lost(exc)

        def _leave(self) -> None:
            self._disarm()
            if self._counted:
                self._counted = False
                count.open -= 1

        def _arm(self, delay: float, callback: Any) -> None:
            self._disarm()
            self._timer = self.loop.call_later(delay, callback)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return
            if (
                not self._in_head
                and self._body_done
                and (self.cycle is None or self.cycle.response_complete)
            ):
                # The first bytes of a request: the head must now arrive in time. (Not
                # the rest of a body the handler answered before reading it.)
                self._in_head = True
                self._head_bytes = 0
                self._arm(limits.header_timeout, self._on_head_timeout)
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if (
                self._in_head
                and self._head_bytes > limits.max_header_bytes
                and not self.transport.is_closing()
            ):
                self._refuse(431, "headers_too_large", "the request head is too large")

        def on_headers_complete(self) -> None:
            self._in_head = False
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > limits.max_header_bytes:
                self._refusal = _error(431, "headers_too_large", "the request head is too large")
                raise _HeadTooLarge
            self._body_done = False
            self._arm(limits.body_timeout, self._on_body_timeout)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._body_done = True
            self._disarm()
            super().on_message_complete()
            if self.cycle is not None and self.cycle.response_complete:
                # Answered before its body was read: now the connection is idle.
                self._arm(limits.idle_timeout, self._on_idle)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.timeout_keep_alive_task is not None:
                # uvicorn armed its keep-alive timer; ours stands in for it (same length).
                self._unset_keepalive_if_required()
                if self._timer is None:
                    self._arm(limits.idle_timeout, self._on_idle)

        def send_400_response(self, msg: str) -> None:
            if self._refusal is None:
                super().send_400_response(msg)
                return
            self.transport.write(self._refusal)
            self._close_lingering()

        def _close_lingering(self) -> None:
            """Close after the answer, without losing it to a reset.

            Closing a socket with unread input sends a TCP reset, and the client's
            stack may then discard the answer before it is read. So: send FIN after
            the answer, discard what still comes in for a moment, then close.
            """
            self._disarm()
            self._discarding = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

        def handle_websocket_upgrade(self) -> None:
            self._leave()  # the hub counts and limits WebSocket connections
            super().handle_websocket_upgrade()

        def _refuse(self, status: int, code: str, message: str) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(_error(status, code, message))
                self._close_lingering()

        def _on_idle(self) -> None:
            self._timer = None
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

        def _on_head_timeout(self) -> None:
            self._timer = None
            self.logger.info("Closed a connection: the request head did not arrive in time")
            self._refuse(408, "request_timeout", "the request head did not arrive in time")

        def _on_body_timeout(self) -> None:
            self._timer = None
            cycle = self.cycle
            self.logger.info("Closed a connection: the request body did not arrive in time")
            answer = cycle is not None and not cycle.response_started
            if cycle is not None:
                # The handler waiting in receive() now gets http.disconnect.
                cycle.disconnected = True
                cycle.message_event.set()
            if answer:
                self.transport.write(
                    _error(408, "request_timeout", "the request body did not arrive in time")
                )
                self._close_lingering()
            else:
                self.transport.close()

    return GuardedProtocol
