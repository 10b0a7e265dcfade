"""The SQLite storage engine's background half: compaction, merges, deletions.

How an event travels (docs/operations.md, "The storage engine"):

1. ``insert_events`` commits it to the hot log (``events``, arrival order) in the
   writer process; the 2xx follows that commit. Its id is checked against the hot
   log's unique index and the dedup runs of compacted events.
2. The compactor (a process of its own, started by the storage with the first
   write; ``main`` below) takes every hot row
   once there are ``compact_rows`` of them, or the oldest has waited
   ``compact_age`` seconds: writes them as one Parquet segment and their id
   digests as one dedup run, then commits on its own connection, in one
   transaction, "these files are listed; those hot rows are gone" (``op_compact``).
   A crash before that commit leaves files nobody lists (removed at the next
   start); after it, the rows are in exactly one place. A process, not a thread of
   the server: its CPU (about 15 us an event) would otherwise come out of the
   event loop's core.
3. Segments of the same tier are merged ``fanin`` at a time into the next tier,
   runs likewise; replaced files go to ``trash`` and are unlinked after
   ``trash_grace`` seconds, so a query that read the old list can finish.
4. Deleting a user or applying retention removes hot rows in the writer and
   rewrites the segments holding matching rows before the call returns; a crash in
   between leaves ``pending_deletes`` rows, applied at the next start.

One process at a time mutates the segment directory: every step holds an
exclusive ``flock`` on ``<db>.segments/.lock`` (the CLI's backup takes it too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from innkt_analytics.server.storage import _segments
from innkt_analytics.server.storage._engine_backup import engine_lock
from innkt_analytics.shared._backup import sha256_file

__all__ = ["Compactor", "EngineSettings", "segment_dir"]

log = logging.getLogger("innkt_analytics.server.storage")

#: dedup runs are tiered by entries: tier t holds about RUN_BASE * RUN_FANIN**t
RUN_BASE: Final = 50_000


def segment_dir(db_path: str) -> str:
    return db_path + ".segments"


_SEGMENT_COLUMNS: Final = (
    "file, rows, bytes, min_seq, max_seq, min_corrected, max_corrected, tier, sha256"
)
_RUN_COLUMNS: Final = "file, entries, bytes, sha256"


def _insert_file(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    columns = _SEGMENT_COLUMNS if table == "segments" else _RUN_COLUMNS
    names = [c.strip() for c in columns.split(",")]
    conn.execute(
        f"INSERT INTO {table} ({columns}) VALUES ({','.join('?' * len(names))})",
        [row[n] for n in names],
    )


def op_compact(
    conn: sqlite3.Connection,
    upto: int,
    expected: int,
    segment: dict[str, Any] | None,
    run: dict[str, Any] | None,
) -> bool:
    """Move the hot rows with ``seq <= upto`` out: they are now in ``segment`` and
    their digests in ``run``. False (and nothing changes) when the rows are no longer
    the ``expected`` number: a deletion took some meanwhile, the compactor retries.
    The writer process reads the run list again before its next insert (its
    ``sync_runs``), as this commit changes the database's ``data_version``."""
    have = conn.execute("SELECT COUNT(*) FROM events WHERE seq <= ?", (upto,)).fetchone()[0]
    if have != expected:
        return False
    if segment is not None:
        _insert_file(conn, "segments", segment)
    if run is not None:
        _insert_file(conn, "dedup_runs", run)
    conn.execute("DELETE FROM events WHERE seq <= ?", (upto,))
    return True


def op_swap(
    conn: sqlite3.Connection,
    table: str,
    old_ids: list[int],
    new: dict[str, Any] | None,
    at: int,
    statements: list[tuple[str, tuple[Any, ...]]],
) -> bool:
    """Replace files of ``segments`` or ``dedup_runs`` by one new file (a merge, or a
    rewrite without deleted rows; ``new`` None: they are simply gone). The old files go
    to ``trash``. False when one of them is no longer listed (someone else replaced it)."""
    if table not in ("segments", "dedup_runs"):
        raise ValueError(f"not a file table: {table}")
    marks = ",".join("?" * len(old_ids))
    old = conn.execute(f"SELECT file FROM {table} WHERE id IN ({marks})", old_ids).fetchall()
    if len(old) != len(old_ids):
        return False
    conn.executemany(
        "INSERT OR REPLACE INTO trash (file, at) VALUES (?, ?)", [(f, at) for (f,) in old]
    )
    conn.execute(f"DELETE FROM {table} WHERE id IN ({marks})", old_ids)
    if new is not None:
        _insert_file(conn, table, new)
    for sql, params in statements:
        conn.execute(sql, params)
    return True


