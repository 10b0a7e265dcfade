"""Ingest into PostgreSQL: one transaction per group of concurrent batches.

The fast path is PostgreSQL's bulk path: in one transaction, COPY the ids into
``event_uuids`` (canonical UUIDs, as 16-byte uuids) and ``event_ids`` (any
other id; see ``_pg_schema``) and the rows into ``events``. A duplicate makes
an id COPY fail on the primary key; the transaction is then rolled back and the slow path,
``INSERT``, stores the rows that are new (``ON CONFLICT DO NOTHING``). Batches
are nearly always new, so nearly every event goes the fast way; resends after
a lost answer cost one failed COPY more.

``GroupInserter`` is the application's group commit. Requests that arrive
while ``max_inflight`` statements are already running wait in a queue; the
next free slot sends everything queued (up to ``max_rows``) as one statement
and one commit, then tells each caller which of *its* events were new. Under
light load a batch goes alone and at once; under heavy load statements grow
instead of multiplying, which costs PostgreSQL less CPU per event and fewer
WAL flushes, and keeps its lock and WAL contention down.

``merge`` and ``split`` are the pure part: merging keeps the first of repeated
(project, eventId) pairs, in arrival order, and ``split`` gives each stored
pair to the one caller whose row was stored — so exactly one caller ever
reports an event as newly stored, as with separate statements.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from innkt_analytics.server.storage._base import EventRow
from innkt_analytics.shared._exceptions import StorageError

__all__ = [
    "EVENT_COLUMNS",
    "FORGET_IDS",
    "INSERT",
    "CopyInput",
    "GroupInserter",
    "Key",
    "clean_text",
    "copy_records",
    "insert_args",
    "merge",
    "split",
    "uuid_key",
]

Key = tuple[str, str]  # (project, event_id)

EVENT_COLUMNS: Final = (
    "project",
    "event_id",
    "event_type",
    "session_id",
    "user_id",
    "anonymous_id",
    "ts",
    "sent_at",
    "received_at",
    "corrected",
    "future",
    "payload",
)

#: the slow path: the dedup inserts and the event insert chained in one statement
INSERT: Final = """
WITH input AS (
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::bool[], $12::bytea[], $13::uuid[]
    ) WITH ORDINALITY AS u(project, event_id, event_type, session_id, user_id, anonymous_id,
                           ts, sent_at, received_at, corrected, future, payload, uid, ord)
), fresh_uuids AS (
    -- sorted as copy_records sorts (code points = UTF-8 bytes = "C"; a canonical
    -- UUID's text sorts as its bytes), so concurrent transactions sharing ids wait
    -- on them in one order and cannot deadlock: uuids first, then other ids
    INSERT INTO event_uuids (project, id)
    SELECT project, uid FROM input WHERE uid IS NOT NULL ORDER BY project COLLATE "C", uid
    ON CONFLICT (project, id) DO NOTHING
    RETURNING project, id
), fresh_ids AS (
    INSERT INTO event_ids (project, event_id)
    SELECT project, event_id FROM input WHERE uid IS NULL
    ORDER BY project COLLATE "C", event_id COLLATE "C"
    ON CONFLICT (project, event_id) DO NOTHING
    RETURNING project, event_id
)
INSERT INTO events (project, event_id, event_type, session_id, user_id, anonymous_id,
                    ts, sent_at, received_at, corrected, future, payload)
SELECT i.project, i.event_id, i.event_type, i.session_id, i.user_id, i.anonymous_id,
       i.ts, i.sent_at, i.received_at, i.corrected, i.future, i.payload
FROM input i
LEFT JOIN fresh_uuids u ON u.project = i.project AND u.id = i.uid
LEFT JOIN fresh_ids t ON t.project = i.project AND t.event_id = i.event_id
WHERE u.id IS NOT NULL OR t.event_id IS NOT NULL
ORDER BY i.ord
RETURNING project, event_id
"""

#: appended to a ``WITH gone AS (... RETURNING project, event_id)``: forgets the
#: ids of those events in both dedup tables (so a resend is stored again) and
#: selects how many ids went
FORGET_IDS: Final = """
, forget_uuids AS (
    DELETE FROM event_uuids d USING gone
    WHERE d.project = gone.project AND d.id = innkt_uuid_key(gone.event_id)
    RETURNING 1
), forget_ids AS (
    DELETE FROM event_ids d USING gone
    WHERE d.project = gone.project AND d.event_id = gone.event_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM forget_uuids) + (SELECT count(*) FROM forget_ids)
"""

_HEX_OR_DASH: Final = "0123456789abcdef-"


def uuid_key(event_id: str) -> str | None:
    """``event_id`` when it goes to ``event_uuids`` (a canonical UUID), else None.

    The same test as the database's ``innkt_uuid_key`` (``CANONICAL_UUID``; the
    tests hold them equal), in string methods: the regular expression cost 5 %
    of a server's CPU under ingest (py-spy)."""
    if (
        len(event_id) == 36
        and event_id[8] == event_id[13] == event_id[18] == event_id[23] == "-"
        and event_id.count("-") == 4
        and not event_id.strip(_HEX_OR_DASH)
    ):
        return event_id
    return None


