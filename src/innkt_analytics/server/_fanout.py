"""Cross-instance fan-out of the real-time hub: memory, Redis pub/sub, PostgreSQL NOTIFY.

Each instance publishes a ``FanoutMessage`` for every batch of events it stores
and every config change it makes; every instance subscribed to the same
channel receives them and feeds its own hub, so a WebSocket client connected
to instance B gets the ``event``, ``analytics_update`` and ``config_update``
caused by requests to instance A. Selected by ``INNKT_CHANNELS``:

* ``memory`` (default) — one instance, nothing leaves the process;
* ``redis://…`` — Redis ``PUBLISH``/``SUBSCRIBE`` on ``INNKT_REALTIME_CHANNEL``;
* ``postgres`` (the ``--db`` PostgreSQL URL) or ``postgresql://…`` —
  ``NOTIFY``/``LISTEN``. A NOTIFY payload is limited to 8000 bytes, so a message
  is base64-encoded and split into chunks sent in one transaction, which
  PostgreSQL delivers together and in order; receivers reassemble them.

``publish`` never blocks and never raises: the ingest path calls it. Messages
wait in a bounded buffer for a background task; when the channel is down or
too slow the oldest are dropped and counted (``dropped`` in the health
section), and the publisher reconnects with backoff. Fan-out is best effort by
design: the events themselves are already durable in storage.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import collections
import contextlib
import itertools
import logging
import secrets
from collections.abc import Callable
from typing import Any, Final

import msgspec

from innkt_analytics.server.storage import is_postgres_url
from innkt_analytics.shared._exceptions import ConfigError
from innkt_analytics.shared._protocol import ClientConfig
from innkt_analytics.shared._realtime_codec import reconnect_delays

__all__ = [
    "FanoutBackend",
    "FanoutMessage",
    "MemoryFanout",
    "PostgresFanout",
    "RedisFanout",
    "make_fanout",
]

log = logging.getLogger("innkt_analytics.server.fanout")

Deliver = Callable[[bytes], None]

#: messages waiting to be published before the oldest are dropped
MAX_PENDING: Final = 10_000
#: bytes of base64 text per NOTIFY (the payload limit is 8000 bytes)
NOTIFY_CHUNK: Final = 7800
#: how long ``start`` waits for the first subscription before serving anyway
START_TIMEOUT: Final = 10.0


class FanoutMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What instances tell each other. ``origin`` lets an instance skip its own.

    ``kind`` is ``events`` (a batch just stored: the raw events plus, per event,
    its type, session and ingest lag so receivers update their aggregates
    without parsing the events) or ``config`` (a project's new config).
    """

    origin: str
    kind: str
    project: str
    at_ms: int = 0
    types: list[str] = []
    sessions: list[str | None] = []
    lags: list[int] = []
    events: list[msgspec.Raw] = []
    config: ClientConfig | None = None


