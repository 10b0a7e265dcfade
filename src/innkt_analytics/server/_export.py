"""Export of stored events: NDJSON and CSV streamed over HTTP, Parquet to a file (CLI).

On the SQLite engine an export is one columnar scan (``SQLiteStorage.scan``): DuckDB
renders NDJSON lines and CSV cells from the segments' columns in C++, a batch at a
time, on one snapshot (every event exactly once, in seq order). Other backends page
through ``Storage.query_events``. Either way memory stays flat whatever the size.
"""

from __future__ import annotations

import asyncio
import csv
import io
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec
from litestar import Request, Response, get
from litestar.response import Stream

from innkt_analytics.server._query import parse_time, row_to_json
from innkt_analytics.server._state import ApiError, authenticate, state_of
from innkt_analytics.server.storage import EventFilter, EventRow, SQLiteStorage, Storage
from innkt_analytics.server.storage._base import event_row

if TYPE_CHECKING:
    import pyarrow as pa

T = TypeVar("T")

__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "export_events",
    "export_stream",
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
#: the server's fields an NDJSON line adds to the event's JSON (``row_to_json``)
_ADDED: Final = ("receivedAt", "sentAt", "correctedTimestamp", "future")


def _iso_sql(column: str) -> str:
    # as _query._iso: ISO 8601 with milliseconds and +00:00
    return f"strftime(make_timestamp({column} * 1000), '%Y-%m-%dT%H:%M:%S.%g+00:00')"


#: DuckDB SQL for the NDJSON line of an event: its JSON with the server's fields
#: spliced in before the closing brace; NULL when the event has one of those keys
#: itself (then ``row_to_json`` makes the line, as the server's value must win)
_NDJSON_SELECT: Final = (
    "CASE WHEN NOT regexp_matches(payload, '\"(" + "|".join(_ADDED) + ")\"\\s*:')"
    " AND ends_with(payload, '}') AND length(payload) > 2 THEN concat("
    'left(payload, length(payload) - 1), \',"receivedAt":"\', '
    + _iso_sql("received_at")
    + ", '\",\"sentAt\":', coalesce('\"' || "
    + _iso_sql("sent_at")
    + " || '\"', 'null'), ',\"correctedTimestamp\":\"', "
    + _iso_sql("corrected")
    + ", '\",\"future\":', CASE WHEN future THEN 'true' ELSE 'false' END, '}\n')"
    " END AS line, seq, event_id, event_type, session_id, user_id, anonymous_id, ts,"
    " sent_at, received_at, corrected, future, payload"
)


#: the event's JSON parsed once per event for the four cells cut out of it (a
#: json_extract per cell parsed it once per cell); the first column of a CSV or
#: Parquet scan, dropped before rendering
_PARSED: Final = (
    "json_extract(payload, ['$.timestamp', '$.properties', '$.deviceInfo', '$.context']) AS _j"
)
_FROM_JSON: Final = {
    "timestamp": "json_extract_string(_j[1], '$')",
    "properties": "CAST(_j[2] AS VARCHAR)",
    "deviceInfo": "CAST(_j[3] AS VARCHAR)",
    "context": "CAST(_j[4] AS VARCHAR)",
}
#: the ids are stored columns too, the values the event's JSON holds
_FROM_COLUMNS: Final = {
    "eventId": "event_id",
    "eventType": "event_type",
    "sessionId": "session_id",
    "userId": "user_id",
    "anonymousId": "anonymous_id",
}


def _csv_cell_sql(column: str) -> str:
    if column in _FROM_JSON:
        return _FROM_JSON[column]
    if column in ("sentAt", "receivedAt", "correctedTimestamp"):
        source = {"sentAt": "sent_at", "receivedAt": "received_at"}.get(column, "corrected")
        return _iso_sql(source)
    if column == "future":
        return "CASE WHEN future THEN 'true' ELSE 'false' END"
    return _FROM_COLUMNS[column]


def _csv_quoted(sql: str) -> str:
    """``sql`` as one CSV cell the way ``csv.writer`` (QUOTE_MINIMAL, ``\\n`` line
    ends) writes it: empty for NULL, quoted (quotes doubled) when it holds a comma, a
    quote or a newline."""
    return (
        f"CASE WHEN ({sql}) IS NULL THEN '' WHEN regexp_matches({sql}, '[,\"\n]')"
        f" THEN '\"' || replace({sql}, '\"', '\"\"') || '\"' ELSE ({sql}) END"
    )


