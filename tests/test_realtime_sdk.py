"""``RealTimeSyncService`` / ``AsyncRealTimeSyncService`` against the real server.

Faults are real: the server process is SIGKILLed and restarted, or frozen with
SIGSTOP. Delays are scaled down (backoff base 0.05 s, heartbeat 0.2 s); waits
for an outcome are generous deadlines, never assertions on elapsed time.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from innkt_analytics.sdk._backend import AnalyticsBackendService
from innkt_analytics.sdk._bus import EventBus
from innkt_analytics.sdk._config import BackendConfig, QueueMode
from innkt_analytics.sdk._realtime import AsyncRealTimeSyncService, RealTimeSyncService
from innkt_analytics.sdk._realtime_session import RealTimeConfig
from innkt_analytics.shared._exceptions import ConnectionStateError
from innkt_analytics.shared._protocol import ClientConfig, Envelope
from innkt_analytics.shared._realtime_codec import ConnectionState, make_envelope
from tests._server import ServerProcess
from tests.conftest import ServerFactory
from tests.test_realtime_server import event, post_events, put_config, ws_url

WAIT = 30.0


def wait_until(predicate: Callable[[], bool], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


async def await_until(predicate: Callable[[], bool], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


def rt_config(server: ServerProcess, key: str | None = None, **overrides: Any) -> RealTimeConfig:
    options: dict[str, Any] = {
        "websocket_url": ws_url(server),
        "api_key": key or server.read_key,
        "reconnect_interval": 0.05,
        "max_reconnect_delay": 0.3,
        "max_reconnect_attempts": 1000,
        "heartbeat_interval": 1.0,
        "connection_timeout": 2.0,
    }
    options.update(overrides)
    return RealTimeConfig(**options)


class Inbox:
    """Collects envelopes from any thread."""

    def __init__(self) -> None:
        self.items: list[Envelope] = []
        self._lock = threading.Lock()

    def __call__(self, envelope: Envelope) -> None:
        with self._lock:
            self.items.append(envelope)

    def of(self, type: str) -> list[Envelope]:
        with self._lock:
            return [e for e in self.items if e.type == type]


def backend_for(server: ServerProcess, tmp_path: Path) -> AnalyticsBackendService:
    # No config polling: any config change must come through the real-time service.
    config = BackendConfig(
        base_url=server.url,
        api_key=server.write_key,
        queue_mode=QueueMode.MEMORY,
        config_refresh_interval=0,
        batch_size=50,
    )
    return AnalyticsBackendService(config)


# -- the sync front-end -----------------------------------------------------------------


def test_messages_are_routed_by_type_and_broadcast_on_the_bus(server: ServerProcess) -> None:
    bus = EventBus()
    on_bus: list[tuple[str, Envelope]] = []
    bus.subscribe("realtime.event", lambda topic, env: on_bus.append((topic, env)))
    service = RealTimeSyncService(rt_config(server, heartbeat_interval=0.1), bus=bus)
    events, analytics, everything = Inbox(), Inbox(), Inbox()
    service.on("event", events)
    service.on("analytics_update", analytics)
    service.on("*", everything)
    try:
        assert service.connect()
        assert service.state is ConnectionState.OPEN
        wait_until(lambda: bool(everything.of("subscribed")), "the subscription")
        batch = [event("login"), event("view")]
        post_events(server, batch)
        wait_until(lambda: bool(events.items), "the event message")
        assert events.items[0].payload["events"] == batch
        assert on_bus[0] == ("realtime.event", events.items[0])
        wait_until(
            lambda: any(a.payload["eventsPerMinute"] == 2 for a in analytics.items),
            "an analytics update counting the events",
        )
        assert all(e.type == "analytics_update" for e in analytics.items)
        # off() stops one handler; the others keep receiving
        assert service.off("event", events)
        assert not service.off("event", events)
        post_events(server, [event("later")])
        wait_until(lambda: len(everything.of("event")) == 2, "the second event")
        assert len(events.items) == 1
        wait_until(lambda: service.get_connection_stats().latency_p50_ms is not None, "RTT")
        stats = service.get_connection_stats()
        assert stats.state is ConnectionState.OPEN
        assert stats.latency_p95_ms is not None
        assert stats.latency_p95_ms >= stats.latency_p50_ms  # type: ignore[operator]
        assert stats.messages_in >= 4
        assert stats.messages_out >= 3  # subscribe, sync_request, pings
        assert (stats.reconnect_count, stats.seq_gaps) == (0, 0)
        assert stats.compressed  # enable_compression (the default) negotiated permessage-deflate
    finally:
        service.disconnect()
    assert service.get_connection_stats().state is ConnectionState.CLOSED


def test_config_update_reconfigures_the_backend_service_live(
    server: ServerProcess, tmp_path: Path
) -> None:
    backend = backend_for(server, tmp_path)
    bus = EventBus()
    seen: list[Envelope] = []
    bus.subscribe("realtime.config_update", lambda _t, env: seen.append(env))
    # A write key is enough to receive config updates.
    service = RealTimeSyncService(rt_config(server, server.write_key), backend=backend, bus=bus)
    try:
        assert service.connect()
        assert backend.config.batch_size == 50
        stored = put_config(
            server, batchSize=7, samplingRate=0.5, disabledEventTypes=["debug"], syncInterval=2.5
        )
        wait_until(lambda: backend.config.batch_size == 7, "the backend to apply the config")
        assert backend.config.sampling_rate == 0.5
        assert backend.config.disabled_event_types == frozenset({"debug"})
        assert backend.config.sync_interval == 2.5
        assert seen[-1].payload["config"] == stored
        # the backend now drops what the server disabled
        assert not backend.track("debug", {})
    finally:
        service.disconnect()
        backend.shutdown(5)


def test_server_killed_and_restarted_client_reconnects_and_resumes(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory()
    backend = backend_for(server, tmp_path)
    service = RealTimeSyncService(rt_config(server), backend=backend)
    inbox = Inbox()
    service.on("*", inbox)
    try:
        assert service.connect()
        service.on("event", inbox)
        wait_until(lambda: bool(inbox.of("sync_response")), "the first sync")
        server.kill()
        service.wait_for_state({ConnectionState.RECONNECTING, ConnectionState.CONNECTING}, WAIT)
        assert service.state in (ConnectionState.RECONNECTING, ConnectionState.CONNECTING)
        # Sent while the server is down: queued, sent after the reconnect.
        assert service.send_message(make_envelope("ping", {}, id="sent-while-down"))
        assert service.get_connection_stats().queued == 1
        # The config changes while this client is away (through another instance
        # on the same database): the client must catch up when it comes back.
        other = server_factory(db=server.db)
        other.keys = dict(server.keys)
        put_config(other, batchSize=9)
        other.kill()
        server.start()
        assert service.wait_for_state({ConnectionState.OPEN}, WAIT) is ConnectionState.OPEN
        wait_until(lambda: backend.config.batch_size == 9, "the missed config to be applied")
        wait_until(
            lambda: any(e.id == "sent-while-down" for e in inbox.of("pong")),
            "the answer to the queued ping",
        )
        # the event subscription was restored on the new connection
        batch = [event("after-restart")]
        post_events(server, batch)
        wait_until(
            lambda: any(e.payload["events"] == batch for e in inbox.of("event")),
            "an event after the restart",
        )
        stats = service.get_connection_stats()
        assert stats.reconnect_count == 1
        assert stats.queued == 0
        assert stats.dropped_outgoing == 0
        syncs = inbox.of("sync_response")
        assert len(syncs) == 2
        assert syncs[-1].payload["config"]["batchSize"] == 9
    finally:
        service.disconnect()
        backend.shutdown(5)


def test_a_bad_key_or_origin_fails_at_once_without_retrying(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_ALLOWED_ORIGINS": "https://app.example"})
    for overrides, status in (
        ({"api_key": "ik_wrong"}, "401"),
        ({"origin": "https://evil.example"}, "403"),
    ):
        service = RealTimeSyncService(rt_config(server, **overrides))
        assert not service.connect()
        stats = service.get_connection_stats()
        assert stats.state is ConnectionState.FAILED
        assert stats.failed_attempts == 0
        assert stats.last_error is not None
        assert stats.last_error.startswith(f"refused {status}")
        service.disconnect()
        assert service.state is ConnectionState.CLOSED
    ok = RealTimeSyncService(
        rt_config(server, origin="https://app.example", enable_compression=False)
    )
    assert ok.connect()
    assert ok.get_connection_stats().compressed is False
    ok.disconnect()


def test_send_queue_is_bounded_and_lifecycle_errors_are_explicit(server: ServerProcess) -> None:
    service = RealTimeSyncService()
    with pytest.raises(ConnectionStateError):
        service.send_message(make_envelope("ping"))
    with pytest.raises(ConnectionStateError):
        service.connect()
    service.initialize(rt_config(server, max_queued_messages=2))
    results = [service.send("note", {"n": i}) for i in range(3)]
    assert results == [True, True, False]
    stats = service.get_connection_stats()
    assert (stats.queued, stats.dropped_outgoing) == (2, 1)
    assert service.connect()
    with pytest.raises(ConnectionStateError):
        service.initialize(rt_config(server))
    wait_until(lambda: service.get_connection_stats().queued == 0, "the queue to flush")
    service.disconnect()
    service.disconnect()  # idempotent
    assert not service.send("after-close")


def test_get_instance_is_one_per_front_end() -> None:
    assert RealTimeSyncService.get_instance() is RealTimeSyncService.get_instance()
    assert AsyncRealTimeSyncService.get_instance() is AsyncRealTimeSyncService.get_instance()
    assert type(AsyncRealTimeSyncService.get_instance()) is AsyncRealTimeSyncService


# -- the asyncio front-end --------------------------------------------------------------


def test_async_half_open_server_is_detected_by_heartbeat_then_reconnected(
    server: ServerProcess,
) -> None:
    """SIGSTOP keeps the TCP connection up but silent: only the heartbeat can tell."""

    async def main() -> None:
        config = rt_config(server, heartbeat_interval=0.2, connection_timeout=0.5)
        service = AsyncRealTimeSyncService(config, bus=EventBus())
        assert await service.connect()
        await await_until(
            lambda: service.get_connection_stats().latency_p50_ms is not None, "a heartbeat"
        )
        server.pause()
        try:
            await await_until(
                lambda: service.get_connection_stats().half_open_detections == 1,
                "the half-open connection to be detected",
            )
            stats = service.get_connection_stats()
            assert stats.last_error is not None
            assert stats.last_error.startswith("heartbeat")
            assert stats.state in (ConnectionState.RECONNECTING, ConnectionState.CONNECTING)
        finally:
            server.resume()
        assert await service.wait_for_state({ConnectionState.OPEN}, WAIT) is ConnectionState.OPEN
        assert service.get_connection_stats().reconnect_count == 1
        await service.disconnect()
        assert service.state is ConnectionState.CLOSED

    asyncio.run(main())


def test_async_handlers_may_be_coroutines_and_config_reaches_async_backends(
    server: ServerProcess,
) -> None:
    applied: list[ClientConfig] = []

    class AsyncBackend:
        async def apply_remote_config(self, config: ClientConfig) -> None:
            await asyncio.sleep(0)
            applied.append(config)

    async def main() -> None:
        service = AsyncRealTimeSyncService(
            rt_config(server), backend=AsyncBackend(), bus=EventBus()
        )
        got: list[Envelope] = []

        async def on_event(envelope: Envelope) -> None:
            await asyncio.sleep(0)
            got.append(envelope)

        service.on("event", on_event)
        assert await service.connect()
        await await_until(lambda: service.get_connection_stats().messages_in >= 2, "sync")
        batch = [event("async")]
        await asyncio.to_thread(post_events, server, batch)
        await await_until(lambda: bool(got), "the event")
        assert got[0].payload["events"] == batch
        stored = await asyncio.to_thread(put_config, server, batchSize=11)
        await await_until(
            lambda: bool(applied) and applied[-1].version == stored["version"], "config"
        )
        assert applied[-1].batch_size == 11
        await service.disconnect()

    asyncio.run(main())


def test_async_gives_up_after_max_attempts_on_a_dead_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # nothing listens on that port any more

    async def main() -> None:
        config = RealTimeConfig(
            websocket_url=f"ws://127.0.0.1:{port}/v1/realtime",
            api_key="ik_x",
            reconnect_interval=0.01,
            max_reconnect_attempts=3,
            connection_timeout=1.0,
        )
        service = AsyncRealTimeSyncService(config, bus=EventBus())
        assert not await service.connect(within=WAIT)
        stats = service.get_connection_stats()
        assert stats.state is ConnectionState.FAILED
        assert stats.failed_attempts == 3
        assert stats.last_error is not None
        assert stats.last_error.startswith("network")
        # connect() after a give-up starts a fresh streak
        assert not await service.connect(within=WAIT)
        assert service.get_connection_stats().failed_attempts == 3
        await service.disconnect()
        assert service.state is ConnectionState.CLOSED

    asyncio.run(main())
