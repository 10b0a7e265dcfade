"""Backups of the storage engine's files, beside the SQLite copy of each backup.

A backup ``<id>`` of a SQLite server database is the copy ``<id>.sqlite3`` (made by
``innkt_analytics.shared._backup``; it holds the hot log and the lists of segments and
dedup runs, each with its SHA-256) and the folder ``<id>.segments/`` holding exactly
the files those lists name. Segment and run files never change once written, so
they are hard-linked into the backup when the backup directory is on the same file
system (no extra space, instant) and copied otherwise.

While the copy is made and the files are linked, the engine's lock is held: no
merge or deletion can replace a listed file in between.

Restore stages the backup's files in ``<db>.segments.restoring/`` with a
``.database`` file holding the SHA-256 of the backup's database, swaps the database
file, then swaps the folders. ``finish_restore`` (called before the storage opens)
completes a swap a crash interrupted: only if the live database is the backup's
(same SHA-256) does the staged folder go in; otherwise it is dropped. The database
and its segments always come from the same backup.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from innkt_analytics.shared._backup import fsync_dir, sha256_file
from innkt_analytics.shared._exceptions import IntegrityError

__all__ = [
    "backup_files",
    "engine_lock",
    "finish_restore",
    "prepare_restore",
    "prune_orphans",
    "verify_files",
]


@contextlib.contextmanager
def engine_lock(db_path: Path) -> Iterator[None]:
    """The lock the compactor holds while it changes the segment folder."""
    folder = Path(str(db_path) + ".segments")
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _listed(copy: Path) -> tuple[list[tuple[str, str]], int]:
    """((file, sha256) of every segment and run named in the copy, rows in segments)."""
    uri = f"file:{copy}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        try:
            files = conn.execute(
                "SELECT file, sha256 FROM segments UNION ALL SELECT file, sha256 FROM dedup_runs"
            ).fetchall()
            rows = conn.execute("SELECT coalesce(sum(rows), 0) FROM segments").fetchone()[0]
        except sqlite3.OperationalError:  # a backup made before the engine (schema v3)
            return [], 0
    return [(str(f), str(h)) for f, h in files], int(rows)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def backup_files(db_path: Path, backup_dir: Path, backup_id: str) -> tuple[int, int]:
    """Put the files the backup's copy lists into ``<id>.segments/``; call under
    ``engine_lock`` held since before the copy was made. Returns (files, rows)."""
    files, rows = _listed(backup_dir / f"{backup_id}.sqlite3")
    target = backup_dir / f"{backup_id}.segments"
    target.mkdir(exist_ok=True)
    live = Path(str(db_path) + ".segments")
    for name, _ in files:
        if not (target / name).exists():
            _link_or_copy(live / name, target / name)
    fsync_dir(target)
    return len(files), rows


def verify_files(backup_dir: Path, backup_id: str) -> int:
    """Check every listed file's SHA-256; returns the rows in segments.

    Raises ``IntegrityError`` naming the first file that is missing or differs.
    """
    files, rows = _listed(backup_dir / f"{backup_id}.sqlite3")
    folder = backup_dir / f"{backup_id}.segments"
    for name, digest in files:
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"backup {backup_id}: segment file {name} is missing")
        if sha256_file(path) != digest:
            raise IntegrityError(f"backup {backup_id}: segment file {name} is corrupt")
    return rows


def prepare_restore(db_path: Path, backup_dir: Path, backup_id: str, db_sha256: str) -> None:
    """Stage the backup's files in ``<db>.segments.restoring/`` (verified first);
    ``db_sha256`` is the backup database's digest (its manifest's)."""
    verify_files(backup_dir, backup_id)
    files, _ = _listed(backup_dir / f"{backup_id}.sqlite3")
    staging = Path(str(db_path) + ".segments.restoring")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, _ in files:
        _link_or_copy(backup_dir / f"{backup_id}.segments" / name, staging / name)
    (staging / ".database").write_text(db_sha256)
    fsync_dir(staging)


def finish_restore(db_path: Path) -> None:
    """Swap a staged segment folder in if the database is the backup's it came with."""
    live = Path(str(db_path) + ".segments")
    staging = Path(str(db_path) + ".segments.restoring")
    if not staging.exists():
        return
    marker = staging / ".database"
    swapped = (
        marker.is_file()
        and db_path.is_file()
        and sha256_file(db_path) == marker.read_text().strip()
    )
    if not swapped:
        shutil.rmtree(staging)  # the restore stopped before the database was swapped
        return
    old = Path(str(db_path) + ".segments.old")
    shutil.rmtree(old, ignore_errors=True)
    if live.exists():
        live.rename(old)
    marker.unlink()
    staging.rename(live)
    fsync_dir(live.parent)
    shutil.rmtree(old, ignore_errors=True)


def prune_orphans(backup_dir: Path) -> None:
    """Remove ``<id>.segments/`` folders whose backup was pruned."""
    for folder in backup_dir.glob("*.segments"):
        if not (backup_dir / (folder.name[: -len(".segments")] + ".sqlite3")).exists():
            shutil.rmtree(folder, ignore_errors=True)
