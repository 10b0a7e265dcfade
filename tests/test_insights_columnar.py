"""The insights engine over the storage engine's Parquet segments and hot rows.

On SQLite the engine reads the segments and the hot log of one snapshot through
the view of ``_engine.connect_segments`` (properties, context and device pulled out
of the stored JSON by DuckDB, or read from a segment's property columns) instead of
an Arrow table built in Python. Generated logs (test_insights_engine's strategies)
are stored, a third compacted into a segment, a third into another and the rest left
in the hot log, and every query type must give the reference implementation's answer
over the events as stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from innkt_analytics.server.insights._engine import MEMORY_LIMIT, _run, connect_segments
from innkt_analytics.server.insights._events import InsightEvent
from innkt_analytics.server.insights._model import Query, parse_query, property_keys
from innkt_analytics.server.insights._reference import run_reference
from innkt_analytics.server.storage import EventFilter, EventRow, SQLiteStorage, Storage
from tests.test_insights_engine import (
    T0,
    close,
    funnels,
    lifecycle,
    logs,
    paths,
    retention,
    trends,
)
from tests.test_insights_funnels import converting, dense_logs

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteStorage]:
    s = SQLiteStorage(str(tmp_path_factory.mktemp("columnar") / "s.db"))
    s.open_sync()
    yield s
    s.close_sync()


def to_row(e: InsightEvent) -> EventRow:
    doc: dict[str, Any] = {
        "eventId": e.event_id,
        "eventType": e.event_type,
        "timestamp": dt.datetime.fromtimestamp(e.timestamp / 1000, dt.UTC).isoformat(),
        "properties": e.properties,
        "context": e.context,
        "deviceInfo": e.device,
    }
    for key, value in (("userId", e.user_id), ("anonymousId", e.anonymous_id)):
        if value is not None:
            doc[key] = value
    return EventRow(
        event_id=e.event_id,
        event_type=e.event_type,
        session_id=e.session_id,
        user_id=e.user_id,
        anonymous_id=e.anonymous_id,
        timestamp=e.timestamp,
        sent_at=None,
        received_at=e.timestamp,
        corrected=e.timestamp,
        future=False,
        payload=msgspec.json.encode(doc),
    )


async def stored(storage: Storage, project: str) -> list[InsightEvent]:
    out: list[InsightEvent] = []
    cursor: int | None = None
    while True:
        page = await storage.query_events(project, EventFilter(), cursor, 500)
        out += [InsightEvent.from_row(project, r) for r in page.rows]
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def check(storage: SQLiteStorage, kind: str, body: dict[str, Any], log: list[InsightEvent]) -> None:
    run = uuid.uuid4().hex[:8]  # fresh projects per example
    half = len(log) // 2

    async def store(part: list[InsightEvent]) -> None:
        for name in ("p", "q"):
            rows = [to_row(e) for e in part if e.project == name]
            if rows:
                await storage.insert_events(run + name, rows)

    third = len(log) // 3
    asyncio.run(store(log[:third]))
    storage.compact_sync()  # two thirds in two segments (each with the property
    asyncio.run(store(log[third:half]))  # columns its own rows call for), the rest
    storage.compact_sync()  # in the hot log
    asyncio.run(store(log[half:]))
    project = run + "p"
    events = asyncio.run(stored(storage, project))
    query: Query = parse_query(kind, msgspec.json.encode(body))
    expected = msgspec.to_builtins(run_reference(query, events, project))
    files, hot = storage.insight_source(project, None, None)
    assert files  # the segments are read, not only the hot rows
    con = connect_segments(files, hot, MEMORY_LIMIT, props=property_keys(query))
    try:
        got = msgspec.to_builtins(_run(con, query, project, unique=True))
    finally:
        con.close()
    assert close(got, expected), f"\nsegments:  {got}\nreference: {expected}"


@SETTINGS
@given(log=logs, body=trends())
def test_trends(storage: SQLiteStorage, log: list[InsightEvent], body: dict[str, Any]) -> None:
    check(storage, "trends", body, log)


@SETTINGS
@given(log=logs, body=funnels())
def test_funnels(storage: SQLiteStorage, log: list[InsightEvent], body: dict[str, Any]) -> None:
    check(storage, "funnels", body, log)


@SETTINGS
@given(log=logs, body=retention())
def test_retention(storage: SQLiteStorage, log: list[InsightEvent], body: dict[str, Any]) -> None:
    check(storage, "retention", body, log)


@SETTINGS
@given(log=logs, body=paths())
def test_paths(storage: SQLiteStorage, log: list[InsightEvent], body: dict[str, Any]) -> None:
    check(storage, "paths", body, log)


@SETTINGS
@given(log=logs, body=lifecycle())
def test_lifecycle(storage: SQLiteStorage, log: list[InsightEvent], body: dict[str, Any]) -> None:
    check(storage, "lifecycle", body, log)


def test_the_columnar_view_reads_the_stored_json(tmp_path: Path) -> None:
    s = SQLiteStorage(str(tmp_path / "s.db"))
    s.open_sync()
    try:
        e = InsightEvent(
            project="p",
            event_id="e1",
            event_type="view",
            timestamp=1_700_000_000_000,
            anonymous_id="a1",
            properties={"plan": "pro", "n": 2},
            device={"os": "ios"},
        )
        asyncio.run(s.insert_events("p", [to_row(e)]))
        s.compact_sync()
        files, hot = s.insight_source("p", None, None)
        con = connect_segments(files, hot, MEMORY_LIMIT)
        row = con.execute("SELECT actor, properties, context, device FROM src").fetchone()
        con.close()
    finally:
        s.close_sync()
    assert row is not None
    assert row[0] == "a1"
    assert msgspec.json.decode(row[1]) == {"plan": "pro", "n": 2}
    assert (row[2], msgspec.json.decode(row[3])) == ("{}", {"os": "ios"})


def _event(event_id: str, ts: int, properties: dict[str, Any]) -> InsightEvent:
    return InsightEvent(
        project="p",
        event_id=event_id,
        event_type="view",
        timestamp=ts,
        user_id=f"u{int(event_id[1:]) % 3}",
        properties=properties,
    )


@contextlib.contextmanager
def _one_segment(
    tmp_path: Path, log: list[InsightEvent]
) -> Iterator[tuple[SQLiteStorage, list[str], Any, list[InsightEvent]]]:
    """A storage holding ``log`` (project p) compacted into one segment: the storage,
    its segment files, hot rows and events as stored."""
    s = SQLiteStorage(str(tmp_path / "s.db"))
    s.open_sync()
    try:
        asyncio.run(s.insert_events("p", [to_row(e) for e in log]))
        s.compact_sync()
        files, hot = s.insight_source("p", None, None)
        yield s, files, hot, asyncio.run(stored(s, "p"))
    finally:
        s.close_sync()


def _same_trends(files: list[str], hot: Any, events: list[InsightEvent], body: Any) -> None:
    """Project p's trends ``body`` over the segments (with the query's property
    columns) and the hot rows gives the reference implementation's answer."""
    query = parse_query("trends", msgspec.json.encode(body))
    expected = msgspec.to_builtins(run_reference(query, events, "p"))
    con = connect_segments(files, hot, MEMORY_LIMIT, props=property_keys(query))
    try:
        got = msgspec.to_builtins(_run(con, query, "p", unique=True))
    finally:
        con.close()
    assert close(got, expected), f"{body}\nsegments:  {got}\nreference: {expected}"


