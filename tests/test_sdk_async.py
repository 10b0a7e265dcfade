"""AsyncAnalyticsBackendService against the real server: the same core, awaited."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from innkt_analytics.sdk._abackend import AsyncAnalyticsBackendService
from innkt_analytics.sdk._queue import Dropped
from innkt_analytics.testing import AsyncCapturingTransport
from tests._proxy import FaultProxy, fast_config, queued, stored
from tests._server import ServerProcess


def test_async_delivery_exactly_once(shared_server: ServerProcess, tmp_path: Path) -> None:
    async def main() -> None:
        service = AsyncAnalyticsBackendService()
        await service.initialize(
            fast_config(shared_server.url, shared_server.write_key, tmp_path / "q.sqlite3",
                        batch_size=100)
        )  # fmt: skip
        sid = "s-" + uuid.uuid4().hex
        for i in range(1000):
            assert service.track("x", {"i": i}, session_id=sid)
        assert await service.flush(30)
        health = await service.check_backend_health()
        assert health.healthy
        status = service.get_status()
        assert await service.shutdown(5)
        assert stored(shared_server.db_path, sid) == list(range(1000))
        assert status.sent == 1000
        assert status.requests >= 10

    asyncio.run(main())


def test_async_faults_and_offline(shared_server: ServerProcess, tmp_path: Path) -> None:
    async def main(proxy: FaultProxy) -> None:
        proxy.reset_next(2)
        proxy.lose_next_response(1)
        proxy.respond(503, {"Retry-After": "0.2"}, b'{"error":"x","message":"y"}')
        service = AsyncAnalyticsBackendService()
        await service.initialize(
            fast_config(proxy.url, shared_server.write_key, tmp_path / "q.sqlite3",
                        batch_size=50, retry_attempts=10)
        )  # fmt: skip
        sid = "s-" + uuid.uuid4().hex
        for i in range(200):
            service.track("x", {"i": i}, session_id=sid)
        assert await service.flush(30)
        assert stored(shared_server.db_path, sid) == list(range(200))
        failed = service.get_status().failed
        assert failed == {"network": 3, "http_503": 1}
        service.set_online(False)
        for i in range(200, 250):
            service.track("x", {"i": i}, session_id=sid)
        assert not await service.flush(2)
        assert queued(tmp_path / "q.sqlite3") == 50  # on disk after flush
        service.set_online(True)
        assert await service.shutdown(30)
        assert stored(shared_server.db_path, sid) == list(range(250))

    with FaultProxy(shared_server.port) as proxy:
        asyncio.run(main(proxy))


def test_async_with_the_capturing_transport(tmp_path: Path) -> None:
    async def main() -> None:
        transport = AsyncCapturingTransport()
        drops: list[Dropped] = []
        service = AsyncAnalyticsBackendService(transport=transport, on_drop=drops.extend)
        await service.initialize(fast_config("http://capture.invalid", "k", None))
        transport.inner.fail_next(2, 503)
        for i in range(30):
            service.track("x", {"i": i})
        service.track("", {})
        assert await service.shutdown(10)
        assert [e.properties["i"] for e in transport.events] == list(range(30))
        assert [d.reason for d in drops] == ["invalid"]

    asyncio.run(main())
