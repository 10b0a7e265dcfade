"""Server storage backends behind one interface; ``open_storage`` picks one by URL."""

from __future__ import annotations

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
from innkt_analytics.server.storage._url import DatabaseUrl, is_postgres_url, parse_db_url
from innkt_analytics.shared._exceptions import ConfigError

__all__ = [
    "AuditEntry",
    "DatabaseUrl",
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
    "is_postgres_url",
    "make_storage",
    "parse_db_url",
]


def make_storage(
    url: str,
    *,
    pool_size: int = 10,
    insert_concurrency: int = 4,
    segment_cache: str | None = None,
) -> Storage:
    """Build (not open) the storage for ``url``: a path, ``sqlite:///path`` or ``postgresql://``.

    ``pool_size``, ``insert_concurrency`` and ``segment_cache`` apply to PostgreSQL
    (see ``PostgresStorage``). Raises ``ConfigError`` for an unknown scheme.
    """
    db = parse_db_url(url)
    if db.sqlite_path is not None:
        return SQLiteStorage(db.sqlite_path)
    try:
        from innkt_analytics.server.storage._postgres import PostgresStorage
    except ImportError as exc:  # the optional dependency is missing
        raise ConfigError("db", f"PostgreSQL support needs asyncpg: {exc}") from exc
    return PostgresStorage(
        url,
        pool_size=pool_size,
        insert_concurrency=insert_concurrency,
        segment_cache=segment_cache,
    )
