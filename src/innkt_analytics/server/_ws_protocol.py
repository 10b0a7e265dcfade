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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request
from websockets.protocol import State

__all__ = ["SEND_TEXT_NOW", "FastSendProtocol", "SendTextNow", "text_frame_header"]

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
