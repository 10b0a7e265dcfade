"""The ``/v1/realtime`` WebSocket hub.

Handshake: the key comes in ``Authorization: Bearer`` (or ``X-API-Key``), or —
for browsers, which cannot set headers on a WebSocket — as a ``bearer.<key>``
subprotocol offered next to ``innkt.v1``; never in the URL. A bad key (401), a
forbidden Origin (403), a rate-limited key (429) or a full instance (503) is
refused with an HTTP answer before the WebSocket is accepted.

Scopes: ``read`` and ``admin`` keys get everything; a ``write`` key — what an
SDK holds — may connect to receive ``config_update`` (and ping, health, sync
without aggregates), never the project's data. See docs/realtime.md.

The ingest path only calls ``Hub.on_events``, which appends to a list and wakes
the dispatcher task: it never awaits a socket. The dispatcher updates the live
aggregates, publishes the batch to the other instances, and appends it once to
the project's ``EventLog`` (``_realtime_stream``); one writer task per
connection sends replies, ``config_update``, the latest ``analytics_update`` and
whatever the event log holds past its cursor, merged into one frame. The event
stream obeys an instance-wide send budget; a subscriber that falls behind the
bounded log — a slow socket, or too little budget for everyone — loses the
oldest batches and is sent a ``dropped`` notice with the number of events first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from typing import Any, Final

import msgspec
from litestar import Litestar, WebSocket, websocket
from litestar.types import WebSocketResponseStartEvent

from innkt_analytics.server._auth import KeyRefused
from innkt_analytics.server._fanout import FanoutBackend, FanoutMessage, make_fanout
from innkt_analytics.server._ratelimit import TokenBucket
from innkt_analytics.server._realtime_aggregates import ProjectWindow
from innkt_analytics.server._realtime_stream import EventLog, SendBudget
from innkt_analytics.server._settings import ServerSettings
from innkt_analytics.server._state import (
    ServerState,
    presented_key,
    required,
    state_of,
    take_token,
)
from innkt_analytics.server._ws_protocol import SEND_TEXT_NOW, SendTextNow
from innkt_analytics.server.storage import KeyRecord, StorageStatus
from innkt_analytics.shared._exceptions import StorageError
from innkt_analytics.shared._ids import uuid7
from innkt_analytics.shared._protocol import ClientConfig, Envelope, ProtocolError, ValidEvent
from innkt_analytics.shared._realtime_codec import (
    BEARER_PREFIX,
    SERVER_TRANSITIONS,
    STREAMS,
    SUBPROTOCOL,
    ConnectionState,
    Prepared,
    StateMachine,
    decode_envelope,
    make_envelope,
    now_iso,
)

__all__ = ["Hub", "install_realtime", "realtime_endpoint"]

log = logging.getLogger("innkt_analytics.server.realtime")

#: consecutive rate-limited messages after which the connection is closed (1008)
MAX_VIOLATIONS: Final = 100
#: subscribers a batch is sent to directly before the dispatcher lets requests run
#: (at ~20-30 µs a send, about 5 ms of event loop)
DIRECT_SENDS_PER_TURN: Final = 200
_fanout_decoder: Final = msgspec.json.Decoder(FanoutMessage)
_fanout_encoder: Final = msgspec.json.Encoder()


def _control(type: str, payload: Any, request_id: str = "") -> Prepared:
    # Replies reuse the request's id so a client can match them (ping RTT).
    return Prepared.of(make_envelope(type, payload, id=request_id or None))


def _error(code: str, message: str, request_id: str = "", **extra: Any) -> Prepared:
    return _control("error", {"code": code, "message": message, **extra}, request_id)


class Connection:
    """One accepted WebSocket: its subscription, queued replies, event cursor and writer."""

    def __init__(self, hub: Hub, socket: WebSocket[Any, Any, Any], key: KeyRecord) -> None:
        settings = hub.settings
        self.hub = hub
        self.socket = socket
        self.key = key
        self.project = key.project
        #: read/admin see the project's data; write keys get config only
        self.full = bool(key.scopes & {"read", "admin"})
        self.machine = StateMachine(SERVER_TRANSITIONS, ConnectionState.CONNECTING)
        self.streams: set[str] = {"analytics_update"} if self.full else set()
        self.event_types: frozenset[str] | None = None
        #: the project's event log while subscribed to the event stream
        self.log: EventLog | None = None
        self.cursor = 0
        self.cursor_events = 0
        self.seq = 0
        self.sent = 0
        self.analytics: Prepared | None = None
        self.control: collections.deque[Prepared] = collections.deque()
        self.dropped_total = 0
        self.wake = asyncio.Event()
        self.bucket = TokenBucket(
            settings.realtime_message_rate,
            settings.realtime_message_burst,
            settings.realtime_message_burst,
            time.monotonic(),
        )
        self.violations = 0
        self.writer_task: asyncio.Task[None] | None = None
        extensions: dict[str, Any] = socket.scope.get("extensions") or {}
        #: uvicorn's synchronous send, when ``serve`` runs us (see _ws_protocol)
        self.send_text_now: SendTextNow | None = extensions.get(SEND_TEXT_NOW)

    # -- called by the dispatcher and the hub: never await ---------------------------

    def wake_up(self) -> None:
        self.wake.set()

    def on_append(self) -> None:
        # The event log calls this when a batch arrives while the writer sleeps. If
        # nothing else waits to go out, the batch is sent from here: no task switch and
        # no ASGI layers per subscriber, which is most of what a fan-out costs.
        stream, hub, send_now = self.log, self.hub, self.send_text_now
        if stream is not None and not self.wake.is_set() and send_now is not None:
            if hub.direct_left <= 0:
                hub.deferred.append(self)  # after the loop had a turn (Hub._send_deferred)
                return
            try:
                sent = self._send_newest(stream, send_now)
            except Exception:
                # Never leave a reader neither served nor woken: the event log forgot it.
                log.exception("real-time direct send failed")
                sent = False
            if sent:
                hub.direct_left -= 1
                if stream.pending(self):
                    self.wake.set()
                else:
                    stream.idle.add(self)  # the writer still sleeps
                return
        self.wake.set()

    def _send_newest(self, log: EventLog, send_now: SendTextNow) -> bool:
        """Send the log's newest batch right now if that is all there is to send."""
        if self.control or self.analytics is not None:
            return False
        entry = log.only_newest(self)
        if entry is None:
            return False
        hub = self.hub
        if self.event_types is None:
            prefix, count = entry.frame, len(entry.raws)
        else:
            text, count = entry.select(self.event_types)
            if not count:
                log.advance(self, entry)
                return True
            prefix = f'{hub.event_head()},"payload":{{"events":[{text}]}}'
        if not hub.budget.try_take(time.monotonic(), len(prefix)):
            return False  # the writer waits for the budget
        if not send_now(f'{prefix},"seq":{self.seq + 1}}}'):
            return False  # closing or a full buffer: the writer's ASGI send deals with it
        self.seq += 1
        log.advance(self, entry)
        self.sent += 1
        hub.frames_sent += 1
        hub.frames_direct += 1
        hub.events_sent += count
        return True

    def push_analytics(self, message: Prepared) -> None:
        # A snapshot supersedes the one still waiting: nothing is lost by replacing it.
        self.analytics = message
        self.wake.set()

    def push_control(self, message: Prepared) -> None:
        # Replies and config updates are few (bounded by the message rate limit and
        # by config changes) and must never be dropped.
        self.control.append(message)
        self.wake.set()

    def _next(self) -> Prepared | None:
        if self.control:
            return self.control.popleft()
        if self.analytics is not None:
            message, self.analytics = self.analytics, None
            return message
        return None

    # -- the writer task ---------------------------------------------------------------

    async def _send(self, prefix: str) -> None:
        self.seq += 1
        text = f'{prefix},"seq":{self.seq}}}'
        await self.socket.send({"type": "websocket.send", "bytes": None, "text": text})
        self.sent += 1
        self.hub.frames_sent += 1

    async def _send_events(self, log: EventLog) -> None:
        hub = self.hub
        # Over the instance's budget, sleep: batches that arrive meanwhile join this frame.
        wait = hub.budget.take_frame(time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        lost, entries = log.read(self)
        if lost:
            # The notice goes right before the events after the gap, and counts as
            # part of the stream's cost.
            self.dropped_total += lost
            hub.dropped += lost
            notice = {"dropped": lost, "droppedTotal": self.dropped_total}
            await self._send(_control("dropped", notice).prefix)
            hub.budget.take_frame(time.monotonic())
        if len(entries) == 1 and self.event_types is None:
            # The common case: one batch, no filter: the message every reader shares.
            prefix, count = entries[0].frame, len(entries[0].raws)
        else:
            parts: list[str] = []
            count = 0
            for entry in entries:
                text, n = entry.select(self.event_types)
                if n:
                    parts.append(text)
                    count += n
            if not count:
                return
            prefix = f'{hub.event_head()},"payload":{{"events":[{",".join(parts)}]}}'
        wait = hub.budget.take_bytes(time.monotonic(), len(prefix))
        if wait > 0:
            await asyncio.sleep(wait)
        await self._send(prefix)
        hub.events_sent += count

    async def writer(self) -> None:
        while True:
            message = self._next()
            if message is not None:
                await self._send(message.prefix)
                continue
            log = self.log
            if log is not None and log.pending(self):
                await self._send_events(log)
                continue
            # Nothing to do: sleep until a reply, a snapshot or a new batch arrives.
            self.wake.clear()
            if log is not None:
                log.idle.add(self)
            await self.wake.wait()
            if log is not None:
                log.idle.discard(self)


class Hub:
    """All real-time connections of this instance; an ``IngestObserver``."""

    def __init__(self, state: ServerState, fanout: FanoutBackend) -> None:
        self.state = state
        self.settings: ServerSettings = state.settings
        self.fanout = fanout
        self.instance = secrets.token_hex(6)
        self.projects: dict[str, set[Connection]] = {}
        #: the event stream of each project that has subscribers to it
        self.logs: dict[str, EventLog] = {}
        self.event_subs: dict[str, set[Connection]] = {}
        self.budget = SendBudget(
            self.settings.realtime_fanout_frames_per_second,
            self.settings.realtime_fanout_bytes_per_second,
            time.monotonic(),
            burst_frames=self.settings.realtime_fanout_burst_frames,
        )
        self.events_sent = 0
        self.frames_sent = 0
        #: frames sent by the dispatcher itself (``Connection._send_newest``)
        self.frames_direct = 0
        #: direct sends left in this turn of the dispatcher, and who waits for the next
        self.direct_left = DIRECT_SENDS_PER_TURN
        self.deferred: list[Connection] = []
        self._stamp = (0.0, "")
        self.windows: dict[str, ProjectWindow] = collections.defaultdict(ProjectWindow)
        self.configs: dict[str, ClientConfig] = {}
        self.tickers: dict[str, asyncio.Task[None]] = {}
        self.count = 0
        self.dropped = 0
        self.refused: collections.Counter[str] = collections.Counter()
        self._pending: collections.deque[tuple[str, list[ValidEvent], float]] = collections.deque()
        self._remote: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._revoker: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch_loop())
        self._revoker = asyncio.create_task(self._revocation_loop())
        await self.fanout.start(self._on_remote)

    async def stop(self) -> None:
        tasks = [
            t for t in (self._dispatcher, self._revoker, *self.tickers.values()) if t is not None
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.fanout.close()

    def publish(self, project: str, type: str, payload: dict[str, Any]) -> None:
        """Push a server message (an alert) to ``project``'s connections on this instance.

        Only connections with a read or admin key get it: an SDK's write key sees
        configuration, never the project's data.
        """
        message = Prepared.of(make_envelope(type, payload))
        for conn in list(self.projects.get(project, ())):
            if conn.full:
                conn.push_control(message)

    async def health(self) -> dict[str, Any]:
        return {
            "connections": self.count,
            "projects": len(self.projects),
            "eventSubscribers": sum(len(s) for s in self.event_subs.values()),
            "framesSent": self.frames_sent,
            "framesSentDirect": self.frames_direct,
            "eventsSent": self.events_sent,
            "dropped": self.dropped,
            "budgetWaitSeconds": round(self.budget.waited, 3),
            "refused": dict(self.refused),
            "instance": self.instance,
            "fanout": self.fanout.describe(),
        }

    # -- IngestObserver: called on the ingest path, must stay cheap -----------------

    def on_events(self, project: str, events: list[ValidEvent]) -> None:
        self._pending.append((project, events, time.time()))
        self._wake.set()

    def on_config(self, project: str, config: ClientConfig) -> None:
        self._apply_config(project, config)
        if self.fanout.remote:
            message = FanoutMessage(
                origin=self.instance, kind="config", project=project, config=config
            )
            self.fanout.publish(_fanout_encoder.encode(message))

    def _on_remote(self, data: bytes) -> None:
        self._remote.append(data)
        self._wake.set()

    # -- dispatcher -----------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending or self._remote:
                self.direct_left = DIRECT_SENDS_PER_TURN
                try:
                    if self._pending:
                        self._local_batch(*self._pending.popleft())
                    else:
                        self._remote_message(self._remote.popleft())
                except Exception:
                    log.exception("real-time dispatch failed")
                # Hand the loop back between batches so a burst of ingest cannot
                # starve request handling.
                await asyncio.sleep(0)
                await self._send_deferred()

    async def _send_deferred(self) -> None:
        """Serve the subscribers a batch did not reach in its turn, a turn at a time."""
        while self.deferred:
            turn = self.deferred[:DIRECT_SENDS_PER_TURN]
            del self.deferred[:DIRECT_SENDS_PER_TURN]
            self.direct_left = DIRECT_SENDS_PER_TURN
            for conn in turn:
                conn.on_append()
            await asyncio.sleep(0)

    def _local_batch(self, project: str, events: list[ValidEvent], at: float) -> None:
        at_ms = int(at * 1000)
        types = [v.event.event_type for v in events]
        sessions = [v.event.session_id for v in events]
        lags = [at_ms - v.corrected_ms for v in events]
        raws = [v.raw for v in events]
        self.windows[project].add(at, types, sessions, lags)
        self._fan_events(project, raws, types)
        if self.fanout.remote:
            message = FanoutMessage(
                origin=self.instance,
                kind="events",
                project=project,
                at_ms=at_ms,
                types=types,
                sessions=sessions,
                lags=lags,
                events=[msgspec.Raw(r) for r in raws],
            )
            self.fanout.publish(_fanout_encoder.encode(message))

    def _remote_message(self, data: bytes) -> None:
        message = _fanout_decoder.decode(data)
        if message.origin == self.instance:
            return  # our own, already handled locally
        if message.kind == "events":
            self.windows[message.project].add(
                message.at_ms / 1000, message.types, message.sessions, message.lags
            )
            self._fan_events(message.project, [bytes(r) for r in message.events], message.types)
        elif message.kind == "config" and message.config is not None:
            self._apply_config(message.project, message.config)

    def _fan_events(self, project: str, raws: list[bytes], types: list[str]) -> None:
        log = self.logs.get(project)
        if log is not None:
            log.append(raws, types, self.event_head())

    def event_head(self) -> str:
        """The start of an event message: a fresh id and the current time."""
        now = time.time()
        if now - self._stamp[0] >= 0.001:  # many frames share a millisecond
            self._stamp = (now, now_iso())
        return f'{{"type":"event","id":"{uuid7(now)}","timestamp":"{self._stamp[1]}"'

    def _apply_config(self, project: str, config: ClientConfig) -> None:
        old = self.configs.get(project)
        if old is not None and old.version > config.version:
            return  # a late message from another instance: keep the newer one
        self.configs[project] = config
        conns = self.projects.get(project)
        if not conns:
            return
        message = _control("config_update", {"config": msgspec.to_builtins(config)})
        for conn in conns:
            conn.push_control(message)
        ticker = self.tickers.get(project)
        if ticker is not None and (
            old is None or old.realtime_interval != config.realtime_interval
        ):
            ticker.cancel()
            self.tickers[project] = asyncio.create_task(self._ticker(project))

    async def _ticker(self, project: str) -> None:
        while True:
            config = self.configs.get(project) or ClientConfig()
            await asyncio.sleep(config.realtime_interval)
            conns = self.projects.get(project)
            if not conns:
                return
            payload = self.analytics_payload(project)
            message = Prepared.of(make_envelope("analytics_update", payload))
            for conn in conns:
                if "analytics_update" in conn.streams:
                    conn.push_analytics(message)

    def analytics_payload(self, project: str) -> dict[str, Any]:
        return {
            "project": project,
            "generatedAt": now_iso(),
            "instance": self.instance,
            **self.windows[project].snapshot(time.time()),
        }

    # -- connections ----------------------------------------------------------------

    async def _register(self, conn: Connection) -> None:
        project = conn.project
        if project not in self.configs:
            self.configs[project] = await self.state.storage.get_config(project) or ClientConfig()
        self.projects.setdefault(project, set()).add(conn)
        self.count += 1
        ticker = self.tickers.get(project)
        if ticker is None or ticker.done():
            self.tickers[project] = asyncio.create_task(self._ticker(project))

    def _unregister(self, conn: Connection) -> None:
        project = conn.project
        conns = self.projects.get(project)
        if conns is not None and conn in conns:
            conns.discard(conn)
            self.count -= 1
            if not conns:
                del self.projects[project]
                ticker = self.tickers.pop(project, None)
                if ticker is not None:
                    ticker.cancel()
        self._stream(conn, on=False)

    def _stream(self, conn: Connection, *, on: bool) -> None:
        """Attach ``conn`` to its project's event log, or detach it."""
        project = conn.project
        if on and conn.log is None:
            log = self.logs.get(project)
            if log is None:
                settings = self.settings
                log = self.logs[project] = EventLog(
                    settings.realtime_backlog, settings.realtime_backlog_bytes
                )
            log.attach(conn)
            conn.log = log
            self.event_subs.setdefault(project, set()).add(conn)
            conn.wake_up()
        elif not on and conn.log is not None:
            conn.log.idle.discard(conn)
            conn.log = None
            subs = self.event_subs.get(project, set())
            subs.discard(conn)
            if not subs:
                self.event_subs.pop(project, None)
                self.logs.pop(project, None)

    def _subscribe(
        self, conn: Connection, payload: Any, add: bool, request_id: str
    ) -> Prepared | None:
        if not isinstance(payload, dict):
            return None
        streams = payload.get("streams", [])
        if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
            return None
        wanted = set(streams)
        granted = wanted & STREAMS if conn.full else set()
        denied = sorted(wanted - granted)
        if add:
            conn.streams |= granted
            if "eventTypes" in payload:
                types = payload["eventTypes"]
                if types is None:
                    conn.event_types = None
                elif isinstance(types, list) and all(isinstance(t, str) for t in types):
                    conn.event_types = frozenset(types)
                else:
                    return None
        else:
            conn.streams -= wanted
        self._stream(conn, on="event" in conn.streams)
        return _control(
            "subscribed",
            {
                "streams": sorted(conn.streams | {"config_update"}),
                "denied": denied,
                "eventTypes": None if conn.event_types is None else sorted(conn.event_types),
            },
            request_id,
        )

    # -- the endpoint ---------------------------------------------------------------

    async def _refuse(
        self, socket: WebSocket[Any, Any, Any], status: int, code: str, message: str, **extra: Any
    ) -> None:
        self.refused[code] += 1
        if "websocket.http.response" not in (socket.scope.get("extensions") or {}):
            await socket.close(code=1008, reason=code)  # the server answers 403
            return
        body = msgspec.json.encode({"error": code, "message": message, **extra})
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if "retryAfter" in extra:
            headers.append((b"retry-after", str(max(1, round(extra["retryAfter"]))).encode()))
        start: WebSocketResponseStartEvent = {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": headers,
        }
        await socket.send(start)
        await socket.send(
            {"type": "websocket.http.response.body", "body": body, "more_body": False}
        )

    async def _admit(self, socket: WebSocket[Any, Any, Any]) -> tuple[KeyRecord, str | None] | None:
        """Check Origin, key, scope, limits before accepting; refuse and return None."""
        settings = self.settings
        origin = socket.headers.get("origin")
        allowed = settings.allowed_origins
        if origin is not None and "*" not in allowed and origin not in allowed:
            await self._refuse(socket, 403, "origin_forbidden", f"Origin {origin!r} not allowed")
            return None
        offered: list[str] = list(socket.scope.get("subprotocols", []))
        presented = presented_key(socket)
        if presented is None:
            bearer = [p[len(BEARER_PREFIX) :] for p in offered if p.startswith(BEARER_PREFIX)]
            presented = bearer[0] if bearer else None
        if not presented:
            await self._refuse(socket, 401, "unauthorized", "missing API key")
            return None
        try:
            record = await self.state.keys.check(presented)
        except KeyRefused as refused:  # unauthorized, or key_expired after a rotation
            await self._refuse(socket, 401, refused.code, refused.message)
            return None
        if not record.scopes & {"read", "admin", "write"}:
            await self._refuse(socket, 403, "forbidden", "this key cannot use the real-time hub")
            return None
        wait = await take_token(self.state, record.key_id)
        if wait:
            await self._refuse(socket, 429, "rate_limited", "too many requests", retryAfter=wait)
            return None
        if self.count >= settings.realtime_max_connections:
            retry = settings.unavailable_retry_after
            await self._refuse(socket, 503, "too_many_connections", "full", retryAfter=retry)
            return None
        # Echo our protocol, never the bearer one (it would put the key in a response).
        return record, SUBPROTOCOL if SUBPROTOCOL in offered else None

    async def serve(self, socket: WebSocket[Any, Any, Any]) -> None:
        """Run one connection from handshake to close."""
        first = await socket.receive()
        if first["type"] != "websocket.connect":
            return
        admitted = await self._admit(socket)
        if admitted is None:
            return
        record, subprotocol = admitted
        conn = Connection(self, socket, record)
        # Not socket.accept(): it only accepts from the "init" state, and the
        # connect event was already received above to check the handshake.
        await socket.send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": []})
        conn.machine.to(ConnectionState.OPEN)
        await self._register(conn)
        conn.writer_task = writer = asyncio.create_task(conn.writer())
        try:
            await self._read_loop(conn)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            self._unregister(conn)
            if conn.machine.state is not ConnectionState.CLOSED:
                conn.machine.to(ConnectionState.CLOSED)

    async def _close(self, conn: Connection, code: int, reason: str) -> None:
        """Close from our side; the read loop then sees the disconnect and cleans up."""
        if conn.machine.state is not ConnectionState.OPEN:
            return
        conn.machine.to(ConnectionState.CLOSING)
        if conn.writer_task is not None:
            # No frame may follow the close frame.
            conn.writer_task.cancel()
        with contextlib.suppress(Exception):
            await conn.socket.close(code=code, reason=reason)

    async def _revocation_loop(self) -> None:
        """Close connections whose key was revoked, as fast as the HTTP API notices."""
        interval = max(0.5, self.settings.key_cache_seconds)
        while True:
            await asyncio.sleep(interval)
            by_key: dict[str, list[Connection]] = collections.defaultdict(list)
            for project_conns in self.projects.values():
                for conn in project_conns:
                    by_key[conn.key.key_hash].append(conn)
            for key_hash, holders in by_key.items():
                try:
                    record = await self.state.storage.find_key(key_hash)
                except StorageError:
                    continue  # storage trouble is not a revocation
                now_ms = time.time_ns() // 1_000_000
                if record is None or record.revoked_at is not None:
                    for conn in holders:
                        await self._close(conn, 1008, "API key revoked")
                elif record.expires_at is not None and record.expires_at <= now_ms:
                    for conn in holders:  # a rotated key whose overlap ended
                        await self._close(conn, 1008, "API key expired")

    async def _read_loop(self, conn: Connection) -> None:
        socket = conn.socket
        limit = self.settings.realtime_max_message_bytes
        while True:
            message = await socket.receive()
            if message["type"] != "websocket.receive":
                return
            text = message.get("text")
            data: str | bytes = text if text is not None else (message.get("bytes") or b"")
            try:
                envelope = decode_envelope(data, limit)
            except ProtocolError as exc:
                if exc.status == 413:
                    await self._close(conn, 1009, "message too large")
                    return
                conn.push_control(_error(exc.code, exc.message))
                continue
            wait = conn.bucket.take(time.monotonic())
            if wait:
                conn.violations += 1
                if conn.violations > MAX_VIOLATIONS:
                    await self._close(conn, 1008, "message rate limit exceeded")
                    return
                conn.push_control(
                    _error("rate_limited", "too many messages", envelope.id, retryAfter=wait)
                )
                continue
            conn.violations = 0
            reply = await self._handle(conn, envelope)
            if reply is not None:
                conn.push_control(reply)

    async def _handle(self, conn: Connection, envelope: Envelope) -> Prepared | None:
        kind, rid, payload = envelope.type, envelope.id, envelope.payload
        if kind == "ping":
            return _control("pong", {"serverTime": now_iso()}, rid)
        if kind == "pong":
            return None
        if kind in ("subscribe", "unsubscribe"):
            reply = self._subscribe(conn, payload, kind == "subscribe", rid)
            if reply is None:
                return _error(
                    "invalid_message",
                    'payload: {"streams": [...], "eventTypes": [...] | null}',
                    rid,
                )
            return reply
        if kind == "sync_request":
            config = self.configs.get(conn.project) or ClientConfig()
            body: dict[str, Any] = {
                "config": msgspec.to_builtins(config),
                "streams": sorted(conn.streams | {"config_update"}),
                "instance": self.instance,
                "serverTime": now_iso(),
                # The sequence number of this response: messages after it continue from here.
                "seq": conn.seq + len(conn.control) + 1,
            }
            if conn.full:
                body["aggregates"] = self.analytics_payload(conn.project)
            return _control("sync_response", body, rid)
        if kind == "health_check":
            storage = await self.state.storage.health()
            ok = storage.status is StorageStatus.OK
            return _control(
                "health_status",
                {
                    "status": "ok" if ok else "degraded",
                    "storage": storage.status.value,
                    "instance": self.instance,
                    "connections": self.count,
                    "fanout": self.fanout.name,
                    "fanoutConnected": self.fanout.connected,
                    "uptimeSeconds": round(time.monotonic() - self.state.started, 3),
                },
                rid,
            )
        return _error("unknown_type", f"unknown or server-only message type {kind!r}", rid)


@websocket("/v1/realtime")
async def realtime_endpoint(socket: WebSocket[Any, Any, Any]) -> None:
    """The real-time hub (see docs/realtime.md)."""
    await required(state_of(socket).parts.hub, "install_realtime").serve(socket)


def install_realtime(state: ServerState, app: Litestar) -> None:
    """``create_app`` ``on_state`` hook: build the hub, observe ingest, add health.

    Raises ``ConfigError`` when ``INNKT_CHANNELS`` is not usable.
    """
    settings = state.settings
    hub = Hub(state, make_fanout(settings.channels, settings.db, settings.realtime_channel))
    state.observers.append(hub)
    state.health_sections["realtime"] = hub.health
    state.parts.hub = hub
    app.on_startup.append(hub.start)
    app.on_shutdown.append(hub.stop)
