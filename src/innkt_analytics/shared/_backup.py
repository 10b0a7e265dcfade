"""Backup, verification and restore of any SQLite database file, with JSON manifests.

Used by the SDK's persistence service and meant for the server's embedded store too:
everything takes a path to a database file and a backup directory, nothing else.

A backup ``<id>`` is two files in the backup directory::

    <id>.sqlite3   a self-contained copy (rollback-journal mode, no -wal beside it)
    <id>.json      its manifest: SHA-256 and size of the file, record count, schema
                   version (PRAGMA user_version), created-at, compressed/encrypted flags

The copy is made with SQLite's online backup API in a single step on a connection
of its own: that step reads one consistent snapshot, and in WAL mode writers on other
connections go on committing meanwhile (a stepped copy would restart every time a
writer commits, and might never finish under load). Files are written under a
temporary name, fsynced and renamed; the manifest is written last, so a crash leaves
at most an orphan that :func:`list_backups` ignores and :func:`prune_backups` removes.

:func:`restore_backup` verifies the backup, copies it next to the database, checks
the copy's hash, folds the live database's WAL into the main file and then swaps
the copy in with one ``os.replace``. A crash or an error at any step leaves either
the old database or the new one, never a mix; the caller must have closed its own
connections first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import secrets
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, NoReturn

import msgspec

from innkt_analytics.shared._exceptions import (
    InnktError,
    IntegrityError,
    StorageError,
    StorageFullError,
    is_disk_full,
)

__all__ = [
    "BackupManifest",
    "create_backup",
    "fsync_dir",
    "list_backups",
    "prune_backups",
    "restore_backup",
    "sha256_file",
    "storage_error",
    "verify_backup",
]

MANIFEST_FORMAT: Final = 1
_DB_SUFFIX: Final = ".sqlite3"
_MANIFEST_SUFFIX: Final = ".json"
_TMP_SUFFIX: Final = ".tmp"
_RESTORE_SUFFIX: Final = ".restore-tmp"
_COPY_CHUNK: Final = 1024 * 1024
# An orphan younger than this may belong to a backup still being written by another
# process (the server runs backups too); prune leaves it alone.
_ORPHAN_AGE_S: Final = 3600.0


class BackupManifest(msgspec.Struct, rename="camel", kw_only=True, frozen=True):
    """What a backup holds; stored as ``<backup_id>.json`` next to the backup file."""

    backup_id: str
    file: str
    created_at: dt.datetime
    sha256: str
    size_bytes: int
    schema_version: int
    record_count: int | None = None
    count_table: str | None = None
    compressed: bool = False
    encrypted: bool = False
    sqlite_version: str = ""
    labels: dict[str, str] = {}
    format: int = MANIFEST_FORMAT


def storage_error(exc: BaseException, what: str) -> StorageError:
    """Convert an OSError/sqlite3 error to our tree; a full disk becomes StorageFullError."""
    if is_disk_full(exc):
        return StorageFullError(f"{what}: disk full ({exc})")
    return StorageError(f"{what}: {exc}")


def _raise_storage(exc: BaseException, what: str) -> NoReturn:
    raise storage_error(exc, what) from exc


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes. Raises OSError if it cannot be read."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (fsync of the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _new_backup_id(now: dt.datetime) -> str:
    # Sortable by time; the random tail keeps two backups in one microsecond apart.
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def _check_table_name(name: str) -> None:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"count_table must be a plain identifier, got {name!r}")


def _readonly_uri(path: Path) -> str:
    # immutable=1: verification must not create journal files beside, or modify, a backup.
    return path.resolve().as_uri() + "?mode=ro&immutable=1"


def _remove_quietly(*paths: Path) -> None:
    # Best effort: it runs while another error is being reported, which must win.
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def create_backup(
    db_path: Path | str,
    backup_dir: Path | str,
    *,
    count_table: str | None = None,
    compressed: bool = False,
    encrypted: bool = False,
    labels: dict[str, str] | None = None,
    max_backups: int | None = None,
) -> BackupManifest:
    """Back up the database at ``db_path`` into ``backup_dir`` and write its manifest.

    ``count_table`` names a table whose row count goes into the manifest (and is checked
    by :func:`verify_backup`); the flags describe the rows and are recorded as given.
    With ``max_backups`` the history is then pruned to that many newest backups.
    Raises StorageFullError when the disk fills up, StorageError for other failures;
    either way no partial backup is listed.
    """
    db_path, backup_dir = Path(db_path), Path(backup_dir)
    if count_table is not None:
        _check_table_name(count_table)
    if not db_path.is_file():
        raise StorageError(f"no database at {db_path}")
    now = dt.datetime.now(dt.UTC)
    backup_id = _new_backup_id(now)
    final = backup_dir / (backup_id + _DB_SUFFIX)
    tmp = backup_dir / (backup_id + _DB_SUFFIX + _TMP_SUFFIX)
    manifest_path = backup_dir / (backup_id + _MANIFEST_SUFFIX)
    manifest_tmp = backup_dir / (backup_id + _MANIFEST_SUFFIX + _TMP_SUFFIX)
    try:
        backup_dir.mkdir(parents=True, exist_ok=True)
        src = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        try:
            src.execute("PRAGMA busy_timeout = 10000")
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                src.backup(dst, pages=-1)  # one step = one consistent snapshot
                # The copy carries the source's WAL flag; make it a single self-contained file.
                dst.execute("PRAGMA journal_mode = DELETE")
                schema_version = int(dst.execute("PRAGMA user_version").fetchone()[0])
                record_count = None
                if count_table is not None:
                    row = dst.execute(f"SELECT count(*) FROM {count_table}").fetchone()
                    record_count = int(row[0])
            finally:
                dst.close()
        finally:
            src.close()
        _remove_quietly(Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm"))
        _fsync_file(tmp)
        manifest = BackupManifest(
            backup_id=backup_id,
            file=final.name,
            created_at=now,
            sha256=sha256_file(tmp),
            size_bytes=tmp.stat().st_size,
            schema_version=schema_version,
            record_count=record_count,
            count_table=count_table,
            compressed=compressed,
            encrypted=encrypted,
            sqlite_version=sqlite3.sqlite_version,
            labels=dict(labels or {}),
        )
        os.replace(tmp, final)
        manifest_tmp.write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
        _fsync_file(manifest_tmp)
        os.replace(manifest_tmp, manifest_path)
        fsync_dir(backup_dir)
    except (OSError, sqlite3.Error) as exc:
        _remove_quietly(
            tmp,
            Path(str(tmp) + "-wal"),
            Path(str(tmp) + "-shm"),
            Path(str(tmp) + "-journal"),
            final,
            manifest_tmp,
            manifest_path,
        )
        _raise_storage(exc, "backup failed")
    if max_backups is not None:
        prune_backups(backup_dir, max_backups)
    return manifest


def _read_manifest(path: Path) -> BackupManifest:
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=BackupManifest)
    except FileNotFoundError:
        raise IntegrityError(f"backup manifest {path.name} not found") from None
    except OSError as exc:
        raise StorageError(f"cannot read manifest {path}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise IntegrityError(f"backup manifest {path.name} is corrupt: {exc}") from None
    if manifest.format != MANIFEST_FORMAT:
        raise IntegrityError(f"backup manifest format {manifest.format} is not supported")
    if (
        Path(manifest.file).name != manifest.file
        or manifest.backup_id + _MANIFEST_SUFFIX != path.name
    ):
        raise IntegrityError(f"backup manifest {path.name} does not describe its own backup")
    return manifest


def list_backups(backup_dir: Path | str) -> list[BackupManifest]:
    """Manifests of the complete backups in ``backup_dir``, newest first.

    A manifest that cannot be parsed is skipped here (``verify_backup`` reports it).
    """
    backup_dir = Path(backup_dir)
    if not backup_dir.is_dir():
        return []
    found = []
    for path in backup_dir.glob("*" + _MANIFEST_SUFFIX):
        try:
            found.append(_read_manifest(path))
        except (IntegrityError, StorageError):
            continue
    found.sort(key=lambda m: (m.created_at, m.backup_id), reverse=True)
    return found


def prune_backups(backup_dir: Path | str, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest backups and old orphans; return the deleted ids.

    Raises ValueError if ``keep`` < 1.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    backup_dir = Path(backup_dir)
    manifests = list_backups(backup_dir)
    removed = []
    for m in manifests[keep:]:
        # Manifest first: a crash in between leaves an orphan file, never a listed
        # backup whose file is gone.
        _remove_quietly(backup_dir / (m.backup_id + _MANIFEST_SUFFIX), backup_dir / m.file)
        removed.append(m.backup_id)
    listed = {m.file for m in manifests[:keep]}
    now = dt.datetime.now().timestamp()
    for path in backup_dir.glob("*" + _DB_SUFFIX + "*"):
        if path.name in listed:
            continue
        try:
            if now - path.stat().st_mtime > _ORPHAN_AGE_S:
                path.unlink()
        except FileNotFoundError:
            continue
    return removed


def _manifest_for(backup_dir: Path, backup_id: str) -> BackupManifest:
    if not backup_id or Path(backup_id).name != backup_id or backup_id.startswith("."):
        raise IntegrityError(f"invalid backup id {backup_id!r}")
    return _read_manifest(backup_dir / (backup_id + _MANIFEST_SUFFIX))


def _check_size(path: Path, manifest: BackupManifest) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise IntegrityError(f"backup file {path.name} is missing") from None
    if size != manifest.size_bytes:
        raise IntegrityError(
            f"backup {manifest.backup_id} is {size} bytes, its manifest says "
            f"{manifest.size_bytes} (truncated or appended to)"
        )


def _check_hash(path: Path, manifest: BackupManifest) -> None:
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise StorageError(f"cannot read backup {manifest.backup_id}: {exc}") from exc
    if digest != manifest.sha256:
        raise IntegrityError(
            f"backup {manifest.backup_id} SHA-256 mismatch: "
            f"file {digest}, manifest {manifest.sha256}"
        )


def _check_database(path: Path, manifest: BackupManifest) -> None:
    try:
        conn = sqlite3.connect(_readonly_uri(path), uri=True, isolation_level=None)
        try:
            # integrity_check looks up every index entry in its table: a cache of up to
            # 128 MiB (allocated as used) saves ~20 % on a million records. Not mmap: a
            # file truncated under a mapping kills the process with SIGBUS.
            conn.execute("PRAGMA cache_size = -131072")
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            count = None
            if manifest.count_table is not None:
                _check_table_name(manifest.count_table)
                sql = f"SELECT count(*) FROM {manifest.count_table}"
                count = int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(
            f"backup {manifest.backup_id} is not a valid database: {exc}"
        ) from None
    if rows != [("ok",)]:
        problems = "; ".join(str(r[0]) for r in rows[:5])
        raise IntegrityError(f"backup {manifest.backup_id} failed integrity_check: {problems}")
    if version != manifest.schema_version:
        raise IntegrityError(
            f"backup {manifest.backup_id} has schema version {version}, manifest says "
            f"{manifest.schema_version}"
        )
    if manifest.count_table is not None and count != manifest.record_count:
        raise IntegrityError(
            f"backup {manifest.backup_id} holds {count} records, "
            f"manifest says {manifest.record_count}"
        )


def verify_backup(
    backup_dir: Path | str, backup_id: str, *, integrity_check: bool = True
) -> BackupManifest:
    """Check a backup against its manifest and return the manifest.

    Size and SHA-256 catch any truncated, extended or flipped byte; with
    ``integrity_check`` the file is also opened read-only and must pass SQLite's
    ``PRAGMA integrity_check`` and match the manifest's schema version and record count.
    Raises IntegrityError naming what is wrong.
    """
    backup_dir = Path(backup_dir)
    manifest = _manifest_for(backup_dir, backup_id)
    path = backup_dir / manifest.file
    _check_size(path, manifest)
    if not integrity_check:
        _check_hash(path, manifest)
        return manifest
    # Hashing and integrity_check both release the GIL: run them side by side. A
    # hash mismatch is reported in preference, as it says more about what happened.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="innkt-backup-hash") as pool:
        hashed = pool.submit(_check_hash, path, manifest)
        try:
            _check_database(path, manifest)
        except IntegrityError:
            hashed.result()
            raise
        hashed.result()
    return manifest


def _copy_hashed(src: Path, dst: Path) -> str:
    """Copy ``src`` to a new file ``dst``, fsync it and return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    # O_EXCL: never write through a pre-existing path (a link, or a leftover we did not clear).
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
        while chunk := fin.read(_COPY_CHUNK):
            fout.write(chunk)
            digest.update(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def _fold_wal(db_path: Path) -> None:
    """Checkpoint the live database and leave it in rollback-journal mode, without a -wal.

    Replacing the main file while a WAL of the old database sits beside it would mix
    the two, so this must succeed before the swap. Fails while other connections are open.
    """
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=0.5)
    try:
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    finally:
        conn.close()
    if str(mode).lower() != "delete":
        raise StorageError(f"{db_path} is still open elsewhere; close it before restoring")
    for suffix in ("-wal", "-journal"):
        if Path(str(db_path) + suffix).exists():
            raise StorageError(f"{db_path}{suffix} exists; close the database before restoring")


