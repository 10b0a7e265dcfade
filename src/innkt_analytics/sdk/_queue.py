"""The SDK's bounded event queue: a SQLite (WAL) file, or memory.

Each row is a *chunk*: the JSON of up to ``batch_size`` events joined by commas,
byte for byte as it appears inside ``"events":[...]`` of a request body (see
``_transport.assemble_body``), so what was committed is what is sent and one
row costs one insert for many events. A row is deleted only when the server
acknowledged all its events (accepted or duplicate) or rejected some as
invalid (those are reported and never retried).

Rows are *claimed* before they are sent: a claim records the claiming process
id and a lease. Several processes (a forked child, two workers of one app) can
then share one file without sending the same rows concurrently; the rows of a
process that died mid-send (kill -9) are released when its pid is found dead,
and a restart sends them again. A resend of rows the server already stored is
harmless: the server deduplicates on ``eventId``.

Durability: a commit in WAL mode with ``synchronous=NORMAL`` survives a crash
or kill -9 of the process (the WAL write reaches the OS before ``COMMIT``
returns); with ``fsync=True`` (``synchronous=FULL``) it also survives power loss.
"""

from __future__ import annotations

import abc
import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from innkt_analytics.sdk._config import BackendConfig, OverflowPolicy, QueueMode
from innkt_analytics.sdk._queue_records import (
    Dropped,
    PutResult,
    QueuedChunk,
    Tracked,
    chunk_items,
    encode_records,
    event_ids_of,
    plan_room,
    split_chunk,
)
from innkt_analytics.shared._exceptions import StorageError, StorageFullError, is_disk_full

__all__ = [
    "Dropped",
    "EventQueue",
    "MemoryQueue",
    "PutResult",
    "QueuedChunk",
    "SQLiteQueue",
    "Tracked",
    "encode_records",
    "event_ids_of",
    "open_queue",
    "split_chunk",
]

#: A claim outlives any sane send; crash recovery does not wait for it because
#: dead claimers are detected by pid (``recover``).
CLAIM_LEASE: Final = 600.0
#: 2: payloads in their own table, so that claiming a chunk rewrites a small row only
#: (SQLite rewrites a whole record on UPDATE, overflow pages of a big blob included)
_SCHEMA_VERSION: Final = 2


