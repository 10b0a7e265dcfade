"""The database URL (``INNKT_DB``/``--db``), parsed in one place.

A plain path or ``sqlite:///path`` is a SQLite file; ``postgresql://…`` (or
``postgres://…``) is PostgreSQL; any other ``scheme://`` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from innkt_analytics.shared._exceptions import ConfigError

__all__ = ["DatabaseUrl", "is_postgres_url", "parse_db_url"]

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
SQLITE_PREFIX: Final = "sqlite:///"


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """What a database URL names: a SQLite file (``sqlite_path``) or PostgreSQL."""

    url: str
    #: the SQLite file; None for PostgreSQL
    sqlite_path: str | None

    @property
    def is_postgres(self) -> bool:
        return self.sqlite_path is None


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` is a PostgreSQL URL (``postgresql://`` or ``postgres://``)."""
    return url.startswith(POSTGRES_SCHEMES)


def parse_db_url(url: str) -> DatabaseUrl:
    """Parse a database URL. Raises ``ConfigError`` (field ``db``) for an unknown scheme."""
    if is_postgres_url(url):
        return DatabaseUrl(url, None)
    if url.startswith(SQLITE_PREFIX):
        return DatabaseUrl(url, url[len(SQLITE_PREFIX) :])
    if "://" in url:
        raise ConfigError("db", f"unsupported database URL {url!r}")
    return DatabaseUrl(url, url)
