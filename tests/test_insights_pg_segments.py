"""The insights engine over PostgreSQL's segments and hot rows.

test_insights_columnar's check, on PostgreSQL's storage engine: generated logs are
stored, a third compacted into segments (kept in PostgreSQL, read from this
instance's cache), a third into more and the rest left hot, and every query type
must give the reference implementation's answer over the events as stored.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from innkt_analytics.server.insights._engine import MEMORY_LIMIT, _run, connect_segments
from innkt_analytics.server.insights._events import InsightEvent
from innkt_analytics.server.insights._model import Query, parse_query, property_keys
from innkt_analytics.server.insights._reference import run_reference
from innkt_analytics.server.storage import EventFilter
from innkt_analytics.server.storage._pg_engine import PgEngineSettings
from innkt_analytics.server.storage._postgres import PostgresStorage
from innkt_analytics.server.storage._segments import HOT_COLUMNS
from tests.test_insights_columnar import stored, to_row
from tests.test_insights_engine import close, funnels, lifecycle, logs, paths, retention, trends

pytestmark = pytest.mark.postgres

SETTINGS = settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def check(url: str, kind: str, body: dict[str, Any], log: list[InsightEvent]) -> None:
    run = uuid.uuid4().hex[:8]  # fresh projects per example
    third, half = len(log) // 3, len(log) // 2
    query: Query = parse_query(kind, msgspec.json.encode(body))

    async def main() -> tuple[Any, Any]:
        s = PostgresStorage(url, engine=PgEngineSettings(interval=None))
        await s.open()
        try:
            for part in (log[:third], log[third:half], log[half:]):
                for name in ("p", "q"):
                    rows = [to_row(e) for e in part if e.project == name]
                    if rows:
                        await s.insert_events(run + name, rows)
                if part is not log[half:]:
                    await s.compact_now()
            project = run + "p"
            events = await stored(s, project)
            expected = msgspec.to_builtins(run_reference(query, events, project))
            snap = await s.snapshot(project, EventFilter(), HOT_COLUMNS)
            assert snap.segments or not log[:half]  # the segments are read
            con = connect_segments(
                [seg.path for seg in snap.segments],
                snap.hot,
                MEMORY_LIMIT,
                props=property_keys(query),
            )
            try:
                got = msgspec.to_builtins(_run(con, query, project, unique=True))
            finally:
                con.close()
            return got, expected
        finally:
            await s.close()

    got, expected = asyncio.run(main())
    assert close(got, expected), f"\nsegments:  {got}\nreference: {expected}"


STRATEGIES = {
    "trends": trends,
    "funnels": funnels,
    "retention": retention,
    "paths": paths,
    "lifecycle": lifecycle,
}


@pytest.mark.parametrize("kind", list(STRATEGIES))
def test_every_query_type_matches_the_reference(pg_database: str, kind: str) -> None:
    @SETTINGS
    @given(log=logs, body=STRATEGIES[kind]())
    def example(log: list[InsightEvent], body: dict[str, Any]) -> None:
        check(pg_database, kind, body, log)

    example()
