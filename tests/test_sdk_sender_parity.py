"""The thread-backed and the asyncio service decide alike (issue #18).

Both front-ends drive ``ServiceBase``'s sender decisions; only the I/O differs.
They had drifted: the asyncio sender never re-read the depth of a queue file
that another process shares. One scenario runs through both, and the observable
results (status counters, queue depth after delivery, what the server stored)
must be the same, and right.

The scenario: the service queues three events while paused; another process on
the same queue file delivers them; the service comes back online, tracks two more
and flushes. It sent two, and nothing is queued: the three the other process sent
must not linger in its depth.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

from innkt_analytics import (
    AnalyticsBackendService,
    AsyncAnalyticsBackendService,
    BackendConfig,
    ServiceStatus,
)
from tests._proxy import queued, stored
from tests._server import ServerProcess

_OTHER_PROCESS = textwrap.dedent(
    """
    import sys
    from innkt_analytics import AnalyticsBackendService, BackendConfig
    url, key, queue = sys.argv[1:4]
    service = AnalyticsBackendService(BackendConfig.production(url, key, queue_path=queue))
    print(service.flush(30) and service.shutdown(30), flush=True)
    """
)


def _other_process_delivers(server: ServerProcess, queue: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, server.url, server.write_key, str(queue)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "True", out.stderr
    assert queued(queue) == 0


def _observed(status: ServiceStatus, flushed: bool) -> dict[str, Any]:
    return {
        "flushed": flushed,
        "queue_events": status.queue_events,
        "queue_bytes": status.queue_bytes,
        "buffered_events": status.buffered_events,
        "sent": status.sent,
        "accepted": status.accepted,
        "duplicates": status.duplicates,
        "failed": status.failed,
        "dropped": status.dropped,
        "state": status.state,
    }


def _sync(server: ServerProcess, queue: Path, session: str) -> dict[str, Any]:
    service = AnalyticsBackendService(
        BackendConfig.production(server.url, server.write_key, queue_path=queue)
    )
    try:
        service.set_online(False)
        for i in range(3):
            service.track("x", {"i": i}, session_id=session)
        service.commit()
        _other_process_delivers(server, queue)
        service.set_online(True)
        for i in range(3, 5):
            service.track("x", {"i": i}, session_id=session)
        flushed = service.flush(30)
        return _observed(service.get_status(), flushed)
    finally:
        service.shutdown(5)


def _async(server: ServerProcess, queue: Path, session: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        service = AsyncAnalyticsBackendService()
        await service.initialize(
            BackendConfig.production(server.url, server.write_key, queue_path=queue)
        )
        try:
            service.set_online(False)
            for i in range(3):
                service.track("x", {"i": i}, session_id=session)
            await asyncio.to_thread(service.commit)
            await asyncio.to_thread(_other_process_delivers, server, queue)
            service.set_online(True)
            for i in range(3, 5):
                service.track("x", {"i": i}, session_id=session)
            flushed = await service.flush(30)
            return _observed(service.get_status(), flushed)
        finally:
            await service.shutdown(5)

    return asyncio.run(main())


def test_sync_and_async_services_agree_after_another_process_sent_their_events(
    server: ServerProcess, tmp_path: Path
) -> None:
    results = {}
    for name, run in (("sync", _sync), ("async", _async)):
        session = f"parity-{name}-{uuid.uuid4().hex[:8]}"
        results[name] = run(server, tmp_path / f"{name}.db", session)
        assert stored(server.db_path, session) == [0, 1, 2, 3, 4]
    expected = {
        "flushed": True,
        "queue_events": 0,
        "queue_bytes": 0,
        "buffered_events": 0,
        "sent": 2,
        "accepted": 2,
        "duplicates": 0,
        "failed": {},
        "dropped": {},
        "state": "online",
    }
    assert results["sync"] == results["async"] == expected, results


def test_a_forked_child_probes_health_with_the_sync_service_too(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    # The asyncio service restarted a forked child's own sender before a health probe;
    # the sync one raised ConnectionStateError ("not initialized") in the child.
    service = AnalyticsBackendService(
        BackendConfig.production(
            shared_server.url, shared_server.write_key, queue_path=tmp_path / "q.db"
        )
    )
    try:
        assert service.check_backend_health().healthy
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                code = 0 if service.check_backend_health().healthy else 2
                service.shutdown(10)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        service.shutdown(10)
