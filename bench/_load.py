"""What the ingest benchmarks send: SDK-shaped events and raw HTTP/1.1 requests."""

from __future__ import annotations

import asyncio
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


def http_request(body: bytes, port: int, key: str, path: str = "/v1/events/batch") -> bytes:
    """A complete ``POST`` request (by default a batch), ready to write to a socket."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response from a keep-alive connection: (status line, body)."""
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) of one process; None once it has exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and of its live descendants: the
    SQLite server's writer process does half the work of ingest."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        own = process_cpu_seconds(current)
        if own is None:
            continue  # exited
        total += own
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for task in tasks:
            try:
                stack += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total