class EventQueue(abc.ABC):
    """A bounded FIFO of event chunks with claims. Thread-safe; every method may
    raise ``StorageError`` (``StorageFullError`` when the disk is full).
    """

    def __init__(self, max_events: int, max_bytes: int, policy: OverflowPolicy) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.policy = policy
        self._lock = threading.RLock()
        self._events = 0
        self._bytes = 0

    @abc.abstractmethod
    def purge(self) -> int:
        """Remove every queued event, claimed ones too; returns how many."""

    def set_bounds(self, max_events: int, max_bytes: int, policy: OverflowPolicy) -> None:
        """Change the bounds; they apply from the next ``put``."""
        with self._lock:
            self.max_events, self.max_bytes, self.policy = max_events, max_bytes, policy

    def depth(self) -> tuple[int, int]:
        """(events, bytes) queued, claimed ones included."""
        return self._events, self._bytes

    def put(
        self,
        items: Sequence[tuple[str, bytes]],
        now: float,
        *,
        chunk_events: int,
        chunk_bytes: int,
    ) -> PutResult:
        """Append ``(event_id, event JSON)`` items in one transaction, as chunks of at most
        ``chunk_events`` events and about ``chunk_bytes`` bytes, applying the overflow policy.
        """
        result = PutResult()
        if not items:
            return result
        with self._lock, self._transaction():
            sizes = [len(p) for _, p in items]
            over_events = self._events + len(items) - self.max_events
            over_bytes = self._bytes + sum(sizes) - self.max_bytes
            if over_events > 0 or over_bytes > 0:
                room = (self._events, self._bytes, self.max_events, self.max_bytes)
                if self.policy is OverflowPolicy.DROP_NEWEST:
                    keep = plan_room(sizes, *room)
                    result.refused = [eid for eid, _ in items[keep:]]
                    items = items[:keep]
                else:
                    result.evicted = self._evict(max(0, over_events), max(0, over_bytes), now)
                    room = (self._events, self._bytes, self.max_events, self.max_bytes)
                    # Still too much (one put larger than the bounds, or the queued events
                    # are in flight): the oldest of the new ones go, as the policy says.
                    keep = plan_room(sizes[::-1], *room)
                    skip = len(items) - keep
                    result.evicted += [eid for eid, _ in items[:skip]]
                    items = items[skip:]
            if items:
                chunks = list(chunk_items(items, chunk_events, chunk_bytes))
                result.last_rowid = self._insert(chunks, now)
                result.stored = len(items)
                self._events += len(items)
                self._bytes += sum(len(c) for c, _ in chunks)
        return result

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        """Make one ``put`` (evictions and inserts) atomic."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def _insert(self, chunks: Sequence[tuple[bytes, int]], now: float) -> int:
        """Store chunks (they fit); return the last row id."""

    @abc.abstractmethod
    def _evict(self, events: int, nbytes: int, now: float) -> list[str]:
        """Delete the oldest unclaimed chunks until ``events`` and ``nbytes`` are freed."""

    @abc.abstractmethod
    def claim(self, max_events: int, max_bytes: int, now: float) -> list[QueuedChunk]:
        """Claim the oldest unclaimed chunks, at most ``max_events`` events and
        ``max_bytes`` bytes, except that the first chunk is always taken (a chunk
        written under a larger batch size must not stall the queue).
        """

    @abc.abstractmethod
    def remove(self, rowids: Sequence[int]) -> None:
        """Delete chunks: acknowledged by the server, or rejected for good."""

    @abc.abstractmethod
    def release(self, rowids: Sequence[int]) -> None:
        """Give claimed chunks back to the queue, to be sent again later."""

    @abc.abstractmethod
    def pending_through(self, watermark: int) -> bool:
        """Whether any chunk with id <= ``watermark`` is still queued (and not held by
        another live process)."""

    @abc.abstractmethod
    def oldest_created(self) -> float | None:
        """``time.time()`` at which the oldest queued chunk was committed, or None."""

    def recover(self, now: float) -> int:
        """Release claims of processes that are gone; returns the chunks released."""
        return 0

    @abc.abstractmethod
    def last_rowid(self) -> int:
        """The highest row id queued now (0 if empty): what a restart must still send."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release this process's claims and close. Idempotent."""


class MemoryQueue(EventQueue):
    """The queue in process memory: same contract, lost when the process ends."""

    def __init__(
        self, max_events: int, max_bytes: int, policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    ) -> None:
        super().__init__(max_events, max_bytes, policy)
        # rowid -> [payload, count, created, claimed]; dicts keep insertion order.
        self._rows: dict[int, tuple[bytes, int, float, bool]] = {}
        self._next = 1

    def _insert(self, chunks: Sequence[tuple[bytes, int]], now: float) -> int:
        rowid = self._next
        for payload, count in chunks:
            self._rows[rowid] = (payload, count, now, False)
            rowid += 1
        self._next = rowid
        return rowid - 1

    def _evict(self, events: int, nbytes: int, now: float) -> list[str]:
        evicted: list[str] = []
        freed_events = freed_bytes = 0
        for rowid, (payload, count, _, claimed) in list(self._rows.items()):
            if freed_events >= events and freed_bytes >= nbytes:
                break
            if claimed:
                continue
            del self._rows[rowid]
            evicted.extend(event_ids_of(payload))
            freed_events += count
            freed_bytes += len(payload)
        self._events -= freed_events
        self._bytes -= freed_bytes
        return evicted

    def claim(self, max_events: int, max_bytes: int, now: float) -> list[QueuedChunk]:
        out: list[QueuedChunk] = []
        events = size = 0
        with self._lock:
            for rowid, (payload, count, _created, claimed) in self._rows.items():
                if claimed:
                    continue
                if out and (events + count > max_events or size + len(payload) > max_bytes):
                    break
                out.append(QueuedChunk(rowid, payload, count))
                events += count
                size += len(payload)
            for item in out:
                self._rows[item.rowid] = (item.payload, item.count, self._rows[item.rowid][2], True)
        return out

    def purge(self) -> int:
        with self._lock:
            n = self._events
            self._rows.clear()
            self._events = self._bytes = 0
            return n

    def remove(self, rowids: Sequence[int]) -> None:
        with self._lock:
            for rowid in rowids:
                row = self._rows.pop(rowid, None)
                if row is not None:
                    self._events -= row[1]
                    self._bytes -= len(row[0])

    def release(self, rowids: Sequence[int]) -> None:
        with self._lock:
            for rowid in rowids:
                row = self._rows.get(rowid)
                if row is not None:
                    self._rows[rowid] = (row[0], row[1], row[2], False)

    def last_rowid(self) -> int:
        return self._next - 1

    def pending_through(self, watermark: int) -> bool:
        with self._lock:
            first = next(iter(self._rows), None)
        return first is not None and first <= watermark

    def oldest_created(self) -> float | None:
        with self._lock:
            first = next(iter(self._rows.values()), None)
        return None if first is None else first[2]

    def close(self) -> None:
        with self._lock:
            self._rows.clear()
            self._events = self._bytes = 0


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _storage_error(exc: sqlite3.Error, what: str) -> StorageError:
    if is_disk_full(exc):
        return StorageFullError(f"event queue {what}: disk full ({exc})")
    return StorageError(f"event queue {what}: {exc}")


