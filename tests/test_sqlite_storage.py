"""SQLite specifics: the user and session indexes the writer process fills in bulk,
and the migration that introduced them (schema version 3)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from innkt_analytics.server.storage import EventFilter, EventRow, SQLiteStorage
from innkt_analytics.server.storage._sqlite import page_query
from innkt_analytics.server.storage._sqlite_schema import _MIGRATIONS, SCHEMA_VERSION, statements
from tests.test_storage_contract import row


def ev(event_id: str, user: str | None, session: str | None) -> EventRow:
    return row(event_id, user_id=user, session_id=session)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLiteStorage]:
    s = SQLiteStorage(str(tmp_path / "s.db"))
    s.open_sync()
    yield s
    s.close_sync()


def insert(storage: SQLiteStorage, *rows: EventRow) -> set[str]:
    return asyncio.run(storage.insert_events("p", list(rows)))


def ids(storage: SQLiteStorage, flt: EventFilter) -> list[str]:
    page = asyncio.run(storage.query_events("p", flt, None, 1000))
    return [r.event_id for r in page.rows]


def index_state(path: str) -> tuple[int, int]:
    """(hwm, newest seq)."""
    with sqlite3.connect(path) as conn:
        hwm = conn.execute("SELECT hwm FROM index_state").fetchone()[0]
        top = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    return int(hwm), int(top)


def wait_indexed(path: str) -> None:
    """Until the writer, idle, has moved every event into the bulk indexes; then
    the index tables must hold exactly the events' users and sessions."""
    deadline = time.monotonic() + 10
    while (state := index_state(path))[0] != state[1]:
        assert time.monotonic() < deadline, f"index never caught up: {state}"
        time.sleep(0.02)
    with sqlite3.connect(path) as conn:
        for table, column in (("events_by_user", "user_id"), ("events_by_session", "session_id")):
            expected = conn.execute(
                f"SELECT project, {column}, seq FROM events WHERE {column} IS NOT NULL"
            ).fetchall()
            indexed = conn.execute(f"SELECT project, {column}, seq FROM {table}").fetchall()
            assert sorted(indexed) == sorted(expected), table