def test_property_columns_hold_the_json_values_and_merges_keep_the_shared_ones(
    tmp_path: Path,
) -> None:
    """A segment's ``p:<key>`` column holds ``property_json(key)`` of each row for the
    keys in >= 10 % of its rows; a segment whose rows lack a key is read from the JSON
    in the same query; a merge keeps the columns every source has."""
    import duckdb
    import pyarrow.parquet as pq

    from innkt_analytics.server.storage import _segments

    values: list[Any] = ["pro", "", 7, "7", 2.5, True, None, {"a": [1]}, [1, "x"], "it's"]
    first = [_event(f"e{i}", T0 + i * 60_000, {"plan": values[i % len(values)]}) for i in range(40)]
    first[0].properties["rare"] = 1  # in 1 row of 40: no column
    second = [
        _event(f"e{100 + i}", T0 + i * 60_000, {"url": f"/{i % 4}", "it's": values[i % 9]})
        for i in range(40)
    ]
    second[0].properties["plan"], second[1].properties["plan"] = "pro", 7  # 5 %: no column
    s = SQLiteStorage(str(tmp_path / "s.db"))
    s.open_sync()
    try:
        for part in (first, second):
            asyncio.run(s.insert_events("p", [to_row(e) for e in part]))
            s.compact_sync()
        files, hot = s.insight_source("p", None, None)
        assert hot.num_rows == 0
        assert len(files) == 2
        held = sorted(sorted(_segments.segment_properties(f)) for f in files)
        assert held == [["it's", "url"], ["plan"]]  # "rare": 1 row of 40
        con = duckdb.connect()
        for f in files:
            for key in _segments.segment_properties(f):
                column = '"' + _segments.PROPERTY_PREFIX + key + '"'
                mismatched = con.execute(
                    f"SELECT count(*) FROM read_parquet('{f}') "
                    f"WHERE {column} IS DISTINCT FROM {_segments.property_json(key)}"
                ).fetchone()
                assert mismatched == (0,), key
        con.close()
        events = asyncio.run(stored(s, "p"))
        for body in (
            {"series": [{"event": "view"}], "breakdown": {"property": "plan", "limit": 20}},
            {"series": [{"event": "view"}], "breakdown": {"property": "url"}},
            {"series": [{"event": "view"}], "breakdown": {"property": "it's", "limit": 20}},
            {"series": [{"event": "view"}], "breakdown": {"property": "rare"}},
            {"series": [{"event": "view", "math": "sum", "mathProperty": "plan"}]},
            *(
                {"series": [{"event": "view", "filters": [f]}]}
                for f in (
                    {"key": "plan", "op": "eq", "value": "pro"},
                    {"key": "plan", "op": "eq", "value": 7},
                    {"key": "plan", "op": "eq", "value": True},
                    {"key": "plan", "op": "neq", "value": "pro"},
                    {"key": "plan", "op": "in", "value": ["", 2.5]},
                    {"key": "plan", "op": "contains", "value": "'"},
                    {"key": "plan", "op": "gt", "value": 3},
                    {"key": "plan", "op": "is_set"},
                    {"key": "plan", "op": "is_not_set"},
                    {"key": "url", "op": "eq", "value": "/1"},
                )
            ),
        ):
            full = {"dateFrom": "2026-03-26", "dateTo": "2026-03-29", "interval": "hour", **body}
            _same_trends(files, hot, events, full)
        merged = _segments.rewrite(str(tmp_path), "merged.parquet", files, tier=1)
        assert merged is not None
        assert merged.rows == 80
        assert _segments.segment_properties(str(tmp_path / "merged.parquet")) == frozenset()
        one = _segments.rewrite(str(tmp_path), "one.parquet", files[:1], tier=1)
        assert one is not None
        assert _segments.segment_properties(str(tmp_path / "one.parquet")) == (
            _segments.segment_properties(files[0])
        )
        assert pq.read_table(str(tmp_path / "one.parquet")).num_rows == 40
    finally:
        s.close_sync()


