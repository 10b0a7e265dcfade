"""The SQLite writer process: the only connection that writes to the database.

``SQLiteStorage`` starts this file as a process of its own (``python -I -S
_sqlite_writer.py FD PATH``) and talks to it over a socket pair. The server's
event loop parses requests on one core while this process binds, steps and
fsyncs on the other: in one process the two would take turns on the GIL.

Frames both ways are a 4-byte big-endian length and a ``marshal`` dump (plain
values only: 2.5x faster to write than a pickle, and this is the hot path). A job is
``(job_id, op, args)`` with ``op`` one of ``OPS``; every job that arrived while
the previous transaction was committing runs in the next one (group commit), so N
concurrent requests cost one fsync. The answer to a group is one frame: a list of
``(job_id, status, value)``; ``status`` is ``OK``, ``FAILED`` (this job alone
failed and was rolled back; ``value`` is ``(kind, message)``) or ``GROUP_FAILED``
(the transaction itself failed: nothing of the group was stored).

The database's ``events`` table is the *hot log*: events in arrival order with one
unique index, so an insert costs the same at 10M stored events as at none.

Inserts are also checked against the *dedup runs* of compacted events
(``_dedup_runs.py``, listed in the ``dedup_runs`` table): the hot log's unique
index only knows the events not compacted yet. The compactor (``_engine.py``, a
process of its own) commits on its own connection, moving rows out of the hot log
and listing the new run in one transaction; every group of this process starts
with ``BEGIN IMMEDIATE`` and then looks at ``PRAGMA data_version``: when another
connection committed, the run list is read again before any insert is checked.

Standard library (and numpy, for the runs) only, and importable as a module too:
the process starts in a few tens of milliseconds and imports nothing of the
package; ``_dedup_runs.py`` is imported by path (``argv[3]`` lists the directories).
"""

from __future__ import annotations

import contextlib
import errno
import marshal
import os
import signal
import socket
import sqlite3
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

HEADER: Final = struct.Struct("!I")
OK: Final = 0
FAILED: Final = 1
GROUP_FAILED: Final = 2

#: columns of one events row as inserted, in the order of ``COLUMNS``
COLUMNS: Final = (
    "project, event_id, event_type, session_id, user_id, anonymous_id,"
    " ts, sent_at, received_at, corrected, future, payload"
)
NCOLS: Final = 12
_INSERT_SQL: dict[int, str] = {}

Job = tuple[int, str, tuple[Any, ...]]
Result = tuple[int, int, Any]
Chunk = tuple[str, list[object], list[str]]  # (SQL, parameters, event ids)


def connect(path: str) -> sqlite3.Connection:
    """A connection with the pragmas every connection of the storage uses."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    # Index pages stay in memory between groups: 64 MiB of cache, reads through mmap.
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA mmap_size=268435456")
    return conn


def connect_writer(path: str) -> sqlite3.Connection:
    conn = connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL in WAL mode: every commit is on disk before any caller is answered.
    conn.execute("PRAGMA synchronous=FULL")
    # The hot log churns (compaction deletes what was inserted): a checkpoint that had
    # to wait for readers leaves a long WAL behind; cut it back to 64 MiB after one.
    conn.execute("PRAGMA journal_size_limit=67108864")
    return conn


def send_frame(sock: socket.socket, obj: Any) -> None:
    data = marshal.dumps(obj)
    sock.sendall(HEADER.pack(len(data)) + data)


class FrameReader:
    """Reads length-prefixed marshal dumps from a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def read(self) -> list[Any] | None:
        """Every complete frame, waiting for at least one; ``None`` at end of stream."""
        while True:
            frames = self._complete()
            if frames:
                return frames
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                return None
            self._buf += chunk

    def feed(self, chunk: bytes) -> list[Any]:
        """Every frame completed by ``chunk`` (read by someone else)."""
        self._buf += chunk
        return self._complete()

    def _complete(self) -> list[Any]:
        frames = []
        view = memoryview(self._buf)
        pos = 0
        while len(view) - pos >= HEADER.size:
            (size,) = HEADER.unpack_from(view, pos)
            end = pos + HEADER.size + size
            if len(view) < end:
                break
            # Trusted: the only peer is our own process at the other end of a socketpair.
            frames.append(marshal.loads(view[pos + HEADER.size : end]))  # noqa: S302
            pos = end
        view.release()
        del self._buf[:pos]
        return frames


