"""Cross-instance real-time fan-out: two server processes, one database, one channel.

A WebSocket client connected to instance B must receive the ``event``,
``analytics_update`` and ``config_update`` caused by requests to instance A —
through Redis pub/sub or PostgreSQL LISTEN/NOTIFY. With the in-memory default
it must not (that is what makes the other tests meaningful).
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from innkt_analytics.server._fanout import MemoryFanout, PostgresFanout, make_fanout
from innkt_analytics.server._settings import ServerSettings
from innkt_analytics.shared._exceptions import ConfigError
from tests._server import ServerProcess
from tests.conftest import ServerFactory
from tests.test_realtime_server import Client, event, health_of, post_events, put_config, ws_url


def pair(
    server_factory: ServerFactory, db: str, channels: str
) -> tuple[ServerProcess, ServerProcess]:
    """Two instances on one database and one private channel (tests may run concurrently)."""
    env = {
        "INNKT_CHANNELS": channels,
        "INNKT_REALTIME_CHANNEL": "test_" + secrets.token_hex(6),
        "INNKT_RATE_LIMIT_PER_SECOND": "0",
    }
    a = server_factory(db=db, env=env)
    b = server_factory(db=db, env=env)
    b.keys = dict(a.keys)  # the database already had keys when B started
    return a, b


def cross_instance(a: ServerProcess, b: ServerProcess) -> None:
    async def main() -> str:
        on_b = await Client.open(ws_url(b), b.read_key)
        on_a = await Client.open(ws_url(a), a.read_key)
        for client in (on_a, on_b):
            await client.subscribe(["event", "analytics_update"])
        # 40 KB of events: over PostgreSQL's 8000-byte NOTIFY limit, so it is chunked
        batch = [event("login", f"s{i % 3}", pad=2000) for i in range(20)]
        await asyncio.to_thread(post_events, a, batch)
        assert await on_b.events(20) == batch
        assert await on_a.events(20) == batch
        # ...and the other way round
        back = [event("purchase")]
        await asyncio.to_thread(post_events, b, back)
        assert await on_a.events(1) == back

        stored = await asyncio.to_thread(put_config, a, realtimeInterval=0.05)
        update = await on_b.expect("config_update")
        assert update["payload"]["config"] == stored
        # B's aggregates include A's events (B computes them from the fanned-out batches)
        live = await on_b.expect(
            "analytics_update", lambda m: m["payload"]["eventsPerMinute"] == 21
        )
        assert live["payload"]["activeSessions"] == 3
        await on_a.close()
        await on_b.close()
        return str(live["payload"]["instance"])

    computed_by = asyncio.run(main())
    # computed on B, from A's batches: not relayed from A
    assert (
        computed_by == health_of(b)["realtime"]["instance"] != health_of(a)["realtime"]["instance"]
    )
    for server in (a, b):
        fanout = health_of(server)["realtime"]["fanout"]
        assert fanout["connected"]
        assert fanout["received"] > 0
        assert fanout["dropped"] == 0


@pytest.mark.redis
def test_fanout_through_redis(
    server_factory: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    # Two processes on one SQLite file (WAL lets them share it).
    a, b = pair(server_factory, str(tmp_path / "shared.db"), redis_url)
    cross_instance(a, b)
    assert health_of(b)["realtime"]["fanout"]["backend"] == "redis"


@pytest.mark.postgres
def test_fanout_through_postgres_notify(
    server_factory: ServerFactory, tmp_path: Path, pg_url: str
) -> None:
    a, b = pair(server_factory, str(tmp_path / "shared.db"), pg_url)
    cross_instance(a, b)
    assert health_of(b)["realtime"]["fanout"]["backend"] == "postgres"


@pytest.mark.postgres
def test_channels_postgres_uses_the_postgresql_database(
    server_factory: ServerFactory, pg_database: str
) -> None:
    a, b = pair(server_factory, pg_database, "postgres")
    cross_instance(a, b)


def test_without_a_shared_channel_instances_do_not_see_each_other(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    a, b = pair(server_factory, str(tmp_path / "shared.db"), "memory")

    async def main() -> None:
        on_b = await Client.open(ws_url(b), b.read_key)
        await on_b.subscribe(["event"])
        from_a = [event("login")]
        from_b = [event("purchase")]
        await asyncio.to_thread(post_events, a, from_a)
        await asyncio.to_thread(post_events, b, from_b)
        assert await on_b.events(1) == from_b  # A's event never arrived
        await on_b.close()

    asyncio.run(main())
    assert health_of(a)["realtime"]["fanout"]["backend"] == "memory"


def test_channel_configuration_errors_name_the_setting() -> None:
    assert isinstance(make_fanout("memory", "x.db", "c"), MemoryFanout)
    assert isinstance(make_fanout("postgres", "postgresql://u@h/db", "c"), PostgresFanout)
    for channels, db in (("postgres", "local.db"), ("kafka://x", "local.db")):
        with pytest.raises(ConfigError) as exc:
            make_fanout(channels, db, "c")
        assert exc.value.field == "channels"
    for bad in ("has-dash", "x" * 64, "", "ümlaut"):
        with pytest.raises(ConfigError) as exc:
            ServerSettings(realtime_channel=bad)
        assert exc.value.field == "realtime_channel"
    with pytest.raises(ConfigError) as exc:
        ServerSettings(realtime_backlog=0)
    assert exc.value.field == "realtime_backlog"
