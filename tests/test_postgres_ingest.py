"""The group insert core of the PostgreSQL storage, without PostgreSQL.

``GroupInserter`` is driven here by a small in-memory store with the same
contract as the real statement (store new keys, return them); the real
statement runs in test_storage_contract.py and test_postgres_storage.py.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from innkt_analytics.server.storage import EventRow
from innkt_analytics.server.storage._pg_ingest import (
    GroupInserter,
    Key,
    clean_text,
    copy_records,
    insert_args,
    merge,
    split,
    uuid_key,
)
from innkt_analytics.server.storage._pg_schema import (
    CANONICAL_UUID,
    PartitionWindow,
    month_start,
    partitions_to_create,
)
from innkt_analytics.shared._exceptions import StorageError


def row(event_id: str, payload: bytes = b"{}") -> EventRow:
    return EventRow(event_id, "t", None, None, None, 1, None, 2, 3, False, payload)


class MemoryStore:
    """Stores keys like the INSERT statement does; ``fail`` makes the next call fail."""

    def __init__(self) -> None:
        self.keys: set[Key] = set()
        self.groups: list[int] = []
        self.fail = False

    async def execute(self, rows: list[tuple[str, EventRow]]) -> set[Key]:
        await asyncio.sleep(0.002)  # a statement takes a while; callers pile up meanwhile
        self.groups.append(len(rows))
        if self.fail:
            self.fail = False
            raise StorageError("PostgreSQL unavailable")
        new = {(clean_text(p), clean_text(r.event_id)) for p, r in rows} - self.keys
        self.keys |= new
        return new


def test_merge_keeps_the_first_of_each_key_and_remembers_its_batch() -> None:
    rows, owners = merge(
        [
            ("p", [row("a", b"1"), row("b"), row("a", b"2")]),
            ("p", [row("b"), row("c")]),
            ("q", [row("a", b"3")]),
        ]
    )
    assert [(p, r.event_id, r.payload) for p, r in rows] == [
        ("p", "a", b"1"),
        ("p", "b", b"{}"),
        ("p", "c", b"{}"),
        ("q", "a", b"3"),
    ]
    assert owners == {
        ("p", "a"): (0, "a"),
        ("p", "b"): (0, "b"),
        ("p", "c"): (1, "c"),
        ("q", "a"): (2, "a"),
    }
    assert split({("p", "b"), ("q", "a"), ("p", "c")}, owners, 3) == [{"b"}, {"c"}, {"a"}]


def test_nul_characters_are_stored_as_replacement_characters_and_reported_as_sent() -> None:
    rows, owners = merge([("p", [row("a\x00b"), row("a\ufffdb")])])
    assert len(rows) == 1  # the same id once stored
    assert insert_args(rows)[1] == ["a\ufffdb"]
    assert split({("p", "a\ufffdb")}, owners, 1) == [{"a\x00b"}]
    assert clean_text("plain") == "plain"


def test_concurrent_batches_share_statements_and_each_event_is_new_once() -> None:
    store = MemoryStore()

    async def main() -> list[set[str]]:
        inserter = GroupInserter(store.execute, max_inflight=2)
        batches = [[row(f"e{(i * 3 + j) % 25}") for j in range(10)] for i in range(20)]
        results = await asyncio.gather(*(inserter.insert("p", b) for b in batches))
        await inserter.close()
        return list(results)

    results = asyncio.run(main())
    assert len(store.groups) < 20  # merged
    assert max(store.groups) > 10
    assert sum(len(r) for r in results) == len(set().union(*results)) == 25
    assert store.keys == {("p", f"e{i}") for i in range(25)}


def test_a_failed_statement_fails_its_callers_and_the_next_group_works() -> None:
    store = MemoryStore()

    async def main() -> tuple[list[object], set[str]]:
        inserter = GroupInserter(store.execute, max_inflight=1)
        store.fail = True
        first = await asyncio.gather(
            *(inserter.insert("p", [row(f"x{i}")]) for i in range(3)), return_exceptions=True
        )
        again = await inserter.insert("p", [row("x0"), row("x1")])
        return list(first), again

    first, again = asyncio.run(main())
    # the three were queued together, so they shared the failing statement
    assert all(isinstance(r, StorageError) for r in first)
    assert store.groups == [3, 2]
    assert again == {"x0", "x1"}  # nothing of the failed group was stored


def test_a_caller_that_goes_away_does_not_disturb_the_others() -> None:
    store = MemoryStore()

    async def main() -> set[str]:
        inserter = GroupInserter(store.execute, max_inflight=1)
        busy = asyncio.create_task(inserter.insert("p", [row("first")]))
        await asyncio.sleep(0)  # the first statement is in flight
        leaving = asyncio.create_task(inserter.insert("p", [row("gone")]))
        staying = asyncio.create_task(inserter.insert("p", [row("kept")]))
        await asyncio.sleep(0)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert await busy == {"first"}
        return await staying

    assert asyncio.run(main()) == {"kept"}
    assert ("p", "gone") not in store.keys  # never acknowledged, never stored


def test_canonical_uuids_are_told_apart_exactly_as_postgresql_tells_them() -> None:
    # The same regular expression runs in innkt_uuid_key; uuid::text prints this form,
    # so an id stored as a uuid reads back as the very string that was sent.
    u = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    assert uuid_key(u) == u
    for other in (u.upper(), u.replace("-", ""), "{" + u + "}", u + "\n", u[:-1] + "g", "e1"):
        assert uuid_key(other) is None


def test_copy_input_splits_the_ids_and_sorts_each_table() -> None:
    u1, u2 = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "00000000-0000-4000-8000-000000000000"
    copy = copy_records([("p", row(u1)), ("p", row("b\x00")), ("p", row(u2)), ("o", row("a"))])
    assert copy.uuids == [("p", u2), ("p", u1)]
    assert copy.ids == [("o", "a"), ("p", "b\ufffd")]
    assert copy.keys == {("p", u1), ("p", u2), ("p", "b\ufffd"), ("o", "a")}
    assert [e[1] for e in copy.events] == [u1, "b\ufffd", u2, "a"]  # arrival order
    assert insert_args([("p", row(u1)), ("p", row("x"))])[-1] == [u1, None]


@given(
    st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.text(alphabet="0123456789abcdefABCDEF-x{} \n", min_size=30, max_size=40),
        st.uuids().map(lambda u: str(u).replace("-", "")[:32].ljust(36, "-")),
        st.tuples(st.uuids(), st.integers(0, 35), st.sampled_from("0aA-x\n")).map(
            lambda t: str(t[0])[: t[1]] + t[2] + str(t[0])[t[1] + 1 :]  # one character changed
        ),
    )
)
def test_uuid_key_is_the_regular_expression_postgresql_runs(event_id: str) -> None:
    expected = event_id if re.fullmatch(CANONICAL_UUID, event_id) else None
    assert uuid_key(event_id) == expected


@given(st.lists(st.integers(-(10**12), 4 * 10**12), max_size=50), st.integers(0, 4 * 10**12))
def test_partitions_to_create_is_the_months_of_the_rows_in_the_window(
    corrected: list[int], now: int
) -> None:
    window = PartitionWindow(past_months=2, future_months=1)
    low, high = window.bounds(now)
    known = {month_start(now)}
    expected = {month_start(ms) for ms in corrected if low <= ms < high} - known
    assert partitions_to_create(corrected, known, now, window) == sorted(expected)
