"""uvicorn's sans-I/O WebSocket protocol, plus a synchronous send for the hub's fan-out.

The ASGI ``send`` costs a coroutine, three wrappers (uvicorn, Litestar's
exception middleware, Litestar's ``WebSocket``) and a task switch per message.
For one event fanned out to 1,000 subscribers that is most of the hub's CPU,
on top of the one ``send()`` syscall per socket nobody can avoid.
``FastSendProtocol`` offers an ASGI extension, ``innkt.send_text_now``: a plain
function that frames a text message — itself when the connection is open
and uncompressed (a two-to-ten byte header), else with the connection's own
``websockets.ServerProtocol``, which owns the deflate context — and hands it
to the transport, or returns ``False`` without
sending when the ASGI path must be used instead: the handshake is not done,
a close was sent, the peer is gone, or the socket's write buffer is over its
high-water mark (the ASGI path waits for it to drain; this one never waits).

It also records that a refusal sent as an HTTP response (ASGI's
``websocket.http.response``) completes the handshake, which uvicorn's class
does not, so a refused client no longer logs an error.

``serve`` runs uvicorn with this class. Under another ASGI server the
extension is absent and the hub sends everything through ASGI.

None of this is uvicorn's or websockets' public API: the subclass reads their
instance attributes, overrides their methods and writes frames beside
websockets' own. ``pyproject.toml`` bounds both to the minor versions tested;
``contract_problems`` checks every attribute and method used (with its type or
parameters) and that our frame bytes are websockets' bytes. The suite runs it
(tests/test_ws_protocol_contract.py) so an upgrade fails in CI, and ``serve``
runs it at start-up (``websocket_protocol``): on any problem it logs one warning
and runs uvicorn's own protocol instead, so the hub uses the plain ASGI send
path rather than breaking at run time.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import uvicorn
from uvicorn.server import ServerState
from websockets.exceptions import InvalidState
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    _IMPORT_PROBLEM: str | None = None
except ImportError as exc:  # a uvicorn outside the tested range: contract_problems reports it
    WebSocketsSansIOProtocol = asyncio.Protocol  # type: ignore[misc,assignment]
    _IMPORT_PROBLEM = f"uvicorn's sans-I/O WebSocket protocol is gone: {exc}"

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

__all__ = [
    "FALLBACK_PROTOCOL",
    "SEND_TEXT_NOW",
    "FastSendProtocol",
    "SendTextNow",
    "contract_problems",
    "text_frame_header",
    "websocket_protocol",
]

_log = logging.getLogger("innkt_analytics.server")

#: the scope extension's name; its value is a ``SendTextNow``
SEND_TEXT_NOW: Final = "innkt.send_text_now"

#: send one text message now; ``False`` if it was not sent (use ASGI ``send``)
SendTextNow = Callable[[str], bool]


class FastSendProtocol(WebSocketsSansIOProtocol):
    """``WebSocketsSansIOProtocol`` whose scope carries ``innkt.send_text_now``."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The ASGI task was created, not started: the scope can still be extended.
        scope = getattr(self, "scope", None)
        if scope is not None:
            extensions = scope.get("extensions") or {}
            extensions[SEND_TEXT_NOW] = self.send_text_now
            scope["extensions"] = extensions

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get(
            "more_body", False
        ):
            # A refusal (401, 403, 429, 503) answers the handshake. uvicorn's sans-I/O
            # protocol does not record that, and logs an error for every refusal
            # ("ASGI callable returned without completing handshake").
            self.handshake_complete = True

    def send_text_now(self, text: str) -> bool:
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        conn = self.conn
        data = text.encode()
        if conn.extensions or conn.state is not State.OPEN or conn.expect_continuation_frame:
            # Compression (per connection: each has its own deflate context), or a
            # state websockets must judge: let it frame the message.
            try:
                conn.send_text(data)
            except InvalidState:
                return False
            self.transport.write(b"".join(conn.data_to_send()))
            return True
        self.transport.write(text_frame_header(len(data)) + data)
        return True


