"""The event queue, on real SQLite files (and the memory queue under the same contract)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from innkt_analytics.sdk._config import OverflowPolicy
from innkt_analytics.sdk._queue import (
    EventQueue,
    MemoryQueue,
    SQLiteQueue,
    encode_records,
    event_ids_of,
    split_chunk,
)
from innkt_analytics.shared._exceptions import StorageError

QueueFactory = Callable[..., EventQueue]


@pytest.fixture(params=["sqlite", "memory"])
def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueFactory]:
    opened: list[EventQueue] = []

    def make(
        max_events: int = 1000,
        max_bytes: int = 1 << 20,
        policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST,
    ) -> EventQueue:
        if request.param == "sqlite":
            queue: EventQueue = SQLiteQueue(tmp_path / "q.sqlite3", max_events, max_bytes, policy)
        else:
            queue = MemoryQueue(max_events, max_bytes, policy)
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()


def items(n: int, start: int = 0, size: int = 20) -> list[tuple[str, bytes]]:
    out = []
    for i in range(start, start + n):
        eid = f"e{i}"
        pad = "x" * max(0, size - 26 - len(eid))
        out.append((eid, f'{{"eventId":"{eid}","p":"{pad}"}}'.encode()))
    return out


def put(queue: EventQueue, batch: list[tuple[str, bytes]], chunk: int = 10) -> int:
    return queue.put(batch, time.time(), chunk_events=chunk, chunk_bytes=1 << 20).last_rowid


def drain_ids(queue: EventQueue, limit: int = 10_000) -> list[str]:
    chunks = queue.claim(limit, 1 << 30, time.time())
    ids = [eid for c in chunks for eid in event_ids_of(c.payload)]
    queue.remove([c.rowid for c in chunks])
    return ids


def test_fifo_chunks_and_depth(make_queue: QueueFactory) -> None:
    queue = make_queue()
    batch = items(25)
    put(queue, batch, chunk=10)
    assert queue.depth() == (25, sum(len(p) for _, p in batch) + 25 - 3)  # commas inside chunks
    chunks = queue.claim(1000, 1 << 20, time.time())
    assert [c.count for c in chunks] == [10, 10, 5]
    assert [e for c in chunks for e in event_ids_of(c.payload)] == [f"e{i}" for i in range(25)]
    # A chunk is the comma-joined event JSON, byte for byte.
    assert chunks[0].payload == b",".join(p for _, p in batch[:10])
    assert split_chunk(chunks[2].payload) == [p for _, p in batch[20:]]
    queue.remove([c.rowid for c in chunks])
    assert queue.depth() == (0, 0)


def test_chunks_also_split_by_bytes(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.put(items(10, size=100), time.time(), chunk_events=100, chunk_bytes=350)
    counts = [c.count for c in queue.claim(100, 1 << 20, time.time())]
    assert counts == [3, 3, 3, 1]


def test_claim_limits_and_release(make_queue: QueueFactory) -> None:
    queue = make_queue()
    put(queue, items(30), chunk=10)
    first = queue.claim(15, 1 << 20, time.time())
    assert [c.count for c in first] == [10]  # whole chunks only, up to the limit
    second = queue.claim(100, 1 << 20, time.time())
    assert [c.count for c in second] == [10, 10]  # claimed chunks are skipped
    assert queue.claim(100, 1 << 20, time.time()) == []
    queue.release([c.rowid for c in first])
    again = queue.claim(100, 1 << 20, time.time())
    assert [c.rowid for c in again] == [c.rowid for c in first]
    # The first chunk is taken even when larger than the limits.
    queue.release([c.rowid for c in again + second])
    assert [c.count for c in queue.claim(1, 1, time.time())] == [10]


def test_pending_through_watermark(make_queue: QueueFactory) -> None:
    queue = make_queue()
    mark = put(queue, items(10), chunk=5)
    later = put(queue, items(10, start=10), chunk=5)
    assert queue.last_rowid() == later
    assert queue.pending_through(mark)
    chunks = queue.claim(10, 1 << 20, time.time())
    assert queue.pending_through(mark)  # claimed by us: still pending
    queue.remove([c.rowid for c in chunks])
    assert not queue.pending_through(mark)
    assert queue.pending_through(later)
    drain_ids(queue)
    assert not queue.pending_through(later)
    # Row ids never go back, even after the queue was emptied.
    assert put(queue, items(1, start=99)) > later


def test_drop_newest_refuses_and_counts(make_queue: QueueFactory) -> None:
    queue = make_queue(max_events=10, policy=OverflowPolicy.DROP_NEWEST)
    put(queue, items(8))
    result = queue.put(items(5, start=8), time.time(), chunk_events=10, chunk_bytes=1 << 20)
    assert (result.stored, result.refused, result.evicted) == (2, ["e10", "e11", "e12"], [])
    assert queue.depth()[0] == 10
    assert drain_ids(queue) == [f"e{i}" for i in range(10)]


def test_drop_oldest_evicts_whole_chunks_and_reports_ids(make_queue: QueueFactory) -> None:
    queue = make_queue(max_events=10, policy=OverflowPolicy.DROP_OLDEST)
    put(queue, items(10), chunk=4)  # chunks of 4, 4, 2
    result = queue.put(items(3, start=10), time.time(), chunk_events=4, chunk_bytes=1 << 20)
    assert result.evicted == ["e0", "e1", "e2", "e3"]
    assert result.stored == 3
    assert queue.depth()[0] == 9
    assert drain_ids(queue) == [f"e{i}" for i in range(4, 13)]


def test_claimed_chunks_are_never_evicted(make_queue: QueueFactory) -> None:
    queue = make_queue(max_events=10, policy=OverflowPolicy.DROP_OLDEST)
    put(queue, items(10), chunk=10)
    in_flight = queue.claim(10, 1 << 20, time.time())
    result = queue.put(items(2, start=10), time.time(), chunk_events=10, chunk_bytes=1 << 20)
    # Nothing queued can go: the oldest of the new ones are given up instead.
    assert (result.evicted, result.refused, result.stored) == (["e10", "e11"], [], 0)
    queue.remove([c.rowid for c in in_flight])


def test_byte_bound(make_queue: QueueFactory) -> None:
    queue = make_queue(max_events=1000, max_bytes=1000, policy=OverflowPolicy.DROP_NEWEST)
    result = queue.put(items(20, size=100), time.time(), chunk_events=5, chunk_bytes=1 << 20)
    assert result.stored + len(result.refused) == 20
    assert queue.depth()[1] <= 1000
    assert result.refused == [f"e{i}" for i in range(result.stored, 20)]


def test_drop_oldest_keeps_the_newest_of_an_oversized_put(make_queue: QueueFactory) -> None:
    queue = make_queue(max_events=10, policy=OverflowPolicy.DROP_OLDEST)
    result = queue.put(items(15), time.time(), chunk_events=4, chunk_bytes=1 << 20)
    assert result.evicted == [f"e{i}" for i in range(5)]
    assert drain_ids(queue) == [f"e{i}" for i in range(5, 15)]


def test_set_bounds_applies_to_later_puts(make_queue: QueueFactory) -> None:
    queue = make_queue(max_events=100)
    put(queue, items(10))
    queue.set_bounds(12, 1 << 20, OverflowPolicy.DROP_NEWEST)
    assert queue.put(items(5, 10), time.time(), chunk_events=5, chunk_bytes=1 << 20).stored == 2


def test_sqlite_queue_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    queue = SQLiteQueue(path, 1000, 1 << 20)
    put(queue, items(7))
    claimed = queue.claim(3, 1 << 20, time.time())
    assert claimed
    queue.close()  # a clean close releases our claims
    queue = SQLiteQueue(path, 1000, 1 << 20)
    assert queue.depth()[0] == 7
    assert drain_ids(queue) == [f"e{i}" for i in range(7)]
    queue.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_version_1_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(
            """
            CREATE TABLE queue (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL,
                count INTEGER NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL,
                claim_pid INTEGER NOT NULL DEFAULT 0, claim_until REAL NOT NULL DEFAULT 0);
            INSERT INTO queue (payload, count, size, created)
                VALUES (CAST('{"eventId":"old1"},{"eventId":"old2"}' AS BLOB), 2, 37, 1.0);
            PRAGMA user_version = 1;
            """
        )
    queue = SQLiteQueue(path, 100, 1 << 20)
    try:
        assert queue.depth() == (2, 37)
        assert drain_ids(queue) == ["old1", "old2"]
    finally:
        queue.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_one_queue_object_per_file_per_process(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "q.sqlite3", 10, 1 << 20)
    with pytest.raises(StorageError, match="already open"):
        SQLiteQueue(tmp_path / "q.sqlite3", 10, 1 << 20)
    queue.close()
    SQLiteQueue(tmp_path / "q.sqlite3", 10, 1 << 20).close()


def test_not_a_queue_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="cannot open"):
        SQLiteQueue(path, 10, 1 << 20)


_CHILD = textwrap.dedent(
    """
    import sys, time, os
    from pathlib import Path
    from innkt_analytics.sdk._queue import SQLiteQueue
    queue = SQLiteQueue(Path(sys.argv[1]), 10_000, 1 << 24)
    queue.put([(f"k{i}", b'{"eventId":"k%d"}' % i) for i in range(100)], time.time(),
              chunk_events=10, chunk_bytes=1 << 20)
    claimed = queue.claim(30, 1 << 20, time.time())
    print(len(claimed), flush=True)
    time.sleep(60)
    """
)


def test_claims_of_a_killed_process_are_recovered(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "3"
    queue = SQLiteQueue(path, 10_000, 1 << 24)
    try:
        # While the claimer lives, its chunks are not ours to send.
        assert queue.recover(time.time()) == 0
        assert sum(c.count for c in queue.claim(1000, 1 << 30, time.time())) == 70
        child.kill()  # SIGKILL: no cleanup in the child
        child.wait()
        assert queue.recover(time.time()) == 3
        chunks = queue.claim(1000, 1 << 30, time.time())
        assert [e for c in chunks for e in event_ids_of(c.payload)] == [f"k{i}" for i in range(30)]
    finally:
        queue.close()
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


def test_encode_records_fills_ids_and_reports_invalid_events() -> None:
    from innkt_analytics.shared._protocol import Event

    now = time.time()
    good = (now, "page_view", {"a": 1}, None, "u1")
    bad_type = (now, "", None, None, None)
    unencodable = (now, "x", {"o": object()}, None, None)
    too_big = (now, "x", {"blob": "y" * 5000}, "s", None)
    items_, dropped = encode_records([good, bad_type, unencodable, too_big], "sess", 4096)
    assert len(items_) == 1
    event_id, data = items_[0]
    assert data.startswith(b'{"eventId":"' + event_id.encode())
    assert b'"sessionId":"sess"' in data
    assert b'"userId":"u1"' in data
    assert [d.reason for d in dropped] == ["invalid", "invalid", "too_large"]
    assert all(d.event_id for d in dropped)
    odd = [(now, "x", None, "", None), (now, "x", None, None, 5), (now, "x", [1], None, None)]
    assert [d.reason for d in encode_records(odd, "sess", 4096)[1]] == ["invalid"] * 3
    wrong = Event(event_id="e", event_type="t", timestamp=None)  # type: ignore[arg-type]
    assert encode_records([wrong], "s", 4096)[1][0].reason == "invalid"


@pytest.mark.skipif(os.name != "posix", reason="fork")
def test_a_forked_child_opens_its_own_queue(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    queue = SQLiteQueue(path, 1000, 1 << 20)
    put(queue, items(5))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            queue.abandon()
            own = SQLiteQueue(path, 1000, 1 << 20)  # allowed: the child holds no queue
            put(own, items(5, start=5))
            code = 0 if own.depth()[0] == 10 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    queue.refresh()  # type: ignore[attr-defined]
    assert queue.depth()[0] == 10
    queue.close()


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 30)),
        st.tuples(st.just("claim"), st.integers(1, 40)),
        st.tuples(st.just("ack"), st.integers(0, 5)),
        st.tuples(st.just("release"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops, policy=st.sampled_from(list(OverflowPolicy)))
def test_queue_against_a_model(
    tmp_path: Path, ops: list[tuple[str, int]], policy: OverflowPolicy
) -> None:
    """Random put/claim/ack/release sequences: every event is either still queued,
    acknowledged, or reported as given up - exactly one of them, in FIFO order."""
    path = tmp_path / f"model-{uuid.uuid4().hex}.sqlite3"
    for queue in (SQLiteQueue(path, 50, 1 << 20, policy), MemoryQueue(50, 1 << 20, policy)):
        try:
            next_id = 0
            acked: list[str] = []
            given_up: list[str] = []
            claims: list[list[tuple[int, list[str]]]] = []
            for op, arg in ops:
                if op == "put":
                    batch = items(arg, start=next_id)
                    next_id += arg
                    result = queue.put(batch, time.time(), chunk_events=7, chunk_bytes=1 << 20)
                    given_up += result.refused + result.evicted
                    assert result.stored + len(result.refused) + len(result.evicted) >= arg
                elif op == "claim":
                    chunks = queue.claim(arg, 1 << 20, time.time())
                    if chunks:
                        claims.append([(c.rowid, event_ids_of(c.payload)) for c in chunks])
                elif claims:
                    claim = claims.pop(arg % len(claims))
                    if op == "ack":
                        queue.remove([rowid for rowid, _ in claim])
                        acked += [eid for _, ids in claim for eid in ids]
                    else:
                        queue.release([rowid for rowid, _ in claim])
                assert queue.depth()[0] <= 50
            for claim in claims:
                queue.release([rowid for rowid, _ in claim])
            rest = drain_ids(queue, 10**6)
            everything = acked + given_up + rest
            assert sorted(everything) == sorted(f"e{i}" for i in range(next_id))
            assert rest == sorted(rest, key=lambda e: int(e[1:]))
            assert queue.depth() == (0, 0)
        finally:
            queue.close()
