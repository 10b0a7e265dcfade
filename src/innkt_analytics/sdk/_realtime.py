"""``RealTimeSyncService``: the SDK's live connection to the server's ``/v1/realtime``.

Two front-ends drive the one sans-I/O ``RealTimeSession`` (``_realtime_session``):

* ``RealTimeSyncService`` — for ordinary threaded programs. A background
  thread connects, reads, runs the heartbeat and reconnects; a second one
  writes, so ``send_message`` never blocks the caller. Handlers run in the
  reader thread.
* ``AsyncRealTimeSyncService`` — the same for asyncio; handlers run in the loop
  (a handler may be a coroutine function).

Every incoming message is routed to the handlers registered with ``on(type)``
and published on the event bus as ``realtime.<type>``. A ``config_update`` (or
a ``sync_response`` carrying a config the client has not applied yet, e.g.
after reconnecting) is handed to every attached backend service —
anything with ``apply_remote_config(ClientConfig)``, like
``AnalyticsBackendService`` — so a ``PUT /v1/config`` reconfigures running SDKs.

Delivery is at most once: ``send_message`` queues while disconnected (bounded,
counted) and sends on reconnect; a message written just as the link died may
be lost. Server messages missed while disconnected are not replayed: the
``sync_response`` sent on every (re)connect brings the current config and
aggregates, and events can be read back with ``GET /v1/events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Final, Protocol, TypeVar, cast

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect
from websockets.typing import Origin, Subprotocol

from innkt_analytics.sdk._bus import EventBus, default_bus
from innkt_analytics.sdk._realtime_session import (
    Action,
    ConnectionStats,
    Failure,
    RealTimeConfig,
    RealTimeSession,
    config_of,
)
from innkt_analytics.sdk._tls import client_ssl_context, tls_failure
from innkt_analytics.shared._exceptions import ConnectionStateError
from innkt_analytics.shared._protocol import ClientConfig, Envelope
from innkt_analytics.shared._realtime_codec import SUBPROTOCOL, ConnectionState, make_envelope
from innkt_analytics.shared._version import __version__

__all__ = [
    "AsyncRealTimeSyncService",
    "ConfigurableBackend",
    "MessageHandler",
    "RealTimeSyncService",
]

log = logging.getLogger("innkt_analytics.realtime")

#: a handler receives the whole envelope; ``envelope.payload`` is the data
MessageHandler = Callable[[Envelope], Any]
#: ``on(ANY, handler)`` receives every message
ANY: Final = "*"
_USER_AGENT: Final = f"innkt-analytics/{__version__}"
_STOP: Final = object()

S = TypeVar("S", bound="_ServiceBase")


class ConfigurableBackend(Protocol):
    """What a ``config_update`` is applied to (``AnalyticsBackendService`` is one)."""

    def apply_remote_config(self, config: ClientConfig) -> Any: ...


def _failure_of(exc: BaseException) -> Failure:
    """Convert a websockets/socket exception into the core's ``Failure`` (at the edge)."""
    if isinstance(exc, InvalidStatus):
        body = bytes(exc.response.body or b"")[:200].decode(errors="replace")
        return Failure("refused", status=exc.response.status_code, reason=body)
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        code = rcvd.code if rcvd is not None else 1006
        return Failure("closed", code=code, reason=rcvd.reason if rcvd is not None else "")
    if isinstance(exc, TimeoutError):
        return Failure("timeout", reason="connection timed out")
    if isinstance(exc, InvalidURI | InvalidHandshake):
        return Failure("refused", reason=str(exc))
    return Failure("network", reason=tls_failure(exc) or f"{type(exc).__name__}: {exc}")


def _tls_options(cfg: RealTimeConfig) -> dict[str, Any]:
    """``ssl=`` for a wss:// URL with a CA bundle or context (websockets refuses it for ws://)."""
    context = client_ssl_context(cfg.ca_bundle, cfg.ssl_context)
    if context is None or not cfg.websocket_url.startswith("wss://"):
        return {}
    return {"ssl": context}


def _deflate(ws: SyncConnection | AsyncConnection) -> bool:
    return any(e.name == "permessage-deflate" for e in ws.protocol.extensions)


