"""Insights answers cached per (project, kind, canonical query, data version).

A project's *data version* is a counter in this process, bumped by ``data_changed``
where the server stores events (``_ingest.store_parsed``, which the Segment routes
share) and deletes them (``DELETE /v1/users/{id}``, retention). A cached answer is
keyed by the version read *before* its events were loaded, so an answer computed
while a write lands is never served for the data after it.

The counter only sees this process's writes. On SQLite one server owns the file, so
entries live ``insights_cache_ttl`` seconds (a write by another process, such as a
restored backup, shows after at most that). On PostgreSQL other instances write too, so
entries live ``insights_cache_ttl_postgres`` seconds: a short bound on how stale an
answer may be, not an invalidation.

The cache is a bounded LRU: at most ``insights_cache_size`` answers and
``MAX_CACHE_BYTES`` in all; an answer larger than ``MAX_ENTRY_BYTES`` is not kept.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from innkt_analytics.server._state import ServerState
from innkt_analytics.server.storage import is_postgres_url

__all__ = [
    "MAX_CACHE_BYTES",
    "MAX_ENTRY_BYTES",
    "AnswerCache",
    "CacheKey",
    "DataVersions",
    "InsightsRuntime",
    "data_changed",
    "insights_of",
]

#: all cached answers of one process together
MAX_CACHE_BYTES: Final = 64 * 1024 * 1024
#: a larger answer is recomputed every time rather than crowding out the others
MAX_ENTRY_BYTES: Final = 4 * 1024 * 1024
_EXTENSION: Final = "insights"

#: (project, kind, canonical query JSON, data version)
CacheKey = tuple[str, str, bytes, int]


class DataVersions:
    """A counter per project that changes whenever its stored events change."""

    def __init__(self) -> None:
        self._versions: dict[str, int] = {}

    def get(self, project: str) -> int:
        return self._versions.get(project, 0)

    def bump(self, project: str) -> None:
        self._versions[project] = self._versions.get(project, 0) + 1


@dataclass(slots=True)
class _Entry:
    answer: bytes
    expires: float


@dataclass
class AnswerCache:
    """A least-recently-used map of answers with a time to live; size 0 keeps nothing."""

    size: int
    ttl: float
    max_bytes: int = MAX_CACHE_BYTES
    max_entry_bytes: int = MAX_ENTRY_BYTES
    clock: Callable[[], float] = time.monotonic
    hits: int = 0
    misses: int = 0
    _entries: collections.OrderedDict[CacheKey, _Entry] = field(
        default_factory=collections.OrderedDict
    )
    _bytes: int = 0

    def get(self, key: CacheKey) -> bytes | None:
        """The answer stored under ``key`` and still fresh; counts a hit or a miss."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= self.clock():
            self._drop(key)
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.answer

    def put(self, key: CacheKey, answer: bytes) -> None:
        if self.size <= 0 or self.ttl <= 0 or len(answer) > self.max_entry_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(answer, self.clock() + self.ttl)
        self._bytes += len(answer)
        while len(self._entries) > self.size or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: CacheKey) -> None:
        self._bytes -= len(self._entries.pop(key).answer)


@dataclass
class InsightsRuntime:
    """What the insights routes keep between requests: versions, answers, the time limit."""

    versions: DataVersions
    cache: AnswerCache
    #: seconds a query may run (loading its events included) before it is interrupted
    timeout: float
    #: events a query may load on PostgreSQL (``_routes.MAX_EVENTS`` by default)
    max_events: int
    #: queries refused past a bound since the start, by the error answered:
    #: ``query_timeout`` (the time limit), ``query_too_large`` (events or memory)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def key(self, project: str, kind: str, query: msgspec.Struct) -> CacheKey:
        # The parsed query re-encoded: bodies that differ only in key order, spacing
        # or spelled-out defaults share an entry.
        return (project, kind, msgspec.json.encode(query), self.versions.get(project))


def insights_of(state: ServerState) -> InsightsRuntime:
    """This server's ``InsightsRuntime``, made from its settings at first use."""
    found = state.extensions.get(_EXTENSION)
    if isinstance(found, InsightsRuntime):
        return found
    settings = state.settings
    shared = is_postgres_url(settings.db)
    ttl = settings.insights_cache_ttl_postgres if shared else settings.insights_cache_ttl
    made = InsightsRuntime(
        DataVersions(),
        AnswerCache(settings.insights_cache_size, ttl),
        settings.insights_timeout,
        settings.insights_max_events,
    )
    state.extensions[_EXTENSION] = made
    return made


def data_changed(state: ServerState, project: str) -> None:
    """Call after events of ``project`` were stored or deleted: its cached answers go stale."""
    insights_of(state).versions.bump(project)
