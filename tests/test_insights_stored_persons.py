"""Insights over a storage's rows count persons as the reference does.

On SQLite the engine reads the stored rows (``connect_segments``: Parquet segments
and hot rows, JSON cut out of each payload) and maps ids to persons itself, with a
join only where a query counts actors, and for retention only after the events are
reduced to each id's active buckets. The journeys of test_insights_persons (identify,
late identify, aliases, shared devices) are stored half compacted into segments and
half in the hot log, and every query type, counted by person, id, user or session,
must give the reference's answer given the same id -> person mapping.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from innkt_analytics.server.insights._engine import run_interruptible
from innkt_analytics.server.insights._events import InsightEvent
from innkt_analytics.server.insights._model import parse_query
from innkt_analytics.server.insights._reference import run_reference
from innkt_analytics.server.storage import SQLiteStorage
from tests import test_insights_columnar
from tests.test_insights_columnar import stored, to_row
from tests.test_insights_engine import close, funnels, lifecycle, paths, retention, trends
from tests.test_insights_persons import journeys, person_roots

SETTINGS = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
#: the stored events of every example, one project each (test_insights_columnar's fixture)
storage = test_insights_columnar.storage
count_by = st.sampled_from(["person", "person", "id"])


def check(storage: SQLiteStorage, kind: str, body: dict[str, Any], log: list[InsightEvent]) -> None:
    project = uuid.uuid4().hex[:8]  # a fresh project per example
    mine = [e for e in log if e.project == "p"]
    half = len(mine) // 2
    # a duplicate id is stored once (the first): the storage's deduplication
    asyncio.run(storage.insert_events(project, [to_row(e) for e in mine[:half]]))
    storage.compact_sync()  # the first half in segments, the rest in the hot log
    asyncio.run(storage.insert_events(project, [to_row(e) for e in mine[half:]]))
    events = asyncio.run(stored(storage, project))
    roots = person_roots(events)
    query = parse_query(kind, msgspec.json.encode(body))
    expected = msgspec.to_builtins(run_reference(query, events, project, roots))
    files, hot = storage.insight_source(project, None, None)
    got = msgspec.to_builtins(run_interruptible(query, (files, hot), project, None, persons=roots))
    assert close(got, expected), f"\nstored:    {got}\nreference: {expected}\nroots: {roots}"


@SETTINGS
@given(log=journeys(), body=trends(), by=count_by)
def test_trends(
    storage: SQLiteStorage, log: list[InsightEvent], body: dict[str, Any], by: str
) -> None:
    check(storage, "trends", body | {"countBy": by}, log)


@SETTINGS
@given(log=journeys(), body=funnels(), by=st.sampled_from(["person", "user", "id", "session"]))
def test_funnels(
    storage: SQLiteStorage, log: list[InsightEvent], body: dict[str, Any], by: str
) -> None:
    if body["dropped"] is not None:
        body["dropped"]["after"] = None
    check(storage, "funnels", body | {"countBy": by}, log)


@SETTINGS
@given(log=journeys(), body=retention(), by=count_by)
def test_retention(
    storage: SQLiteStorage, log: list[InsightEvent], body: dict[str, Any], by: str
) -> None:
    check(storage, "retention", body | {"countBy": by}, log)


@SETTINGS
@given(log=journeys(), body=paths(), by=count_by)
def test_paths(
    storage: SQLiteStorage, log: list[InsightEvent], body: dict[str, Any], by: str
) -> None:
    check(storage, "paths", body | {"countBy": by}, log)


@SETTINGS
@given(log=journeys(), body=lifecycle(), by=count_by)
def test_lifecycle_and_stickiness(
    storage: SQLiteStorage, log: list[InsightEvent], body: dict[str, Any], by: str
) -> None:
    check(storage, "lifecycle", body | {"countBy": by}, log)
    check(storage, "stickiness", body | {"countBy": by}, log)


def test_retention_counts_a_person_once(storage: SQLiteStorage) -> None:
    # one person: a device's anonymous id in week 1, the user id it was linked to in week 2
    day = 86_400_000
    t0 = 1_774_828_800_000  # Monday 2026-03-30, UTC
    log = [
        InsightEvent("p", "r1", "view", t0, anonymous_id="a1"),
        InsightEvent("p", "r2", "view", t0 + 8 * day, user_id="u1"),
    ]
    body = {"dateFrom": "2026-03-30", "dateTo": "2026-04-13", "period": "week", "periods": 2}
    project = uuid.uuid4().hex[:8]
    asyncio.run(storage.insert_events(project, [to_row(e) for e in log]))
    storage.compact_sync()
    files, hot = storage.insight_source(project, None, None)
    query = parse_query("retention", msgspec.json.encode(body | {"target": {"event": "view"}}))
    got = run_interruptible(query, (files, hot), project, None, persons={"a1": "u1"})
    assert [c.values for c in got.cohorts] == [[1, 1], [0]]