class _ServiceBase:
    """What both front-ends share: configuration, handlers, bus, backends, session."""

    _instance: ClassVar[Any] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        config: RealTimeConfig | None = None,
        *,
        backend: ConfigurableBackend | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._handlers: dict[str, tuple[MessageHandler, ...]] = {}
        self._backends: list[ConfigurableBackend] = [] if backend is None else [backend]
        self.bus = bus if bus is not None else default_bus()
        self._config: RealTimeConfig | None = None
        self._session: RealTimeSession | None = None
        self._applied_version: int | None = None
        self.handler_errors = 0
        if config is not None:
            self.initialize(config)

    @classmethod
    def get_instance(cls: type[S]) -> S:
        """The process-wide instance of this front-end (created on first use)."""
        with cls._instance_lock:
            if not isinstance(cls.__dict__.get("_instance"), cls):
                cls._instance = cls()
            instance: S = cls._instance
            return instance

    # -- configuration --------------------------------------------------------------

    def initialize(self, config: RealTimeConfig | None = None, **options: Any) -> None:
        """Set the configuration (a ``RealTimeConfig``, or its fields as keywords).

        Raises ``ConfigError`` for a bad option, ``ConnectionStateError`` while connected.
        """
        cfg = config if config is not None else RealTimeConfig(**options)
        with self._lock:
            if self._session is not None and self._session.state not in (
                ConnectionState.IDLE,
                ConnectionState.CLOSED,
                ConnectionState.FAILED,
            ):
                raise ConnectionStateError("disconnect() before initialize() again")
            self._config = cfg
            extra = self._session.extra_streams if self._session is not None else frozenset()
            self._session = RealTimeSession(cfg)
            self._session.extra_streams = extra | self._wanted_streams()

    @property
    def config(self) -> RealTimeConfig | None:
        return self._config

    def _require(self) -> RealTimeSession:
        if self._session is None:
            raise ConnectionStateError("initialize(config) first")
        return self._session

    @property
    def state(self) -> ConnectionState:
        return ConnectionState.IDLE if self._session is None else self._session.state

    def attach_backend(self, backend: ConfigurableBackend) -> None:
        """Apply every received config to ``backend.apply_remote_config`` from now on."""
        with self._lock:
            if backend not in self._backends:
                self._backends.append(backend)

    def detach_backend(self, backend: ConfigurableBackend) -> bool:
        with self._lock:
            if backend in self._backends:
                self._backends.remove(backend)
                return True
            return False

    # -- handlers -------------------------------------------------------------------

    def _wanted_streams(self) -> frozenset[str]:
        return frozenset({"event"}) if self._handlers.get("event") else frozenset()

    def on(self, type: str, handler: MessageHandler) -> None:
        """Call ``handler(envelope)`` for each message of ``type`` (``"*"``: all).

        Registering for ``event`` subscribes to the server's event stream.
        """
        with self._lock:
            self._handlers[type] = (*self._handlers.get(type, ()), handler)
            if type == "event" and self._session is not None:
                self._session.subscribe_streams({"event"}, time.monotonic())
                frames = self._session.data_to_send()
            else:
                frames = []
        self._write(frames)

    def off(self, type: str, handler: MessageHandler | None = None) -> bool:
        """Remove one handler (or all of ``type``); False when there was none."""
        with self._lock:
            current = self._handlers.get(type, ())
            rest = () if handler is None else tuple(h for h in current if h is not handler)
            if len(rest) == len(current):
                return False
            if rest:
                self._handlers[type] = rest
            else:
                del self._handlers[type]
            return True

    def _targets(self, envelope: Envelope) -> tuple[MessageHandler, ...]:
        with self._lock:
            return self._handlers.get(envelope.type, ()) + self._handlers.get(ANY, ())

    def _config_to_apply(self, envelope: Envelope) -> tuple[ClientConfig, list[Any]] | None:
        if envelope.type not in ("config_update", "sync_response"):
            return None
        config = config_of(envelope.payload)
        with self._lock:
            if config is None or config.version == self._applied_version:
                return None
            self._applied_version = config.version
            return config, list(self._backends)

    def _handler_failed(self, what: str) -> None:
        with self._lock:
            self.handler_errors += 1
        log.exception("real-time %s failed", what)

    # -- sending --------------------------------------------------------------------

    def send_message(self, message: Envelope) -> bool:
        """Send now, or queue while disconnected (bounded) to send on reconnect.

        An empty ``id`` or ``timestamp`` is filled in. Returns False when the
        message was dropped (queue full, or disconnected on purpose); drops are
        counted in ``get_connection_stats().dropped_outgoing``. Raises
        ``ConnectionStateError`` before ``initialize``.
        """
        if not message.id or not message.timestamp:
            message = make_envelope(
                message.type,
                message.payload,
                id=message.id or None,
                timestamp=message.timestamp or None,
            )
        with self._lock:
            session = self._require()
            accepted = session.send(message, time.monotonic())
            frames = session.data_to_send()
        self._write(frames)
        return accepted

    def send(self, type: str, payload: Any = None) -> bool:
        """``send_message`` of a new envelope of ``type`` with ``payload``."""
        return self.send_message(make_envelope(type, payload))

    def _write(self, frames: list[str]) -> None:
        raise NotImplementedError

    def get_connection_stats(self) -> ConnectionStats:
        """ConnectionState, heartbeat RTT p50/p95, message rates, reconnects, drops.

        Raises ``ConnectionStateError`` before ``initialize``.
        """
        with self._lock:
            return self._require().stats(time.monotonic())