def clean_text(value: str) -> str:
    """PostgreSQL text cannot hold U+0000 (SQLite can): store U+FFFD in its place,
    the same way every time, so deduplication and filters still match."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _opt(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def insert_args(rows: Sequence[tuple[str, EventRow]]) -> tuple[list[object], ...]:
    """The column arrays ``INSERT`` takes, in its parameter order."""
    ids = [clean_text(r.event_id) for _, r in rows]
    return (
        [clean_text(p) for p, _ in rows],
        list(ids),
        [clean_text(r.event_type) for _, r in rows],
        [_opt(r.session_id) for _, r in rows],
        [_opt(r.user_id) for _, r in rows],
        [_opt(r.anonymous_id) for _, r in rows],
        [r.timestamp for _, r in rows],
        [r.sent_at for _, r in rows],
        [r.received_at for _, r in rows],
        [r.corrected for _, r in rows],
        [r.future for _, r in rows],
        [r.payload for _, r in rows],
        [uuid_key(i) for i in ids],
    )


@dataclass(frozen=True, slots=True)
class CopyInput:
    """The fast path's COPY input: the keys of ``event_uuids`` and of ``event_ids``
    (each sorted, so concurrent copies wait on shared ids in one order), the
    ``events`` rows in ``EVENT_COLUMNS`` order, and every key as stored."""

    uuids: list[tuple[str, str]]
    ids: list[tuple[str, str]]
    events: list[tuple[object, ...]]
    keys: set[Key]


def copy_records(rows: Sequence[tuple[str, EventRow]]) -> CopyInput:
    """What the fast path COPYs for ``rows`` (merged: each key once)."""
    uuids: list[tuple[str, str]] = []
    ids: list[tuple[str, str]] = []
    events: list[tuple[object, ...]] = []
    for project, r in rows:
        project, event_id = clean_text(project), clean_text(r.event_id)
        (uuids if uuid_key(event_id) else ids).append((project, event_id))
        events.append(
            (
                project,
                event_id,
                clean_text(r.event_type),
                _opt(r.session_id),
                _opt(r.user_id),
                _opt(r.anonymous_id),
                r.timestamp,
                r.sent_at,
                r.received_at,
                r.corrected,
                r.future,
                r.payload,
            )
        )
    keys = {*uuids, *ids}
    uuids.sort()
    ids.sort()
    return CopyInput(uuids, ids, events, keys)


@dataclass(eq=False)
class _Waiter:
    project: str
    rows: Sequence[EventRow]
    future: asyncio.Future[set[str]]
    stored: set[str] = field(default_factory=set)


def merge(
    batches: Sequence[tuple[str, Sequence[EventRow]]],
) -> tuple[list[tuple[str, EventRow]], dict[Key, tuple[int, str]]]:
    """All rows as (project, row), the first of each key kept; and for each key
    (as stored, see ``clean_text``) the batch that owns it and its id as sent."""
    owners: dict[Key, tuple[int, str]] = {}
    rows: list[tuple[str, EventRow]] = []
    for index, (project, batch) in enumerate(batches):
        for row in batch:
            key = (clean_text(project), clean_text(row.event_id))
            if key not in owners:
                owners[key] = (index, row.event_id)
                rows.append((project, row))
    return rows, owners


def split(stored: set[Key], owners: dict[Key, tuple[int, str]], count: int) -> list[set[str]]:
    """The newly stored event ids (as sent) of each of ``count`` merged batches."""
    out: list[set[str]] = [set() for _ in range(count)]
    for key in stored:
        index, event_id = owners[key]
        out[index].add(event_id)
    return out


class GroupInserter:
    """Runs ``execute`` on merged batches, at most ``max_inflight`` at a time.

    ``execute`` stores (project, row) pairs and returns the keys it stored; it
    may raise ``StorageError``, which every caller of that group receives.
    """

    def __init__(
        self,
        execute: Callable[[list[tuple[str, EventRow]]], Awaitable[set[Key]]],
        *,
        max_inflight: int,
        max_rows: int = 2000,
    ) -> None:
        self._execute = execute
        self._max_inflight = max_inflight
        self._max_rows = max_rows
        self._queue: collections.deque[_Waiter] = collections.deque()
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def insert(self, project: str, rows: Sequence[EventRow]) -> set[str]:
        """The ids among ``rows`` that were newly stored. Raises ``StorageError``."""
        waiter = _Waiter(project, rows, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        if self._inflight < self._max_inflight:
            self._inflight += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await waiter.future

    def _take(self) -> list[_Waiter]:
        group: list[_Waiter] = []
        size = 0
        while self._queue and (not group or size + len(self._queue[0].rows) <= self._max_rows):
            waiter = self._queue.popleft()
            if waiter.future.done():
                continue  # its caller went away before anything was stored
            group.append(waiter)
            size += len(waiter.rows)
        return group

    async def _drain(self) -> None:
        try:
            while self._queue:
                group = self._take()
                if not group:
                    continue
                rows, owners = merge([(w.project, w.rows) for w in group])
                try:
                    stored = await self._execute(rows)
                except StorageError as exc:
                    for w in group:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    continue
                except BaseException:
                    for w in group:
                        if not w.future.done():
                            w.future.set_exception(StorageError("insert interrupted"))
                    raise
                for w, ids in zip(group, split(stored, owners, len(group)), strict=True):
                    if not w.future.done():
                        w.future.set_result(ids)
        finally:
            self._inflight -= 1

    async def close(self) -> None:
        """Wait for the statements in flight."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
