"""PostgreSQL's storage engine (``_pg_engine``): segments kept in PostgreSQL, read by
every instance from its own cache, across the hot/cold boundary.

The Storage contract over compacted PostgreSQL is in test_storage_contract.py
("postgres-cold"); these are what only this engine has: seqs committed out of order,
several instances and caches, the lock, migration of a v3 database.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from innkt_analytics.server._export import export_stream
from innkt_analytics.server.storage import EventFilter
from innkt_analytics.server.storage._pg_engine import SEGMENT_LOCK, PgEngineSettings
from innkt_analytics.server.storage._postgres import PostgresStorage
from tests.test_postgres_storage import old_database, sql
from tests.test_storage_contract import DAY, NOW, all_ids, row

pytestmark = pytest.mark.postgres

MANUAL = PgEngineSettings(interval=None, fanin=2, cache_grace=0)


def storage(
    url: str, cache: Path | None = None, settings: PgEngineSettings = MANUAL
) -> PostgresStorage:
    return PostgresStorage(
        url, engine=settings, segment_cache=None if cache is None else str(cache)
    )


async def exported(s: PostgresStorage, project: str) -> list[str]:
    chunks = [c async for c in export_stream(s, project, EventFilter(), "ndjson")]
    return [line for line in b"".join(chunks).decode().splitlines() if line]


def test_a_seq_committed_after_a_compaction_stays_hot_and_is_read_once(pg_database: str) -> None:
    # Ingest transactions commit in any order: one that took seq 1 may commit after
    # seqs 2..n were compacted. The compactor deletes only the rows it read.
    async def main() -> None:
        s = storage(pg_database)
        await s.open()
        slow = await asyncpg.connect(pg_database)
        try:
            tx = slow.transaction()
            await tx.start()
            await slow.execute(
                "INSERT INTO events (project, event_id, event_type, ts, received_at,"
                " corrected, payload) VALUES ('p', 'slow', 'page', $1, $1, $1, '{}')",
                NOW,
            )
            await slow.execute("INSERT INTO event_ids VALUES ('p', 'slow')")
            await s.insert_events("p", [row(f"e{i}") for i in range(5)])
            await s.compact_now()
            await tx.commit()
            ids = await all_ids(s, "p")
            assert sorted(ids) == sorted(["slow", *(f"e{i}" for i in range(5))])
            assert ids[0] == "slow"  # seq order across segments and hot rows
            assert sql(pg_database, "SELECT event_id FROM events") == [("slow",)]
            await s.compact_now()
            assert sorted(await all_ids(s, "p")) == sorted(ids)
            assert (await s.stats("p", EventFilter(), DAY)).total == 6
            assert sql(pg_database, "SELECT count(*) FROM events") == [(0,)]
        finally:
            await slow.close()
            await s.close()

    asyncio.run(main())


def test_two_instances_give_the_same_answers_from_their_own_caches(
    pg_database: str, tmp_path: Path
) -> None:
    async def main() -> None:
        a, b = storage(pg_database, tmp_path / "a"), storage(pg_database, tmp_path / "b")
        await a.open()
        await b.open()
        try:
            for i in range(4):
                await a.insert_events(
                    "p",
                    [
                        row(f"{i}-{k}", user_id=f"u{k % 3}", corrected=NOW - k * DAY)
                        for k in range(5)
                    ],
                )
                await a.compact_now()  # four segments, merged two at a time
            await b.insert_events("p", [row("hot", user_id="u9")])
            flt = EventFilter(since=NOW - 10 * DAY)
            assert await a.stats("p", flt, DAY) == await b.stats("p", flt, DAY)
            stats = await b.stats("p", flt, DAY)
            assert (stats.total, stats.unique_users) == (21, 4)
            assert await all_ids(a, "p") == await all_ids(b, "p")
            assert sorted(await exported(a, "p")) == sorted(await exported(b, "p"))
            assert len(await exported(b, "p")) == 21
            # b read the segment files from PostgreSQL into its own cache
            listed = {r[0] for r in sql(pg_database, "SELECT file FROM segments")}
            assert listed
            assert listed <= set(os.listdir(tmp_path / "b"))
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_a_cached_file_no_longer_listed_is_removed_after_the_grace(
    pg_database: str, tmp_path: Path
) -> None:
    async def main() -> None:
        s = storage(pg_database, tmp_path)
        await s.open()
        try:
            for i in range(2):
                await s.insert_events("p", [row(f"e{i}")])
                await s.compact_now()
            await s.stats("p", EventFilter(), DAY)  # lists the merged segment only
            s.engine.sweep()
            listed = {r[0] for r in sql(pg_database, "SELECT file FROM segments")}
            assert len(listed) == 1
            assert set(os.listdir(tmp_path)) == listed
        finally:
            await s.close()
        assert os.listdir(tmp_path)  # a cache directory given is kept

    asyncio.run(main())


def test_the_compactor_is_whoever_holds_the_lock(pg_database: str) -> None:
    # Another instance holding the segment lock: this one's background step skips;
    # released, the next step compacts.
    async def main() -> None:
        s = storage(pg_database, settings=PgEngineSettings(interval=None, compact_age=0))
        await s.open()
        other = await asyncpg.connect(pg_database)
        try:
            await s.insert_events("p", [row("a")])
            await other.execute("SELECT pg_advisory_lock($1)", SEGMENT_LOCK)
            assert not await s._run(lambda conn: s.engine.step(conn))
            assert sql(pg_database, "SELECT count(*) FROM events") == [(1,)]
            await other.execute("SELECT pg_advisory_unlock($1)", SEGMENT_LOCK)
            assert await s._run(lambda conn: s.engine.step(conn))
            assert sql(pg_database, "SELECT count(*) FROM events") == [(0,)]
            assert await all_ids(s, "p") == ["a"]
        finally:
            await other.close()
            await s.close()

    asyncio.run(main())


def test_the_background_loop_compacts_on_its_own(pg_database: str) -> None:
    async def main() -> None:
        s = storage(pg_database, settings=PgEngineSettings(interval=0.05, compact_age=0.1))
        await s.open()
        try:
            await s.insert_events("p", [row(f"e{i}") for i in range(10)])
            for _ in range(200):
                if sql(pg_database, "SELECT count(*) FROM events") == [(0,)]:
                    break
                await asyncio.sleep(0.05)
            assert sql(pg_database, "SELECT sum(rows) FROM segments") == [(10,)]
            health = await s.health()
            assert health.extra["segmentEvents"] == 10
            assert health.extra["compactorRunning"] is True
            assert sorted(await all_ids(s, "p")) == sorted(f"e{i}" for i in range(10))
        finally:
            await s.close()

    asyncio.run(main())


def test_a_version_3_database_is_migrated_and_its_rows_compacted(pg_database: str) -> None:
    old_database(pg_database, 3, ["v3-a", "v3-b"])

    async def main() -> None:
        s = storage(pg_database)
        await s.open()
        try:
            assert await all_ids(s, "p") == ["v3-a", "v3-b"]  # hot until compacted
            await s.compact_now()
            assert await all_ids(s, "p") == ["v3-a", "v3-b"]
            assert await s.insert_events("p", [row("v3-a"), row("new")]) == {"new"}
            assert await s.delete_user("p", "nobody", 1) == 0
        finally:
            await s.close()

    asyncio.run(main())
    assert sql(pg_database, "SELECT version FROM innkt_schema") == [(4,)]
    assert sql(pg_database, "SELECT sum(rows) FROM segments") == [(2,)]


def test_a_persons_ids_are_deleted_in_one_rewrite_of_each_segment(
    pg_database: str, tmp_path: Path
) -> None:
    # Deleting a person rewrites a segment holding several of its ids once, not once
    # per id (at 10M events one pass over every segment took 21-26 s).
    async def main() -> None:
        s = storage(pg_database, tmp_path, PgEngineSettings(interval=None))
        await s.open()
        try:
            await s.insert_events(
                "p", [row("a", user_id="u1"), row("b", anonymous_id="x1"), row("c")]
            )
            await s.compact_now()
            assert await s.delete_users("p", ["u1", "x1"], 1) == 2
            rewritten = [n for n in os.listdir(tmp_path) if n.startswith("seg-d")]
            assert len(rewritten) == 1
            assert await all_ids(s, "p") == ["c"]
        finally:
            await s.close()

    asyncio.run(main())


def test_an_idle_instance_fetches_the_segments_another_wrote(
    pg_database: str, tmp_path: Path
) -> None:
    async def main() -> None:
        writer = storage(pg_database, tmp_path / "w")
        idle = storage(
            pg_database, tmp_path / "idle", PgEngineSettings(interval=0.05, compact_age=3600)
        )
        await writer.open()
        await idle.open()
        try:
            for i in range(3):
                await writer.insert_events("p", [row(f"e{i}")])
                await writer.compact_now()
            listed = {r[0] for r in sql(pg_database, "SELECT file FROM segments")}
            for _ in range(200):  # the idle instance's loop, two files a step
                if listed <= set(os.listdir(tmp_path / "idle")):
                    break
                await asyncio.sleep(0.05)
            assert listed <= set(os.listdir(tmp_path / "idle"))
        finally:
            await writer.close()
            await idle.close()

    asyncio.run(main())