class RealTimeSyncService(_ServiceBase):
    """The thread-backed front-end; every method may be called from any thread."""

    def __init__(
        self,
        config: RealTimeConfig | None = None,
        *,
        backend: ConfigurableBackend | None = None,
        bus: EventBus | None = None,
    ) -> None:
        super().__init__(config, backend=backend, bus=bus)
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._out: queue.SimpleQueue[object] | None = None
        self._ws: SyncConnection | None = None

    def connect(self, wait: bool = True, within: float | None = None) -> bool:
        """Start connecting in the background (reconnecting as configured).

        With ``wait``, block until open, failed or ``within`` seconds (default: the
        connection timeout); returns whether the connection is open. Raises
        ``ConnectionStateError`` before ``initialize``.
        """
        with self._lock:
            session = self._require()
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                session.connect_started(time.monotonic())
                self._thread = threading.Thread(
                    target=self._run, name="innkt-realtime", daemon=True
                )
                self._thread.start()
            limit = session.config.connection_timeout if within is None else within
        if not wait:
            return self.state is ConnectionState.OPEN
        return (
            self.wait_for_state(
                {ConnectionState.OPEN, ConnectionState.FAILED, ConnectionState.CLOSED}, limit
            )
            is ConnectionState.OPEN
        )

    def wait_for_state(self, states: set[ConnectionState], within: float) -> ConnectionState:
        """Block until the state is one of ``states``, at most ``within`` s; returns it."""
        deadline = time.monotonic() + within
        with self._changed:
            while self.state not in states:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self.state

    def disconnect(self, within: float = 5.0) -> None:
        """Close the connection and stop reconnecting; waits up to ``within`` s for the thread."""
        with self._lock:
            session = self._session
            if session is None or session.state in (
                ConnectionState.IDLE,
                ConnectionState.CLOSED,
                ConnectionState.CLOSING,
            ):
                return
            session.close_started()
            self._stop.set()
            ws = self._ws
            self._changed.notify_all()
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(within)

    def _write(self, frames: list[str]) -> None:
        out = self._out
        if out is not None:
            for frame in frames:
                out.put(frame)

    def _writer(self, ws: SyncConnection, out: queue.SimpleQueue[object]) -> None:
        while (frame := out.get()) is not _STOP:
            try:
                ws.send(cast(str, frame))
            except Exception:
                return  # the reader notices the dead connection and reconnects

    def _run(self) -> None:
        session = self._require()
        while True:
            failure = self._connect_once(session)
            with self._lock:
                delay = session.connection_failed(time.monotonic(), failure)
                self._changed.notify_all()
            if failure.fatal:
                log.warning("real-time connection refused: %s", failure)
            if delay is None or self._stop.wait(delay):
                break
            with self._lock:
                if self._stop.is_set() or session.state is not ConnectionState.RECONNECTING:
                    break
                session.connect_started(time.monotonic())
                self._changed.notify_all()
        with self._lock:
            if session.state is ConnectionState.RECONNECTING:
                session.close_started()
            self._changed.notify_all()

    def _connect_once(self, session: RealTimeSession) -> Failure:
        cfg = session.config
        try:
            with sync_connect(
                cfg.websocket_url,
                **_tls_options(cfg),
                additional_headers={"Authorization": f"Bearer {cfg.api_key}"},
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                compression="deflate" if cfg.enable_compression else None,
                open_timeout=cfg.connection_timeout,
                ping_interval=None,  # the session's own heartbeat measures RTT
                close_timeout=min(cfg.connection_timeout, 2.0),
                max_size=cfg.max_message_bytes,
                origin=None if cfg.origin is None else Origin(cfg.origin),
                user_agent_header=_USER_AGENT,
            ) as ws:
                out: queue.SimpleQueue[object] = queue.SimpleQueue()
                writer = threading.Thread(
                    target=self._writer, args=(ws, out), name="innkt-realtime-writer", daemon=True
                )
                with self._lock:
                    if self._stop.is_set():
                        return Failure("closed", code=1000, reason="disconnected")
                    session.connection_opened(time.monotonic(), compressed=_deflate(ws))
                    self._ws, self._out = ws, out
                    self._write(session.data_to_send())
                    self._changed.notify_all()
                writer.start()
                try:
                    return self._read_loop(session, ws)
                finally:
                    with self._lock:
                        self._ws, self._out = None, None
                    out.put(_STOP)
                    writer.join(cfg.connection_timeout)
        except Exception as exc:
            return _failure_of(exc)

    def _read_loop(self, session: RealTimeSession, ws: SyncConnection) -> Failure:
        while True:
            with self._lock:
                deadline = session.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                data = ws.recv(timeout)
            except TimeoutError:
                data = None
            with self._lock:
                now = time.monotonic()
                envelopes = [] if data is None else session.receive(data, now)
                action = session.tick(now)
                self._write(session.data_to_send())
            if action is Action.ABORT:
                # Half-open: a close handshake would wait on a peer that is gone.
                ws.close_socket()
                return Failure("heartbeat", reason="no message within heartbeat + timeout")
            for envelope in envelopes:
                self._dispatch(envelope)

    def _dispatch(self, envelope: Envelope) -> None:
        for handler in self._targets(envelope):
            try:
                result = handler(envelope)
                if inspect.isawaitable(result):
                    # A coroutine handler belongs on AsyncRealTimeSyncService.
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                    raise TypeError("coroutine handlers need AsyncRealTimeSyncService")
            except Exception:
                self._handler_failed(f"handler for {envelope.type!r}")
        self.bus.publish(f"realtime.{envelope.type}", envelope)
        apply = self._config_to_apply(envelope)
        if apply is not None:
            config, backends = apply
            for backend in backends:
                try:
                    backend.apply_remote_config(config)
                except Exception:
                    self._handler_failed("apply_remote_config")