#: Paths open in this process: two queue objects on one file in one process
#: would release each other's claims at start-up (they share the pid).
_open_paths: set[str] = set()
_open_paths_lock = threading.Lock()
#: Connections inherited across fork stay referenced forever so that their
#: finalizer never runs in the child (closing one could checkpoint the parent's WAL).
_abandoned: list[sqlite3.Connection] = []


def _forget_open_paths() -> None:
    # A forked child holds none of its parent's queues: it opens its own.
    global _open_paths_lock  # the parent may have held the lock at fork time
    _open_paths_lock = threading.Lock()
    _open_paths.clear()


os.register_at_fork(after_in_child=_forget_open_paths)


def _json_ints(values: Sequence[int]) -> str:
    return "[" + ",".join(str(int(v)) for v in values) + "]"


class SQLiteQueue(EventQueue):
    """The durable queue: one SQLite file in WAL mode.

    Raises ``StorageError`` when the file cannot be opened or is not a queue,
    or when it is already open in this process.
    """

    def __init__(
        self,
        path: Path,
        max_events: int,
        max_bytes: int,
        policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST,
        *,
        fsync: bool = False,
    ) -> None:
        super().__init__(max_events, max_bytes, policy)
        self.path = path
        self._pid = os.getpid()
        self._closed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._key = str(path.resolve())
        except OSError as exc:
            raise StorageError(f"event queue: cannot create {path}: {exc}") from None
        with _open_paths_lock:
            if self._key in _open_paths:
                raise StorageError(f"event queue {path} is already open in this process")
            _open_paths.add(self._key)
        try:
            # The worker, the sender and flush() share this connection under self._lock.
            self._db = sqlite3.connect(
                str(path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._setup(fsync)
        except sqlite3.Error as exc:
            with _open_paths_lock:
                _open_paths.discard(self._key)
            raise _storage_error(exc, f"cannot open {path}") from None
        except BaseException:
            with _open_paths_lock:
                _open_paths.discard(self._key)
            raise

    def _setup(self, fsync: bool) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"event queue {self.path}: WAL mode unavailable ({mode})")
        db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, _SCHEMA_VERSION):
                raise StorageError(f"event queue {self.path}: unknown schema version {version}")
            # AUTOINCREMENT: row ids never go back, so a flush watermark stays meaningful
            # after the queue was emptied.
            db.execute(
                "CREATE TABLE IF NOT EXISTS queue ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " count INTEGER NOT NULL,"
                " size INTEGER NOT NULL,"
                " created REAL NOT NULL,"
                " claim_pid INTEGER NOT NULL DEFAULT 0,"
                " claim_until REAL NOT NULL DEFAULT 0)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS payloads"
                " (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)"
            )
            if version == 1:  # the payload column moves to its own table
                db.execute("INSERT INTO payloads SELECT id, payload FROM queue")
                db.execute("ALTER TABLE queue DROP COLUMN payload")
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            # This process holds no claims yet: any claim with our pid is stale
            # (a previous queue object, or a pid reused after a crash).
            db.execute(
                "UPDATE queue SET claim_pid=0, claim_until=0 WHERE claim_pid=?", (self._pid,)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.refresh()

    def refresh(self) -> None:
        """Re-read the depth counters from the file (other processes may share it)."""
        with self._lock:
            try:
                events, nbytes = self._db.execute(
                    "SELECT coalesce(sum(count), 0), coalesce(sum(size), 0) FROM queue"
                ).fetchone()
            except sqlite3.Error as exc:
                raise _storage_error(exc, "refresh") from None
            self._events, self._bytes = int(events), int(nbytes)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _storage_error(exc, "begin") from None
        events, nbytes = self._events, self._bytes
        try:
            yield
            db.execute("COMMIT")
        except BaseException as exc:
            self._events, self._bytes = events, nbytes
            with contextlib.suppress(sqlite3.Error):  # the original error is the one to report
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _storage_error(exc, "commit") from None
            raise

    def _insert(self, chunks: Sequence[tuple[bytes, int]], now: float) -> int:
        db = self._db
        last = 0
        try:
            for payload, count in chunks:
                cur = db.execute(
                    "INSERT INTO queue (count, size, created) VALUES (?, ?, ?)",
                    (count, len(payload), now),
                )
                last = int(cur.lastrowid or 0)
                db.execute("INSERT INTO payloads (id, payload) VALUES (?, ?)", (last, payload))
        except sqlite3.Error as exc:
            raise _storage_error(exc, "insert") from None
        return last

    def _evict(self, events: int, nbytes: int, now: float) -> list[str]:
        evicted: list[str] = []
        freed_events = freed_bytes = 0
        try:
            while freed_events < events or freed_bytes < nbytes:
                row = self._db.execute(
                    "DELETE FROM queue WHERE id ="
                    " (SELECT min(id) FROM queue WHERE claim_until <= ?)"
                    " RETURNING id, count, size",
                    (now,),
                ).fetchone()
                if row is None:
                    break  # everything left is claimed: the newest are refused instead
                gone = self._db.execute(
                    "DELETE FROM payloads WHERE id = ? RETURNING payload", (row[0],)
                ).fetchone()
                evicted.extend(event_ids_of(gone[0]) if gone else [])
                freed_events += row[1]
                freed_bytes += row[2]
        except sqlite3.Error as exc:
            raise _storage_error(exc, "evict") from None
        self._events -= freed_events
        self._bytes -= freed_bytes
        return evicted

    def claim(self, max_events: int, max_bytes: int, now: float) -> list[QueuedChunk]:
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = self._select_claim(max_events, max_bytes, now)
                    if out:
                        # The id range holds exactly the selected unclaimed rows: rows
                        # claimed by others inside it still fail the claim_until test.
                        db.execute(
                            "UPDATE queue SET claim_pid=?, claim_until=?"
                            " WHERE id BETWEEN ? AND ? AND claim_until <= ?",
                            (self._pid, now + CLAIM_LEASE, out[0].rowid, out[-1].rowid, now),
                        )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _storage_error(exc, "claim") from None
        return out

    def _select_claim(self, max_events: int, max_bytes: int, now: float) -> list[QueuedChunk]:
        out: list[QueuedChunk] = []
        events = size = 0
        cursor = self._db.execute(
            "SELECT q.id, p.payload, q.count FROM queue AS q JOIN payloads AS p ON p.id = q.id"
            " WHERE q.claim_until <= ? ORDER BY q.id",
            (now,),
        )
        try:
            for rowid, payload, count in cursor:
                if out and (events + count > max_events or size + len(payload) > max_bytes):
                    break
                out.append(QueuedChunk(rowid, bytes(payload), count))
                events += count
                size += len(payload)
        finally:
            cursor.close()
        return out

    def purge(self) -> int:
        with self._lock, self._transaction():
            try:
                n = self._db.execute("SELECT COALESCE(SUM(count), 0) FROM queue").fetchone()[0]
                self._db.execute("DELETE FROM queue")
                self._db.execute("DELETE FROM payloads")
            except sqlite3.Error as exc:
                raise _storage_error(exc, "purge") from None
            self._events = self._bytes = 0
            return int(n)

    def remove(self, rowids: Sequence[int]) -> None:
        if not rowids:
            return
        ids = _json_ints(rowids)
        with self._lock, self._transaction():
            try:
                rows = self._db.execute(
                    "DELETE FROM queue WHERE id IN (SELECT value FROM json_each(?))"
                    " RETURNING count, size",
                    (ids,),
                ).fetchall()
                self._db.execute(
                    "DELETE FROM payloads WHERE id IN (SELECT value FROM json_each(?))", (ids,)
                )
            except sqlite3.Error as exc:
                raise _storage_error(exc, "remove") from None
            self._events -= sum(r[0] for r in rows)
            self._bytes -= sum(r[1] for r in rows)

    def release(self, rowids: Sequence[int]) -> None:
        if not rowids:
            return
        with self._lock:
            try:
                self._db.execute(
                    "UPDATE queue SET claim_pid=0, claim_until=0"
                    " WHERE id IN (SELECT value FROM json_each(?)) AND claim_pid=?",
                    (_json_ints(rowids), self._pid),
                )
            except sqlite3.Error as exc:
                raise _storage_error(exc, "release") from None

    def pending_through(self, watermark: int) -> bool:
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT 1 FROM queue WHERE id <= ? AND (claim_pid=0 OR claim_pid=?) LIMIT 1",
                    (watermark, self._pid),
                ).fetchone()
                if row is not None:
                    return True
                # A chunk claimed by a process that died (kill -9 mid-send) is still ours
                # to deliver: only a live claimer is trusted to send it.
                others = self._db.execute(
                    "SELECT DISTINCT claim_pid FROM queue"
                    " WHERE id <= ? AND claim_pid NOT IN (0, ?)",
                    (watermark, self._pid),
                ).fetchall()
            except sqlite3.Error as exc:
                raise _storage_error(exc, "read") from None
        return any(not _pid_alive(pid) for (pid,) in others)

    def last_rowid(self) -> int:
        with self._lock:
            try:
                row = self._db.execute("SELECT coalesce(max(id), 0) FROM queue").fetchone()
            except sqlite3.Error as exc:
                raise _storage_error(exc, "read") from None
        return int(row[0])

    def oldest_created(self) -> float | None:
        with self._lock:
            try:
                row = self._db.execute("SELECT created FROM queue ORDER BY id LIMIT 1").fetchone()
            except sqlite3.Error as exc:
                raise _storage_error(exc, "read") from None
        return None if row is None else float(row[0])

    def recover(self, now: float) -> int:
        with self._lock:
            try:
                pids = [
                    r[0]
                    for r in self._db.execute(
                        "SELECT DISTINCT claim_pid FROM queue WHERE claim_pid NOT IN (0, ?)",
                        (self._pid,),
                    )
                ]
                dead = [pid for pid in pids if not _pid_alive(pid)]
                if not dead:
                    return 0
                cur = self._db.execute(
                    "UPDATE queue SET claim_pid=0, claim_until=0"
                    " WHERE claim_pid IN (SELECT value FROM json_each(?))",
                    (_json_ints(dead),),
                )
            except sqlite3.Error as exc:
                raise _storage_error(exc, "recover") from None
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.execute(
                    "UPDATE queue SET claim_pid=0, claim_until=0 WHERE claim_pid=?", (self._pid,)
                )
                self._db.close()
            except sqlite3.Error as exc:
                raise _storage_error(exc, "close") from None
            finally:
                with _open_paths_lock:
                    _open_paths.discard(self._key)

    def abandon(self) -> None:
        """Forget the connection without touching the file: for a forked child, which
        must not use (or close) the connection it inherited from its parent."""
        # No lock: another thread of the parent may have held it at fork time.
        self._closed = True
        _abandoned.append(self._db)


def open_queue(config: BackendConfig) -> EventQueue:
    """The queue a configuration asks for. Raises ``StorageError`` (see ``SQLiteQueue``)."""
    if config.queue_mode is QueueMode.MEMORY:
        return MemoryQueue(config.max_queue_events, config.max_queue_bytes, config.overflow_policy)
    return SQLiteQueue(
        config.resolved_queue_path,
        config.max_queue_events,
        config.max_queue_bytes,
        config.overflow_policy,
        fsync=config.queue_fsync,
    )