#: DuckDB SQL for a CSV line of an event, after ``_PARSED``
_CSV_LINE: Final = (
    "concat("
    + ", ',', ".join(_csv_quoted(_csv_cell_sql(c)) for c in CSV_COLUMNS)
    + ", '\n') AS line"
)


def _csv_select(cell: Callable[[str], str]) -> str:
    """The scan's select list: ``_j``, then each of ``CSV_COLUMNS`` by ``cell``."""
    return ", ".join([_PARSED, *(f'{cell(c)} AS "{c}"' for c in CSV_COLUMNS)])


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


async def export_stream(
    storage: Storage,
    project: str,
    flt: EventFilter,
    fmt: str,
    progress: Callable[[int], None] | None = None,
) -> AsyncIterator[bytes]:
    """The export's bytes in ``fmt`` (ndjson or csv, with its header), chunk by chunk."""
    if fmt == "csv":
        yield render_csv([], header=True)
    if not _columnar(storage):
        async for rows in iter_rows(storage, project, flt):
            yield render_ndjson(rows) if fmt == "ndjson" else render_csv(rows)
            if progress is not None:
                progress(len(rows))
        return
    if fmt == "ndjson":
        select, render = _NDJSON_SELECT, _ndjson_batch
    else:
        select, render = f"{_PARSED}, {_CSV_LINE}", _csv_batch
    async for batch in _scan(storage, project, flt, select):
        yield render(batch)
        if progress is not None:
            progress(batch.num_rows)


def _columnar(storage: Storage) -> bool:
    """Whether ``storage`` reads through the storage engine's segments (``_scan``)."""
    return isinstance(storage, SQLiteStorage) or storage.backend == "postgresql"


async def _scan(
    storage: Storage, project: str, flt: EventFilter, select: str
) -> AsyncIterator[pa.RecordBatch]:
    """``SELECT {select}`` over the matching events of one snapshot, as record
    batches computed on a thread of their own."""
    if isinstance(storage, SQLiteStorage):
        blocking = storage.scan(project, flt, select)
    else:
        from innkt_analytics.server.storage._postgres import PostgresStorage

        assert isinstance(storage, PostgresStorage)  # _columnar(storage)
        blocking = await storage.scan(project, flt, select)
    async for batch in _threaded(blocking):
        yield batch


async def _threaded(blocking: Iterator[T]) -> AsyncIterator[T]:
    """Drive a blocking iterator on a thread of its own, a few items ahead at most."""
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=4)
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in blocking:
                if stop.is_set():
                    return
                asyncio.run_coroutine_threadsafe(queue.put(("item", item)), loop).result()
            asyncio.run_coroutine_threadsafe(queue.put(("end", None)), loop).result()
        except BaseException as exc:  # handed to the consumer
            if not stop.is_set():
                asyncio.run_coroutine_threadsafe(queue.put(("error", exc)), loop).result()

    thread = threading.Thread(target=produce, name="innkt-export", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while not queue.empty():  # unblock a producer waiting on a full queue
            queue.get_nowait()


def _ndjson_batch(batch: pa.RecordBatch) -> bytes:
    lines = batch.column(0).to_pylist()
    if None not in lines:
        return "".join(lines).encode()
    out = []
    for i, line in enumerate(lines):
        if line is None:  # the event has a key the server sets: the general path
            values = [batch.column(k)[i].as_py() for k in range(1, 13)]
            row = event_row([*values[:11], values[11].encode()])  # payload: text in DuckDB
            out.append(_encoder.encode(row_to_json(row)).decode() + "\n")
        else:
            out.append(line)
    return "".join(out).encode()


def _csv_batch(batch: pa.RecordBatch) -> bytes:
    return "".join(batch.column(1).to_pylist()).encode()  # the lines, after _j


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
    if _columnar(storage):
        select = _csv_select(lambda c: "future" if c == "future" else _csv_cell_sql(c))
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            async for batch in _scan(storage, project, flt, select):
                writer.write_batch(batch.select(CSV_COLUMNS).cast(schema))
                total += batch.num_rows
                if progress is not None:
                    progress(batch.num_rows)
        return total
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
        async for chunk in export_stream(storage, key.project, flt, fmt):
            yield chunk

    media = "application/x-ndjson" if fmt == "ndjson" else "text/csv"
    return Stream(
        body(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="events.{fmt}"'},
    )