def error_of(exc: BaseException) -> tuple[str, str]:
    """``(kind, message)``; kind ``full`` for a full disk, else ``error``."""
    if _disk_full(exc):
        return "full", f"storage full: {exc}"
    if isinstance(exc, sqlite3.Error):
        return "error", f"storage error: {exc}"
    return "error", f"storage writer failed: {exc!r}"


def _disk_full(exc: BaseException) -> bool:
    # The rule of innkt_analytics.shared._exceptions.is_disk_full, restated because this
    # process imports nothing of the package; tests/test_exports.py holds them equal.
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None) or 0
        return code & 0xFF == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


# -- the operations ---------------------------------------------------------------------


def insert_sql(n: int) -> str:
    """The INSERT of ``n`` rows of ``COLUMNS`` that skips ids already in the hot log."""
    sql = _INSERT_SQL.get(n)
    if sql is None:
        placeholders = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * n)
        sql = (
            f"INSERT INTO events ({COLUMNS}) VALUES {placeholders}"
            " ON CONFLICT (project, event_id) DO NOTHING"
        )
        if len(_INSERT_SQL) < 64:
            _INSERT_SQL[n] = sql
    return sql


class Runs:
    """The dedup runs of compacted events, as loaded from the ``dedup_runs`` table."""

    def __init__(self, db_path: str) -> None:
        self.dir = db_path + ".segments"
        self.open: dict[str, Any] = {}  # file name -> _dedup_runs.Run

    def reload(self, conn: sqlite3.Connection) -> None:
        names = [r[0] for r in conn.execute("SELECT file FROM dedup_runs ORDER BY id")]
        if names and _dedup is None:
            raise RuntimeError("dedup runs exist but numpy is not importable")
        keep = {}
        for name in names:
            run = self.open.pop(name, None)
            keep[name] = run if run is not None else _dedup.Run(f"{self.dir}/{name}")
        for run in self.open.values():
            run.close()
        self.open = keep

    def add(self, name: str) -> None:
        self.open[name] = _dedup.Run(f"{self.dir}/{name}")

    def drop_compacted(self, chunk: Chunk) -> Chunk:
        """The chunk without the rows whose id a run holds (a replay of old events)."""
        _, params, ids = chunk
        if not self.open:
            return chunk
        keys = [(params[i * NCOLS], ids[i]) for i in range(len(ids))]
        hi, lo = _dedup.digests(keys)
        seen = _dedup.contains_any(list(self.open.values()), hi, lo)
        if not seen.any():
            return chunk
        keep = [i for i in range(len(ids)) if not seen[i]]
        new_params: list[object] = []
        for i in keep:
            new_params += params[i * NCOLS : (i + 1) * NCOLS]
        return insert_sql(len(keep)), new_params, [ids[i] for i in keep]


_dedup: Any = None
RUNS: Runs | None = None  # set by main(); the ops below use it
_seen_version: list[int] = []


def sync_runs(conn: sqlite3.Connection) -> None:
    """Under the write lock: read the run list again if another connection (the
    compactor) committed since this one last looked."""
    version = int(conn.execute("PRAGMA data_version").fetchone()[0])
    if RUNS is not None and _seen_version != [version]:
        RUNS.reload(conn)
        _seen_version[:] = [version]


def op_insert(conn: sqlite3.Connection, chunks: list[Chunk]) -> list[str] | None:
    """Insert events; ``None`` when all were new, else the ids that were stored."""
    # No RETURNING: it would step once per row. One step inserts the whole chunk.
    stored: list[str] = []
    all_new = True
    for chunk in chunks:
        if RUNS is not None:
            checked = RUNS.drop_compacted(chunk)
            if checked is not chunk:
                all_new = False
                chunk = checked
                if not chunk[2]:
                    continue
        sql, params, ids = chunk
        before = conn.execute(_LAST_SEQ).fetchone()
        cur = conn.execute(sql, params)
        inserted = cur.rowcount
        if inserted == len(ids):
            stored += ids  # the usual case: none of the ids was stored before
            continue
        all_new = False
        if inserted > 0:
            # Some were duplicates. The new rows took seqs above the old maximum
            # (AUTOINCREMENT: not one run, a conflict may use one up): read them back.
            found = conn.execute(
                "SELECT event_id FROM events WHERE seq > ?", (before[0] if before else 0,)
            )
            stored += [r[0] for r in found]
    return None if all_new else stored


