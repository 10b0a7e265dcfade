"""Partition DDL for the PostgreSQL storage: create months, retire expired ones.

Retention retires a month in two steps so no step holds a lock that stalls
ingest for long:

1. ``retire``: in one short transaction, DETACH the partition from ``events``
   (new rows for that month fall into the default partition from then on),
   rename it ``events_retired_…`` and note it in ``innkt_retired``.
2. ``purge_retired``: forget its ids in the dedup tables (so a late resend is
   stored again, as after a row-by-row delete), rescue rows of other projects
   when only one project's retention retired it, and DROP it.

A crash between the steps leaves a row in ``innkt_retired``; the next
retention run finishes the job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

from innkt_analytics.server.storage._pg_ingest import FORGET_IDS
from innkt_analytics.server.storage._pg_schema import SEGMENT_LOCK, month_bounds, partition_name

__all__ = [
    "PARTITION_LOCK",
    "create_partitions",
    "delete_rows_before",
    "expired_partitions",
    "load_partitions",
    "purge_retired",
    "retire",
]

#: pg_advisory_xact_lock key serialising partition DDL across instances
PARTITION_LOCK: Final = 0x494E4B54_0002


async def _lock(conn: Any, *, segments: bool = True) -> None:
    """Partition DDL's locks, in this order everywhere: the storage engine's segment
    lock (no compaction reads or deletes the rows meanwhile), when the DDL moves or
    drops rows, then the partition lock."""
    if segments:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SEGMENT_LOCK)
    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)


async def load_partitions(conn: Any) -> set[int]:
    """Month starts (epoch ms) of the partitions attached to ``events``."""
    rows = await conn.fetch(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass AND c.relname <> 'events_default'"
    )
    # each bound reads "FOR VALUES FROM ('1793491200000') TO ('1796083200000')"
    return {int(r[0].split("(", 1)[1].split(")", 1)[0].strip("'")) for r in rows}


async def create_partitions(conn: Any, starts: Iterable[int]) -> set[int]:
    """Create the missing months among ``starts``; returns every attached month."""
    starts = list(starts)
    known = await load_partitions(conn)
    moving = False
    for start in starts:
        if start not in known and await _stranded(conn, start):
            moving = True
            break
    async with conn.transaction():
        # rows to move out of the default partition: no compaction may be reading
        # and deleting them meanwhile (a deadlock), so the segment lock first
        await _lock(conn, segments=moving)
        existing = await load_partitions(conn)
        for start in starts:
            if start not in existing:
                await _create_partition(conn, start)
                existing.add(start)
    return existing


async def _stranded(conn: Any, start: int) -> bool:
    """Whether the default partition holds rows of the month starting at ``start``."""
    low, high = month_bounds(start)
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM events_default WHERE corrected >= $1 AND corrected < $2)",
            low,
            high,
        )
    )


async def _create_partition(conn: Any, start: int) -> None:
    low, high = month_bounds(start)
    name = partition_name(start)
    if not await _stranded(conn, start):
        await conn.execute(
            f"CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ({low}) TO ({high})"
        )
        return
    # The month's rows arrived while it had no partition (outside the window, or
    # retired): move them out of the default, or PostgreSQL refuses the partition.
    await conn.execute(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS)")
    await conn.execute(
        f"WITH moved AS (DELETE FROM events_default WHERE corrected >= {low}"
        f" AND corrected < {high} RETURNING *) INSERT INTO {name} SELECT * FROM moved"
    )
    await conn.execute(
        f"ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ({low}) TO ({high})"
    )


async def expired_partitions(conn: Any, project: str | None, before: int) -> list[int]:
    """Months wholly before ``before`` that can go whole: for one project, only
    those holding no other project's rows."""
    expired = []
    for start in sorted(await load_partitions(conn)):
        if month_bounds(start)[1] > before:
            continue
        if project is not None and await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {partition_name(start)} WHERE project <> $1)",
            project,
        ):
            continue
        expired.append(start)
    return expired


async def retire(conn: Any, start: int, project: str | None) -> None:
    """Step 1: detach the month and queue it for ``purge_retired``."""
    name = partition_name(start)
    retired = f"events_retired_{name[len('events_') :]}_{time.time_ns()}"
    async with conn.transaction():
        await _lock(conn)
        if start not in await load_partitions(conn):
            return  # another instance got there first
        await conn.execute(f"ALTER TABLE events DETACH PARTITION {name}")
        await conn.execute(f"ALTER TABLE {name} RENAME TO {retired}")
        await conn.execute(
            "INSERT INTO innkt_retired (table_name, project) VALUES ($1, $2)", retired, project
        )


async def purge_retired(conn: Any) -> int:
    """Step 2 for every retired month; returns the events removed."""
    removed = 0
    for table, project in await conn.fetch("SELECT table_name, project FROM innkt_retired"):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SEGMENT_LOCK)
            claimed = await conn.fetchval(
                "SELECT table_name FROM innkt_retired WHERE table_name = $1 FOR UPDATE SKIP LOCKED",
                table,
            )
            if claimed is None:
                continue  # another instance is purging it
            if project is None:
                forgotten = await conn.fetchval(
                    f"WITH gone AS (SELECT project, event_id FROM {table})" + FORGET_IDS
                )
            else:
                # Rows of other projects arrived after the emptiness check: keep them.
                await conn.execute(
                    f"INSERT INTO events SELECT * FROM {table} WHERE project <> $1", project
                )
                forgotten = await conn.fetchval(
                    f"WITH gone AS (SELECT project, event_id FROM {table} WHERE project = $1)"
                    + FORGET_IDS,
                    project,
                )
            removed += int(forgotten)
            await conn.execute(f"DROP TABLE {table}")
            await conn.execute("DELETE FROM innkt_retired WHERE table_name = $1", table)
    return removed


async def delete_rows_before(conn: Any, project: str | None, before: int) -> int:
    """Row-by-row retention for what partitions could not take (ids too)."""
    if project is None:
        forgotten = await conn.fetchval(
            "WITH gone AS (DELETE FROM events WHERE corrected < $1 RETURNING project, event_id)"
            + FORGET_IDS,
            before,
        )
    else:
        forgotten = await conn.fetchval(
            "WITH gone AS (DELETE FROM events WHERE project = $1 AND corrected < $2"
            " RETURNING project, event_id)" + FORGET_IDS,
            project,
            before,
        )
    return int(forgotten)
