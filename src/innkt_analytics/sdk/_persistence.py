"""The SDK's local analytics store: ``AnalyticsDataPersistenceService``.

A port of the seed's service of the same name onto SQLite in WAL mode::

    AnalyticsDataPersistenceService     one connection, guarded by a lock; thread-safe
    ├── records table                   id, type, ts (µs UTC), session_id, size, data blob
    │   └── data blob                   JSON, compressed and/or encrypted (see _atrest)
    ├── stats row                       record count, logical bytes, evicted/expired totals
    ├── maintenance thread              retention cleanup and scheduled backups
    └── backups                         _backup: online backup API + manifests

Design decisions (the why is in ``docs/persistence.md``):

* ``max_storage_size`` is enforced inside each write transaction by evicting the
  oldest records (by timestamp) down to 90 % of the limit; the host app's write
  never fails because of the limit, and evictions are counted and returned.
* ``synchronous = NORMAL``: in WAL mode a crash of the app never loses a committed
  transaction and a power cut cannot corrupt the file; it may lose the last commits
  before the cut, which is acceptable for a local analytics buffer and makes small
  writes an order of magnitude cheaper than ``FULL``.
* A record's logical size is its stored blob plus its id, type and session id plus
  a fixed 40-byte allowance for the row and index entries; ``usage_percent`` refers
  to that, ``file_bytes`` reports what the files really take.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, Protocol, Self

import msgspec

from innkt_analytics.sdk._atrest import (
    COLUMNS,
    INSERT_SQL,
    SCHEMA,
    SCHEMA_VERSION,
    AtRestCodec,
    ExportFormat,
    InvalidRecordError,
    RecordCodec,
    Row,
    StoredRecord,
    coerce_record,
    from_micros,
    key_check_blob,
    key_id,
    select_sql,
    to_micros,
    verify_key_check,
)
from innkt_analytics.sdk._persistence_config import (
    ENCRYPTION_KEY_ENV,
    CleanupResult,
    PersistenceConfig,
    PersistenceState,
    StorageInfo,
    StoreResult,
)
from innkt_analytics.shared._backup import (
    BackupManifest,
    create_backup,
    list_backups,
    prune_backups,
    restore_backup,
    storage_error,
    verify_backup,
)
from innkt_analytics.shared._exceptions import (
    ConfigError,
    ConnectionStateError,
    StorageError,
)

__all__ = [
    "ENCRYPTION_KEY_ENV",
    "AnalyticsDataPersistenceService",
    "CleanupResult",
    "ExportFormat",
    "InvalidRecordError",
    "PersistenceConfig",
    "PersistenceState",
    "StorageInfo",
    "StoreResult",
    "StoredRecord",
]

logger = logging.getLogger("innkt_analytics.persistence")

LOW_WATERMARK: Final = 0.9
_EXPORT_CHUNK: Final = 2000


class _BinarySink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class AnalyticsDataPersistenceService:
    """Local, thread-safe analytics record store with backups (see the module docstring).

    Construct it with a config (or call ``initialize`` later); ``get_instance()`` gives
    the process-wide instance as in the seed. ``close()`` stops the maintenance thread.
    """

    _instance: ClassVar[AnalyticsDataPersistenceService | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, config: PersistenceConfig | None = None) -> None:
        self._lock = threading.RLock()
        # Held by backup and restore; never taken while holding _lock (lock order).
        self._backup_lock = threading.Lock()
        self._state = PersistenceState.NEW
        self._conn: sqlite3.Connection | None = None
        self._config = PersistenceConfig()
        self._db_path = Path()
        self._backup_dir = Path()
        self._key: bytes | None = None
        # Replaced by _load_codecs when the store opens; compress=False needs no zstd extra.
        self._records = RecordCodec(AtRestCodec(compress=False))
        self._meta_codec = AtRestCodec(compress=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._maintenance_errors = 0
        self._last_error: str | None = None
        if config is not None:
            self.initialize(config)

    @classmethod
    def get_instance(cls) -> AnalyticsDataPersistenceService:
        """The process-wide instance, created on first use (not yet initialized)."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def state(self) -> PersistenceState:
        """Current lifecycle state."""
        return self._state

    @property
    def config(self) -> PersistenceConfig:
        """The configuration in force."""
        return self._config

    def initialize(
        self, config: PersistenceConfig | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        """Open (creating if needed) the store and start the maintenance thread.

        Raises ConnectionStateError if already open, ConfigError for a bad setting or
        key, DecryptionError if the store is encrypted and the key is missing or wrong,
        StorageError if the file cannot be opened or has a newer schema.
        """
        config = config or PersistenceConfig()
        with self._lock:
            if self._state is PersistenceState.OPEN:
                raise ConnectionStateError("persistence service is already open; close() first")
            key = config.resolved_key(environ)
            if config.enable_encryption and key is None:
                raise ConfigError(
                    "encryption_key",
                    f"enable_encryption needs a 32-byte key here or in {ENCRYPTION_KEY_ENV}",
                )
            self._config = config
            self._key = key
            self._db_path = config.resolved_db_path(environ)
            self._backup_dir = config.resolved_backup_dir(environ)
            self._open_connection()
            self._state = PersistenceState.OPEN
        self._start_maintenance()

    def close(self) -> None:
        """Stop the maintenance thread and close the database; safe to call twice."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._state is PersistenceState.OPEN:
                self._state = PersistenceState.CLOSED

    shutdown = close

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open_connection(self) -> None:
        """Open the database, create or check the schema, check the key, load dictionaries."""
        cfg, path = self._config, self._db_path
        with self._sql_errors(f"opening {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            with self._sql_errors("open"):
                conn.execute("PRAGMA busy_timeout = 5000")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(f"{path}: cannot enable WAL (journal_mode={mode})")
                for pragma in (
                    "synchronous = NORMAL",
                    "cache_size = -16384",
                    "temp_store = MEMORY",
                ):
                    conn.execute(f"PRAGMA {pragma}")
            with self._transaction(conn, "open"):
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    if conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
                        raise StorageError(f"{path} is not an innkt-analytics store")
                    for statement in filter(str.strip, SCHEMA.split(";")):
                        conn.execute(statement)
                elif version > SCHEMA_VERSION:
                    raise StorageError(
                        f"{path} has schema version {version}; we read {SCHEMA_VERSION}"
                    )
                row = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
                if row is not None:
                    verify_key_check(self._key, bytes(row[0]))
                elif cfg.enable_encryption and self._key is not None:
                    check = key_check_blob(self._key)
                    conn.execute("INSERT INTO meta VALUES ('key_check', ?)", (check,))
            self._load_codecs(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _load_codecs(self, conn: sqlite3.Connection) -> None:
        cfg = self._config
        with self._sql_errors("open"):
            key, encrypt = self._key, cfg.enable_encryption
            blobs = AtRestCodec(
                compress=cfg.enable_compression,
                key=key,
                encrypt=encrypt,
                level=cfg.compression_level,
            )
            # Dictionaries hold fragments of real records: encrypted like them, never compressed.
            self._meta_codec = AtRestCodec(compress=False, key=key, encrypt=encrypt)
            blobs.load_dictionaries(
                {
                    int(i): self._meta_codec.decode(bytes(blob), b"zstd-dict:%d" % i)
                    for i, blob in conn.execute("SELECT id, data FROM zstd_dicts")
                }
            )
            self._records = RecordCodec(blobs)

    @contextmanager
    def _sql_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise storage_error(exc, f"{what} failed") from exc

    def _require_open(self) -> sqlite3.Connection:
        if self._state is not PersistenceState.OPEN or self._conn is None:
            raise ConnectionStateError(
                f"persistence service is {self._state.value}; call initialize() first"
            )
        return self._conn

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back and converted to StorageError on error."""
        with self._sql_errors(what):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back itself (SQLITE_FULL)
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._transaction(self._require_open(), "write") as conn:
            yield conn

    # -- writes --------------------------------------------------------------------------

    def store_data(self, record: StoredRecord | Mapping[str, Any]) -> StoreResult:
        """Store one record (replacing a record with the same id).

        Raises InvalidRecordError for a bad record, StorageFullError if the disk is
        full, StorageError for other storage failures. Exceeding ``max_storage_size``
        is not an error: the oldest records are evicted and counted in the result.
        """
        return self.store_batch((record,))

    def store_batch(self, records: Iterable[StoredRecord | Mapping[str, Any]]) -> StoreResult:
        """Store many records in one transaction; same contract as ``store_data``."""
        recs = [coerce_record(r) for r in records]
        if not recs:
            return StoreResult(stored=0)
        with self._lock:
            self._require_open()
            rows = self._records.to_rows(recs)  # validates: nothing is sampled from a bad batch
            trained = self._records.observe(recs)
            if trained is not None:  # used from the next batch on
                self._save_dictionary(trained)
            with self._write() as conn:
                try:
                    conn.executemany(INSERT_SQL, rows)
                    added, delta = len(rows), sum(r[4] for r in rows)
                except sqlite3.IntegrityError:
                    # Some ids exist already: redo the batch row by row as upserts.
                    conn.execute("ROLLBACK")
                    conn.execute("BEGIN IMMEDIATE")
                    added, delta = _upsert(conn, rows)
                evicted = self._account(conn, added, delta)
        return StoreResult(stored=len(rows), evicted=evicted)

    def update_data(
        self,
        record_id: str,
        *,
        type: str | None = None,
        data: dict[str, Any] | None = None,
        timestamp: dt.datetime | None = None,
        session_id: str | msgspec.UnsetType | None = msgspec.UNSET,
    ) -> StoredRecord | None:
        """Replace the given fields of a record; return it, or None if there is no such id.

        Raises InvalidRecordError, StorageError as ``store_data`` does.
        """
        with self._lock:
            current = self.get_data(record_id)
            if current is None:
                return None
            given = {"type": type, "data": data, "timestamp": timestamp}
            changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
            if session_id is not msgspec.UNSET:
                changes["session_id"] = session_id
            updated = msgspec.structs.replace(current, **changes)
            rows = self._records.to_rows([updated])
            with self._write() as conn:
                self._account(conn, *_upsert(conn, rows))
            return updated

    def delete_data(self, record_id: str) -> bool:
        """Delete a record; return whether it existed. Raises StorageError on failure."""
        with self._write() as conn:
            row = conn.execute("DELETE FROM records WHERE id = ? RETURNING size", (record_id,))
            found = row.fetchone()
            if found is not None:
                self._account(conn, -1, -found[0])
        return found is not None

    def _account(self, conn: sqlite3.Connection, added: int, delta: int) -> int:
        """Apply a write's record/byte change to the stats row; evict if over the limit."""
        (total,) = conn.execute(
            "UPDATE stats SET records = records + ?, bytes = bytes + ? RETURNING bytes",
            (added, delta),
        ).fetchone()
        limit = self._config.max_storage_size
        if total <= limit:
            return 0
        need = total - int(limit * LOW_WATERMARK)
        victims: list[tuple[int]] = []
        freed = 0
        cur = conn.execute("SELECT seq, size FROM records ORDER BY ts, seq")
        try:
            while freed < need and (chunk := cur.fetchmany(256)):
                for seq, size in chunk:
                    victims.append((seq,))
                    freed += size
                    if freed >= need:
                        break
        finally:
            cur.close()
        conn.executemany("DELETE FROM records WHERE seq = ?", victims)
        conn.execute(
            "UPDATE stats SET records = records - ?, bytes = bytes - ?, evicted = evicted + ?",
            (len(victims), freed, len(victims)),
        )
        logger.info("storage limit reached: evicted %d oldest records", len(victims))
        return len(victims)

    def _save_dictionary(self, trained: bytes) -> None:
        with self._write() as conn:
            (dict_id,) = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM zstd_dicts").fetchone()
            blob = self._meta_codec.encode(trained, b"zstd-dict:%d" % dict_id)
            conn.execute("INSERT INTO zstd_dicts (id, data) VALUES (?, ?)", (dict_id, blob))
        # Registered only after the commit, so no blob can name an uncommitted dictionary.
        self._records.blobs.add_dictionary(dict_id, trained)

    # -- reads ---------------------------------------------------------------------------

    def get_data(self, record_id: str) -> StoredRecord | None:
        """The record with this id, or None.

        Raises DecryptionError if it cannot be decrypted, StorageError on failure.
        """
        found = self._fetch(f"SELECT {COLUMNS} FROM records WHERE id = ?", [record_id])
        return found[0] if found else None

    def _fetch(self, sql: str, params: list[Any]) -> list[StoredRecord]:
        with self._lock, self._sql_errors("read"):
            rows = self._require_open().execute(sql, params).fetchall()
        from_row = self._records.from_row
        return [from_row(*row) for row in rows]

    def query(
        self,
        *,
        type: str | None = None,
        session_id: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int | None = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> list[StoredRecord]:
        """Records matching all given filters, ordered by timestamp (``since`` inclusive,
        ``until`` exclusive). Raises ConfigError for a bad argument, StorageError on failure.
        """
        sql, params = select_sql(type, session_id, since, until, order)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ConfigError("limit", "must be a non-negative int")
            sql += " LIMIT ?"
            params.append(limit)
        return self._fetch(sql, params)

    def export_data(
        self,
        format: ExportFormat = "json",
        path: Path | str | None = None,
        stream: _BinarySink | None = None,
        *,
        type: str | None = None,
        session_id: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> int:
        """Write matching records to ``path`` (atomically) or to a binary ``stream``;
        return how many. JSON is an array, NDJSON one record per line, CSV has the
        columns id,type,timestamp,sessionId,data (data as JSON text).

        Reads a consistent snapshot on a connection of its own, so writers are not
        held up. Raises ConfigError for bad arguments, StorageError on failure.
        """
        if format not in ("json", "ndjson", "csv"):
            raise ConfigError("format", "must be 'json', 'ndjson' or 'csv'")
        sql, params = select_sql(type, session_id, since, until, "asc")
        with self._lock:
            self._require_open()
            db_path = self._db_path
        if stream is not None and path is None:
            return self._export(db_path, sql, params, format, stream)
        if path is None or stream is not None:
            raise ConfigError("path", "give exactly one of path or stream")
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        try:
            with tmp.open("wb") as f:
                count = self._export(db_path, sql, params, format, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise storage_error(exc, f"export to {target} failed") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return count

    def _export(
        self, db_path: Path, sql: str, params: list[Any], fmt: ExportFormat, out: _BinarySink
    ) -> int:
        records = self._records
        count = 0
        with self._sql_errors("export"):
            conn = sqlite3.connect(db_path, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout = 5000")
                conn.execute("BEGIN")  # one snapshot for the whole export
                cur = conn.execute(sql, params)
                out.write(records.export_head(fmt))
                while chunk := cur.fetchmany(_EXPORT_CHUNK):
                    out.write(records.export_chunk(fmt, chunk, first=count == 0))
                    count += len(chunk)
                out.write(records.export_tail(fmt))
                conn.execute("COMMIT")
            finally:
                conn.close()
        return count

    def get_storage_info(self) -> StorageInfo:
        """Record count, logical bytes and usage, oldest/newest, last backup, counters.

        Raises StorageError on failure.
        """
        with self._lock, self._sql_errors("storage info"):
            conn = self._require_open()
            records, nbytes, evicted, expired = conn.execute(
                "SELECT records, bytes, evicted, expired FROM stats"
            ).fetchone()
            oldest, newest = conn.execute("SELECT min(ts), max(ts) FROM records").fetchone()
            file_bytes = sum(
                p.stat().st_size
                for p in (self._db_path, Path(f"{self._db_path}-wal"))
                if p.exists()
            )
            limit = self._config.max_storage_size
        backups = list_backups(self._backup_dir)
        return StorageInfo(
            records=records,
            bytes=nbytes,
            max_bytes=limit,
            usage_percent=round(100.0 * nbytes / limit, 2),
            file_bytes=file_bytes,
            oldest=None if oldest is None else from_micros(oldest),
            newest=None if newest is None else from_micros(newest),
            last_backup=backups[0].created_at if backups else None,
            last_backup_id=backups[0].backup_id if backups else None,
            backups=len(backups),
            evicted_total=evicted,
            expired_total=expired,
            compressed=self._records.blobs.compresses,
            encrypted=self._records.blobs.encrypts,
            maintenance_errors=self._maintenance_errors,
            last_error=self._last_error,
        )

    # -- maintenance ---------------------------------------------------------------------

    def cleanup(self) -> CleanupResult:
        """Delete records older than ``retention_days``, enforce the size limit and prune
        the backup history. Raises StorageError on failure.
        """
        cutoff = to_micros(dt.datetime.now(dt.UTC)) - int(
            self._config.retention_days * 86_400_000_000
        )
        with self._write() as conn:
            count, freed = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM records WHERE ts < ?", (cutoff,)
            ).fetchone()
            if count:
                conn.execute("DELETE FROM records WHERE ts < ?", (cutoff,))
                conn.execute(
                    "UPDATE stats SET records = records - ?, bytes = bytes - ?, "
                    "expired = expired + ?",
                    (count, freed, count),
                )
            evicted = self._account(conn, 0, 0)
        with self._sql_errors("checkpoint"), self._lock:
            self._require_open().execute("PRAGMA wal_checkpoint(PASSIVE)")
        pruned = prune_backups(self._backup_dir, self._config.max_backups)
        return CleanupResult(expired=count, evicted=evicted, backups_pruned=len(pruned))

    def perform_backup(self) -> BackupManifest:
        """Back up the store now (writers continue meanwhile) and prune the history.

        Raises StorageFullError if the backup disk is full, StorageError on failure.
        """
        with self._backup_lock:
            with self._lock:
                self._require_open()
                labels = {"storageKey": self._config.storage_key}
                if self._key is not None:
                    labels["keyId"] = key_id(self._key)
                db_path, backup_dir = self._db_path, self._backup_dir
            return create_backup(
                db_path,
                backup_dir,
                count_table="records",
                compressed=self._records.blobs.compresses,
                encrypted=self._records.blobs.encrypts,
                labels=labels,
                max_backups=self._config.max_backups,
            )

    def list_backups(self) -> list[BackupManifest]:
        """Manifests of this store's backups, newest first."""
        return list_backups(self._backup_dir)

    def verify_backup(self, backup_id: str) -> BackupManifest:
        """Check a backup's file against its manifest and SQLite's integrity_check.

        Raises IntegrityError naming the problem.
        """
        return verify_backup(self._backup_dir, backup_id)

    def restore_backup(self, backup_id: str) -> BackupManifest:
        """Verify a backup and swap it in atomically for the current data.

        Raises IntegrityError if the backup is damaged, DecryptionError if it was made
        with another key, StorageError on failure; in every case the current data stays.
        """
        with self._backup_lock, self._lock:
            conn = self._require_open()
            conn.close()
            self._conn = None
            try:
                return restore_backup(
                    self._db_path, self._backup_dir, backup_id, check=self._check_restorable
                )
            finally:
                # Reopen whichever database is now in place: the restored one or the old one.
                try:
                    self._open_connection()
                except BaseException:
                    self._state = PersistenceState.CLOSED
                    raise

    def _check_restorable(self, path: Path) -> None:
        """Refuse a backup this service could not read: newer schema or another key."""
        with self._sql_errors("reading backup"):
            conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                row = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
            finally:
                conn.close()
        if version > SCHEMA_VERSION:
            raise StorageError(f"backup has schema version {version}; we read {SCHEMA_VERSION}")
        if row is not None:
            verify_key_check(self._key, bytes(row[0]))

    def _start_maintenance(self) -> None:
        cfg = self._config
        if cfg.backup_interval is None and cfg.cleanup_interval is None:
            return
        self._stop = threading.Event()
        name = "innkt-persistence-maintenance"
        self._thread = threading.Thread(target=self._maintain, args=(self._stop,), name=name)
        self._thread.daemon = True
        self._thread.start()

    def _maintain(self, stop: threading.Event) -> None:
        cfg = self._config
        now = time.monotonic()
        next_cleanup = now if cfg.cleanup_interval is not None else math.inf
        next_backup = math.inf
        if cfg.backup_interval is not None:
            # The schedule survives restarts: the next backup is due one interval after
            # the newest one on disk (or after start, when there is none).
            backups = list_backups(self._backup_dir)
            last = backups[0].created_at.timestamp() if backups else time.time()
            next_backup = now + max(0.0, last + cfg.backup_interval - time.time())
        while True:
            wait = min(next_cleanup, next_backup) - time.monotonic()
            if stop.wait(min(max(wait, 0.0), 3600.0)):
                return
            now = time.monotonic()
            if now >= next_cleanup:
                self._guarded(self.cleanup)
                next_cleanup = now + (cfg.cleanup_interval or math.inf)
            if now >= next_backup:
                self._guarded(self.perform_backup)
                next_backup = now + (cfg.backup_interval or math.inf)

    def _guarded(self, job: Callable[[], object]) -> None:
        # The maintenance thread must outlive any one failure; failures are counted
        # and surfaced in get_storage_info() rather than raised into nobody.
        try:
            job()
        except ConnectionStateError:
            return
        except Exception as exc:
            self._maintenance_errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            logger.warning("persistence maintenance failed", exc_info=True)


def _upsert(conn: sqlite3.Connection, rows: list[Row]) -> tuple[int, int]:
    """Insert-or-replace row by row; return (new records, byte delta)."""
    added = delta = 0
    for row in rows:
        old = conn.execute("SELECT size FROM records WHERE id = ?", (row[0],)).fetchone()
        if old is None:
            conn.execute(INSERT_SQL, row)
            added += 1
            delta += row[4]
        else:
            conn.execute(
                "UPDATE records SET type=?, ts=?, session_id=?, size=?, data=? WHERE id=?",
                (*row[1:], row[0]),
            )
            delta += row[4] - old[0]
    return added, delta
