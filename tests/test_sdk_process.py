"""Process-level guarantees: kill -9 of a tracking process, fork, the atexit hook."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from innkt_analytics.sdk._backend import AnalyticsBackendService
from innkt_analytics.sdk._queue import SQLiteQueue, event_ids_of
from tests._proxy import fast_config, stored
from tests._server import ServerProcess

_TRACKER = textwrap.dedent(
    """
    import sys
    from innkt_analytics.sdk._backend import AnalyticsBackendService
    from innkt_analytics.sdk._config import BackendConfig
    url, key, queue, sid, n = sys.argv[1:6]
    service = AnalyticsBackendService(BackendConfig(
        base_url=url, api_key=key, queue_path=queue, batch_size=500,
        commit_interval=0.01, retry_delay=0.01, max_retry_delay=0.1, sync_interval=0.05,
        config_refresh_interval=0,
    ))
    for i in range(int(n)):
        service.track("x", {"i": i}, session_id=sid)
        if i == int(n) // 2:
            service.flush(0)  # half is surely committed; then keep going
            print("half", flush=True)
    print("done", flush=True)
    import time
    time.sleep(60)
    """
)


def _queued_ids(path: Path) -> list[str]:
    queue = SQLiteQueue(path, 10**9, 1 << 40)
    try:
        chunks = queue.claim(10**9, 1 << 40, 0.0)  # claims of the dead are expired by pid below
        queue.release([c.rowid for c in chunks])
        queue.recover(0.0)
        chunks = queue.claim(10**9, 1 << 40, 0.0)
        return [eid for c in chunks for eid in event_ids_of(c.payload)]
    finally:
        queue.close()


def _server_ids(server: ServerProcess, sid: str) -> list[str]:
    from tests._server import sqlite_events

    return [str(r[0]) for r in sqlite_events(server.db_path, "event_id", "session_id = ?", (sid,))]


def test_kill_9_while_tracking_50000_events_then_restart(
    server: ServerProcess, tmp_path: Path
) -> None:
    queue_path = tmp_path / "q.sqlite3"
    sid = "s-" + uuid.uuid4().hex
    child = subprocess.Popen(
        [sys.executable, "-c", _TRACKER, server.url, server.write_key, str(queue_path), sid,
         "50000"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "half"
        os.kill(child.pid, signal.SIGKILL)  # mid-stream: tracking, committing and sending
        child.wait()
    finally:
        child.stdout.close()
    # Committed = already on the server, or still in the queue file (claimed or not).
    on_server = set(_server_ids(server, sid))
    in_queue = _queued_ids(queue_path)
    committed = on_server | set(in_queue)
    assert len(committed) >= 25_001  # flush(0) committed the first half before "half"
    # Restart: a new process (here: this one) opens the same queue and syncs.
    service = AnalyticsBackendService(
        fast_config(server.url, server.write_key, queue_path, batch_size=1000)
    )
    try:
        assert service.flush(120)
    finally:
        service.shutdown(10)
    ids = _server_ids(server, sid)
    assert len(ids) == len(set(ids))  # exactly once
    assert set(ids) == committed  # nothing committed is lost
    values = stored(server.db_path, sid)
    assert values == sorted(set(values))
    assert values[:25_001] == list(range(25_001))


def test_fork_child_starts_its_own_worker(shared_server: ServerProcess, tmp_path: Path) -> None:
    service = AnalyticsBackendService(
        fast_config(shared_server.url, shared_server.write_key, tmp_path / "q.sqlite3")
    )
    try:
        parent_sid, child_sid = "p-" + uuid.uuid4().hex, "c-" + uuid.uuid4().hex
        for i in range(10):
            service.track("x", {"i": i}, session_id=parent_sid)
        assert service.flush(30)
        for i in range(10, 20):  # handed over but maybe not committed at fork time
            service.track("x", {"i": i}, session_id=parent_sid)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                for i in range(100, 110):
                    service.track("x", {"i": i}, session_id=child_sid)
                ok = service.flush(30)
                ok = service.shutdown(10) and ok
                code = 0 if ok else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for i in range(20, 30):
            service.track("x", {"i": i}, session_id=parent_sid)
        assert service.flush(30)
        assert stored(shared_server.db_path, parent_sid) == list(range(30))
        assert stored(shared_server.db_path, child_sid) == list(range(100, 110))
    finally:
        service.shutdown(10)


_EXITER = textwrap.dedent(
    """
    import sys
    from innkt_analytics.sdk._backend import AnalyticsBackendService
    from innkt_analytics.sdk._config import BackendConfig
    url, key, queue, sid = sys.argv[1:5]
    service = AnalyticsBackendService(BackendConfig(
        base_url=url, api_key=key, queue_path=queue, sync_interval=3600, batch_size=2500,
        config_refresh_interval=0, atexit_timeout=10,
    ))
    for i in range(300):
        service.track("x", {"i": i}, session_id=sid)
    # no flush, no shutdown: the atexit hook must deliver
    """
)


def test_atexit_hook_flushes(shared_server: ServerProcess, tmp_path: Path) -> None:
    sid = "s-" + uuid.uuid4().hex
    subprocess.run(
        [sys.executable, "-c", _EXITER, shared_server.url, shared_server.write_key,
         str(tmp_path / "q.sqlite3"), sid],
        check=True,
        timeout=60,
    )  # fmt: skip
    assert stored(shared_server.db_path, sid) == list(range(300))
