"""Shared helpers of the SDK tests: fast settings and reads of the server's database."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from innkt_analytics._config import BackendConfig, QueueMode

#: delays scaled down so that retries and probes take milliseconds, not seconds
FAST: dict[str, Any] = {
    "retry_delay": 0.01,
    "max_retry_delay": 0.1,
    "sync_interval": 0.05,
    "commit_interval": 0.01,
    "timeout": 10.0,  # generous: only the tests about timeouts set a short one
    "config_refresh_interval": 0,
    "shutdown_timeout": 20.0,
    "atexit_timeout": 5.0,
}


def fast_config(url: str, key: str, queue: Path | None, **options: Any) -> BackendConfig:
    settings: dict[str, Any] = {**FAST, "queue_path": queue, **options}
    if queue is None:
        settings.setdefault("queue_mode", QueueMode.MEMORY)
    return BackendConfig(base_url=url, api_key=key, **settings)


def stored(db_path: str, session: str) -> list[int]:
    """The ``properties.i`` of every stored event of a session, sorted (duplicates kept)."""
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        rows = db.execute(
            "SELECT json_extract(payload, '$.properties.i') FROM events WHERE session_id = ?",
            (session,),
        ).fetchall()
    return sorted(r[0] for r in rows)


def queued(queue_path: Path) -> int:
    """Events waiting in an SDK queue file, read with a separate connection."""
    with contextlib.closing(sqlite3.connect(queue_path)) as db:
        return int(db.execute("SELECT coalesce(sum(count), 0) FROM queue").fetchone()[0])


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll until ``predicate()`` holds or ``timeout`` passes (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