def test_keys_equal_but_for_case_are_read_from_the_json(tmp_path: Path) -> None:
    """DuckDB's names ignore case: "Plan" and "plan" get no column, "url" does, and a
    query reading all three gives the reference's answers."""
    from innkt_analytics.server.storage import _segments

    log = [
        _event(f"e{i}", T0 + i * 60_000, {"plan": f"p{i % 3}", "Plan": i % 2, "url": f"/{i % 5}"})
        for i in range(30)
    ]
    with _one_segment(tmp_path, log) as (_, files, hot, events):
        assert [_segments.segment_properties(f) for f in files] == [frozenset({"url"})]
        for breakdown in ("plan", "Plan", "url"):
            body = {
                "dateFrom": "2026-03-26",
                "dateTo": "2026-03-29",
                "interval": "hour",
                "series": [{"event": "view", "filters": [{"key": "Plan", "op": "is_set"}]}],
                "breakdown": {"property": breakdown},
                "filters": [{"key": "plan", "op": "neq", "value": "p9"}],
            }
            _same_trends(files, hot, events, body)


def test_keys_no_column_may_hold_are_read_from_the_json(tmp_path: Path) -> None:
    """An empty key, or a mathProperty sent with a count (schemathesis found a 500 for
    ``"math": "total", "mathProperty": ""``), make no column of the view; a segment
    whose JSON DuckDB refuses is written without property columns."""
    from innkt_analytics.server.storage import _segments

    log = [_event(f"e{i}", T0 + i * 60_000, {"": i % 2, "plan": "a"}) for i in range(20)]
    with _one_segment(tmp_path, log) as (s, files, hot, events):
        assert [_segments.segment_properties(f) for f in files] == [frozenset({"plan"})]
        window = {"dateFrom": "2026-03-26", "dateTo": "2026-03-29", "interval": "day"}
        series = {"event": None, "math": "total", "mathProperty": "", "mathSource": "properties"}
        _same_trends(files, hot, events, window | {"series": [series]})
        refused = to_row(_event("e99", T0, {"plan": "b"}))
        refused.payload = b'{"eventId":"e99\x00","properties":{"plan":"b"}}'
        asyncio.run(s.insert_events("p", [refused]))
        s.compact_sync()
        files, _ = s.insight_source("p", None, None)
        assert sorted(_segments.segment_properties(f) for f in files) == [
            frozenset(),
            frozenset({"plan"}),
        ]


