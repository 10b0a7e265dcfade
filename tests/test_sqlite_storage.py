"""SQLite specifics: the storage engine's hot log, segments and dedup runs across
compaction, merges, deletions and restarts, the v3 migration, the writer process."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from innkt_analytics.server.storage import EventFilter, EventRow, SQLiteStorage
from innkt_analytics.server.storage._engine import EngineSettings
from innkt_analytics.server.storage._sqlite_schema import SCHEMA_VERSION, migrate
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


def compact(storage: SQLiteStorage) -> None:
    storage.compact_sync()


def listed(path: str) -> tuple[int, int, int]:
    """(hot rows, segments, dedup runs)."""
    with sqlite3.connect(path) as conn:
        hot, segments, runs = conn.execute(
            "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM segments),"
            " (SELECT COUNT(*) FROM dedup_runs)"
        ).fetchone()
    return int(hot), int(segments), int(runs)


def test_filters_find_events_in_segments_and_in_the_hot_log(storage: SQLiteStorage) -> None:
    insert(storage, ev("a1", "u1", "s1"), ev("a2", "u1", "s2"), ev("b1", "u2", "s1"))
    compact(storage)
    assert listed(storage.path) == (0, 1, 1)
    insert(storage, ev("a3", "u1", "s1"), ev("b2", "u2", "s2"))
    assert listed(storage.path)[0] == 2
    assert ids(storage, EventFilter(user_id="u1")) == ["a1", "a2", "a3"]
    assert ids(storage, EventFilter(session_id="s1")) == ["a1", "b1", "a3"]
    assert ids(storage, EventFilter(user_id="u2", session_id="s2")) == ["b2"]
    assert ids(storage, EventFilter(any_id="u2")) == ["b1", "b2"]
    stats = asyncio.run(storage.stats("p", EventFilter(user_id="u2"), 60_000))
    assert (stats.total, stats.unique_sessions, stats.unique_users) == (2, 2, 1)
    page = asyncio.run(storage.query_events("p", EventFilter(), None, 2))
    assert [r.event_id for r in page.rows] == ["a1", "a2"]
    rest = asyncio.run(storage.query_events("p", EventFilter(), page.next_cursor, 10))
    assert [r.event_id for r in rest.rows] == ["b1", "a3", "b2"]
    assert rest.next_cursor is None


def test_a_replay_of_compacted_events_is_a_duplicate_even_after_merges(tmp_path: Path) -> None:
    storage = SQLiteStorage(str(tmp_path / "s.db"), engine=EngineSettings(fanin=2, run_fanin=2))
    storage.open_sync()
    try:
        for i in range(5):
            insert(storage, ev(f"e{i}", "u1", "s1"))
            compact(storage)
        hot, segments, runs = listed(storage.path)
        assert hot == 0
        assert (segments, runs) < (5, 5)  # merged
        assert insert(storage, *(ev(f"e{i}", "u1", "s1") for i in range(7))) == {"e5", "e6"}
        assert ids(storage, EventFilter()) == [f"e{i}" for i in range(7)]
    finally:
        storage.close_sync()


def test_seqs_keep_growing_after_compaction_empties_the_hot_log(storage: SQLiteStorage) -> None:
    insert(storage, ev("a", "u1", "s1"), ev("b", "u1", "s1"))
    first = asyncio.run(storage.query_events("p", EventFilter(), None, 10)).rows
    compact(storage)
    asyncio.run(storage.delete_user("p", "u1", 1))
    insert(storage, ev("c", "u2", "s1"))
    [row_c] = asyncio.run(storage.query_events("p", EventFilter(), None, 10)).rows
    assert row_c.seq > max(r.seq for r in first)


def test_deleting_a_user_removes_their_events_from_both_places(storage: SQLiteStorage) -> None:
    insert(storage, ev("a1", "u1", "s1"), ev("b1", "u2", "s1"))
    compact(storage)
    anonymous = dataclasses.replace(ev("a3", None, "s2"), anonymous_id="u1")
    insert(storage, ev("a2", "u1", "s2"), anonymous)
    assert asyncio.run(storage.delete_user("p", "u1", 1)) == 3
    assert ids(storage, EventFilter()) == ["b1"]
    assert ids(storage, EventFilter(session_id="s1")) == ["b1"]
    with sqlite3.connect(storage.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM pending_deletes").fetchone()[0] == 0
    # deleted ids are free again, as in the hot log
    assert insert(storage, ev("a1", "u1", "s1")) == {"a1"}


def test_a_compaction_that_lost_rows_to_a_deletion_changes_nothing(
    storage: SQLiteStorage,
) -> None:
    insert(storage, ev("a1", "u1", "s1"), ev("b1", "u2", "s1"))
    with sqlite3.connect(storage.path) as conn:
        top = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    # The compactor read 3 rows, but the hot log holds 2 now: the writer refuses.
    assert storage.compactor().write("compact", top, 3, None, None) is False
    assert listed(storage.path) == (2, 0, 0)


def test_a_restart_removes_unlisted_files_and_finishes_pending_deletes(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    storage = SQLiteStorage(path)
    storage.open_sync()
    insert(storage, ev("a1", "u1", "s1"), ev("b1", "u2", "s1"))
    compact(storage)
    storage.close_sync()
    folder = Path(path + ".segments")
    (folder / "seg-000000000009-deadbeef.parquet.tmp").write_bytes(b"half written")
    (folder / "run-000000000009-deadbeef.bin").write_bytes(b"never committed")
    with sqlite3.connect(path) as conn:  # as if the server died inside delete_user
        conn.execute("INSERT INTO pending_deletes (project, id) VALUES ('p', 'u1')")
    storage = SQLiteStorage(path)
    storage.open_sync()
    try:
        assert not (folder / "seg-000000000009-deadbeef.parquet.tmp").exists()
        assert not (folder / "run-000000000009-deadbeef.bin").exists()
        assert ids(storage, EventFilter()) == ["b1"]
    finally:
        storage.close_sync()


def test_readers_see_every_event_exactly_once_while_compaction_runs(tmp_path: Path) -> None:
    engine = EngineSettings(compact_rows=40, compact_age=0.01, fanin=3, run_fanin=3, trash_grace=0)
    storage = SQLiteStorage(str(tmp_path / "s.db"), engine=engine)
    storage.open_sync()
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            stats = asyncio.run(storage.stats("p", EventFilter(), 86_400_000))
            seen.append(stats.total)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for b in range(30):
            insert(storage, *(ev(f"e{b}-{i}", f"u{i % 7}", f"s{b}") for i in range(20)))
        stop.set()
        watcher.join()
        storage.compact_sync()
        assert listed(storage.path)[0] == 0
        assert ids_all(storage) == [f"e{b}-{i}" for b in range(30) for i in range(20)]
    finally:
        stop.set()
        storage.close_sync()
    # Never an event counted twice or missed: the totals only grow, by whole batches.
    assert seen == sorted(seen)
    assert all(t % 20 == 0 and t <= 600 for t in seen)
    assert len(set(seen)) > 1


def ids_all(storage: SQLiteStorage) -> list[str]:
    out: list[str] = []
    cursor: int | None = None
    while True:
        page = asyncio.run(storage.query_events("p", EventFilter(), cursor, 37))
        out += [r.event_id for r in page.rows]
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def test_a_version_3_database_is_migrated_in_place(tmp_path: Path) -> None:
    # A v3 file as the previous release made it: its schema and its writer's rows.
    path = str(tmp_path / "v3.db")
    with sqlite3.connect(path, isolation_level=None) as conn:
        migrate(conn, upto=3)
        conn.executemany(
            "INSERT INTO events (project, event_id, event_type, session_id, user_id, ts,"
            " received_at, corrected, payload) VALUES ('p', ?, 't', ?, ?, 1, 1, 1, x'7b7d')",
            [("e1", "s1", "u1"), ("e2", "s2", "u1"), ("e3", "s1", None)],
        )
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    storage = SQLiteStorage(path)
    storage.open_sync()
    try:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert ids(storage, EventFilter(user_id="u1")) == ["e1", "e2"]
        compact(storage)
        assert listed(storage.path)[:2] == (0, 1)
        assert ids(storage, EventFilter(session_id="s1")) == ["e1", "e3"]
        assert insert(storage, ev("e1", "u1", "s1"), ev("e4", "u1", "s1")) == {"e4"}
        assert ids(storage, EventFilter(user_id="u1")) == ["e1", "e2", "e4"]
        assert asyncio.run(storage.health()).events == 4
    finally:
        storage.close_sync()


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


def test_hot_rows_left_by_a_stopped_server_are_compacted_at_the_next_start(
    tmp_path: Path,
) -> None:
    """A server stopped before its compactor's turn leaves rows in the hot log; the
    next one compacts them without waiting for a write (reads would otherwise copy
    them out of SQLite on every query)."""
    path = str(tmp_path / "s.db")
    first = SQLiteStorage(path, engine=EngineSettings(compact_age=3600))
    first.open_sync()

    async def fill() -> None:
        now = time.time_ns() // 1_000_000  # received now: not old enough to compact
        await first.insert_events("p", [row(f"e{i}", corrected=now) for i in range(30)])

    asyncio.run(fill())
    first.close_sync()

    def hot() -> int:
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    assert hot() == 30
    second = SQLiteStorage(path, engine=EngineSettings(compact_age=0.05))
    second.open_sync()
    try:
        deadline = time.monotonic() + 60
        while hot() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hot() == 0
        stats = asyncio.run(second.stats("p", EventFilter(), 3_600_000))
        assert stats.total == 30
    finally:
        second.close_sync()
