"""Export of stored events: NDJSON and CSV streamed over HTTP, Parquet to a file (CLI).

Both fronts page through ``Storage.query_events`` so an export of any size runs
in constant memory and never holds a long read transaction.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import msgspec
from litestar import Request, Response, get
from litestar.response import Stream

from innkt_analytics.server._query import parse_time, row_to_json
from innkt_analytics.server._state import ApiError, authenticate, state_of
from innkt_analytics.server.storage import EventFilter, EventRow, Storage

__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "export_events",
    "iter_rows",
    "render_csv",
    "render_ndjson",
    "write_parquet",
]

FORMATS: Final = ("ndjson", "csv")
CSV_COLUMNS: Final = (
    "eventId",
    "eventType",
    "sessionId",
    "userId",
    "anonymousId",
    "timestamp",
    "sentAt",
    "receivedAt",
    "correctedTimestamp",
    "future",
    "properties",
    "deviceInfo",
    "context",
)
_PAGE: Final = 1000
_encoder = msgspec.json.Encoder()


async def iter_rows(
    storage: Storage, project: str, flt: EventFilter, page: int = _PAGE
) -> AsyncIterator[list[EventRow]]:
    """Pages of rows in storage order until the filter is exhausted."""
    cursor: int | None = None
    while True:
        result = await storage.query_events(project, flt, cursor, page)
        if result.rows:
            yield result.rows
        if result.next_cursor is None:
            return
        cursor = result.next_cursor


def render_ndjson(rows: list[EventRow]) -> bytes:
    return b"".join(_encoder.encode(row_to_json(r)) + b"\n" for r in rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return _encoder.encode(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render_csv(rows: list[EventRow], header: bool = False) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for r in rows:
        doc = row_to_json(r)
        writer.writerow([_cell(doc.get(c)) for c in CSV_COLUMNS])
    return buf.getvalue().encode()


async def write_parquet(
    storage: Storage,
    project: str,
    flt: EventFilter,
    path: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the events to a Parquet file; JSON objects are stored as JSON strings.

    Raises ``ImportError`` when pyarrow (the ``parquet`` extra) is not installed.
    """
    import pyarrow as pa  # optional extra
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.bool_() if c == "future" else pa.string()) for c in CSV_COLUMNS])
    total = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        async for rows in iter_rows(storage, project, flt):
            docs = [row_to_json(r) for r in rows]
            columns = {
                c: [
                    bool(d.get(c))
                    if c == "future"
                    else (None if d.get(c) is None else _cell(d.get(c)))
                    for d in docs
                ]
                for c in CSV_COLUMNS
            }
            writer.write_table(pa.table(columns, schema=schema))
            total += len(rows)
            if progress is not None:
                progress(len(rows))
    return total


@get("/v1/export", summary="Stream all matching events (NDJSON or CSV)", tags=["query"])
async def export_events(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    """Query: format (ndjson|csv), since, until, eventType, sessionId, userId."""
    key = await authenticate(request, "read")
    q = request.query_params
    fmt = q.get("format", "ndjson")
    if fmt not in FORMATS:
        raise ApiError(400, "invalid_parameter", "format: one of ndjson, csv")
    flt = EventFilter(
        event_type=q.get("eventType") or None,
        session_id=q.get("sessionId") or None,
        user_id=q.get("userId") or None,
        since=parse_time("since", q.get("since")),
        until=parse_time("until", q.get("until")),
    )
    storage = state_of(request).storage

    async def body() -> AsyncIterator[bytes]:
        if fmt == "csv":
            yield render_csv([], header=True)
        async for rows in iter_rows(storage, key.project, flt):
            yield render_ndjson(rows) if fmt == "ndjson" else render_csv(rows)

    media = "application/x-ndjson" if fmt == "ndjson" else "text/csv"
    return Stream(
        body(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="events.{fmt}"'},
    )