class FanoutBackend(abc.ABC):
    """Carries ``FanoutMessage`` bytes between instances."""

    name: str = "abstract"

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.published = 0
        self.received = 0
        self.dropped = 0
        self.errors = 0
        self.connected = False
        self.last_error: str | None = None

    @property
    def remote(self) -> bool:
        """Whether other instances can be reached (False: skip encoding messages)."""
        return True

    @abc.abstractmethod
    async def start(self, deliver: Deliver) -> None:
        """Connect and subscribe; ``deliver(bytes)`` is called in the event loop for
        each message received. Waits at most ``START_TIMEOUT`` for the channel."""

    @abc.abstractmethod
    def publish(self, data: bytes) -> None:
        """Queue a message for the other instances. Never blocks, never raises."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "channel": self.channel,
            "connected": self.connected,
            "published": self.published,
            "received": self.received,
            "dropped": self.dropped,
            "errors": self.errors,
            "lastError": self.last_error,
        }


class MemoryFanout(FanoutBackend):
    """One instance: there is nobody else to tell."""

    name = "memory"

    @property
    def remote(self) -> bool:
        return False

    async def start(self, deliver: Deliver) -> None:
        self.connected = True

    def publish(self, data: bytes) -> None:
        return None

    async def close(self) -> None:
        self.connected = False


class _Queued(FanoutBackend):
    """A bounded outbox drained by a publisher task, and a supervised subscriber."""

    def __init__(self, channel: str, url: str) -> None:
        super().__init__(channel)
        self.url = url
        self._outbox: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._deliver: Deliver | None = None

    def publish(self, data: bytes) -> None:
        if len(self._outbox) >= MAX_PENDING:
            self._outbox.popleft()
            self.dropped += 1
        self._outbox.append(data)
        self._wake.set()

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._tasks = [
            asyncio.create_task(self._supervise(self._listen, "subscriber")),
            asyncio.create_task(self._supervise(self._publish_loop, "publisher")),
        ]
        try:
            await asyncio.wait_for(self._ready.wait(), START_TIMEOUT)
        except TimeoutError:
            log.warning(
                "fan-out %s not subscribed after %ss; serving anyway", self.name, START_TIMEOUT
            )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.connected = False

    async def _supervise(self, run: Callable[[], Any], what: str) -> None:
        while True:
            delays = reconnect_delays(0.2, 10.0, 1_000_000)
            while True:
                try:
                    await run()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.errors += 1
                    self.last_error = f"{what}: {exc!r}"
                    if what == "subscriber":
                        self.connected = False
                    log.warning("fan-out %s %s failed: %r", self.name, what, exc)
                    await asyncio.sleep(next(delays))
                else:
                    break

    def _take(self, limit: int = 500) -> list[bytes]:
        batch: list[bytes] = []
        while self._outbox and len(batch) < limit:
            batch.append(self._outbox.popleft())
        return batch

    async def _publish_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = self._take()
                try:
                    await self._send(batch)
                except BaseException:
                    # Put them back in front so a reconnect retries them in order.
                    self._outbox.extendleft(reversed(batch))
                    while len(self._outbox) > MAX_PENDING:
                        self._outbox.popleft()
                        self.dropped += 1
                    raise
                self.published += len(batch)

    def _received(self, data: bytes) -> None:
        self.received += 1
        if self._deliver is not None:
            try:
                self._deliver(data)
            except Exception:
                self.errors += 1
                log.exception("fan-out delivery failed")

    @abc.abstractmethod
    async def _listen(self) -> None: ...

    @abc.abstractmethod
    async def _send(self, batch: list[bytes]) -> None: ...


class RedisFanout(_Queued):
    """Redis pub/sub (``redis.asyncio``)."""

    name = "redis"

    def __init__(self, channel: str, url: str) -> None:
        super().__init__(channel, url)
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # the optional dependency is missing
            raise ConfigError("channels", f"Redis fan-out needs the redis package: {exc}") from exc
        self._redis: Any = aioredis  # typed loosely: redis' own annotations change between releases
        self._pub: Any = None

    async def _listen(self) -> None:
        client = self._redis.Redis.from_url(self.url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self.connected = True
            self._ready.set()
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None and message.get("type") == "message":
                    self._received(message["data"])
        finally:
            self.connected = False
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _send(self, batch: list[bytes]) -> None:
        if self._pub is None:
            self._pub = self._redis.Redis.from_url(self.url)
        try:
            async with self._pub.pipeline(transaction=False) as pipe:
                for data in batch:
                    pipe.publish(self.channel, data)
                await pipe.execute()
        except BaseException:
            pub, self._pub = self._pub, None
            with contextlib.suppress(Exception):
                await pub.aclose()
            raise

    async def close(self) -> None:
        await super().close()
        if self._pub is not None:
            with contextlib.suppress(Exception):
                await self._pub.aclose()
            self._pub = None


class PostgresFanout(_Queued):
    """PostgreSQL ``LISTEN``/``NOTIFY`` (asyncpg), chunked under the 8000-byte limit."""

    name = "postgres"

    def __init__(self, channel: str, url: str) -> None:
        super().__init__(channel, url)
        try:
            import asyncpg
        except ImportError as exc:  # the optional dependency is missing
            raise ConfigError("channels", f"PostgreSQL fan-out needs asyncpg: {exc}") from exc
        self._asyncpg = asyncpg
        self._pub: Any = None
        self._ids = itertools.count(1)
        self._tag = secrets.token_hex(4)
        # (sender tag + message id) -> chunks received so far
        self._partial: collections.OrderedDict[str, list[str]] = collections.OrderedDict()

    def _chunks(self, data: bytes) -> list[str]:
        text = base64.b64encode(data).decode()
        pieces = [text[i : i + NOTIFY_CHUNK] for i in range(0, len(text), NOTIFY_CHUNK)] or [""]
        mid = f"{self._tag}{next(self._ids)}"
        n = len(pieces)
        return [f"{mid}:{i}:{n}:{piece}" for i, piece in enumerate(pieces)]

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            mid, index, total, piece = payload.split(":", 3)
            i, n = int(index), int(total)
        except ValueError:
            self.errors += 1
            return
        if n == 1:
            self._received(base64.b64decode(piece))
            return
        parts = self._partial.setdefault(mid, [])
        if len(parts) != i:  # a chunk went missing: the message cannot be rebuilt
            self._partial.pop(mid, None)
            self.errors += 1
            return
        parts.append(piece)
        if len(parts) == n:
            del self._partial[mid]
            self._received(base64.b64decode("".join(parts)))
        while len(self._partial) > 1000:
            self._partial.popitem(last=False)
            self.errors += 1

    async def _listen(self) -> None:
        conn = await self._asyncpg.connect(self.url)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(self.channel, self._on_notify)
            self.connected = True
            self._ready.set()
            # asyncpg has no keepalive of its own on an idle LISTEN connection:
            # probe it so a dead server is noticed and the supervisor reconnects.
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), 15.0)
                if not lost.is_set():
                    await asyncio.wait_for(conn.execute("SELECT 1"), 10.0)
            raise ConnectionError("LISTEN connection lost")
        finally:
            self.connected = False
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _send(self, batch: list[bytes]) -> None:
        if self._pub is None or self._pub.is_closed():
            self._pub = await self._asyncpg.connect(self.url)
        args = [(self.channel, chunk) for data in batch for chunk in self._chunks(data)]
        try:
            async with self._pub.transaction():
                await self._pub.executemany("SELECT pg_notify($1, $2)", args)
        except BaseException:
            pub, self._pub = self._pub, None
            with contextlib.suppress(Exception):
                await pub.close(timeout=2)
            raise

    async def close(self) -> None:
        await super().close()
        if self._pub is not None:
            with contextlib.suppress(Exception):
                await self._pub.close(timeout=2)
            self._pub = None


def make_fanout(channels: str, db: str, channel: str) -> FanoutBackend:
    """The backend for ``INNKT_CHANNELS``. Raises ``ConfigError`` naming ``channels``."""
    value = channels.strip()
    if value in ("", "memory"):
        return MemoryFanout(channel)
    if value.startswith(("redis://", "rediss://", "unix://")):
        return RedisFanout(channel, value)
    if value in ("postgres", "postgresql"):
        if not is_postgres_url(db):
            raise ConfigError(
                "channels", "'postgres' uses the --db PostgreSQL URL; give postgresql://… instead"
            )
        return PostgresFanout(channel, db)
    if is_postgres_url(value):
        return PostgresFanout(channel, value)
    raise ConfigError("channels", f"expected memory, redis://… or postgres(ql://…), got {value!r}")