def test_filters_find_events_both_in_the_bulk_index_and_above_it(
    storage: SQLiteStorage,
) -> None:
    insert(storage, ev("a1", "u1", "s1"), ev("a2", "u1", "s2"), ev("b1", "u2", "s1"))
    wait_indexed(storage.path)
    with sqlite3.connect(storage.path) as conn:
        indexed = conn.execute("SELECT count(*) FROM events_by_user").fetchone()[0]
    assert indexed == 3
    insert(storage, ev("a3", "u1", "s1"), ev("b2", "u2", "s2"))
    # Hold the write lock so the writer cannot index the new rows while we look.
    holder = sqlite3.connect(storage.path, isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    try:
        hwm, top = index_state(storage.path)
        assert hwm < top  # the two new rows are not in the bulk index yet
        assert ids(storage, EventFilter(user_id="u1")) == ["a1", "a2", "a3"]
        assert ids(storage, EventFilter(session_id="s1")) == ["a1", "b1", "a3"]
        assert ids(storage, EventFilter(user_id="u2", session_id="s2")) == ["b2"]
        stats = asyncio.run(storage.stats("p", EventFilter(user_id="u2"), 60_000))
        assert stats.total == 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_indexed(storage.path)
    assert ids(storage, EventFilter(user_id="u1")) == ["a1", "a2", "a3"]
    assert ids(storage, EventFilter(session_id="s2")) == ["a2", "b2"]


def test_deleting_a_user_removes_their_events_from_both_places(storage: SQLiteStorage) -> None:
    insert(storage, ev("a1", "u1", "s1"), ev("b1", "u2", "s1"))
    wait_indexed(storage.path)
    insert(storage, ev("a2", "u1", "s2"))
    assert asyncio.run(storage.delete_user("p", "u1", 1)) == 2
    assert ids(storage, EventFilter(user_id="u1")) == []
    assert ids(storage, EventFilter(session_id="s1")) == ["b1"]
    with sqlite3.connect(storage.path) as conn:
        left = conn.execute("SELECT user_id FROM events_by_user").fetchall()
    assert left == [("u2",)]


def test_deleting_the_newest_events_never_hides_the_next_ones(storage: SQLiteStorage) -> None:
    # SQLite hands out the seqs of deleted newest rows again; had the bulk index's
    # high-water mark stayed above them, the new rows would never be indexed.
    insert(storage, ev("a1", "u1", "s1"), ev("a2", "u1", "s1"), ev("a3", "u1", "s1"))
    wait_indexed(storage.path)
    assert asyncio.run(storage.delete_user("p", "u1", 1)) == 3
    insert(storage, ev("b1", "u2", "s2"), ev("b2", "u2", "s2"))
    wait_indexed(storage.path)
    assert ids(storage, EventFilter(user_id="u2")) == ["b1", "b2"]
    assert ids(storage, EventFilter(session_id="s2")) == ["b1", "b2"]


def test_a_version_2_database_is_migrated_with_its_events_indexed(tmp_path: Path) -> None:
    path = str(tmp_path / "v2.db")
    with sqlite3.connect(path, isolation_level=None) as conn:
        for version in (1, 2):
            for statement in statements(_MIGRATIONS[version]):
                conn.execute(statement)
        conn.executemany(
            "INSERT INTO events (project, event_id, event_type, session_id, user_id, ts,"
            " received_at, corrected, payload) VALUES ('p', ?, 't', ?, ?, 1, 1, 1, x'7b7d')",
            [("e1", "s1", "u1"), ("e2", "s2", "u1"), ("e3", "s1", None)],
        )
        conn.execute("PRAGMA user_version=2")
    storage = SQLiteStorage(path)
    storage.open_sync()
    try:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
            assert index_state(path) == (3, 3)
        assert ids(storage, EventFilter(user_id="u1")) == ["e1", "e2"]
        assert ids(storage, EventFilter(session_id="s1")) == ["e1", "e3"]
        insert(storage, ev("e4", "u1", "s1"))
        assert ids(storage, EventFilter(user_id="u1")) == ["e1", "e2", "e4"]
    finally:
        storage.close_sync()


def test_batches_with_duplicates_are_indexed_exactly(storage: SQLiteStorage) -> None:
    # The writer indexes from what it inserted; a batch with replayed ids takes
    # another path (the new rows are read back): both must index exactly.
    insert(storage, ev("a", "u1", "s1"), ev("b", "u2", "s1"))
    insert(storage, ev("a", "u1", "s1"), ev("c", "u3", None), ev("b", "u2", "s1"))
    insert(storage, ev("d", None, "s2"), ev("d", None, "s2"), ev("e", "u1", "s2"))
    insert(storage, ev("g", "u4", "s3"))
    wait_indexed(storage.path)
    assert ids(storage, EventFilter(user_id="u1")) == ["a", "e"]
    assert ids(storage, EventFilter(session_id="s2")) == ["d", "e"]
    insert(storage, ev("f", "u1", "s1"))
    wait_indexed(storage.path)
    assert ids(storage, EventFilter(user_id="u1")) == ["a", "e", "f"]


def test_the_writer_process_ignores_ctrl_c_and_stops_when_the_storage_closes(
    tmp_path: Path,
) -> None:
    storage = SQLiteStorage(str(tmp_path / "s.db"))
    storage.open_sync()
    pid = storage.writer_pid
    assert pid is not None
    try:
        assert insert(storage, ev("a", "u1", "s1")) == {"a"}  # the writer is up
        os.kill(pid, signal.SIGINT)  # what a Ctrl-C in the terminal sends it too
        os.kill(pid, signal.SIGTERM)
        assert insert(storage, ev("b", "u1", "s1")) == {"b"}
        assert storage.writer_pid == pid
    finally:
        storage.close_sync()
    assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)


def test_the_writer_process_exits_when_its_server_is_killed(tmp_path: Path) -> None:
    # The server side here is a child Python that opens the storage and hangs.
    script = (
        "import sys, time\n"
        "from innkt_analytics.server.storage import SQLiteStorage\n"
        "s = SQLiteStorage(sys.argv[1]); s.open_sync()\n"
        "s.write_sync('probe')\n"
        "print(s.writer_pid, flush=True); time.sleep(60)\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "s.db")], stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        writer = int(server.stdout.readline())
        server.kill()
        server.wait()
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{writer}") and not _is_zombie(writer):
            assert time.monotonic() < deadline, "the writer outlived its server"
            time.sleep(0.05)
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("flt", [EventFilter(), EventFilter(event_type="click")])
def test_paging_without_a_selective_filter_walks_seq_order_without_sorting(
    storage: SQLiteStorage, flt: EventFilter
) -> None:
    # An export pages through every event: each page must start at the cursor,
    # not sort all of the project's events again (quadratic in the export's size).
    insert(storage, *(row(f"e{i}", event_type="click" if i % 2 else "page") for i in range(50)))
    sql, params = page_query("p", flt, 10, 1001)
    with sqlite3.connect(storage.path) as conn:
        plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        got = [r[1] for r in conn.execute(sql, params)]
    assert "TEMP B-TREE" not in plan, plan
    assert "PRIMARY KEY" in plan, plan
    expected = [f"e{i}" for i in range(10, 50) if flt.event_type is None or i % 2]
    assert got == expected
