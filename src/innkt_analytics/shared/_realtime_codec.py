"""The real-time wire protocol both ends share, free of I/O.

The server's ``/v1/realtime`` hub (``server/_realtime.py``) and the client's
session (``_realtime_session``) both use what is here:

* the envelope codec: ``encode_envelope`` / ``decode_envelope`` and
  ``Prepared``, an envelope encoded once whose per-connection ``seq`` is spliced
  in as text (the hub sends one event to a thousand subscribers with one JSON
  encode, not a thousand);
* ``ConnectionState`` and ``StateMachine``: every connection has an explicit state and an
  illegal transition raises ``ConnectionStateError``; the client's and the
  server's transitions (``CLIENT_TRANSITIONS``, ``SERVER_TRANSITIONS``);
* ``reconnect_delays()``: a pure generator of backoff delays (nothing here sleeps),
  used by the client's reconnects and the server's fan-out bus reconnects.
"""

from __future__ import annotations

import datetime as dt
import enum
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import msgspec

from innkt_analytics.shared._exceptions import ConnectionStateError
from innkt_analytics.shared._ids import uuid7
from innkt_analytics.shared._protocol import Envelope, ProtocolError

__all__ = [
    "BEARER_PREFIX",
    "CLIENT_TRANSITIONS",
    "MESSAGE_TYPES",
    "SERVER_TRANSITIONS",
    "STREAMS",
    "SUBPROTOCOL",
    "ConnectionState",
    "Prepared",
    "StateMachine",
    "decode_envelope",
    "encode_envelope",
    "make_envelope",
    "now_iso",
    "reconnect_delays",
]

#: the WebSocket subprotocol both ends speak; a browser offers it with ``bearer.<key>``
SUBPROTOCOL: Final = "innkt.v1"
#: browsers cannot set headers on a WebSocket: they offer the key as this subprotocol
BEARER_PREFIX: Final = "bearer."

#: every ``type`` the protocol defines (see docs/realtime.md)
MESSAGE_TYPES: Final = frozenset(
    {
        "analytics_update",
        "event",
        "config_update",
        "sync_request",
        "sync_response",
        "health_check",
        "health_status",
        "ping",
        "pong",
        "error",
        "subscribe",
        "unsubscribe",
        "subscribed",
        "dropped",
    }
)
#: the push streams a client can subscribe to (``config_update`` is always on)
STREAMS: Final = frozenset({"analytics_update", "event"})


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds (the envelope ``timestamp``)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


# -- envelope codec -------------------------------------------------------------------

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Envelope)


def make_envelope(
    type: str, payload: Any = None, *, id: str | None = None, timestamp: str | None = None
) -> Envelope:
    """An envelope with a fresh time-ordered id and the current time unless given."""
    return Envelope(
        type=type,
        id=uuid7() if id is None else id,
        timestamp=now_iso() if timestamp is None else timestamp,
        payload=payload,
    )


def encode_envelope(envelope: Envelope) -> str:
    """The JSON text of one message (a WebSocket text frame)."""
    return _encoder.encode(envelope).decode()


def decode_envelope(data: str | bytes, max_bytes: int) -> Envelope:
    """Parse one incoming frame.

    Raises ``ProtocolError`` with status 413 (``message_too_large``: the server
    closes with 1009) or 400 (``invalid_message``).
    """
    size = len(data.encode()) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise ProtocolError(413, "message_too_large", f"{size} bytes, over {max_bytes}")
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ProtocolError(400, "invalid_message", f"not an envelope: {exc}") from None


class Prepared:
    """A message encoded once; ``with_seq`` adds a connection's sequence number.

    Splicing ``,"seq":N}`` onto the encoded text keeps the per-subscriber cost
    of a broadcast to one string concatenation.
    """

    __slots__ = ("prefix", "size", "type")

    def __init__(self, type: str, prefix: str) -> None:
        self.type = type
        self.prefix = prefix
        self.size = len(prefix) + 16

    @classmethod
    def of(cls, envelope: Envelope) -> Prepared:
        """Prepare an envelope (its own ``seq``, if any, is ignored)."""
        text = encode_envelope(_without_seq(envelope))
        return cls(envelope.type, text[:-1])

    @classmethod
    def from_payload_json(cls, type: str, id: str, timestamp: str, payload: bytes) -> Prepared:
        """Prepare a message whose payload is already JSON (bytes), without re-encoding it."""
        head = _encoder.encode(Envelope(type=type, id=id, timestamp=timestamp)).decode()
        return cls(type, f'{head[:-1]},"payload":{payload.decode()}')

    def with_seq(self, seq: int) -> str:
        return f'{self.prefix},"seq":{seq}}}'