_LAST_SEQ: Final = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"


def op_sql(conn: sqlite3.Connection, statements: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    """Run statements in order: for each, ``(rowcount, rows)``."""
    out = []
    for sql, params in statements:
        cur = conn.execute(sql, params)
        rows = cur.fetchall()
        out.append((cur.rowcount, rows))
    return out


def op_probe(conn: sqlite3.Connection) -> None:
    # Dirties a page without leaving a trace, so the commit really has to write.
    conn.execute("INSERT INTO project_config (project, config) VALUES ('', x'')")
    conn.execute("DELETE FROM project_config WHERE project = ''")


OPS: Final[dict[str, Callable[..., Any]]] = {
    "insert": op_insert,
    "sql": op_sql,
    "probe": op_probe,
}


# -- group commit -------------------------------------------------------------------------


def commit_group(conn: sqlite3.Connection, jobs: list[Job]) -> list[Result]:
    """Run the jobs in one transaction. Should one fail, run them again with a
    savepoint each, so one failing job never undoes another."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        sync_runs(conn)
        values = [OPS[op](conn, *args) for _, op, args in jobs]
        conn.execute("COMMIT")
    except Exception:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        return _commit_isolated(conn, jobs)
    return [(job_id, OK, value) for (job_id, _, _), value in zip(jobs, values, strict=True)]


def _commit_isolated(conn: sqlite3.Connection, jobs: list[Job]) -> list[Result]:
    results: list[Result] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        sync_runs(conn)
        for job_id, op, args in jobs:
            conn.execute("SAVEPOINT job")
            try:
                value = OPS[op](conn, *args)
            except Exception as exc:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                kind, message = error_of(exc)
                if kind == "full":
                    raise
                results.append((job_id, FAILED, (kind, message)))
            else:
                conn.execute("RELEASE job")
                results.append((job_id, OK, value))
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        error = error_of(exc)
        return [(job_id, GROUP_FAILED, error) for job_id, _, _ in jobs]
    return results


class Writer:
    """Reads jobs on one thread, commits them in groups on another."""

    def __init__(self, conn: sqlite3.Connection, sock: socket.socket) -> None:
        self._conn = conn
        self._sock = sock
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._eof = False

    def _read(self) -> None:
        reader = FrameReader(self._sock)
        try:
            while (frames := reader.read()) is not None:
                with self._cond:
                    self._pending.extend(frames)
                    self._cond.notify()
        except OSError:
            pass
        with self._cond:
            self._eof = True
            self._cond.notify()

    def run(self) -> None:
        threading.Thread(target=self._read, name="innkt-writer-read", daemon=True).start()
        while True:
            with self._cond:
                if not self._pending and not self._eof:
                    self._cond.wait()
                jobs = list(self._pending)
                self._pending.clear()
                eof = self._eof
            if not jobs:
                if eof:
                    return
                continue
            results = commit_group(self._conn, jobs)
            try:
                send_frame(self._sock, results)
            except OSError:
                return  # the server is gone; what was committed stays committed


def main(argv: list[str]) -> None:
    # A Ctrl-C reaches the whole process group, a service manager's SIGTERM maybe
    # too: the writer stops when the server closes the socket, after committing
    # and answering what it was sent, never in the middle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd, path = int(argv[1]), argv[2]
    global _dedup, RUNS
    if len(argv) > 3:
        sys.path[:0] = argv[3].split(os.pathsep)
        try:
            import _dedup_runs  # type: ignore[import-not-found,unused-ignore]
        except ImportError:  # no numpy: fine until the first run exists (Runs.reload)
            pass
        else:
            _dedup = _dedup_runs
    sock = socket.socket(fileno=fd)
    conn = connect_writer(path)
    RUNS = Runs(path)
    try:
        Writer(conn, sock).run()
    finally:
        conn.close()
        sock.close()


if __name__ == "__main__":
    main(sys.argv)
