"""The SQLite engine's columnar export against the general one, on the same events.

``export_stream`` and ``write_parquet`` render NDJSON, CSV and Parquet in DuckDB from
the segments and the hot rows of one snapshot; the general path pages through
``query_events`` and renders each row in Python (``render_ndjson``/``render_csv``,
what PostgreSQL uses). Both must give the same events, in the same (seq) order,
with the same values, across the hot/cold boundary and for events whose JSON has a
key the server sets itself.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from innkt_analytics.server._export import (
    export_stream,
    iter_rows,
    render_csv,
    render_ndjson,
    write_parquet,
)
from innkt_analytics.server.storage import EventFilter, EventRow, SQLiteStorage
from tests.test_storage_contract import NOW, row


def event(i: int, **payload: object) -> EventRow:
    doc = {
        "eventId": f"e{i}",
        "eventType": "page" if i % 3 else "click",
        "timestamp": "2026-12-01T10:00:00.123Z",
        "userId": f"u{i % 4}",
        "sessionId": "s1",  # the stored columns are the JSON's values, as at ingest
        "properties": {"i": i, "name": f'naïve, "quoted"\n{i}', "ok": i % 2 == 0},
        "context": {"app": {"version": "1.0"}},
        **payload,
    }
    r = row(f"e{i}", user_id=f"u{i % 4}", corrected=NOW + i * 1000, sent_at=NOW + i)
    r.payload = json.dumps(doc, ensure_ascii=False).encode()
    r.event_type = str(doc["eventType"])
    return r


async def general(storage: SQLiteStorage, flt: EventFilter, fmt: str) -> bytes:
    out = [render_csv([], header=True)] if fmt == "csv" else []
    async for rows in iter_rows(storage, "p", flt):
        out.append(render_ndjson(rows) if fmt == "ndjson" else render_csv(rows))
    return b"".join(out)


async def columnar(storage: SQLiteStorage, flt: EventFilter, fmt: str) -> bytes:
    return b"".join([chunk async for chunk in export_stream(storage, "p", flt, fmt)])


@pytest.fixture
def storage(tmp_path: Path) -> SQLiteStorage:
    s = SQLiteStorage(str(tmp_path / "s.db"))
    s.open_sync()

    async def fill() -> None:
        await s.insert_events("p", [event(i) for i in range(0, 40)])
        await asyncio.to_thread(s.compact_sync)
        await s.insert_events("p", [event(i) for i in range(40, 60)])
        await asyncio.to_thread(s.compact_sync)
        # the client's JSON has keys the server sets: the server's values win
        await s.insert_events("p", [event(60, future=True, sentAt="x"), event(61)])
        await s.insert_events("q", [event(99)])

    asyncio.run(fill())
    return s


FILTERS = [EventFilter(), EventFilter(event_type="click"), EventFilter(user_id="u1")]


@pytest.mark.parametrize("flt", FILTERS)
def test_ndjson_is_the_general_rendering(storage: SQLiteStorage, flt: EventFilter) -> None:
    try:
        fast = asyncio.run(columnar(storage, flt, "ndjson")).decode().splitlines()
        slow = asyncio.run(general(storage, flt, "ndjson")).decode().splitlines()
    finally:
        storage.close_sync()
    assert len(fast) == len(slow) > 0
    assert [json.loads(line) for line in fast] == [json.loads(line) for line in slow]
    first = json.loads(fast[0])
    assert list(first)[-4:] == ["receivedAt", "sentAt", "correctedTimestamp", "future"]


@pytest.mark.parametrize("flt", FILTERS)
def test_csv_is_the_general_rendering(storage: SQLiteStorage, flt: EventFilter) -> None:
    try:
        fast = asyncio.run(columnar(storage, flt, "csv")).decode()
        slow = asyncio.run(general(storage, flt, "csv")).decode()
    finally:
        storage.close_sync()
    fast_rows = list(csv.reader(io.StringIO(fast)))
    slow_rows = list(csv.reader(io.StringIO(slow)))
    assert len(fast_rows) == len(slow_rows) > 1
    for a, b in zip(fast_rows, slow_rows, strict=True):
        # JSON cells may differ in spelling (escapes, spaces), never in value
        assert [json.loads(x) if x.startswith(("{", "[")) else x for x in a] == [
            json.loads(x) if x.startswith(("{", "[")) else x for x in b
        ]


def test_parquet_holds_every_event_once_in_order(storage: SQLiteStorage, tmp_path: Path) -> None:
    path = str(tmp_path / "out.parquet")
    try:
        total = asyncio.run(write_parquet(storage, "p", EventFilter(), path))
        ids = [
            json.loads(line)["eventId"]
            for line in asyncio.run(general(storage, EventFilter(), "ndjson")).decode().splitlines()
        ]
    finally:
        storage.close_sync()
    table = pq.read_table(path)
    assert total == table.num_rows == 62
    assert table.column("eventId").to_pylist() == ids
    assert json.loads(table.column("properties")[1].as_py())["i"] == 1
    assert table.column("future").to_pylist()[-2:] == [False, False]
