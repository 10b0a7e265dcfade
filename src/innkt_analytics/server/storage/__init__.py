"""Server storage backends behind one interface; ``open_storage`` picks one by URL."""

from __future__ import annotations

from innkt_analytics._exceptions import ConfigError
from innkt_analytics.server.storage._base import (
    AuditEntry,
    EventFilter,
    EventPage,
    EventRow,
    KeyRecord,
    Stats,
    Storage,
    StorageHealth,
    StorageStatus,
    Suppression,
)
from innkt_analytics.server.storage._sqlite import SQLiteStorage

__all__ = [
    "AuditEntry",
    "EventFilter",
    "EventPage",
    "EventRow",
    "KeyRecord",
    "SQLiteStorage",
    "Stats",
    "Storage",
    "StorageHealth",
    "StorageStatus",
    "Suppression",
    "make_storage",
]


def make_storage(url: str) -> Storage:
    """Build (not open) the storage for ``url``: a path, ``sqlite:///path`` or ``postgresql://``.

    Raises ``ConfigError`` for an unknown scheme.
    """
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from innkt_analytics.server.storage._postgres import (
                PostgresStorage,
            )
        except ImportError as exc:  # the optional dependency is missing
            raise ConfigError("db", f"PostgreSQL support needs asyncpg: {exc}") from exc
        storage: Storage = PostgresStorage(url)
        return storage
    if url.startswith("sqlite:///"):
        return SQLiteStorage(url[len("sqlite:///") :])
    if "://" in url:
        raise ConfigError("db", f"unsupported database URL {url!r}")
    return SQLiteStorage(url)