def text_frame_header(length: int) -> bytes:
    """RFC 6455 §5.2 header of an unmasked, final, uncompressed text frame."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


#: uvicorn's own choice of WebSocket protocol: what ``serve`` runs when the contract fails
FALLBACK_PROTOCOL: Final = "auto"

#: uvicorn ``WebSocketsSansIOProtocol`` instance attributes the subclasses read,
#: with their types right after ``__init__``
INSTANCE_ATTRIBUTES: Final[Mapping[str, type | tuple[type, ...]]] = {
    "handshake_complete": bool,
    "close_sent": bool,
    "disconnected": bool,
    "initial_response": type(None),
    "writable": asyncio.Event,
    "queue": asyncio.Queue,
    "conn": ServerProtocol,
}
#: attributes uvicorn assigns later, and the method that assigns them
LATER_ATTRIBUTES: Final[Mapping[str, str]] = {
    "transport": "connection_made",
    "scope": "handle_connect",
}
#: uvicorn methods the subclasses override or call, with their parameters after ``self``
METHODS: Final[Mapping[str, tuple[str, ...]]] = {
    "handle_connect": ("event",),
    "send": ("message",),
    "shutdown": (),
    "stop_keepalive": (),
    "connection_made": ("transport",),
}
#: websockets ``ServerProtocol`` attributes read, with their types on an open connection
CONN_ATTRIBUTES: Final[Mapping[str, type | tuple[type, ...]]] = {
    "extensions": list,
    "state": State,
    "expect_continuation_frame": bool,
}
#: websockets ``ServerProtocol`` methods called, with their leading parameters after ``self``
CONN_METHODS: Final[Mapping[str, tuple[str, ...]]] = {
    "send_text": ("data",),
    "send_close": ("code", "reason"),
    "data_to_send": (),
}


async def _probe_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app for the probe's ``uvicorn.Config``; never called."""


def _params(method: Any) -> tuple[str, ...]:
    return tuple(inspect.signature(method).parameters)[1:]


def _check_methods(
    owner: type, methods: Mapping[str, tuple[str, ...]], where: str, problems: list[str]
) -> None:
    for name, params in methods.items():
        method = getattr(owner, name, None)
        if not callable(method):
            problems.append(f"{where}.{name} is not a method")
        elif _params(method)[: len(params)] != params:
            problems.append(f"{where}.{name} takes {_params(method)}, expected {params}")
    if "send" in methods and not inspect.iscoroutinefunction(getattr(owner, "send", None)):
        problems.append(f"{where}.send is not a coroutine function")


def _check_attributes(
    obj: object, attributes: Mapping[str, type | tuple[type, ...]], where: str, problems: list[str]
) -> None:
    for name, expected in attributes.items():
        if not hasattr(obj, name):
            problems.append(f"{where} has no attribute {name}")
        elif not isinstance(getattr(obj, name), expected):
            problems.append(f"{where}.{name} is {type(getattr(obj, name)).__name__}")


def contract_problems(protocol: type[asyncio.Protocol] | None = None) -> list[str]:
    """What of uvicorn's and websockets' internals ``protocol`` relies on is not as
    tested; empty when the fast path is safe. Never raises."""
    cls: Any = protocol if protocol is not None else FastSendProtocol
    if _IMPORT_PROBLEM is not None:
        return [_IMPORT_PROBLEM]
    problems: list[str] = []
    base = "WebSocketsSansIOProtocol"
    try:
        _check_methods(WebSocketsSansIOProtocol, METHODS, base, problems)
        for name, method in LATER_ATTRIBUTES.items():
            source = inspect.getsource(getattr(WebSocketsSansIOProtocol, method))
            if not re.search(rf"self\.{name}\s*(:[^=\n]*)?=", source):
                problems.append(f"{base}.{method} no longer sets self.{name}")
        loop = asyncio.new_event_loop()
        try:
            config = uvicorn.Config(_probe_app, log_config=None, lifespan="off")
            config.load()
            probe = cls(config, ServerState(), {}, _loop=loop)
        finally:
            loop.close()
        _check_attributes(probe, INSTANCE_ATTRIBUTES, base, problems)
        conn = ServerProtocol(state=State.OPEN)
        _check_methods(ServerProtocol, CONN_METHODS, "ServerProtocol", problems)
        _check_attributes(conn, CONN_ATTRIBUTES, "ServerProtocol", problems)
        if not problems:
            # The fast path writes frames itself, beside websockets' own: the bytes must agree.
            conn.send_text(b"contract")
            if b"".join(conn.data_to_send()) != text_frame_header(8) + b"contract":
                problems.append("websockets frames a text message differently")
            if not issubclass(InvalidState, Exception) or not hasattr(State, "OPEN"):
                problems.append("websockets InvalidState or State.OPEN changed")
    except Exception as exc:  # any surprise means the internals moved
        problems.append(f"checking the contract raised {exc!r}")
    return problems


@functools.cache
def websocket_protocol(preferred: type[asyncio.Protocol]) -> type[asyncio.Protocol] | str:
    """``preferred`` when ``contract_problems`` finds none, else uvicorn's own
    protocol (``FALLBACK_PROTOCOL``) after one logged warning: the hub then sends
    through plain ASGI, slower but correct."""
    problems = contract_problems(preferred)
    if not problems:
        return preferred
    _log.warning(
        "uvicorn %s / websockets internals differ from the versions tested (%s); "
        "using uvicorn's WebSocket protocol and the plain ASGI send path",
        uvicorn.__version__,
        "; ".join(problems),
    )
    return FALLBACK_PROTOCOL
