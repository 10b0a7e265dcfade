"""PostgreSQL storage specifics: partitions, retention by partition, migrations,
several pools on one database, and PostgreSQL going away and coming back.

The behaviour every backend shares is in test_storage_contract.py.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest

from innkt_analytics.server._settings import ServerSettings, storage_for
from innkt_analytics.server.storage import EventFilter, StorageStatus, make_storage
from innkt_analytics.server.storage._pg_engine import PgEngineSettings
from innkt_analytics.server.storage._pg_partitions import retire
from innkt_analytics.server.storage._pg_schema import (
    KEY_COLUMNS_DDL,
    MIGRATIONS,
    SCHEMA_VERSION,
    PartitionWindow,
    month_bounds,
    month_start,
    months_ahead,
    partition_name,
)
from innkt_analytics.server.storage._postgres import _MIGRATION_LOCK, PostgresStorage
from innkt_analytics.shared._exceptions import ConfigError, StorageError
from tests.test_storage_contract import DAY, NOW, all_ids, row

pytestmark = pytest.mark.postgres
T = TypeVar("T")


def sql(url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def run(storage: PostgresStorage, body: Callable[[PostgresStorage], Awaitable[T]]) -> T:
    async def main() -> T:
        await storage.open()
        try:
            return await body(storage)
        finally:
            await storage.close()

    return asyncio.run(main())


def attached(url: str) -> set[str]:
    return {
        r[0]
        for r in sql(
            url,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'events'::regclass",
        )
    }


def month_ago(n: int) -> int:
    """The start of the month ``n`` months before this one."""
    start = month_start(NOW)
    for _ in range(n):
        start = month_start(start - 1)
    return start


@pytest.fixture
def blockable(pg_url: str, pg_database: str) -> Iterator[Callable[[bool], None]]:
    """``block(True)`` makes the test database refuse connections and ends the
    open ones, as if PostgreSQL went away; ``block(False)`` brings it back."""
    name = urllib.parse.urlsplit(pg_database).path.lstrip("/")

    def block(on: bool) -> None:
        sql(pg_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if on else "true"}')
        if on:
            sql(
                pg_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )

    yield block
    block(False)


# -- schema and partitions -------------------------------------------------------------


def test_open_migrates_once_and_creates_the_coming_months(pg_database: str) -> None:
    run(PostgresStorage(pg_database), lambda s: s.insert_events("p", [row("a")]))
    run(PostgresStorage(pg_database), lambda s: s.insert_events("p", [row("b")]))
    assert sql(pg_database, "SELECT version FROM innkt_schema") == [(SCHEMA_VERSION,)]
    ahead = {partition_name(m) for m in months_ahead(NOW, PartitionWindow().future_months)}
    assert ahead <= attached(pg_database)
    assert "events_default" in attached(pg_database)


def test_partitions_ahead_are_recreated_by_the_background_maintenance(
    pg_database: str,
) -> None:
    ahead = partition_name(months_ahead(NOW, 1)[1])

    async def body(s: PostgresStorage) -> bool:
        sql(pg_database, f"ALTER TABLE events DETACH PARTITION {ahead}")
        sql(pg_database, f"DROP TABLE {ahead}")
        s._known.clear()  # as if this instance had not made them itself
        for _ in range(200):
            await asyncio.sleep(0.05)
            if ahead in attached(pg_database):
                return True
        return False

    assert run(PostgresStorage(pg_database, maintenance_interval=0.1), body)


def test_a_newer_schema_is_refused(pg_database: str) -> None:
    run(PostgresStorage(pg_database), lambda s: s.count_keys())
    sql(pg_database, "UPDATE innkt_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match="newer"):
        run(PostgresStorage(pg_database), lambda s: s.count_keys())


def test_rows_outside_the_window_move_into_their_month_when_it_gets_a_partition(
    pg_database: str,
) -> None:
    narrow = PartitionWindow(past_months=1, future_months=1)
    old = month_ago(6) + 3 * DAY
    run(
        PostgresStorage(pg_database, window=narrow, engine=PgEngineSettings(interval=None)),
        lambda s: s.insert_events("p", [row("a", corrected=old)]),
    )
    assert sql(pg_database, "SELECT event_id FROM events_default") == [("a",)]
    assert partition_name(month_ago(6)) not in attached(pg_database)

    async def later(s: PostgresStorage) -> list[str]:
        assert await s.insert_events("p", [row("b", corrected=old + DAY)]) == {"b"}
        return await all_ids(s, "p")

    # no compaction meanwhile: the rows are to be found in their partition
    hot = PostgresStorage(pg_database, engine=PgEngineSettings(interval=None))
    assert run(hot, later) == ["a", "b"]
    name = partition_name(month_ago(6))
    assert name in attached(pg_database)
    assert sql(pg_database, "SELECT count(*) FROM events_default") == [(0,)]
    assert sql(pg_database, f"SELECT event_id FROM {name} ORDER BY seq") == [("a",), ("b",)]


def test_new_batches_go_by_copy_and_resends_row_by_row(pg_database: str) -> None:
    async def body(s: PostgresStorage) -> tuple[int, int, list[str]]:
        assert await s.insert_events("p", [row("a"), row("b")]) == {"a", "b"}
        fast = s.slow_inserts
        assert await s.insert_events("p", [row("b"), row("c"), row("c")]) == {"c"}
        return fast, s.slow_inserts, await all_ids(s, "p")

    assert run(PostgresStorage(pg_database), body) == (0, 1, ["a", "b", "c"])


UUID_A = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
UUID_B = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def test_canonical_uuid_ids_are_deduplicated_as_uuids_and_other_ids_as_text(
    pg_database: str,
) -> None:
    upper = UUID_A.upper()  # another id: not canonical, so it is text, and distinct

    async def body(s: PostgresStorage) -> tuple[set[str], set[str]]:
        first = await s.insert_events("p", [row(UUID_A), row(upper), row("plain")])
        again = await s.insert_events("p", [row(UUID_A), row(upper), row("plain"), row(UUID_B)])
        return first, again

    assert run(PostgresStorage(pg_database), body) == ({UUID_A, upper, "plain"}, {UUID_B})
    assert sql(pg_database, "SELECT id::text FROM event_uuids ORDER BY id") == [
        (UUID_A,),
        (UUID_B,),
    ]
    assert sql(pg_database, "SELECT event_id FROM event_ids ORDER BY 1") == [
        (upper,),
        ("plain",),
    ]


def test_deleting_a_user_forgets_both_kinds_of_ids(pg_database: str) -> None:
    async def body(s: PostgresStorage) -> tuple[int, set[str], list[str]]:
        await s.insert_events("p", [row(UUID_A, user_id="u1"), row("t1", user_id="u1")])
        await s.insert_events("p", [row(UUID_B, user_id="u2")])
        gone = await s.delete_user("p", "u1", NOW)
        # deleted events sent again are stored again (their ids were forgotten)
        again = await s.insert_events("p", [row(UUID_A), row("t1"), row(UUID_B)])
        return gone, again, await all_ids(s, "p")

    assert run(PostgresStorage(pg_database), body) == (2, {UUID_A, "t1"}, [UUID_B, UUID_A, "t1"])


def old_database(url: str, version: int, event_ids: list[str]) -> None:
    """The schema as release ``version`` left it, with events of ``event_ids`` (in
    ``event_ids``: as versions before 3 stored every id) in a partition."""
    for v in range(1, version + 1):
        for statement in MIGRATIONS[v]:
            sql(url, statement)
    for statement in KEY_COLUMNS_DDL:
        sql(url, statement)
    sql(url, "CREATE TABLE innkt_schema (version integer NOT NULL)")
    sql(url, "INSERT INTO innkt_schema VALUES (%s)", (version,))
    sql(url, "CREATE TABLE events_old PARTITION OF events FOR VALUES FROM (0) TO (1)")
    for event_id in event_ids:
        sql(
            url,
            "INSERT INTO events (project, event_id, event_type, ts, received_at, corrected,"
            " payload) VALUES ('p', %s, 'page', 0, 0, 0, '{}')",
            (event_id,),
        )
        sql(url, "INSERT INTO event_ids VALUES ('p', %s)", (event_id,))


def test_a_version_2_database_is_migrated_in_place(pg_database: str) -> None:
    # The schema as the previous release left it, with one event of each kind of id.
    old_database(pg_database, 2, [UUID_A, "t1"])

    async def body(s: PostgresStorage) -> set[str]:
        return await s.insert_events("p", [row(UUID_A), row("t1"), row(UUID_B)])

    assert run(PostgresStorage(pg_database), body) == {UUID_B}
    assert sql(pg_database, "SELECT version FROM innkt_schema") == [(SCHEMA_VERSION,)]
    assert sql(pg_database, "SELECT event_id FROM event_ids") == [("t1",)]
    assert sql(pg_database, "SELECT count(*) FROM event_uuids") == [(2,)]


def test_an_instance_waits_for_another_instances_migration_past_its_command_timeout(
    pg_database: str,
) -> None:
    # A migration of a large database takes minutes; an instance starting meanwhile
    # waits on the migration lock instead of failing at its command timeout.
    async def main() -> set[str]:
        holder = await asyncpg.connect(pg_database)
        try:
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            storage = PostgresStorage(pg_database, command_timeout=0.3)
            opening = asyncio.create_task(storage.open())
            await asyncio.sleep(1.0)
            assert not opening.done()
            await tx.commit()
            await opening
        finally:
            await holder.close()
        try:
            return await storage.insert_events("p", [row(UUID_A)])
        finally:
            await storage.close()

    assert asyncio.run(main()) == {UUID_A}


# -- retention -------------------------------------------------------------------------


def test_retention_drops_whole_months_and_deletes_the_rest(pg_database: str) -> None:
    rows = [row(f"m{n}", corrected=month_ago(n) + DAY) for n in range(1, 6)]
    rows += [row(UUID_A, corrected=month_ago(4) + DAY), row(UUID_B, corrected=month_ago(2))]
    cutoff = month_ago(2) + 10 * DAY  # months 3..5 go whole; month 2 loses two rows

    async def body(s: PostgresStorage) -> list[str]:
        await s.insert_events("p", rows)
        assert await s.delete_events_before(None, cutoff) == 6
        return await all_ids(s, "p")

    assert run(PostgresStorage(pg_database), body) == ["m1"]
    assert sql(pg_database, "SELECT count(*) FROM event_uuids") == [(0,)]
    names = attached(pg_database)
    assert {partition_name(month_ago(n)) for n in (3, 4, 5)}.isdisjoint(names)
    assert partition_name(month_ago(2)) in names  # the month the cutoff falls in stays
    assert sql(pg_database, "SELECT count(*) FROM innkt_retired") == [(0,)]
    assert sql(pg_database, "SELECT count(*) FROM event_ids") == [(1,)]
    leftovers = "SELECT count(*) FROM pg_class WHERE relname LIKE 'events_retired%%'"
    assert sql(pg_database, leftovers) == [(0,)]


def test_one_projects_retention_drops_only_months_it_has_alone(pg_database: str) -> None:
    alone, shared = month_ago(5) + DAY, month_ago(4) + DAY

    async def body(s: PostgresStorage) -> tuple[list[str], list[str]]:
        await s.insert_events(
            "p", [row("p-alone", corrected=alone), row("p-shared", corrected=shared)]
        )
        await s.insert_events("q", [row("q-shared", corrected=shared)])
        assert await s.delete_events_before("p", month_ago(1)) == 2
        return await all_ids(s, "p"), await all_ids(s, "q")

    assert run(PostgresStorage(pg_database), body) == ([], ["q-shared"])
    names = attached(pg_database)
    assert partition_name(month_ago(5)) not in names
    assert partition_name(month_ago(4)) in names


def test_retention_finishes_a_month_left_half_retired(pg_database: str) -> None:
    # A crash between the two retention steps leaves a detached month behind;
    # here another project's row also arrived in it after the emptiness check.
    month = month_ago(8)

    async def body(s: PostgresStorage) -> tuple[int, list[str], list[str], set[str]]:
        await s.insert_events("p", [row("p1", corrected=month + DAY)])
        await s.insert_events("q", [row("q1", corrected=month + 2 * DAY)])
        conn = await asyncpg.connect(pg_database)
        try:
            await retire(conn, month, "p")
        finally:
            await conn.close()
        assert await all_ids(s, "q") == []  # detached: out of sight until purged
        deleted = await s.delete_events_before("p", month_ago(7))
        again = await s.insert_events("q", [row("q1")])  # its id was kept
        return deleted, await all_ids(s, "p"), await all_ids(s, "q"), again

    assert run(PostgresStorage(pg_database), body) == (1, [], ["q1"], set())
    assert sql(pg_database, "SELECT count(*) FROM innkt_retired") == [(0,)]


# -- several instances, and PostgreSQL going away --------------------------------------


def test_two_pools_on_one_database_store_each_event_once(pg_database: str) -> None:
    batches = [
        [row(f"id{(i * 5 + j) % 30}", corrected=NOW + j) for j in range(20)] for i in range(10)
    ]

    async def main() -> list[set[str]]:
        a, b = PostgresStorage(pg_database, pool_size=3), PostgresStorage(pg_database, pool_size=3)
        await asyncio.gather(a.open(), b.open())
        try:
            return await asyncio.gather(
                *((a if i % 2 else b).insert_events("p", batch) for i, batch in enumerate(batches))
            )
        finally:
            await asyncio.gather(a.close(), b.close())

    results = asyncio.run(main())
    union = set().union(*results)
    assert sum(len(r) for r in results) == len(union) == 30
    assert sql(pg_database, "SELECT count(*) FROM events") == [(30,)]


def test_unavailable_then_recovers_by_itself(
    pg_database: str, blockable: Callable[[bool], None]
) -> None:
    async def body(s: PostgresStorage) -> None:
        assert await s.insert_events("p", [row("before")]) == {"before"}
        blockable(True)
        with pytest.raises(StorageError, match="PostgreSQL"):
            await s.insert_events("p", [row("during")])
        health = await s.health()
        assert health.status is StorageStatus.UNAVAILABLE
        assert health.reason is not None
        assert "PostgreSQL" in health.reason
        with pytest.raises(StorageError):
            await s.query_events("p", EventFilter(), None, 10)
        blockable(False)
        assert await s.insert_events("p", [row("during"), row("before")]) == {"during"}
        assert (await s.health()).status is StorageStatus.OK
        assert await all_ids(s, "p") == ["before", "during"]

    run(PostgresStorage(pg_database, connect_timeout=2), body)


def test_connections_killed_while_idle_are_replaced_transparently(
    pg_url: str, pg_database: str
) -> None:
    name = urllib.parse.urlsplit(pg_database).path.lstrip("/")

    async def body(s: PostgresStorage) -> set[str]:
        await s.insert_events("p", [row("a")])
        killed = sql(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        )
        assert killed  # the pool's connection was there
        await asyncio.sleep(0.1)
        return await s.insert_events("p", [row("b")])

    assert run(PostgresStorage(pg_database), body) == {"b"}


def test_storage_unreachable_at_open_raises_storage_error() -> None:
    # Port 1 refuses connections on any machine; no service needed.
    storage = PostgresStorage("postgresql://postgres@127.0.0.1:1/none", connect_timeout=2)
    with pytest.raises(StorageError):
        asyncio.run(storage.open())


def test_make_storage_routes_postgres_urls_and_checks_the_pool_size() -> None:
    assert isinstance(make_storage("postgresql://u@h/db"), PostgresStorage)
    assert isinstance(make_storage("postgres://u@h/db"), PostgresStorage)
    with pytest.raises(ConfigError, match="pool_size"):
        PostgresStorage("postgresql://u@h/db", pool_size=0)


def test_month_arithmetic() -> None:
    # 2024 is a leap year; the bounds must not drift across year ends.
    feb = 1_706_745_600_000  # 2024-02-01T00:00:00Z
    assert month_start(feb + 28 * DAY + 5) == feb
    assert month_bounds(feb) == (feb, feb + 29 * DAY)
    assert partition_name(feb) == "events_p202402"
    dec = 1_733_011_200_000  # 2024-12-01
    assert month_bounds(dec)[1] == 1_735_689_600_000  # 2025-01-01
    assert month_start(-1) == -31 * DAY  # 1969-12
    low, high = PartitionWindow(past_months=2, future_months=1).bounds(feb + DAY)
    assert (partition_name(low), partition_name(high)) == ("events_p202312", "events_p202404")


def test_pool_size_and_insert_concurrency_come_from_the_settings(pg_database: str) -> None:
    settings = ServerSettings.from_env(
        {
            "INNKT_DB": pg_database,
            "INNKT_PG_POOL_SIZE": "3",
            "INNKT_PG_INSERT_CONCURRENCY": "2",
        }
    )
    storage = storage_for(settings)
    assert isinstance(storage, PostgresStorage)

    async def body() -> None:
        await storage.open()
        try:
            assert storage._pool.get_max_size() == 3
            assert storage._inserter._max_inflight == 2
            assert await storage.insert_events("p", [row("e1")]) == {"e1"}
        finally:
            await storage.close()

    asyncio.run(body())
    for name in ("INNKT_PG_POOL_SIZE", "INNKT_PG_INSERT_CONCURRENCY"):
        with pytest.raises(ConfigError, match=name.removeprefix("INNKT_").lower()):
            ServerSettings.from_env({name: "0"})


def test_hot_and_compacted_rows_are_the_stored_rows_whatever_their_text(
    pg_database: str,
) -> None:
    """The engine's Arrow copy of the hot rows (one COPY as CSV, parsed by pyarrow) and,
    after compaction, its segments hold exactly what the events table held: NULL
    apart from empty strings, commas, quotes, new lines and other text in ids and the
    JSON, booleans, the range's bounds, and at most ``hot_limit`` rows."""
    import json

    import duckdb

    from innkt_analytics.server.storage._pg_engine import PgEngineSettings
    from innkt_analytics.server.storage._segments import HOT_COLUMNS

    texts = ["", "a,b", 'say "hi"', "two\nlines", "é ☃ 𝄞", "  ", "NULL", "\\N", "t"]
    rows = []
    for i, text in enumerate(texts):
        doc = {"eventId": f"e{i}", "properties": {"t": text, "n": i}}
        rows.append(
            row(
                f"e{i}",
                event_type=text or "page",
                session_id=text,
                user_id=None if i % 2 else text,
                anonymous_id=text if i % 2 else None,
                corrected=NOW + i,
                sent_at=None if i % 3 else NOW,
                future=i % 4 == 0,
                payload=json.dumps(doc, ensure_ascii=i % 2 == 0).encode(),
            )
        )
    rows.append(row("late", corrected=NOW - 10 * DAY))
    columns = ", ".join(
        "convert_from(payload, 'UTF8')" if c == "payload" else c for c in HOT_COLUMNS
    )
    recent = EventFilter(since=NOW - DAY)

    def stored() -> list[tuple[Any, ...]]:
        return sorted(
            sql(
                pg_database,
                f"SELECT {columns} FROM events WHERE project = 'p' AND corrected >= %s",
                (NOW - DAY,),
            ),
            key=lambda r: r[2],
        )

    async def body(s: PostgresStorage) -> None:
        await s.insert_events("p", rows)
        await s.insert_events("q", [row("other")])
        want = stored()
        assert len(want) == len(texts)
        hot = (await s.snapshot("p", recent, HOT_COLUMNS)).hot
        assert sorted(tuple(r.values()) for r in hot.to_pylist()) == sorted(want)
        bare = (await s.snapshot("p", EventFilter(), ("event_id", "corrected"))).hot
        assert bare.column_names == ["event_id", "corrected"]
        assert bare.num_rows == len(rows)
        assert (await s.snapshot("p", EventFilter(), HOT_COLUMNS, hot_limit=3)).hot.num_rows == 3
        assert (await s.snapshot("none", EventFilter(), HOT_COLUMNS)).hot.num_rows == 0

        await s.compact_now()
        assert sql(pg_database, "SELECT count(*) FROM events") == [(0,)]
        snap = await s.snapshot("p", recent, HOT_COLUMNS)
        assert snap.hot.num_rows == 0
        assert snap.segments
        files = [seg.path for seg in snap.segments]
        cold = duckdb.sql(
            f"SELECT {', '.join(HOT_COLUMNS)} FROM read_parquet({files!r})"
            f" WHERE project = 'p' AND corrected >= {NOW - DAY}"
        ).fetchall()
        assert sorted(cold) == want

    run(
        PostgresStorage(pg_database, engine=PgEngineSettings(interval=None)),
        body,
    )