def op_sql(conn: sqlite3.Connection, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    for sql, params in statements:
        conn.execute(sql, params)


OPS: Final[dict[str, Callable[..., Any]]] = {"compact": op_compact, "swap": op_swap, "sql": op_sql}


@dataclass(frozen=True, slots=True)
class EngineSettings:
    #: compact once the hot log holds this many rows...
    compact_rows: int = 50_000
    #: ...or its oldest row has waited this many seconds
    compact_age: float = 2.0
    #: segments of one tier merged at a time into the next (16 x 50k rows: most
    #: events are rewritten once, not twice as with 8, before the size cap)
    fanin: int = 16
    run_fanin: int = 4
    #: no merge makes a segment bigger than this
    max_segment_rows: int = 4_000_000
    #: seconds a replaced file stays on disk for queries that listed it
    trash_grace: float = 300.0


class Compactor:
    """The engine's background work: in the compactor process (``main``), a loop on a
    thread of its own; in the server, on demand (deletions, ``compact_sync``).

    It commits on its own connection, one short ``BEGIN IMMEDIATE`` transaction per
    step (``OPS``); the writer process waits on the lock meanwhile, then sees the
    change (``sync_runs``).
    """

    def __init__(self, db_path: str, settings: EngineSettings | None = None) -> None:
        self.db_path = db_path
        self.dir = segment_dir(db_path)
        self.settings = settings or EngineSettings()
        self._writer: sqlite3.Connection | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.last_error: str | None = None
        self.compactions = 0
        self.merges = 0

    # -- lifecycle ---------------------------------------------------------------------

    def recover(self, *, pending: bool = True) -> None:
        """After a crash: remove files no list names, finish pending deletions."""
        with self.locked():
            self._remove_orphans()
            if pending:
                self._apply_pending()

    def start(self, *, pending: bool = True) -> None:
        self.recover(pending=pending)
        self._thread = threading.Thread(target=self._loop, name="innkt-compactor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.close()

    def close(self) -> None:
        for conn in (self._conn, self._writer):
            if conn is not None:
                conn.close()
        self._conn = self._writer = None

    def write(self, op: str, *args: Any) -> Any:
        """Run ``OPS[op]`` in a transaction of its own on this compactor's connection."""
        if self._writer is None:
            from innkt_analytics.server.storage._sqlite_writer import connect_writer

            self._writer = connect_writer(self.db_path)
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            value = OPS[op](conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return value

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """This thread and this process alone mutate the segment directory."""
        with self._mutex, engine_lock(Path(self.db_path)):
            yield

    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            from innkt_analytics.server.storage._sqlite_writer import connect

            self._conn = connect(self.db_path)
        return self._conn

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self.locked():
                    busy = self.step()
                self.last_error = None
            except Exception as exc:  # a full disk, say: the hot log keeps the rows
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("storage compaction failed: %s", self.last_error)
                busy = False
                self._stop.wait(5.0)
            if not busy:
                self._wake.wait(min(0.5, self.settings.compact_age))
                self._wake.clear()

    # -- one unit of work ----------------------------------------------------------------

    def step(self, force: bool = False) -> bool:
        """Do the most urgent piece of work; False when there was none.

        ``force`` compacts whatever the hot log holds (tests, backups, shutdown).
        """
        # A compaction when one is due, and one merge or cleanup besides: under
        # steady ingest a compaction is always due, and merges must not starve
        # (every insert searches every dedup run).
        compacted = self._compact(force)
        return self._merge_runs() or self._merge_segments() or self._empty_trash() or compacted

    def run_until_idle(self, force: bool = True) -> None:
        """Compact and merge until nothing is left to do (tests and the CLI)."""
        with self.locked():
            while self.step(force):
                pass

    def _compact(self, force: bool) -> bool:
        conn = self.conn()
        conn.execute("BEGIN")
        try:
            # Both ends of the rowid tree: O(log n), where COUNT(*) would scan the hot
            # log at every wake-up. The span overstates the rows by the seqs a
            # conflict or a deletion used up: close enough to decide.
            first = conn.execute(
                "SELECT seq, received_at FROM events ORDER BY seq LIMIT 1"
            ).fetchone()
            if first is None:
                return False
            top = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
            count = top - first[0] + 1
            waited = time.time() - first[1] / 1000
            if (
                not force
                and count < self.settings.compact_rows
                and waited < self.settings.compact_age
            ):
                return False
            table = _segments.hot_rows(conn, "seq <= ?", (top,))
        finally:
            conn.execute("COMMIT")
        import pyarrow.compute as pc

        from innkt_analytics.server.storage import _dedup_runs

        tag = f"{top:012d}-{secrets.token_hex(4)}"
        segment = _segments.write_segment(self.dir, f"seg-{tag}.parquet", table)
        hi, lo = _dedup_runs.digests(
            zip(
                table["project"].to_pylist(),
                pc.cast(table["event_id"], "string").to_pylist(),
                strict=True,
            )
        )
        run_name = f"run-{tag}.bin"
        run_path = os.path.join(self.dir, run_name)
        size = _dedup_runs.write_run(run_path, hi, lo)
        run = {
            "file": run_name,
            "entries": len(hi),
            "bytes": size,
            "sha256": sha256_file(Path(run_path)),
        }
        ok = self.write(
            "compact", top, table.num_rows, None if segment is None else segment.as_dict(), run
        )
        if not ok:  # a deletion took some of the rows meanwhile: try again
            self._unlink(run_name, None if segment is None else segment.file)
            return True
        self.compactions += 1
        return True

    def _merge_segments(self) -> bool:
        s = self.settings
        rows = (
            self.conn()
            .execute("SELECT id, file, rows, tier FROM segments ORDER BY min_seq")
            .fetchall()
        )
        found = _segments.merge_window([(r[2], r[3]) for r in rows], s.fanin, s.max_segment_rows)
        if found is None:
            return False
        start, tier = found
        window = rows[start : start + s.fanin]
        name = f"seg-m{tier + 1}-{secrets.token_hex(6)}.parquet"
        meta = _segments.rewrite(self.dir, name, [self._path(r[1]) for r in window], tier + 1)
        self._swap("segments", [r[0] for r in window], meta, name)
        self.merges += 1
        return True

    def _merge_runs(self) -> bool:
        from innkt_analytics.server.storage import _dedup_runs

        rows = (
            self.conn().execute("SELECT id, file, entries FROM dedup_runs ORDER BY id").fetchall()
        )
        fanin = self.settings.run_fanin

        def tier(entries: int) -> int:
            t, cap = 0, RUN_BASE * fanin
            while entries >= cap:
                t, cap = t + 1, cap * fanin
            return t

        for start in range(len(rows) - fanin + 1):
            window = rows[start : start + fanin]
            if len({tier(r[2]) for r in window}) != 1:
                continue
            runs = [_dedup_runs.Run(self._path(r[1])) for r in window]
            name = f"run-m-{secrets.token_hex(6)}.bin"
            try:
                entries, size = _dedup_runs.merge(runs, self._path(name))
            finally:
                for run in runs:
                    run.close()
            new = {
                "file": name,
                "entries": entries,
                "bytes": size,
                "sha256": sha256_file(Path(self._path(name))),
            }
            self._swap("dedup_runs", [r[0] for r in window], new, name)
            return True
        return False

    def _swap(
        self,
        table: str,
        old_ids: list[int],
        new: _segments.SegmentMeta | dict[str, Any] | None,
        new_file: str | None,
        statements: list[tuple[str, tuple[Any, ...]]] | None = None,
    ) -> None:
        row = new.as_dict() if isinstance(new, _segments.SegmentMeta) else new
        ok = self.write("swap", table, old_ids, row, int(time.time() * 1000), statements or [])
        if not ok and new_file is not None:
            self._unlink(new_file)

    def _empty_trash(self) -> bool:
        before = int((time.time() - self.settings.trash_grace) * 1000)
        rows = self.conn().execute("SELECT file FROM trash WHERE at < ?", (before,)).fetchall()
        if not rows:
            return False
        self._unlink(*(f for (f,) in rows))
        self.write("sql", [("DELETE FROM trash WHERE file = ?", (f,)) for (f,) in rows])
        return True

    # -- deletions ---------------------------------------------------------------------

    def delete_matching(
        self,
        project: str | None,
        ids: list[str] | None = None,
        before: int | None = None,
    ) -> int:
        """Rewrite the segments holding events of ``project`` (None: every project)
        whose user or anonymous id is one of ``ids``, or whose corrected time is before
        ``before``; returns how many rows went. Call under ``locked()``."""
        deleted = 0
        segments = (
            self.conn()
            .execute(
                "SELECT id, file, rows, tier, min_corrected, max_corrected FROM segments"
                " ORDER BY min_seq"
            )
            .fetchall()
        )
        forgotten: list[tuple[str, str]] = []
        for seg_id, name, rows, tier, min_cor, _ in segments:
            if before is not None and min_cor >= before:
                continue
            new_name = f"seg-d{tier}-{secrets.token_hex(6)}.parquet"
            gone, keys, meta = _segments.drop_matching(
                self.dir, name, new_name, tier, rows, project, ids, before
            )
            if gone == 0:
                continue
            forgotten += keys
            self._swap("segments", [seg_id], meta, new_name if meta else None)
            deleted += gone
        if forgotten:
            self._forget(forgotten)
        return deleted

    def _forget(self, keys: list[tuple[str, str]]) -> None:
        """Take deleted events' ids out of the dedup runs: sent again, they are new."""
        import numpy as np

        from innkt_analytics.server.storage import _dedup_runs

        hi, lo = _dedup_runs.digests(keys)
        pairs = set(zip(hi.tolist(), lo.tolist(), strict=True))
        rows = self.conn().execute("SELECT id, file FROM dedup_runs ORDER BY id").fetchall()
        for run_id, name in rows:
            run = _dedup_runs.Run(self._path(name))
            try:
                drop = np.isin(run.hi, hi)
                for i in np.nonzero(drop)[0]:
                    drop[i] = (int(run.hi[i]), int(run.lo[i])) in pairs
                if not drop.any():
                    continue
                new_name = f"run-d-{secrets.token_hex(6)}.bin"
                keep = ~drop
                size = _dedup_runs.write_run(self._path(new_name), run.hi[keep], run.lo[keep])
                entries = int(keep.sum())
            finally:
                run.close()
            new = {
                "file": new_name,
                "entries": entries,
                "bytes": size,
                "sha256": sha256_file(Path(self._path(new_name))),
            }
            self._swap("dedup_runs", [run_id], new, new_name)

    def _apply_pending(self) -> None:
        rows = self.conn().execute("SELECT project, id FROM pending_deletes").fetchall()
        for project, user in rows:
            self.delete_matching(project, [user])
            self.write(
                "sql",
                [("DELETE FROM pending_deletes WHERE project = ? AND id = ?", (project, user))],
            )

    # -- files -------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _unlink(self, *names: str | None) -> None:
        for name in names:
            if name is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(name))

    def _remove_orphans(self) -> None:
        """Files no table lists: left by a crash between writing and committing."""
        conn = self.conn()
        listed = {
            r[0]
            for r in conn.execute(
                "SELECT file FROM segments UNION ALL SELECT file FROM dedup_runs"
                " UNION ALL SELECT file FROM trash"
            )
        }
        for name in os.listdir(self.dir):
            if name.startswith(("seg-", "run-")) and name not in listed:
                self._unlink(name)


# -- the compactor process -------------------------------------------------------------


def spawn(db_path: str, settings: EngineSettings) -> Any:
    """Start the compactor process for ``db_path``; it runs until its stdin closes."""
    import subprocess

    # -c, not -m: the package imports this module first, and runpy warns about that
    code = f"import sys; from {__name__} import main; main(sys.argv)"
    return subprocess.Popen(  # noqa: S603 (our interpreter, our module)
        [sys.executable, "-c", code, db_path, json.dumps(asdict(settings))],
        stdin=subprocess.PIPE,
    )


def main(argv: list[str]) -> None:
    # As the writer: a Ctrl-C reaches the whole process group; this process stops
    # when the server closes its stdin, between two steps.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    compactor = Compactor(argv[1], EngineSettings(**json.loads(argv[2])))
    # Pending deletions are the server's: it finishes a crashed server's at open, and
    # its own deletions as they run. Finishing one here, in a process started (late,
    # on a loaded machine) while a deletion was under way, took its rows before the
    # server's rewrite could count them (it answered 0 deleted).
    compactor.start(pending=False)
    try:
        sys.stdin.buffer.read()
    finally:
        compactor.stop()


if __name__ == "__main__":
    main(sys.argv)
