"""The client's real-time session, free of I/O.

The thread-backed ``RealTimeSyncService`` and the asyncio
``AsyncRealTimeSyncService`` (``_realtime``) drive ``RealTimeSession``; the wire
format and connection states it speaks are the shared ``_realtime_codec``.

The front-end tells the session what happened (``connect_started``,
``connection_opened``, ``receive``, ``connection_failed``, ``tick``) with the
current monotonic time, and does what it answers: send the frames of
``data_to_send()``, wait ``reconnect`` delays, abort a half-open connection,
call ``tick`` again at ``next_deadline()``. ``RealTimeConfig`` is its validated
configuration.

Times are ``time.monotonic()`` seconds passed in by the caller, so tests drive
the session with a fake clock and no sleeping.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import itertools
import random
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from innkt_analytics.sdk._tls import check_tls_options
from innkt_analytics.shared._exceptions import ConfigError, ConnectionStateError
from innkt_analytics.shared._protocol import ClientConfig, Envelope, ProtocolError
from innkt_analytics.shared._realtime_codec import (
    CLIENT_TRANSITIONS,
    STREAMS,
    ConnectionState,
    StateMachine,
    decode_envelope,
    encode_envelope,
    make_envelope,
    reconnect_delays,
)

__all__ = [
    "FATAL_CLOSE_CODES",
    "FATAL_STATUSES",
    "Action",
    "ConnectionStats",
    "Failure",
    "RealTimeConfig",
    "RealTimeSession",
    "config_of",
]

#: handshake answers that retrying cannot fix: a bad key or a forbidden Origin
FATAL_STATUSES: Final = frozenset({401, 403})
#: close codes that mean "do not come back with the same behaviour" (policy violation)
FATAL_CLOSE_CODES: Final = frozenset({1008})


# -- configuration ----------------------------------------------------------------------


def _number(name: str, value: object, *, minimum: float, maximum: float, integer: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ConfigError(name, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if value != value or not minimum <= value <= maximum:
        raise ConfigError(name, f"must be in [{minimum}, {maximum}], got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RealTimeConfig:
    """Options of the real-time services; durations are in seconds (the seed's ms / 1000).

    Raises ``ConfigError`` naming the field on any invalid value.
    """

    #: ``ws://`` or ``wss://`` URL of the server's ``/v1/realtime``
    websocket_url: str
    #: a read key (analytics and events) or a write key (config updates only)
    api_key: str
    #: base of the reconnect backoff; the n-th retry waits about ``interval·2ⁿ``
    reconnect_interval: float = 5.0
    #: failed attempts in a row before giving up (state FAILED)
    max_reconnect_attempts: int = 5
    #: the longest single backoff delay
    max_reconnect_delay: float = 60.0
    #: a ``ping`` is sent this often; silence for ``heartbeat_interval +
    #: connection_timeout`` declares the connection half-open and drops it
    heartbeat_interval: float = 30.0
    #: bound of the TCP connect plus the WebSocket handshake
    connection_timeout: float = 10.0
    #: negotiate permessage-deflate
    enable_compression: bool = True
    #: messages ``send_message`` holds while disconnected; beyond it they are dropped and counted
    max_queued_messages: int = 1000
    #: the largest incoming message accepted
    max_message_bytes: int = 16 * 1024 * 1024
    #: push streams to subscribe to on every (re)connect; ``on("event")`` adds ``event``
    streams: frozenset[str] = frozenset({"analytics_update"})
    #: only these event types on the ``event`` stream (None: all)
    event_types: frozenset[str] | None = None
    #: sent as the Origin header (browsers set it themselves)
    origin: str | None = None
    #: TLS (``wss://``): a PEM file of the CAs to trust instead of the system's
    ca_bundle: Path | None = None
    #: TLS: a complete client context; wins over ca_bundle. Always verified.
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ca_bundle", check_tls_options(self.ca_bundle, self.ssl_context))
        url = self.websocket_url
        if not isinstance(url, str):
            raise ConfigError("websocket_url", "must be a string")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError("websocket_url", f"must be a ws:// or wss:// URL, got {url!r}")
        if parts.query and "key" in urllib.parse.parse_qs(parts.query):
            raise ConfigError("websocket_url", "never put the API key in the URL; use api_key")
        if not isinstance(self.api_key, str) or not self.api_key.strip():
            raise ConfigError("api_key", "must be a non-empty string")
        if any(c in self.api_key for c in "\r\n, "):
            raise ConfigError("api_key", "must not contain spaces, commas or line breaks")
        _number(
            "reconnect_interval", self.reconnect_interval, minimum=0, maximum=3600, integer=False
        )
        _number(
            "max_reconnect_attempts", self.max_reconnect_attempts, minimum=0, maximum=10**6,
            integer=True,
        )  # fmt: skip
        _number(
            "max_reconnect_delay", self.max_reconnect_delay, minimum=0, maximum=86400, integer=False
        )
        _number(
            "heartbeat_interval", self.heartbeat_interval, minimum=0.001, maximum=3600,
            integer=False,
        )  # fmt: skip
        _number(
            "connection_timeout", self.connection_timeout, minimum=0.001, maximum=600,
            integer=False,
        )  # fmt: skip
        if not isinstance(self.enable_compression, bool):
            raise ConfigError("enable_compression", "must be a bool")
        _number(
            "max_queued_messages", self.max_queued_messages, minimum=0, maximum=10**7, integer=True
        )
        _number(
            "max_message_bytes", self.max_message_bytes, minimum=1024, maximum=2**30, integer=True
        )
        # Annotated as sets, but a caller may pass a str or a list: check what came.
        raw_streams: object = self.streams
        if isinstance(raw_streams, str) or not isinstance(raw_streams, Iterable):
            raise ConfigError("streams", f"must be a subset of {sorted(STREAMS)}")
        streams = frozenset(raw_streams)
        if not streams <= STREAMS:
            raise ConfigError("streams", f"must be a subset of {sorted(STREAMS)}")
        object.__setattr__(self, "streams", streams)
        raw_types: object = self.event_types
        if raw_types is not None:
            if isinstance(raw_types, str) or not isinstance(raw_types, Iterable):
                raise ConfigError("event_types", "must be a set of non-empty strings, or None")
            types = frozenset(raw_types)
            if not all(isinstance(t, str) and t for t in types):
                raise ConfigError("event_types", "must be a set of non-empty strings, or None")
            object.__setattr__(self, "event_types", types)

    def replace(self, **changes: Any) -> RealTimeConfig:
        """A copy with ``changes`` applied. Raises ``ConfigError``."""
        names = {f.name for f in dataclasses.fields(self)}
        for name in changes:
            if name not in names:
                raise ConfigError(name, "is not a RealTimeConfig option")
        return dataclasses.replace(self, **changes)


# -- the client session -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a connection attempt failed or an open connection was lost."""

    #: "refused" (handshake answered with an HTTP status), "timeout", "network",
    #: "closed" (a close frame), "heartbeat" (half-open detected)
    kind: str
    status: int | None = None
    code: int | None = None
    reason: str = ""

    @property
    def fatal(self) -> bool:
        return self.status in FATAL_STATUSES or self.code in FATAL_CLOSE_CODES

    def __str__(self) -> str:
        detail = self.status or self.code
        text = self.kind if detail is None else f"{self.kind} {detail}"
        return f"{text}: {self.reason}" if self.reason else text


class Action(enum.Enum):
    """What ``tick`` asks the front-end to do."""

    NONE = "none"
    #: the connection is half-open: abort it without a close handshake
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """A snapshot of ``get_connection_stats()``; latencies in milliseconds."""

    state: ConnectionState
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    messages_in_per_second: float
    messages_out_per_second: float
    messages_in: int
    messages_out: int
    #: connections opened after the first one
    reconnect_count: int
    #: failed attempts since the last healthy connection
    failed_attempts: int
    #: messages waiting in ``send_message``'s queue, and those it had to drop
    queued: int
    dropped_outgoing: int
    #: what the server reported dropping for this client (slow consumer notices)
    dropped_by_server: int
    half_open_detections: int
    #: gaps in the server's per-connection ``seq``
    seq_gaps: int
    last_seq: int | None
    last_error: str | None
    #: whether the last connection negotiated permessage-deflate (None: never connected)
    compressed: bool | None = None


class _Rate:
    """Counts per second over a sliding window of whole seconds."""

    __slots__ = ("_buckets", "_window")

    def __init__(self, window: int = 10) -> None:
        self._window = window
        self._buckets: collections.deque[list[int]] = collections.deque()

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
            return
        self._buckets.append([second, n])
        while self._buckets[0][0] <= second - self._window:
            self._buckets.popleft()

    def per_second(self, now: float) -> float:
        second = int(now)
        total = sum(n for s, n in self._buckets if s > second - self._window)
        return total / self._window


def _percentile(samples: Iterable[float], q: float) -> float | None:
    ordered = sorted(samples)
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


_config_decoder: Final = msgspec.json.Decoder(ClientConfig)


def config_of(payload: Any) -> ClientConfig | None:
    """The ``ClientConfig`` inside a ``config_update`` / ``sync_response`` payload, if valid."""
    if not isinstance(payload, dict):
        return None
    raw = payload.get("config", payload)
    try:
        return msgspec.convert(raw, ClientConfig)
    except msgspec.ValidationError:
        return None


@dataclass
class _Connection:
    opened_at: float
    last_rx: float
    next_ping: float
    healthy: bool = False
    pings: dict[str, float] = field(default_factory=dict)


class RealTimeSession:
    """The client side of one logical real-time connection, across reconnects.

    Not thread-safe: a front-end serialises calls (a lock, or one event loop).
    """

    def __init__(
        self,
        config: RealTimeConfig,
        *,
        jitter: Callable[[], float] = random.random,
        rtt_samples: int = 200,
    ) -> None:
        self.config = config
        self._machine = StateMachine(CLIENT_TRANSITIONS, ConnectionState.IDLE)
        self._jitter = jitter
        self._delays: Iterator[float] | None = None
        self._conn: _Connection | None = None
        self._queue: collections.deque[str] = collections.deque()
        self._out: list[str] = []
        self._rtts: collections.deque[float] = collections.deque(maxlen=rtt_samples)
        self._rate_in = _Rate()
        self._rate_out = _Rate()
        self._ping_ids = itertools.count(1)
        self.extra_streams: frozenset[str] = frozenset()
        self.messages_in = 0
        self.messages_out = 0
        self.opened = 0
        self.failed_attempts = 0
        self.dropped_outgoing = 0
        self.dropped_by_server = 0
        self.half_open_detections = 0
        self.seq_gaps = 0
        self.last_seq: int | None = None
        self.last_error: str | None = None
        self.config_version: int | None = None
        self.compressed: bool | None = None

    # -- lifecycle ------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._machine.state

    def connect_started(self, now: float) -> None:
        """A connection attempt begins. Raises ``ConnectionStateError`` unless idle,
        closed, failed or waiting to reconnect."""
        previous = self._machine.to(ConnectionState.CONNECTING)
        if previous is not ConnectionState.RECONNECTING:
            # A fresh connect() after a close or a give-up starts a new streak.
            self._delays = None
            self.failed_attempts = 0

    def connection_opened(self, now: float, *, compressed: bool = False) -> None:
        """The handshake succeeded: subscribe, ask for a sync, flush the queue.

        ``compressed``: whether permessage-deflate was negotiated. Raises
        ``ConnectionStateError`` unless connecting.
        """
        self._machine.to(ConnectionState.OPEN)
        self.opened += 1
        self.compressed = compressed
        self.last_seq = None
        self._conn = _Connection(
            opened_at=now, last_rx=now, next_ping=now + self.config.heartbeat_interval
        )
        self._emit(self.subscription_message(), now)
        payload: dict[str, Any] = {}
        if self.config_version is not None:
            payload["configVersion"] = self.config_version
        self._emit(make_envelope("sync_request", payload), now)
        while self._queue:
            self._out.append(self._queue.popleft())
            self._count_out(now)

    def connection_failed(self, now: float, failure: Failure) -> float | None:
        """An attempt failed or an open connection was lost.

        Returns the delay to wait before ``connect_started`` again (state
        RECONNECTING), or None when giving up (FAILED) or when the user closed.
        Raises ``ConnectionStateError`` in a state where nothing can fail.
        """
        self._conn = None
        self._out.clear()
        self.last_error = str(failure)
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            if self.state is ConnectionState.CLOSING:
                self._machine.to(ConnectionState.CLOSED)
            return None
        if self.state not in (ConnectionState.CONNECTING, ConnectionState.OPEN):
            raise ConnectionStateError(f"nothing to fail in state {self.state.value}")
        if failure.kind == "heartbeat":
            self.half_open_detections += 1
        if failure.fatal:
            self._machine.to(ConnectionState.FAILED)
            return None
        if self._delays is None:
            self._delays = reconnect_delays(
                self.config.reconnect_interval,
                self.config.max_reconnect_delay,
                self.config.max_reconnect_attempts,
                jitter=self._jitter,
            )
        delay = next(self._delays, None)
        if delay is None:
            self._machine.to(ConnectionState.FAILED)
            return None
        self.failed_attempts += 1
        self._machine.to(ConnectionState.RECONNECTING)
        return delay

    def close_started(self) -> None:
        """The user asked to disconnect. Raises ``ConnectionStateError`` when already closed."""
        if self.state in (
            ConnectionState.IDLE,
            ConnectionState.FAILED,
            ConnectionState.RECONNECTING,
        ):
            self._machine.to(ConnectionState.CLOSED)
        else:
            self._machine.to(ConnectionState.CLOSING)

    # -- messages -------------------------------------------------------------------

    def subscription_message(self) -> Envelope:
        streams = sorted(self.config.streams | self.extra_streams)
        types = self.config.event_types
        return make_envelope(
            "subscribe",
            {"streams": streams, "eventTypes": None if types is None else sorted(types)},
        )

    def subscribe_streams(self, streams: Iterable[str], now: float) -> None:
        """Add push streams (``on("event")`` does); sent at once when open."""
        extra = self.extra_streams | (frozenset(streams) & STREAMS)
        if extra != self.extra_streams:
            self.extra_streams = extra
            if self.state is ConnectionState.OPEN:
                self._emit(self.subscription_message(), now)

    def send(self, envelope: Envelope, now: float) -> bool:
        """Send now if open, else queue for the next connection.

        Returns False when the queue is full (or the session is closed): the
        message is dropped and counted in ``dropped_outgoing``.
        """
        if self.state is ConnectionState.OPEN:
            self._emit(envelope, now)
            return True
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED) or (
            len(self._queue) >= self.config.max_queued_messages
        ):
            self.dropped_outgoing += 1
            return False
        self._queue.append(encode_envelope(envelope))
        return True

    def data_to_send(self) -> list[str]:
        """Frames to write now, in order; the session forgets them."""
        out, self._out = self._out, []
        return out

    def receive(self, data: str | bytes, now: float) -> list[Envelope]:
        """Account for one incoming frame; returns the messages to dispatch.

        A frame that is not an envelope is counted as an error and dropped.
        """
        conn = self._conn
        if conn is None:
            return []
        conn.last_rx = now
        self.messages_in += 1
        self._rate_in.add(now)
        try:
            envelope = decode_envelope(data, self.config.max_message_bytes)
        except ProtocolError as exc:
            self.last_error = f"bad message from server: {exc.message}"
            return []
        if envelope.seq is not None:
            if self.last_seq is not None and envelope.seq != self.last_seq + 1:
                self.seq_gaps += 1
            self.last_seq = envelope.seq
        kind = envelope.type
        if kind == "pong":
            sent = conn.pings.pop(envelope.id, None)
            if sent is not None:
                self._rtts.append(now - sent)
        elif kind == "dropped" and isinstance(envelope.payload, dict):
            dropped = envelope.payload.get("dropped")
            if isinstance(dropped, int) and dropped > 0:
                self.dropped_by_server += dropped
        elif kind in ("sync_response", "config_update"):
            if kind == "sync_response" and not conn.healthy:
                # A full round trip worked: this connection is good, start a new streak.
                conn.healthy = True
                self._delays = None
                self.failed_attempts = 0
            config = config_of(envelope.payload)
            if config is not None:
                self.config_version = config.version
        return [envelope]

    # -- heartbeat ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called (None: no timer while not open)."""
        conn = self._conn
        if conn is None or self.state is not ConnectionState.OPEN:
            return None
        dead_at = conn.last_rx + self.config.heartbeat_interval + self.config.connection_timeout
        return min(conn.next_ping, dead_at)

    def tick(self, now: float) -> Action:
        """Send a due heartbeat; detect a half-open connection.

        Silence (no frame of any kind) for ``heartbeat_interval +
        connection_timeout`` while pings go out means the peer or the path is
        gone even though TCP has not noticed: answer ABORT.
        """
        conn = self._conn
        if conn is None or self.state is not ConnectionState.OPEN:
            return Action.NONE
        silence = now - conn.last_rx
        if silence >= self.config.heartbeat_interval + self.config.connection_timeout:
            return Action.ABORT
        if now >= conn.next_ping:
            ping = make_envelope("ping", {}, id=f"hb-{next(self._ping_ids)}")
            conn.pings[ping.id] = now
            if len(conn.pings) > 64:  # unanswered pings of a dying link
                conn.pings.pop(next(iter(conn.pings)))
            self._emit(ping, now)
            conn.next_ping = now + self.config.heartbeat_interval
        return Action.NONE

    # -- stats ----------------------------------------------------------------------

    def stats(self, now: float) -> ConnectionStats:
        p50 = _percentile(self._rtts, 0.5)
        p95 = _percentile(self._rtts, 0.95)
        return ConnectionStats(
            state=self.state,
            latency_p50_ms=None if p50 is None else round(p50 * 1000, 3),
            latency_p95_ms=None if p95 is None else round(p95 * 1000, 3),
            messages_in_per_second=self._rate_in.per_second(now),
            messages_out_per_second=self._rate_out.per_second(now),
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            reconnect_count=max(0, self.opened - 1),
            failed_attempts=self.failed_attempts,
            queued=len(self._queue),
            dropped_outgoing=self.dropped_outgoing,
            dropped_by_server=self.dropped_by_server,
            half_open_detections=self.half_open_detections,
            seq_gaps=self.seq_gaps,
            last_seq=self.last_seq,
            last_error=self.last_error,
            compressed=self.compressed,
        )

    def _emit(self, envelope: Envelope, now: float) -> None:
        self._out.append(encode_envelope(envelope))
        self._count_out(now)

    def _count_out(self, now: float) -> None:
        self.messages_out += 1
        self._rate_out.add(now)
