"""The Storage interface, tested directly against every backend (SQLite and PostgreSQL).

Each test gets a fresh database from the ``storage_url`` fixture, which is
parametrised over the backends; a backend passes only if it behaves exactly
like the others.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from innkt_analytics.server.storage import (
    AuditEntry,
    EventFilter,
    EventRow,
    KeyRecord,
    Storage,
    StorageStatus,
    Suppression,
    make_storage,
)
from innkt_analytics.server.storage._engine import EngineSettings
from innkt_analytics.server.storage._pg_engine import PgEngineSettings
from innkt_analytics.server.storage._postgres import PostgresStorage
from innkt_analytics.server.storage._sqlite import SQLiteStorage
from innkt_analytics.shared._exceptions import StorageError
from innkt_analytics.shared._protocol import ClientConfig

T = TypeVar("T")
DAY = 86_400_000
NOW = time.time_ns() // 1_000_000 // DAY * DAY  # midnight today, UTC


class ColdSQLite(SQLiteStorage):
    """The SQLite engine compacting after every write: every event a test reads back
    comes from Parquet segments and dedup runs, merged two at a time, not the hot log."""

    def __init__(self, path: str) -> None:
        super().__init__(path, engine=EngineSettings(fanin=2, run_fanin=2, trash_grace=0))

    async def insert_events(self, project: str, rows: Sequence[EventRow]) -> set[str]:
        stored = await super().insert_events(project, rows)
        await asyncio.to_thread(self.compact_sync)
        return stored


class ColdPostgres(PostgresStorage):
    """PostgreSQL's engine compacting after every write, merging two segments at a
    time: every event a test reads back comes from segments kept in PostgreSQL."""

    def __init__(self, url: str) -> None:
        super().__init__(url, engine=PgEngineSettings(fanin=2, cache_grace=0, interval=None))

    async def insert_events(self, project: str, rows: Sequence[EventRow]) -> set[str]:
        stored = await super().insert_events(project, rows)
        await self.compact_now()
        return stored


@pytest.fixture(
    params=[
        "sqlite",
        "sqlite-cold",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-cold", marks=pytest.mark.postgres),
    ]
)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database per backend; ``cold:`` marks the compacting engines."""
    if request.param == "sqlite":
        return str(tmp_path / "storage.db")
    if request.param == "sqlite-cold":
        return "cold:" + str(tmp_path / "storage.db")
    url: str = request.getfixturevalue("pg_database")
    return "cold:" + url if request.param == "postgres-cold" else url


def open_storage(url: str) -> Storage:
    """The (unopened) storage for a ``storage_url``."""
    if url.startswith("cold:postgresql"):
        return ColdPostgres(url[5:])
    return ColdSQLite(url[5:]) if url.startswith("cold:") else make_storage(url)


def with_storage(url: str, body: Callable[[Storage], Awaitable[T]]) -> T:
    """Open the storage at ``url``, run ``body`` on it, close it."""

    async def main() -> T:
        storage = open_storage(url)
        await storage.open()
        try:
            return await body(storage)
        finally:
            await storage.close()

    return asyncio.run(main())


def row(
    event_id: str,
    *,
    event_type: str = "page",
    session_id: str | None = "s1",
    user_id: str | None = None,
    anonymous_id: str | None = None,
    corrected: int = NOW,
    sent_at: int | None = None,
    future: bool = False,
    payload: bytes | None = None,
) -> EventRow:
    return EventRow(
        event_id=event_id,
        event_type=event_type,
        session_id=session_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        timestamp=corrected,
        sent_at=sent_at,
        received_at=corrected + 5,
        corrected=corrected,
        future=future,
        # the server stores JSON it encoded itself: a NUL is escaped, never raw
        payload=payload or json.dumps({"eventId": event_id}, separators=(",", ":")).encode(),
    )


async def all_ids(storage: Storage, project: str, flt: EventFilter | None = None) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = await storage.query_events(project, flt or EventFilter(), cursor, 3)
        ids += [r.event_id for r in page.rows]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


# -- insert and dedup ------------------------------------------------------------------


