"""A short-lived process must deliver what a killed one left in the queue (issue #13, 2).

A process tracks while the server is down; its sender claims a chunk and sits in a
retry backoff; it is killed with SIGKILL, so the claim (its pid) stays in the file.
The server comes up, and a new process on the same queue calls ``flush``: the
documented contract is that ``flush`` also waits for "anything a previous run left in
the queue", so it must deliver those events before it returns True.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests._proxy import stored
from tests._server import ServerProcess

_KILLED = textwrap.dedent(
    """
    import sys
    from innkt_analytics import AnalyticsBackendService, BackendConfig
    url, key, queue, sid = sys.argv[1:5]
    service = AnalyticsBackendService(BackendConfig.production(
        url, key, queue_path=queue, retry_attempts=10, retry_delay=2, max_retry_delay=5,
    ))
    for i in range(50):
        service.track("x", {"i": i}, session_id=sid)
    print(service.flush(0.5), flush=True)
    import time
    time.sleep(600)  # killed by the test
    """
)

_SYNC_FLUSH = textwrap.dedent(
    """
    import json, os, sys
    from innkt_analytics import AnalyticsBackendService, BackendConfig
    url, key, queue = sys.argv[1:4]
    service = AnalyticsBackendService(BackendConfig.production(url, key, queue_path=queue))
    ok = service.flush(30)
    status = service.get_status()
    print(json.dumps({"ok": ok, "queue_events": status.queue_events, "sent": status.sent}))
    sys.stdout.flush()
    os._exit(0)  # no shutdown, no atexit hook: only flush may have delivered
    """
)

_ASYNC_FLUSH = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from innkt_analytics import AsyncAnalyticsBackendService, BackendConfig
    url, key, queue = sys.argv[1:4]

    async def main() -> None:
        service = AsyncAnalyticsBackendService()
        await service.initialize(BackendConfig.production(url, key, queue_path=queue))
        ok = await service.flush(30)
        status = service.get_status()
        print(json.dumps({"ok": ok, "queue_events": status.queue_events, "sent": status.sent}))
        sys.stdout.flush()
        os._exit(0)

    asyncio.run(main())
    """
)


def _claims(queue_path: Path, pid: int) -> int:
    with contextlib.closing(sqlite3.connect(queue_path, timeout=30)) as db:
        row = db.execute("SELECT count(*) FROM queue WHERE claim_pid = ?", (pid,)).fetchone()
    return int(row[0])


@pytest.mark.parametrize("script", [_SYNC_FLUSH, _ASYNC_FLUSH], ids=["sync", "asyncio"])
def test_flush_of_a_new_process_delivers_what_a_killed_one_had_claimed(
    server: ServerProcess, tmp_path: Path, script: str
) -> None:
    # The server's keys exist; now nothing listens on its port while the first process runs.
    server.kill()
    queue_path = tmp_path / "q.sqlite3"
    sid = "s-" + uuid.uuid4().hex
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED, server.url, server.write_key, str(queue_path), sid],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "False"  # nothing listens
        # Wait (no timing assertion: the condition itself) until its sender holds the
        # chunk in a retry backoff, then kill it: the claim stays in the file.
        deadline = time.monotonic() + 60
        while _claims(queue_path, child.pid) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        child.stdout.close()
    assert _claims(queue_path, child.pid) > 0  # the situation of the issue: a dead claim
    server.start()  # the same database on the same port
    out = subprocess.run(
        [sys.executable, "-c", script, server.url, server.write_key, str(queue_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"ok": True, "queue_events": 0, "sent": 50}
    assert stored(server.db_path, sid) == list(range(50))