def test_actor_hashes_are_used_only_when_this_duckdb_made_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment's ``actor_hash`` is ``ACTOR_HASH_SQL`` of each row (NULL without an
    id); one another DuckDB version made is computed again, a merge with it has none,
    and retention's answers are the reference's either way."""
    import duckdb

    from innkt_analytics.server.storage import _segments

    def log(first: int) -> list[InsightEvent]:
        out = [_event(f"e{first + i}", T0 + i * 3_600_000, {}) for i in range(30)]
        out.append(InsightEvent(project="p", event_id=f"x{first}", event_type="view", timestamp=T0))
        return out

    s = SQLiteStorage(str(tmp_path / "s.db"))
    s.open_sync()
    try:
        with monkeypatch.context() as m:
            m.setattr(_segments, "hash_tag", lambda: "duckdb 0.0.0")
            asyncio.run(s.insert_events("p", [to_row(e) for e in log(0)]))
            s.compact_sync()
        asyncio.run(s.insert_events("p", [to_row(e) for e in log(100)]))
        s.compact_sync()
        files, hot = s.insight_source("p", None, None)
        assert sorted(_segments.segment_hashed(f) for f in files) == [False, True]
        con = duckdb.connect()
        for f in files:
            wrong = con.execute(
                f"SELECT count(*) FROM read_parquet('{f}') "
                f"WHERE actor_hash IS DISTINCT FROM ({_segments.ACTOR_HASH_SQL})"
            ).fetchone()
            assert wrong == (0,)  # the stale tag's hashes are this DuckDB's here too
        con.close()
        events = asyncio.run(stored(s, "p"))
        body = {
            "dateFrom": "2026-03-26",
            "dateTo": "2026-03-29",
            "period": "day",
            "periods": 3,
            "target": {"event": "view"},
        }
        query = parse_query("retention", msgspec.json.encode(body))
        expected = msgspec.to_builtins(run_reference(query, events, "p"))
        con = connect_segments(files, hot, MEMORY_LIMIT)
        try:
            got = msgspec.to_builtins(_run(con, query, "p", unique=True))
        finally:
            con.close()
        assert close(got, expected), f"\nsegments:  {got}\nreference: {expected}"
        merged = _segments.rewrite(str(tmp_path), "merged.parquet", files, tier=1)
        assert merged is not None
        assert not _segments.segment_hashed(str(tmp_path / "merged.parquet"))
        fresh = [f for f in files if _segments.segment_hashed(f)]
        again = _segments.rewrite(str(tmp_path), "again.parquet", fresh, tier=1)
        assert again is not None
        assert _segments.segment_hashed(str(tmp_path / "again.parquet"))
    finally:
        s.close_sync()


@SETTINGS
@given(log=dense_logs(), body=converting())
def test_funnels_that_convert(
    storage: SQLiteStorage, log: list[InsightEvent], body: dict[str, Any]
) -> None:
    """Dense logs (test_insights_funnels) over segments: both ways of finding the best
    attempt, on actors hashed from the stored ids."""
    check(storage, "funnels", body, log)