class AsyncRealTimeSyncService(_ServiceBase):
    """The asyncio front-end. Use it from one event loop; ``send_message`` is not async."""

    def __init__(
        self,
        config: RealTimeConfig | None = None,
        *,
        backend: ConfigurableBackend | None = None,
        bus: EventBus | None = None,
    ) -> None:
        super().__init__(config, backend=backend, bus=bus)
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._out: asyncio.Queue[object] | None = None
        self._ws: AsyncConnection | None = None

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def connect(self, wait: bool = True, within: float | None = None) -> bool:
        """Start connecting in a background task; see ``RealTimeSyncService.connect``."""
        session = self._require()
        if self._task is None or self._task.done():
            self._stop = asyncio.Event()
            self._changed = asyncio.Event()
            session.connect_started(time.monotonic())
            self._task = asyncio.create_task(self._run(session), name="innkt-realtime")
        limit = session.config.connection_timeout if within is None else within
        if not wait:
            return self.state is ConnectionState.OPEN
        states = {ConnectionState.OPEN, ConnectionState.FAILED, ConnectionState.CLOSED}
        return await self.wait_for_state(states, limit) is ConnectionState.OPEN

    async def wait_for_state(self, states: set[ConnectionState], within: float) -> ConnectionState:
        """Wait until the state is one of ``states``, at most ``within`` s; returns it."""
        deadline = time.monotonic() + within
        while self.state not in states and self._changed is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.state

    async def disconnect(self, within: float = 5.0) -> None:
        """Close the connection and stop reconnecting."""
        session = self._session
        if session is None or session.state in (
            ConnectionState.IDLE,
            ConnectionState.CLOSED,
            ConnectionState.CLOSING,
        ):
            return
        session.close_started()
        if self._stop is not None:
            self._stop.set()
        self._notify()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), within)
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(task, within)
            except TimeoutError:
                task.cancel()

    def _write(self, frames: list[str]) -> None:
        out = self._out
        if out is not None:
            for frame in frames:
                out.put_nowait(frame)

    async def _writer(self, ws: AsyncConnection, out: asyncio.Queue[object]) -> None:
        while (frame := await out.get()) is not _STOP:
            try:
                await ws.send(cast(str, frame))
            except Exception:
                return

    async def _run(self, session: RealTimeSession) -> None:
        assert self._stop is not None
        while True:
            failure = await self._connect_once(session)
            delay = session.connection_failed(time.monotonic(), failure)
            self._notify()
            if failure.fatal:
                log.warning("real-time connection refused: %s", failure)
            if delay is None:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set() or session.state is not ConnectionState.RECONNECTING:
                break
            session.connect_started(time.monotonic())
            self._notify()
        if session.state is ConnectionState.RECONNECTING:
            session.close_started()
        self._notify()

    async def _connect_once(self, session: RealTimeSession) -> Failure:
        cfg = session.config
        try:
            async with async_connect(
                cfg.websocket_url,
                **_tls_options(cfg),
                additional_headers={"Authorization": f"Bearer {cfg.api_key}"},
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                compression="deflate" if cfg.enable_compression else None,
                open_timeout=cfg.connection_timeout,
                ping_interval=None,
                close_timeout=min(cfg.connection_timeout, 2.0),
                max_size=cfg.max_message_bytes,
                origin=None if cfg.origin is None else Origin(cfg.origin),
                user_agent_header=_USER_AGENT,
            ) as ws:
                if self._stop is not None and self._stop.is_set():
                    return Failure("closed", code=1000, reason="disconnected")
                out: asyncio.Queue[object] = asyncio.Queue()
                session.connection_opened(time.monotonic(), compressed=_deflate(ws))
                self._ws, self._out = ws, out
                self._write(session.data_to_send())
                self._notify()
                writer = asyncio.create_task(self._writer(ws, out))
                try:
                    return await self._read_loop(session, ws)
                finally:
                    self._ws, self._out = None, None
                    out.put_nowait(_STOP)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writer, cfg.connection_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return _failure_of(exc)

    async def _read_loop(self, session: RealTimeSession, ws: AsyncConnection) -> Failure:
        while True:
            deadline = session.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            data: str | bytes | None
            try:
                data = await asyncio.wait_for(ws.recv(), timeout)
            except TimeoutError:
                data = None
            now = time.monotonic()
            envelopes = [] if data is None else session.receive(data, now)
            action = session.tick(now)
            self._write(session.data_to_send())
            if action is Action.ABORT:
                ws.transport.abort()
                return Failure("heartbeat", reason="no message within heartbeat + timeout")
            for envelope in envelopes:
                await self._dispatch(envelope)

    async def _dispatch(self, envelope: Envelope) -> None:
        for handler in self._targets(envelope):
            try:
                result = handler(envelope)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._handler_failed(f"handler for {envelope.type!r}")
        self.bus.publish(f"realtime.{envelope.type}", envelope)
        apply = self._config_to_apply(envelope)
        if apply is not None:
            config, backends = apply
            for backend in backends:
                try:
                    result = backend.apply_remote_config(config)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self._handler_failed("apply_remote_config")
