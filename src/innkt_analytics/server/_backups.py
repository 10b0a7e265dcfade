"""Backups of the server's SQLite database: on demand (CLI) and on a schedule.

The mechanics (online backup API, manifests, verification, atomic restore) are
shared with the SDK's persistence service in ``innkt_analytics._backup``. A
PostgreSQL deployment backs up with ``pg_dump`` instead (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from innkt_analytics import _backup
from innkt_analytics._exceptions import ConfigError, StorageError
from innkt_analytics.server._settings import ServerSettings
from innkt_analytics.server.storage import parse_db_url

if TYPE_CHECKING:
    # _state imports Litestar; the CLI's backup commands use this module without it.
    from innkt_analytics.server._state import ServerState

__all__ = ["BackupScheduler", "backup_dir", "sqlite_path"]

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
            manifest = await asyncio.to_thread(
                _backup.create_backup,
                sqlite_path(settings),
                backup_dir(settings),
                count_table="events",
                max_backups=settings.backup_keep,
            )
        except StorageError as exc:
            self.failures += 1
            self.last = {"ok": False, "error": str(exc), "at": time.time()}
            log.warning("scheduled backup failed: %s", exc)
            return
        self.last = {
            "ok": True,
            "backupId": manifest.backup_id,
            "records": manifest.record_count,
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
