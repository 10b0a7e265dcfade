"""Backups of the server's SQLite database: on demand (CLI) and on a schedule.

The mechanics (online backup API, manifests, verification, atomic restore) are
shared with the SDK's persistence service in ``innkt_analytics.shared._backup``; the
storage engine's segment files go beside each copy (``storage/_engine_backup.py``). A
PostgreSQL deployment backs up with ``pg_dump`` instead (docs/operations.md).

The identity graph's file (``<db>.identity.db``, see ``_identity_store``) is a second
member of each backup: a backup of its own in ``<backup dir>/identity/``, taken just
after the events' and labelled with their backup id (``{"events": <id>}``), verified
and restored with them (``backup_identity``, ``identity_backup_for``,
``restore_identity``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from innkt_analytics.server._settings import ServerSettings
from innkt_analytics.server.storage import _engine_backup, parse_db_url
from innkt_analytics.shared import _backup
from innkt_analytics.shared._exceptions import ConfigError, StorageError

if TYPE_CHECKING:
    # _state imports Litestar; the CLI's backup commands use this module without it.
    from innkt_analytics.server._state import ServerState

__all__ = [
    "BackupScheduler",
    "backup_dir",
    "backup_events",
    "backup_identity",
    "identity_backup_for",
    "restore_events",
    "restore_identity",
    "sqlite_path",
    "verify_events",
]

log = logging.getLogger("innkt_analytics.server.backups")


def sqlite_path(settings: ServerSettings) -> Path:
    """The SQLite file of ``settings.db``. Raises ``ConfigError`` for PostgreSQL."""
    db = parse_db_url(settings.db)
    if db.sqlite_path is None:
        raise ConfigError(
            "db", "PostgreSQL is backed up with pg_dump (see docs/operations.md), not this command"
        )
    return Path(db.sqlite_path).resolve()


def backup_dir(settings: ServerSettings) -> Path:
    """Where backups go: ``INNKT_BACKUP_DIR`` or ``<database>.backups`` beside the file."""
    if settings.backup_dir:
        return Path(settings.backup_dir)
    path = sqlite_path(settings)
    return path.with_name(path.name + ".backups")


def backup_events(
    settings: ServerSettings, keep: int | None = None
) -> tuple[_backup.BackupManifest, int]:
    """Back up the database and its segment files (``storage/_engine_backup.py``);
    returns the manifest of the database copy and the number of events in all.

    Raises ``StorageError``.
    """
    db, folder = sqlite_path(settings), backup_dir(settings)
    with _engine_backup.engine_lock(db):
        manifest = _backup.create_backup(db, folder, count_table="events", max_backups=keep)
        _, rows = _engine_backup.backup_files(db, folder, manifest.backup_id)
    _engine_backup.prune_orphans(folder)
    return manifest, (manifest.record_count or 0) + rows


def verify_events(settings: ServerSettings, backup_id: str) -> tuple[_backup.BackupManifest, int]:
    """Verify the database copy and every segment file; the manifest and the events.

    Raises ``IntegrityError`` for a bad file.
    """
    folder = backup_dir(settings)
    manifest = _backup.verify_backup(folder, backup_id)
    rows = _engine_backup.verify_files(folder, backup_id)
    return manifest, (manifest.record_count or 0) + rows


def restore_events(settings: ServerSettings, backup_id: str) -> tuple[_backup.BackupManifest, int]:
    """Replace the database and its segments with a verified backup (server stopped)."""
    db, folder = sqlite_path(settings), backup_dir(settings)
    manifest, total = verify_events(settings, backup_id)
    _engine_backup.prepare_restore(db, folder, backup_id, manifest.sha256)
    _backup.restore_backup(db, folder, backup_id)
    _engine_backup.finish_restore(db)
    return manifest, total


def _identity_file(settings: ServerSettings) -> Path:
    path = sqlite_path(settings)
    return path.with_name(path.name + ".identity.db")  # as make_identity names it


def _identity_dir(settings: ServerSettings) -> Path:
    return backup_dir(settings) / "identity"


def backup_identity(
    settings: ServerSettings, events_backup: str, keep: int | None = None
) -> _backup.BackupManifest | None:
    """Back up the identity graph's file as the member of backup ``events_backup``.

    None when there is no such file (linking off, or no event yet). Taken after the
    events: the graph may hold links of a few events the events member lacks, never
    the reverse. Raises ``StorageError``.
    """
    path = _identity_file(settings)
    if not path.is_file():
        return None
    return _backup.create_backup(
        path,
        _identity_dir(settings),
        count_table="identity_links",
        labels={"events": events_backup},
        max_backups=keep,
    )


def identity_backup_for(
    settings: ServerSettings, events_backup: str
) -> _backup.BackupManifest | None:
    """The verified identity member of backup ``events_backup``; None if it has none
    (made before identity backups, or without an identity file).

    Raises ``IntegrityError`` when it fails verification.
    """
    directory = _identity_dir(settings)
    for m in _backup.list_backups(directory):
        if m.labels.get("events") == events_backup:
            return _backup.verify_backup(directory, m.backup_id)
    return None


def restore_identity(settings: ServerSettings, member: _backup.BackupManifest) -> None:
    """Replace the identity file with the member (found by ``identity_backup_for``).

    The server must be stopped. Raises ``IntegrityError``, ``StorageError``.
    """
    _backup.restore_backup(_identity_file(settings), _identity_dir(settings), member.backup_id)


class BackupScheduler:
    """Takes a backup every ``settings.backup_interval`` seconds while the server runs."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.last: dict[str, Any] | None = None
        self.failures = 0

    async def run(self) -> None:
        settings = self.state.settings
        while True:
            await asyncio.sleep(settings.backup_interval)
            await self.backup_once()

    async def backup_once(self) -> None:
        settings = self.state.settings
        started = time.monotonic()
        try:
            manifest, events = await asyncio.to_thread(
                backup_events, settings, settings.backup_keep
            )
            await asyncio.to_thread(
                backup_identity, settings, manifest.backup_id, settings.backup_keep
            )
        except StorageError as exc:
            self.failures += 1
            self.last = {"ok": False, "error": str(exc), "at": time.time()}
            log.warning("scheduled backup failed: %s", exc)
            return
        self.last = {
            "ok": True,
            "backupId": manifest.backup_id,
            "records": events,
            "sizeBytes": manifest.size_bytes,
            "seconds": round(time.monotonic() - started, 3),
            "at": time.time(),
        }

    async def health(self) -> dict[str, Any]:
        return {
            "intervalSeconds": self.state.settings.backup_interval,
            "last": self.last,
            "failures": self.failures,
        }
