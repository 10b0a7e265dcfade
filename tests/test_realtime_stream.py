"""The hub's event log and send budget, without sockets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from innkt_analytics.server._realtime_stream import EventLog, SendBudget


class Reader:
    def __init__(self) -> None:
        self.cursor = 0
        self.cursor_events = 0
        self.woken = 0

    def on_append(self) -> None:
        self.woken += 1


def batch(*ids: str, type: str = "t") -> tuple[list[bytes], list[str], str]:
    raws = [json.dumps({"eventId": i, "eventType": type}).encode() for i in ids]
    return raws, [type] * len(ids), '{"type":"event","id":"x","timestamp":"t"'


def ids_of(text: str) -> list[str]:
    return [e["eventId"] for e in json.loads(f"[{text}]")]


def test_readers_start_at_the_end_and_read_in_order() -> None:
    log = EventLog(max_entries=10, max_bytes=1 << 20)
    log.append(*batch("old"))
    reader = Reader()
    log.attach(reader)
    assert not log.pending(reader)
    log.append(*batch("a", "b"))
    log.append(*batch("c"))
    assert log.pending(reader)
    lost, entries = log.read(reader)
    assert lost == 0
    assert [ids_of(e.text) for e in entries] == [["a", "b"], ["c"]]
    assert not log.pending(reader)
    assert log.read(reader) == (0, [])


def test_idle_readers_are_woken_once_per_wait() -> None:
    log = EventLog(10, 1 << 20)
    idle, busy = Reader(), Reader()
    log.attach(idle)
    log.attach(busy)
    log.idle.add(idle)
    log.append(*batch("a"))
    log.append(*batch("b"))
    assert (idle.woken, busy.woken) == (1, 0)  # the second append found nobody idle
    log.append([], [], "")  # an empty batch is not an entry
    assert log.end == 2


def test_a_lagging_reader_learns_exactly_how_many_events_it_lost() -> None:
    log = EventLog(max_entries=3, max_bytes=1 << 20)
    reader = Reader()
    log.attach(reader)
    log.append(*batch("a", "b"))
    log.append(*batch("c"))
    log.append(*batch("d", "e", "f"))
    log.append(*batch("g"))  # "a","b" evicted
    log.append(*batch("h"))  # "c" evicted
    lost, entries = log.read(reader)
    assert lost == 3
    assert [i for e in entries for i in ids_of(e.text)] == ["d", "e", "f", "g", "h"]


def test_byte_bound_keeps_at_least_the_newest_entry() -> None:
    log = EventLog(max_entries=100, max_bytes=10)
    reader = Reader()
    log.attach(reader)
    log.append(*batch("first"))
    log.append(*batch("second"))
    assert len(log.entries) == 1
    lost, entries = log.read(reader)
    assert lost == 1
    assert ids_of(entries[0].text) == ["second"]


def test_reads_merge_up_to_the_limit_but_always_progress() -> None:
    log = EventLog(100, 1 << 20)
    reader = Reader()
    log.attach(reader)
    for i in range(5):
        log.append(*batch(f"e{i}"))
    size = log.entries[0].size
    _, first = log.read(reader, limit=size * 2)
    assert len(first) == 2
    _, second = log.read(reader, limit=1)
    assert len(second) == 1  # larger than the limit alone: still sent
    assert log.pending_bytes(reader) == size * 2


def test_select_filters_by_type() -> None:
    log = EventLog(10, 1 << 20)
    raws = [json.dumps({"eventId": str(i), "eventType": t}).encode() for i, t in enumerate("abab")]
    log.append(raws, list("abab"), '{"type":"event"')
    entry = log.entries[0]
    text, n = entry.select(frozenset({"b"}))
    assert (ids_of(text), n) == (["1", "3"], 2)
    assert entry.select(frozenset({"zzz"})) == ("", 0)
    assert entry.select(None) == (entry.text, 4)
    assert json.loads(entry.frame + ',"seq":1}')["payload"]["events"] == json.loads(
        f"[{entry.text}]"
    )


@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=60),
    max_entries=st.integers(1, 10),
    reads=st.lists(st.integers(0, 60), max_size=10),
)
def test_every_event_is_either_delivered_or_counted_lost(
    sizes: list[int], max_entries: int, reads: list[int]
) -> None:
    log = EventLog(max_entries, 1 << 30)
    reader = Reader()
    log.attach(reader)
    delivered: list[str] = []
    lost_total = 0
    n = 0
    read_at = set(reads)
    for step, size in enumerate(sizes):
        log.append(*batch(*(f"{n + k}" for k in range(size))))
        n += size
        if step in read_at:
            lost, entries = log.read(reader, limit=64)
            lost_total += lost
            delivered += [i for e in entries for i in ids_of(e.text)]
    while log.pending(reader):
        lost, entries = log.read(reader)
        lost_total += lost
        delivered += [i for e in entries for i in ids_of(e.text)]
    assert len(delivered) + lost_total == n
    assert [int(i) for i in delivered] == sorted(int(i) for i in delivered)
    # what was lost is a prefix of each gap: delivered ids are always the newest available
    assert delivered[-1] == str(n - 1)


def test_send_budget_allows_a_burst_then_paces() -> None:
    budget = SendBudget(frames_per_second=100, bytes_per_second=1_000_000, now=0.0)
    waits = [budget.take_frame(0.0) for _ in range(100)]  # a second of burst
    assert waits == [0.0] * 100
    assert budget.take_frame(0.0) == pytest.approx(0.01)
    assert budget.take_frame(0.0) == pytest.approx(0.02)
    assert budget.take_frame(2.0) == 0.0  # tokens come back with time
    assert budget.take_bytes(2.0, 400_000) == 0.0
    assert budget.take_bytes(2.0, 1_100_000) == pytest.approx(0.5)
    assert budget.take_bytes(4.0, 1) == 0.0  # the debt was paid back by then
    assert budget.waited == pytest.approx(0.53)


def test_send_budget_burst_can_exceed_a_second_of_rate() -> None:
    budget = SendBudget(frames_per_second=10, bytes_per_second=1e9, now=0.0, burst_frames=30)
    assert [budget.take_frame(0.0) for _ in range(30)] == [0.0] * 30
    assert budget.take_frame(0.0) == pytest.approx(0.1)


def test_only_newest_is_the_last_entry_when_nothing_else_is_pending() -> None:
    log = EventLog(max_entries=2, max_bytes=1 << 20)
    reader = Reader()
    log.attach(reader)
    assert log.only_newest(reader) is None  # nothing to read
    log.append(*batch("a"))
    entry = log.only_newest(reader)
    assert entry is not None
    assert ids_of(entry.text) == ["a"]
    log.advance(reader, entry)
    assert not log.pending(reader)
    assert reader.cursor_events == 1
    log.append(*batch("b"))
    log.append(*batch("c"))
    assert log.only_newest(reader) is None  # two entries pending: the writer merges them
    log.append(*batch("d"))  # "b" is evicted: the reader lost one event
    assert log.only_newest(reader) is None  # a loss must be announced first
    lost, entries = log.read(reader)
    assert lost == 1
    assert [ids_of(e.text) for e in entries] == [["c"], ["d"]]


def test_try_take_charges_only_what_needs_no_wait() -> None:
    budget = SendBudget(frames_per_second=10, bytes_per_second=100, now=0.0, burst_frames=2)
    assert budget.try_take(0.0, 60)
    assert not budget.try_take(0.0, 60)  # 40 bytes left: nothing is charged
    assert budget.try_take(0.0, 40)
    assert not budget.try_take(0.0, 0)  # no frame left
    assert budget.waited == 0.0
    assert budget.try_take(0.1, 10)  # a frame and 10 bytes came back
    assert budget.take_frame(0.1) == pytest.approx(0.1)  # the debt-based path still works
