"""Backups of a SQLite database whose events are partly in Parquet segments.

A backup is the database copy plus the segment and run files it lists; verify checks
every file's SHA-256; restore brings back the database and exactly its segments, and
a restore a crash interrupted is finished (or dropped) consistently at the next open.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from innkt_analytics.server._backups import backup_events, restore_events, verify_events
from innkt_analytics.server._settings import ServerSettings
from innkt_analytics.server.storage import EventFilter, SQLiteStorage, _engine_backup
from innkt_analytics.shared._exceptions import IntegrityError
from tests.test_storage_contract import row


def all_ids(db: Path) -> list[str]:
    storage = SQLiteStorage(str(db))
    storage.open_sync(start_writer=False)
    try:
        page = asyncio.run(storage.query_events("p", EventFilter(), None, 1000))
        return [r.event_id for r in page.rows]
    finally:
        storage.close_sync()


def fill(db: Path, ids: range, *, compact: bool) -> None:
    storage = SQLiteStorage(str(db))
    storage.open_sync()
    try:
        asyncio.run(storage.insert_events("p", [row(f"e{i}") for i in ids]))
        if compact:
            storage.compact_sync()
    finally:
        storage.close_sync()


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(db=str(tmp_path / "s.db"))


def test_backup_holds_segments_and_hot_rows_and_restores_them(
    settings: ServerSettings, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    fill(db, range(0, 30), compact=True)
    fill(db, range(30, 40), compact=False)  # these stay in the hot log
    manifest, events = backup_events(settings)
    assert events == 40
    assert verify_events(settings, manifest.backup_id)[1] == 40
    fill(db, range(40, 50), compact=True)  # after the backup: gone after the restore
    restored, total = restore_events(settings, manifest.backup_id)
    assert (restored.backup_id, total) == (manifest.backup_id, 40)
    assert all_ids(db) == [f"e{i}" for i in range(40)]
    # the restored engine works on: replays are duplicates, new events are stored
    storage = SQLiteStorage(str(db))
    storage.open_sync()
    try:
        stored = asyncio.run(storage.insert_events("p", [row("e3"), row("e35"), row("new")]))
        assert stored == {"new"}
    finally:
        storage.close_sync()


def test_a_corrupt_or_missing_segment_fails_verification(
    settings: ServerSettings, tmp_path: Path
) -> None:
    fill(tmp_path / "s.db", range(20), compact=True)
    manifest, _ = backup_events(settings)
    folder = tmp_path / "s.db.backups" / f"{manifest.backup_id}.segments"
    segment = next(folder.glob("seg-*.parquet"))
    original = segment.read_bytes()
    segment.unlink()  # a hard link: the live file is untouched
    segment.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="corrupt"):
        verify_events(settings, manifest.backup_id)
    segment.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        verify_events(settings, manifest.backup_id)
    with pytest.raises(IntegrityError):
        restore_events(settings, manifest.backup_id)
    assert all_ids(tmp_path / "s.db") == [f"e{i}" for i in range(20)]  # untouched


def test_an_interrupted_restore_is_finished_or_dropped_at_the_next_open(
    settings: ServerSettings, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    fill(db, range(10), compact=True)
    manifest, _ = backup_events(settings)
    fill(db, range(10, 15), compact=True)
    folder = tmp_path / "s.db.backups"
    # Staged, then the process died before swapping the database: dropped.
    _engine_backup.prepare_restore(db, folder, manifest.backup_id, manifest.sha256)
    assert all_ids(db) == [f"e{i}" for i in range(15)]
    assert not Path(str(db) + ".segments.restoring").exists()
    # Staged and the database swapped, then it died: the next open finishes it.
    _engine_backup.prepare_restore(db, folder, manifest.backup_id, manifest.sha256)
    shutil.copyfile(folder / f"{manifest.backup_id}.sqlite3", tmp_path / "swap")
    (tmp_path / "swap").replace(db)
    for suffix in ("-wal", "-shm"):  # as restore_backup leaves them
        Path(str(db) + suffix).unlink(missing_ok=True)
    assert all_ids(db) == [f"e{i}" for i in range(10)]
