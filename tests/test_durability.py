"""Crash safety: SIGKILL the server while clients post; every acknowledged batch survives.
Also the storage writer's group commit: a failing write fails alone."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from innkt_analytics import StorageError
from innkt_analytics.server.storage import EventFilter, SQLiteStorage
from tests._server import ServerProcess
from tests.conftest import ServerFactory
from tests.test_storage_contract import row

BATCH = 50


@dataclass
class Outcomes:
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: list[list[str]] = field(default_factory=list)
    unacked: list[list[str]] = field(default_factory=list)

    def add(self, ids: list[str], ok: bool) -> None:
        with self.lock:
            (self.acked if ok else self.unacked).append(ids)


def sender(server: ServerProcess, name: str, out: Outcomes, stop: threading.Event) -> None:
    """Post batches until the server dies (or ``stop``); record which were acknowledged."""
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as client:
        n = 0
        while not stop.is_set():
            ids = [f"{name}-b{n}-{i}" for i in range(BATCH)]
            events = [
                {"eventId": i, "eventType": "crash", "timestamp": "2026-11-27T00:00:00Z"}
                for i in ids
            ]
            try:
                r = client.post("/v1/events/batch", json={"events": events})
            except httpx.TransportError:
                out.add(ids, ok=False)
                return
            ok = r.status_code == 200 and r.json()["accepted"] == BATCH
            out.add(ids, ok=ok)
            if not ok:
                return
            n += 1


def crash_while_posting(server: ServerProcess, round_name: str, senders: int = 4) -> Outcomes:
    out = Outcomes()
    stop = threading.Event()
    threads = [
        threading.Thread(target=sender, args=(server, f"{round_name}-t{t}", out, stop))
        for t in range(senders)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(out.acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL mid-stream: requests are in flight in every thread
    stop.set()
    for t in threads:
        t.join(60)
    assert len(out.acked) >= 40, "the senders never got going"
    return out


def check_exactly_once(server: ServerProcess, out: Outcomes) -> collections.Counter[str]:
    counts = collections.Counter(server.event_ids())
    assert not [i for i, n in counts.items() if n > 1], "an event is stored twice"
    for ids in out.acked:
        missing = [i for i in ids if counts[i] != 1]
        assert not missing, f"acknowledged events lost in the crash: {missing[:5]}"
    for ids in out.unacked:
        present = sum(counts[i] for i in ids)
        # A batch is one transaction: it is all there or not at all.
        assert present in (0, len(ids)), f"a batch was half stored ({present}/{len(ids)})"
    return counts


def test_acknowledged_batches_survive_sigkill(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_RATE_LIMIT_PER_SECOND": "0"})
    every = Outcomes()
    for round_name in ("r1", "r2"):
        out = crash_while_posting(server, round_name)
        server.start()  # same database, same port
        check_exactly_once(server, out)
        every.acked += out.acked
        every.unacked += out.unacked
    counts = check_exactly_once(server, every)

    # The clients retry what was never acknowledged: duplicates are recognised,
    # so in the end every batch is stored exactly once.
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as client:
        for ids in every.unacked:
            events = [
                {"eventId": i, "eventType": "crash", "timestamp": "2026-11-27T00:00:00Z"}
                for i in ids
            ]
            r = client.post("/v1/events/batch", json={"events": events})
            answer = r.json()
            assert answer["accepted"] + answer["duplicates"] == len(ids)
            assert answer["duplicates"] == sum(counts[i] for i in ids)
    final = collections.Counter(server.event_ids())
    all_ids = [i for ids in every.acked + every.unacked for i in ids]
    assert sorted(final) == sorted(all_ids)
    assert set(final.values()) == {1}
    health = httpx.get(server.url + "/v1/health", headers=server.headers("read")).json()
    assert health["storage"]["events"] == len(all_ids)


def test_a_failing_write_never_undoes_its_neighbours_in_a_group(tmp_path: Path) -> None:
    """Group commit puts concurrent writes in one transaction; one failing job must
    fail alone, and what it wrote before failing must not stay."""
    path = tmp_path / "group.db"
    storage = SQLiteStorage(str(path))
    storage.open_sync()
    # Another connection holds the write lock: the writer process waits for it with
    # its first job, and everything sent meanwhile queues into the next group.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with ThreadPoolExecutor(8) as pool:

            def insert(name: str) -> set[str]:
                rows = [row(f"{name}-{i}") for i in range(3)]
                return asyncio.run(storage.insert_events("p", rows))

            first = pool.submit(insert, "first")
            time.sleep(0.2)
            before = [pool.submit(insert, f"a{i}") for i in range(3)]
            half_done_then_fails = pool.submit(
                storage.write_sync,
                "sql",
                [
                    ("INSERT INTO project_config (project, config) VALUES ('x', x'')", ()),
                    ("INSERT INTO no_such_table VALUES (1)", ()),
                ],
            )
            unknown_op = pool.submit(storage.write_sync, "no_such_op")
            after = [pool.submit(insert, f"b{i}") for i in range(3)]
            time.sleep(0.2)
            holder.execute("COMMIT")
            for f in [first, *before, *after]:
                assert len(f.result()) == 3
            with pytest.raises(StorageError, match="no such table"):
                half_done_then_fails.result()
            with pytest.raises(StorageError, match="no_such_op"):
                unknown_op.result()
        page = asyncio.run(storage.query_events("p", EventFilter(), None, 100))
        assert len(page.rows) == 21
        assert asyncio.run(storage.get_config("x")) is None  # the failed job left nothing
    finally:
        holder.close()
        storage.close_sync()


def test_a_killed_writer_process_fails_its_jobs_and_a_new_one_takes_over(
    tmp_path: Path,
) -> None:
    storage = SQLiteStorage(str(tmp_path / "killed.db"))
    storage.open_sync()
    try:
        assert asyncio.run(storage.insert_events("p", [row("a")])) == {"a"}
        pid = storage.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            # A write sent before the death was noticed fails (its client retries);
            # the next one starts a new writer process.
            try:
                assert asyncio.run(storage.insert_events("p", [row("b")])) == {"b"}
                break
            except StorageError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert storage.writer_pid not in (None, pid)
        assert asyncio.run(storage.insert_events("p", [row("b"), row("c")])) == {"c"}
        page = asyncio.run(storage.query_events("p", EventFilter(), None, 100))
        assert sorted(r.event_id for r in page.rows) == ["a", "b", "c"]
    finally:
        storage.close_sync()


def test_a_batch_mixing_new_and_stored_ids_reports_only_the_new(tmp_path: Path) -> None:
    storage = SQLiteStorage(str(tmp_path / "mixed.db"))
    storage.open_sync()
    try:
        assert asyncio.run(storage.insert_events("p", [row("a"), row("c")])) == {"a", "c"}
        mixed = [row("a"), row("b"), row("c"), row("d"), row("b")]
        assert asyncio.run(storage.insert_events("p", mixed)) == {"b", "d"}
        # The same ids in another project are new there.
        assert asyncio.run(storage.insert_events("q", mixed)) == {"a", "b", "c", "d"}
        page = asyncio.run(storage.query_events("p", EventFilter(), None, 100))
        assert [r.event_id for r in page.rows] == ["a", "c", "b", "d"]
    finally:
        storage.close_sync()