def restore_backup(
    db_path: Path | str,
    backup_dir: Path | str,
    backup_id: str,
    *,
    check: Callable[[Path], None] | None = None,
) -> BackupManifest:
    """Replace the database at ``db_path`` with a verified backup, atomically.

    ``check``, if given, is called with the path of the verified copy before the swap
    (to refuse a backup the caller cannot read, e.g. one made with another key); what
    it raises propagates. The caller must have closed its connections to ``db_path``.
    Raises IntegrityError if the backup fails verification, StorageFullError when the
    disk is full, StorageError for other failures; a failure at any step leaves the
    current database in place.
    """
    db_path, backup_dir = Path(db_path), Path(backup_dir)
    manifest = verify_backup(backup_dir, backup_id)
    tmp = db_path.with_name(db_path.name + _RESTORE_SUFFIX)
    try:
        if tmp.is_file() or tmp.is_symlink():
            tmp.unlink()  # left by a restore that crashed
        digest = _copy_hashed(backup_dir / manifest.file, tmp)
        if digest != manifest.sha256:
            raise IntegrityError(f"backup {backup_id} changed while it was being restored")
        if check is not None:
            check(tmp)
        if db_path.exists():
            _fold_wal(db_path)
        _remove_quietly(Path(str(db_path) + "-shm"))
        os.replace(tmp, db_path)
        fsync_dir(db_path.parent)
    except InnktError:
        _remove_quietly(tmp)
        raise
    except (OSError, sqlite3.Error) as exc:
        if tmp.is_file():
            _remove_quietly(tmp)
        code = getattr(exc, "sqlite_errorcode", None)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise StorageError(f"{db_path} is in use; close it before restoring ({exc})") from exc
        _raise_storage(exc, f"restore of {backup_id} failed")
    return manifest
