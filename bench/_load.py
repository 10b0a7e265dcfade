"""What the ingest benchmarks send: SDK-shaped events and raw HTTP/1.1 requests."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

TYPES = ("page_view", "click", "purchase", "signup", "search")


def make_events(n: int, new_id: Callable[[], str]) -> list[dict[str, Any]]:
    """``n`` events with a session, a user, a few properties and context;
    ``new_id`` makes each eventId."""
    now = dt.datetime.now(dt.UTC)
    return [
        {
            "eventId": new_id(),
            "eventType": TYPES[i % len(TYPES)],
            "sessionId": f"s{i // 50}",
            "userId": f"u{i % 997}",
            "timestamp": (now - dt.timedelta(milliseconds=i)).isoformat(),
            "properties": {"path": f"/products/{i % 321}", "referrer": "search", "n": i},
            "context": {"app": {"version": "1.4.2"}, "locale": "en-GB"},
        }
        for i in range(n)
    ]


def http_request(body: bytes, port: int, key: str) -> bytes:
    """A complete ``POST /v1/events/batch`` request, ready to write to a socket."""
    head = (
        f"POST /v1/events/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and of its live descendants: the
    SQLite server's writer process does half the work of ingest."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in tasks:
            try:
                stack += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total