def _without_seq(envelope: Envelope) -> Envelope:
    if envelope.seq is None:
        return envelope
    return msgspec.structs.replace(envelope, seq=None)


# -- states -----------------------------------------------------------------------------


class ConnectionState(enum.Enum):
    """The state of one real-time connection (client or server side)."""

    #: configured, never connected
    IDLE = "idle"
    #: the TCP connection and WebSocket handshake are in progress
    CONNECTING = "connecting"
    #: messages flow
    OPEN = "open"
    #: lost; waiting out a backoff delay before the next attempt
    RECONNECTING = "reconnecting"
    #: a close was requested and is in progress
    CLOSING = "closing"
    #: closed on request; ``connect()`` may start again
    CLOSED = "closed"
    #: given up: attempts exhausted, or refused in a way retrying cannot fix
    FAILED = "failed"


CLIENT_TRANSITIONS: Final[Mapping[ConnectionState, frozenset[ConnectionState]]] = {
    ConnectionState.IDLE: frozenset({ConnectionState.CONNECTING, ConnectionState.CLOSED}),
    ConnectionState.CONNECTING: frozenset(
        {
            ConnectionState.OPEN,
            ConnectionState.RECONNECTING,
            ConnectionState.FAILED,
            ConnectionState.CLOSING,
            ConnectionState.CLOSED,
        }
    ),
    ConnectionState.OPEN: frozenset(
        {
            ConnectionState.RECONNECTING,
            ConnectionState.FAILED,
            ConnectionState.CLOSING,
            ConnectionState.CLOSED,
        }
    ),
    ConnectionState.RECONNECTING: frozenset(
        {ConnectionState.CONNECTING, ConnectionState.CLOSING, ConnectionState.CLOSED}
    ),
    ConnectionState.CLOSING: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset({ConnectionState.CONNECTING}),
    ConnectionState.FAILED: frozenset({ConnectionState.CONNECTING, ConnectionState.CLOSED}),
}

SERVER_TRANSITIONS: Final[Mapping[ConnectionState, frozenset[ConnectionState]]] = {
    ConnectionState.CONNECTING: frozenset({ConnectionState.OPEN, ConnectionState.CLOSED}),
    ConnectionState.OPEN: frozenset({ConnectionState.CLOSING, ConnectionState.CLOSED}),
    ConnectionState.CLOSING: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}


class StateMachine:
    """A state and the transitions allowed from it; anything else raises."""

    __slots__ = ("_state", "_table")

    def __init__(
        self, table: Mapping[ConnectionState, frozenset[ConnectionState]], initial: ConnectionState
    ) -> None:
        self._table = table
        self._state = initial

    @property
    def state(self) -> ConnectionState:
        return self._state

    def can(self, new: ConnectionState) -> bool:
        return new in self._table.get(self._state, frozenset())

    def to(self, new: ConnectionState) -> ConnectionState:
        """Move to ``new``; returns the previous state. Raises ``ConnectionStateError``."""
        if not self.can(new):
            raise ConnectionStateError(f"illegal transition {self._state.value} -> {new.value}")
        old, self._state = self._state, new
        return old


# -- backoff ----------------------------------------------------------------------------


def reconnect_delays(
    base: float,
    cap: float,
    attempts: int,
    *,
    jitter: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Yield ``attempts`` delays: ``d/2 + jitter()·d/2`` with ``d = min(cap, base·2ⁿ)``.

    "Equal jitter": half of each delay is fixed so a reconnect never hammers the
    server at once, half is random so a fleet that lost the server together does
    not come back together. Raises ``ValueError`` for negative arguments.
    """
    if base < 0 or cap < 0 or attempts < 0:
        raise ValueError("base, cap and attempts must be >= 0")
    ceiling = base
    for _ in range(attempts):
        d = min(cap, ceiling)
        yield d / 2 + jitter() * d / 2
        if ceiling < cap:
            ceiling *= 2
