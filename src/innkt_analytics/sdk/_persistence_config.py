"""The persistence service's configuration and the values it returns.

``PersistenceConfig`` validates every field up front (``ConfigError`` names the
field); ``StoreResult``, ``CleanupResult`` and ``StorageInfo`` are what the service
answers; ``PersistenceState`` is its lifecycle. See ``_persistence.py``.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from innkt_analytics.sdk._atrest import (
    parse_key,
)
from innkt_analytics.shared._exceptions import (
    ConfigError,
)

__all__ = [
    "ENCRYPTION_KEY_ENV",
    "CleanupResult",
    "PersistenceConfig",
    "PersistenceState",
    "StorageInfo",
    "StoreResult",
]

ENCRYPTION_KEY_ENV: Final = "INNKT_ENCRYPTION_KEY"
_STORAGE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class StoreResult(msgspec.Struct, kw_only=True, frozen=True):
    """What a write did: records stored, and old records evicted to respect the size limit."""

    stored: int
    evicted: int = 0


class CleanupResult(msgspec.Struct, kw_only=True, frozen=True):
    """What ``cleanup`` removed."""

    expired: int
    evicted: int
    backups_pruned: int


class StorageInfo(msgspec.Struct, kw_only=True, frozen=True):
    """A snapshot of the store, as ``get_storage_info`` returns it."""

    records: int
    bytes: int
    max_bytes: int
    usage_percent: float
    file_bytes: int
    oldest: dt.datetime | None
    newest: dt.datetime | None
    last_backup: dt.datetime | None
    last_backup_id: str | None
    backups: int
    evicted_total: int
    expired_total: int
    compressed: bool
    encrypted: bool
    maintenance_errors: int
    last_error: str | None


class PersistenceState(enum.Enum):
    """Lifecycle of the service's database connection."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(name, message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value) and value > 0)


@dataclass(frozen=True, slots=True)
class PersistenceConfig:
    """Settings of the persistence service, with the seed's defaults (times in seconds).

    ``db_path`` defaults to ``$XDG_DATA_HOME/innkt-analytics/<storage_key>.sqlite3``
    and ``backup_dir`` to ``<storage_key>-backups`` beside the database. The key is
    32 raw bytes; without one, ``INNKT_ENCRYPTION_KEY`` (base64 or hex) is read when the
    service starts. Raises ConfigError naming the field for any invalid value.
    """

    storage_key: str = "analytics_data"
    max_storage_size: int = 50 * 1024 * 1024
    backup_interval: float | None = 24 * 60 * 60.0
    retention_days: float = 30
    enable_compression: bool = True
    enable_encryption: bool = False
    db_path: Path | None = None
    backup_dir: Path | None = None
    max_backups: int = 7
    encryption_key: bytes | None = field(default=None, repr=False)
    cleanup_interval: float | None = 60 * 60.0
    compression_level: int = 3

    def __post_init__(self) -> None:
        key_ok = isinstance(self.storage_key, str) and _STORAGE_KEY_RE.fullmatch(self.storage_key)
        _check(bool(key_ok), "storage_key", "must be 1-128 characters of A-Z a-z 0-9 . _ -")
        size = self.max_storage_size
        _check(_is_int(size) and size >= 1024, "max_storage_size", "must be an int >= 1024 bytes")
        for name in ("backup_interval", "cleanup_interval"):
            value = getattr(self, name)
            ok = value is None or (_is_positive(value) and value > 0)
            _check(ok, name, "must be a positive number of seconds, or None to disable")
        days = self.retention_days
        _check(_is_positive(days) and days > 0, "retention_days", "must be a positive number")
        for name in ("enable_compression", "enable_encryption"):
            _check(isinstance(getattr(self, name), bool), name, "must be a bool")
        _check(_is_int(self.max_backups) and self.max_backups >= 1, "max_backups", "must be >= 1")
        key = self.encryption_key
        ok = key is None or (isinstance(key, bytes) and len(key) == 32)
        _check(ok, "encryption_key", "must be exactly 32 bytes")
        level = self.compression_level
        _check(_is_int(level) and 1 <= level <= 22, "compression_level", "must be an int 1..22")
        for name in ("db_path", "backup_dir"):
            value = getattr(self, name)
            if value is not None:
                _check(isinstance(value, str | os.PathLike), name, "must be a path")
                object.__setattr__(self, name, Path(value))

    def resolved_db_path(self, environ: Mapping[str, str] | None = None) -> Path:
        """The database file this configuration uses."""
        if self.db_path is not None:
            return self.db_path
        env = os.environ if environ is None else environ
        base = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        return base / "innkt-analytics" / f"{self.storage_key}.sqlite3"

    def resolved_backup_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """The directory backups go to."""
        if self.backup_dir is not None:
            return self.backup_dir
        return self.resolved_db_path(environ).parent / f"{self.storage_key}-backups"

    def resolved_key(self, environ: Mapping[str, str] | None = None) -> bytes | None:
        """The configured key, else the one in INNKT_ENCRYPTION_KEY, else None.

        Raises ConfigError if the variable is set but is not a 32-byte key.
        """
        if self.encryption_key is not None:
            return self.encryption_key
        text = (os.environ if environ is None else environ).get(ENCRYPTION_KEY_ENV)
        return parse_key(text, field=ENCRYPTION_KEY_ENV) if text else None