def test_insert_returns_exactly_the_new_ids(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        assert await s.insert_events("p", [row("a"), row("b")]) == {"a", "b"}
        assert await s.insert_events("p", [row("b"), row("c")]) == {"c"}
        assert await s.insert_events("p", [row("a"), row("b"), row("c")]) == set()
        assert await s.insert_events("p", []) == set()
        assert await all_ids(s, "p") == ["a", "b", "c"]

    with_storage(storage_url, body)


def test_a_retry_with_another_corrected_time_is_still_a_duplicate(storage_url: str) -> None:
    # A resent batch has a new sentAt, so its corrected time differs: dedup is
    # on (project, eventId) alone, even across months.
    async def body(s: Storage) -> None:
        assert await s.insert_events("p", [row("e", corrected=NOW, sent_at=NOW)]) == {"e"}
        later = row("e", corrected=NOW - 45 * DAY, sent_at=NOW + 45 * DAY)
        assert await s.insert_events("p", [later]) == set()
        page = await s.query_events("p", EventFilter(), None, 10)
        assert [(r.event_id, r.corrected) for r in page.rows] == [("e", NOW)]

    with_storage(storage_url, body)


def test_first_of_repeated_ids_in_one_batch_wins(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        first, second = row("x", payload=b'{"n":1}'), row("x", payload=b'{"n":2}')
        assert await s.insert_events("p", [first, second, row("y")]) == {"x", "y"}
        page = await s.query_events("p", EventFilter(), None, 10)
        assert [(r.event_id, r.payload) for r in page.rows] == [
            ("x", b'{"n":1}'),
            ("y", b'{"eventId":"y"}'),
        ]

    with_storage(storage_url, body)


def test_the_same_id_in_two_projects_is_two_events(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        assert await s.insert_events("p1", [row("same")]) == {"same"}
        assert await s.insert_events("p2", [row("same")]) == {"same"}
        assert await all_ids(s, "p1") == ["same"]
        assert await all_ids(s, "p2") == ["same"]

    with_storage(storage_url, body)


def test_every_field_round_trips(storage_url: str) -> None:
    stored = EventRow(
        event_id="full",
        event_type="purchase",
        session_id=None,
        user_id="u-é",
        anonymous_id="anon",
        timestamp=NOW - 1234,
        sent_at=NOW + 10,
        received_at=NOW + 20,
        corrected=NOW - 999,
        future=True,
        payload='{"eventId":"full","properties":{"ü":[1,2.5,null]}}'.encode(),
    )

    async def body(s: Storage) -> None:
        await s.insert_events("p", [stored])
        (got,) = (await s.query_events("p", EventFilter(), None, 10)).rows
        assert got.seq > 0
        got.seq = stored.seq
        assert got == stored

    with_storage(storage_url, body)


def test_concurrent_inserts_of_overlapping_ids_store_each_once(storage_url: str) -> None:
    batches = [[row(f"id{(i * 7 + j) % 40}") for j in range(15)] for i in range(12)]

    async def body(s: Storage) -> None:
        results = await asyncio.gather(*(s.insert_events("p", b) for b in batches))
        union = set().union(*results)
        assert sum(len(r) for r in results) == len(union)  # no id reported new twice
        assert union == {r.event_id for b in batches for r in b}
        assert sorted(await all_ids(s, "p")) == sorted(union)

    with_storage(storage_url, body)


def test_times_far_from_now_are_stored(storage_url: str) -> None:
    # A client with a broken clock: 1970 and 2200 must be stored and found.
    old, far = 86_400_000, 7_258_118_400_000

    async def body(s: Storage) -> None:
        rows = [row("old", corrected=old), row("far", corrected=far), row("now")]
        assert await s.insert_events("p", rows) == {"old", "far", "now"}
        assert await all_ids(s, "p", EventFilter(until=NOW - DAY)) == ["old"]
        assert await all_ids(s, "p", EventFilter(since=NOW + DAY)) == ["far"]

    with_storage(storage_url, body)


def test_nul_characters_in_ids_are_stored_deduplicated_and_found(storage_url: str) -> None:
    # SQLite keeps U+0000; PostgreSQL text cannot, and stores U+FFFD instead.
    async def body(s: Storage) -> None:
        rows = [row("id\x00", session_id="s\x00", user_id="u\x00")]
        assert await s.insert_events("p", rows) == {"id\x00"}
        assert await s.insert_events("p", rows) == set()
        found = await s.query_events("p", EventFilter(session_id="s\x00"), None, 10)
        assert len(found.rows) == 1
        assert await s.delete_user("p", "u\x00", 1) == 1

    with_storage(storage_url, body)


# -- queries ---------------------------------------------------------------------------


def _mixed_rows() -> list[EventRow]:
    return [
        row("e1", event_type="login", session_id="s1", user_id="u1", corrected=NOW),
        row("e2", event_type="page", session_id="s1", user_id="u1", corrected=NOW + 1000),
        row("e3", event_type="page", session_id="s2", user_id=None, corrected=NOW + 3_600_000),
        row("e4", event_type="page", session_id=None, user_id="u2", corrected=NOW - DAY),
        row("e5", event_type="logout", session_id="s2", user_id="u2", corrected=NOW + 2 * DAY),
    ]


def test_query_filters_and_pages_in_insertion_order(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        await s.insert_events("p", _mixed_rows())
        await s.insert_events("other", [row("o1")])
        assert await all_ids(s, "p") == ["e1", "e2", "e3", "e4", "e5"]
        assert await all_ids(s, "p", EventFilter(event_type="page")) == ["e2", "e3", "e4"]
        assert await all_ids(s, "p", EventFilter(session_id="s2")) == ["e3", "e5"]
        assert await all_ids(s, "p", EventFilter(user_id="u2")) == ["e4", "e5"]
        window = EventFilter(since=NOW, until=NOW + 3_600_000)
        assert await all_ids(s, "p", window) == ["e1", "e2"]
        both = EventFilter(event_type="page", since=NOW)
        assert await all_ids(s, "p", both) == ["e2", "e3"]
        assert await all_ids(s, "nobody") == []
        first = await s.query_events("p", EventFilter(), None, 2)
        assert [r.event_id for r in first.rows] == ["e1", "e2"]
        assert first.next_cursor is not None
        last = await s.query_events("p", EventFilter(), None, 5)
        assert last.next_cursor is None

    with_storage(storage_url, body)


def test_stats_count_bucket_and_unique(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        await s.insert_events("p", _mixed_rows())
        await s.insert_events("other", [row("o1", user_id="u9")])
        result = await s.stats("p", EventFilter(), DAY)
        assert result.total == 5
        assert result.by_event_type == {"page": 3, "login": 1, "logout": 1}
        assert next(iter(result.by_event_type)) == "page"  # most frequent first
        assert result.series == [(NOW - DAY, 1), (NOW, 3), (NOW + 2 * DAY, 1)]
        assert (result.unique_sessions, result.unique_users) == (2, 2)
        hourly = await s.stats("p", EventFilter(event_type="page", since=NOW), 3_600_000)
        assert hourly.total == 2
        assert hourly.series == [(NOW, 1), (NOW + 3_600_000, 1)]
        assert (hourly.unique_sessions, hourly.unique_users) == (2, 1)
        empty = await s.stats("nobody", EventFilter(), DAY)
        assert (empty.total, empty.series, empty.by_event_type) == (0, [], {})

    with_storage(storage_url, body)


def test_stats_buckets_round_down_before_1970(storage_url: str) -> None:
    """A broken clock's event before 1970 lands in the bucket that starts before it,
    on both backends (integer division in SQL rounds toward zero)."""

    async def body(s: Storage) -> None:
        await s.insert_events(
            "p", [row("b1", corrected=-1), row("b2", corrected=-DAY - 5), row("b3", corrected=7)]
        )
        result = await s.stats("p", EventFilter(), DAY)
        assert result.series == [(-2 * DAY, 1), (-DAY, 1), (0, 1)]

    with_storage(storage_url, body)


def test_stats_count_actors_and_persons(storage_url: str) -> None:
    """Unique users are actors (the userId, else the anonymousId); with a persons
    mapping the actors of one person count once, even when its root is not among them."""
    rows = [
        row("e1", anonymous_id="a1", corrected=NOW),
        row("e2", anonymous_id="a1", user_id="u1", corrected=NOW + 1),
        row("e3", user_id="u1", corrected=NOW + 2),
        row("e4", anonymous_id="a3", corrected=NOW + 3),
        row("e5", user_id="u2", corrected=NOW + 4),
        row("e6", corrected=NOW + 5),  # no id at all: no actor
        row("e7", anonymous_id="a2", corrected=NOW + DAY),
        row("e8", anonymous_id="a1", corrected=NOW + DAY + 1),
    ]
    persons = {"a1": "u1", "a2": "u1", "a9": "u9"}  # a9/u9: a person not in the events

    async def body(s: Storage) -> None:
        await s.insert_events("p", rows)
        await s.insert_events("other", [row("o1", anonymous_id="a5")])
        by_id = await s.stats("p", EventFilter(), DAY)
        assert by_id.unique_users == 5  # a1, u1, a3, u2, a2
        assert (await s.stats("p", EventFilter(), DAY, persons=persons)).unique_users == 3
        later = EventFilter(since=NOW + DAY)  # a2 and a1: one person, its root absent
        assert (await s.stats("p", later, DAY)).unique_users == 2
        assert (await s.stats("p", later, DAY, persons=persons)).unique_users == 1
        assert (await s.stats("p", EventFilter(), DAY, persons={})).unique_users == 5
        counts_only = await s.stats("p", EventFilter(), DAY, persons=persons, uniques=False)
        assert (counts_only.total, counts_only.unique_users, counts_only.unique_sessions) == (
            8,
            0,
            0,
        )

    with_storage(storage_url, body)


# -- retention -------------------------------------------------------------------------


def test_retention_deletes_only_older_events_and_forgets_their_ids(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        old = [row(f"old{i}", corrected=NOW - (100 + 20 * i) * DAY) for i in range(5)]
        edge = row("edge", corrected=NOW - 10 * DAY)
        young = [row("young", corrected=NOW - 10 * DAY + 1), row("today")]
        await s.insert_events("p", [*old, edge, *young])
        await s.insert_events("q", [row("q-old", corrected=NOW - 300 * DAY)])
        assert await s.delete_events_before(None, NOW - 10 * DAY + 1) == 7
        assert await all_ids(s, "p") == ["young", "today"]
        assert await all_ids(s, "q") == []
        # a deleted event that is sent again is stored again, as after any delete
        assert await s.insert_events("p", [old[0], young[0]]) == {"old0"}
        assert await s.delete_events_before(None, NOW - 10 * DAY + 1) == 1

    with_storage(storage_url, body)


def test_retention_of_one_project_leaves_the_others(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        await s.insert_events("p", [row("p-old", corrected=NOW - 200 * DAY), row("p-new")])
        await s.insert_events("q", [row("q-old", corrected=NOW - 200 * DAY), row("q-new")])
        await s.insert_events("r", [row("r-old", corrected=NOW - 400 * DAY)])
        assert await s.delete_events_before("p", NOW - 30 * DAY) == 1
        assert await s.delete_events_before("r", NOW - 30 * DAY) == 1
        assert await all_ids(s, "p") == ["p-new"]
        assert await all_ids(s, "q") == ["q-old", "q-new"]
        assert await all_ids(s, "r") == []
        assert await s.insert_events("q", [row("q-old")]) == set()  # still deduplicated

    with_storage(storage_url, body)


# -- config and keys -------------------------------------------------------------------


def test_config_versions_bump_per_project(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        assert await s.get_config("p") is None
        first = await s.put_config("p", ClientConfig(sampling_rate=0.5, version=99))
        assert first.version == 1
        second = await s.put_config("p", ClientConfig(sampling_rate=0.25))
        assert second.version == 2
        assert await s.get_config("p") == second
        assert (await s.put_config("q", ClientConfig())).version == 1

    with_storage(storage_url, body)


def test_concurrent_config_writes_get_distinct_versions(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        stored = await asyncio.gather(*(s.put_config("p", ClientConfig()) for _ in range(8)))
        assert sorted(c.version for c in stored) == list(range(1, 9))

    with_storage(storage_url, body)


def _key(key_id: str, project: str = "p", created_at: int = 1) -> KeyRecord:
    return KeyRecord(
        key_id=key_id,
        project=project,
        name=f"name of {key_id}",
        scopes=frozenset({"read", "write"}),
        key_hash=f"hash-{key_id}",
        created_at=created_at,
    )


def test_keys_create_find_list_revoke(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        assert await s.count_keys() == 0
        await s.create_key(_key("k1", created_at=1))
        await s.create_key(_key("k2", project="other", created_at=2))
        await s.create_key(_key("k3", created_at=3))
        assert await s.count_keys() == 3
        assert await s.find_key("hash-k1") == _key("k1", created_at=1)
        assert await s.find_key("hash-nope") is None
        assert [k.key_id for k in await s.list_keys()] == ["k1", "k2", "k3"]
        assert [k.key_id for k in await s.list_keys("p")] == ["k1", "k3"]
        assert await s.revoke_key("k1", 500) is True
        assert await s.revoke_key("k1", 600) is False
        assert await s.revoke_key("missing", 600) is False
        found = await s.find_key("hash-k1")
        assert found is not None
        assert found.revoked_at == 500
        with pytest.raises(StorageError):
            await s.create_key(_key("k1"))  # the same id twice

    with_storage(storage_url, body)


# -- privacy ---------------------------------------------------------------------------


def test_delete_user_removes_their_events_and_suppresses_them(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        await s.insert_events(
            "p", [row("u1-a", user_id="u1"), row("u2-a", user_id="u2"), row("u1-b", user_id="u1")]
        )
        await s.insert_events("q", [row("q-u1", user_id="u1")])
        assert await s.delete_user("p", "u1", 1000) == 2
        assert await all_ids(s, "p") == ["u2-a"]
        assert await all_ids(s, "q") == ["q-u1"]  # another project's user of the same id
        assert await s.delete_user("p", "u1", 2000) == 0
        assert await s.delete_user("q", "u1", 3000) == 1
        assert await s.suppressed_users("p") == [Suppression("p", "u1", 2000)]
        everyone = sorted(await s.suppressed_users(), key=lambda x: x.project)
        assert everyone == [Suppression("p", "u1", 2000), Suppression("q", "u1", 3000)]
        # refusing a suppressed user's new events is the ingest layer's job; the
        # deleted rows' ids are free again, as after any delete
        assert await s.insert_events("p", [row("u1-a", user_id="u1")]) == {"u1-a"}

    with_storage(storage_url, body)


def test_delete_users_removes_every_id_of_a_person_in_one_call(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        await s.insert_events(
            "p",
            [
                row("a1", user_id="u1"),
                row("a2", user_id=None, anonymous_id="anon"),
                row("b1", user_id="u2"),
                row("a3", user_id="u1", anonymous_id="anon"),
            ],
        )
        await s.insert_events("p", [row("a4", user_id=None, anonymous_id="anon")])
        assert await s.delete_users("p", ["u1", "anon", "u1"], 500) == 4
        assert await all_ids(s, "p") == ["b1"]
        assert sorted(x.user_id for x in await s.suppressed_users("p")) == ["anon", "u1"]
        assert await s.delete_users("p", ["u1", "anon"], 600) == 0
        assert await s.delete_users("p", [], 700) == 0
        # their ids are free again, as after any delete
        assert await s.insert_events("p", [row("a1", user_id="u1")]) == {"a1"}

    with_storage(storage_url, body)


def test_audit_log_pages_newest_first_per_project(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        for i in range(5):
            detail: dict[str, object] = {"n": i, "ids": ["a", "b"], "note": "é"}
            await s.append_audit(AuditEntry("p", 100 + i, "key_1", "delete_user", f"u{i}", detail))
        await s.append_audit(AuditEntry("q", 1, "key_2", "export_user", "x"))
        first = await s.list_audit("p", 2, None)
        assert [e.subject for e in first] == ["u4", "u3"]
        assert first[0].detail == {"n": 4, "ids": ["a", "b"], "note": "é"}
        assert (first[0].project, first[0].at, first[0].actor) == ("p", 104, "key_1")
        rest = await s.list_audit("p", 10, first[-1].seq)
        assert [e.subject for e in rest] == ["u2", "u1", "u0"]
        assert [e.subject for e in await s.list_audit("q", 10, None)] == ["x"]
        assert await s.list_audit("nobody", 10, None) == []

    with_storage(storage_url, body)


def test_health_reports_ok_and_counts(storage_url: str) -> None:
    async def body(s: Storage) -> None:
        await s.insert_events("p", [row("a"), row("b")])
        health = await s.health()
        assert health.status is StorageStatus.OK
        assert health.backend == s.backend
        assert health.events == 2
        assert health.size_bytes > 0
        assert health.reason is None

    with_storage(storage_url, body)


def test_data_survives_reopening(storage_url: str) -> None:
    with_storage(storage_url, lambda s: s.insert_events("p", [row("kept")]))

    async def body(s: Storage) -> None:
        assert await all_ids(s, "p") == ["kept"]
        assert await s.insert_events("p", [row("kept")]) == set()

    with_storage(storage_url, body)


# -- a property: inserts behave like a set per project ---------------------------------

_ids = st.sampled_from([f"e{i}" for i in range(12)])
_batch = st.lists(st.tuples(st.sampled_from(["a", "b"]), _ids), max_size=15)


def test_inserts_match_a_set_model(storage_url: str) -> None:
    with asyncio.Runner() as runner:
        storage = open_storage(storage_url)
        runner.run(storage.open())
        try:

            @settings(
                max_examples=25,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            @given(st.lists(_batch, min_size=1, max_size=6))
            def check(batches: list[list[tuple[str, str]]]) -> None:
                run = uuid.uuid4().hex[:8]  # a fresh pair of projects per example
                model: dict[str, list[str]] = {"a": [], "b": []}
                for batch in batches:
                    for project in ("a", "b"):
                        rows = [row(i) for p, i in batch if p == project]
                        new = runner.run(storage.insert_events(run + project, rows))
                        unique = list(dict.fromkeys(r.event_id for r in rows))
                        fresh = [i for i in unique if i not in model[project]]
                        assert new == set(fresh)
                        model[project] += fresh
                for project in ("a", "b"):
                    assert runner.run(all_ids(storage, run + project)) == model[project]

            check()
        finally:
            runner.run(storage.close())
