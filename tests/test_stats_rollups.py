"""Stats from the segments' rollups (``storage/_rollups.py``) against a pure-Python
count of the same events.

The rollups answer whole minutes; the edge minutes of a range, the hot rows and
segments left without a rollup (a small or zero memory budget) are read as events.
Every answer must be the one the events give, whichever part answers it: ranges that
start or end inside a minute, a range inside one minute, events before 1970, an
event type filter, persons, two projects.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest

from innkt_analytics.server.storage import EventFilter, EventRow, SQLiteStorage
from innkt_analytics.server.storage._base import Stats
from innkt_analytics.server.storage._rollups import Rollups
from innkt_analytics.shared._protocol import _MAX_MS, _MIN_MS
from tests.test_storage_contract import row

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_764_806_400_000  # 2025-12-04T00:00Z
TYPES = ("page", "click", "signup", "purchase")


def _events(rng: random.Random, n: int, tag: str) -> list[EventRow]:
    out = []
    for i in range(n):
        broken = rng.random() < 0.05  # a broken clock: before 1970
        at = -rng.randrange(3 * DAY) if broken else T0 + rng.randrange(3 * DAY)
        if rng.random() < 0.01:  # the protocol's extremes: years 1 and 9999
            at = rng.choice((_MIN_MS, _MAX_MS - rng.randrange(HOUR)))
        user = rng.randrange(40)
        kind = rng.random()
        out.append(
            row(
                f"{tag}{i}",
                event_type=rng.choice(TYPES),
                session_id=None if kind < 0.1 else f"s{user}-{at // (7 * MINUTE)}",
                user_id=f"u{user}" if kind > 0.4 else None,
                anonymous_id=f"a{user}-{user % 3}" if kind < 0.7 else None,
                corrected=at,
            )
        )
    return out


def _expected(
    events: list[EventRow], flt: EventFilter, bucket: int, roots: Mapping[str, str]
) -> Stats:
    chosen = [
        e
        for e in events
        if (flt.since is None or e.corrected >= flt.since)
        and (flt.until is None or e.corrected < flt.until)
        and (flt.event_type is None or e.event_type == flt.event_type)
    ]
    actors = {a for e in chosen if (a := e.user_id or e.anonymous_id) is not None}
    series = Counter(e.corrected // bucket * bucket for e in chosen)  # Python's // floors
    return Stats(
        total=len(chosen),
        by_event_type=dict(Counter(e.event_type for e in chosen)),
        series=sorted(series.items()),
        unique_sessions=len({e.session_id for e in chosen if e.session_id is not None}),
        unique_users=len({roots.get(a, a) for a in actors}),
    )


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[SQLiteStorage, list[EventRow]]:
    """Events of project ``p`` in segments (two compactions) and in the hot log, and a
    few of project ``q`` everywhere."""
    path = Path(tmp_path_factory.mktemp("rollups")) / "s.db"
    storage = SQLiteStorage(str(path))
    storage.open_sync()
    rng = random.Random(7)
    mine = _events(rng, 3000, "e")
    other = _events(rng, 300, "o")

    async def fill() -> None:
        await storage.insert_events("p", mine[:1500])
        await storage.insert_events("q", other[:200])
        await asyncio.to_thread(storage.compact_sync)
        await storage.insert_events("p", mine[1500:2500])
        await asyncio.to_thread(storage.compact_sync)
        await storage.insert_events("p", mine[2500:])
        await storage.insert_events("q", other[200:])

    asyncio.run(fill())
    return storage, mine


RANGES = [
    (None, None),
    (T0, T0 + 2 * DAY),  # whole minutes: the rollups alone
    (T0 + 17 * MINUTE + 1234, T0 + DAY + 3 * HOUR + 59_999),  # edges inside minutes
    (T0 + 5 * MINUTE + 10, T0 + 5 * MINUTE + 50_000),  # inside one minute
    (-DAY - 1, T0 + HOUR),  # across 1970, from inside a minute
    (None, T0 + 90 * MINUTE + 7),
    (T0 + DAY + 1, None),
]


@pytest.mark.parametrize("budget", [1 << 30, 0, 4_000])
@pytest.mark.parametrize(("since", "until"), RANGES)
def test_stats_are_the_events_counts(
    filled: tuple[SQLiteStorage, list[EventRow]],
    budget: int,
    since: int | None,
    until: int | None,
) -> None:
    storage, events = filled
    storage.rollups = Rollups(budget)
    persons = {"a1-1": "u1", "u1": "u1", "a2-2": "a2-2", "u7": "a2-2"}
    for event_type in (None, "click"):
        for bucket in (MINUTE, HOUR, DAY):
            flt = EventFilter(since=since, until=until, event_type=event_type)
            for roots in ({}, persons):
                got = asyncio.run(storage.stats("p", flt, bucket, persons=roots or None))
                want = _expected(events, flt, bucket, roots)
                assert got == want, (flt, bucket, roots)
    held = storage.rollups.nbytes
    assert held <= max(budget, 0)
    if budget >= 1 << 30:
        assert held > 0  # the rollups were used, not only the events


def test_rollups_of_replaced_segments_are_dropped(tmp_path: Path) -> None:
    storage = SQLiteStorage(str(tmp_path / "s.db"))
    storage.open_sync()
    rng = random.Random(3)
    events = _events(rng, 400, "e")

    async def run() -> None:
        await storage.insert_events("p", events[:200])
        await asyncio.to_thread(storage.compact_sync)
        flt = EventFilter()
        assert await storage.stats("p", flt, HOUR) == _expected(events[:200], flt, HOUR, {})
        before = storage.rollups.nbytes
        assert before > 0
        # a user's events deleted: their segment is rewritten under a new name
        await storage.delete_user("p", "u1", T0)
        left = [e for e in events[:200] if e.user_id != "u1"]
        assert await storage.stats("p", flt, HOUR) == _expected(left, flt, HOUR, {})
        await storage.insert_events("p", events[200:])
        await asyncio.to_thread(storage.compact_sync)
        rest = left + events[200:]
        assert await storage.stats("p", flt, HOUR) == _expected(rest, flt, HOUR, {})

    try:
        asyncio.run(run())
        listed = {str(p) for p in Path(storage.columnar.dir).glob("seg-*.parquet")}
        assert set(storage.rollups._held) <= listed
    finally:
        storage.close_sync()
