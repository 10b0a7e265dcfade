"""The storage interface every backend implements (SQLite, PostgreSQL).

Times are integer milliseconds since the Unix epoch (UTC) everywhere in this
layer; the HTTP layer converts to and from ISO 8601.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from innkt_analytics.shared._protocol import ClientConfig

__all__ = [
    "KEY_COLUMNS",
    "AuditEntry",
    "EventFilter",
    "EventPage",
    "EventRow",
    "KeyRecord",
    "Stats",
    "Storage",
    "StorageHealth",
    "StorageStatus",
    "Suppression",
    "audit_entry",
    "event_row",
    "key_record",
    "person_pairs",
]


@dataclass(slots=True)
class EventRow:
    """One event as stored; ``payload`` is the event's JSON exactly as validated."""

    event_id: str
    event_type: str
    session_id: str | None
    user_id: str | None
    anonymous_id: str | None
    timestamp: int
    sent_at: int | None
    received_at: int
    corrected: int
    future: bool
    payload: bytes
    seq: int = 0  # assigned by storage on read


@dataclass(frozen=True, slots=True)
class EventFilter:
    event_type: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    since: int | None = None  # inclusive, on the corrected timestamp
    until: int | None = None  # exclusive
    #: events whose user_id or anonymous_id equals this (a person's ids, one at a time)
    any_id: str | None = None


@dataclass(slots=True)
class EventPage:
    rows: list[EventRow]
    next_cursor: int | None


@dataclass(slots=True)
class Stats:
    total: int
    by_event_type: dict[str, int]
    series: list[tuple[int, int]]  # (bucket start ms, count)
    unique_sessions: int
    #: distinct actors (``userId``, else ``anonymousId``), or persons (``Storage.stats``)
    unique_users: int


def person_pairs(roots: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """``roots`` (id -> its person's root, for persons of several ids) as two columns
    ``(ids, roots)`` that also map each root to itself (``Storage.stats``' persons)."""
    own = sorted(set(roots.values()) - roots.keys())
    return [*roots, *own], [*roots.values(), *own]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    project: str
    name: str
    scopes: frozenset[str]
    key_hash: str
    created_at: int
    revoked_at: int | None = None
    #: refused from this time on (a rotated key's overlap ends here); None never expires
    expires_at: int | None = None
    #: the last time an instance saw the key used (recorded in batches, see KeyCache)
    last_used_at: int | None = None


@dataclass(frozen=True, slots=True)
class Suppression:
    """A deleted user whose new events are refused."""

    project: str
    user_id: str
    deleted_at: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One privacy action: who (key id) did what to which subject, when."""

    project: str
    at: int
    actor: str
    action: str
    subject: str
    detail: dict[str, object] = field(default_factory=dict)
    seq: int = 0


def event_row(r: Sequence[Any]) -> EventRow:
    """An ``EventRow`` from a row of the columns every backend selects, in this order:
    seq, event_id, event_type, session_id, user_id, anonymous_id, ts, sent_at,
    received_at, corrected, future, payload.
    """
    return EventRow(
        seq=r[0],
        event_id=r[1],
        event_type=r[2],
        session_id=r[3],
        user_id=r[4],
        anonymous_id=r[5],
        timestamp=r[6],
        sent_at=r[7],
        received_at=r[8],
        corrected=r[9],
        future=bool(r[10]),
        payload=bytes(r[11]),
    )


#: the api_keys columns every backend selects, in the order ``key_record`` reads
KEY_COLUMNS = (
    "key_id, project, name, scopes, key_hash, created_at, revoked_at, expires_at, last_used_at"
)


def key_record(r: Sequence[Any]) -> KeyRecord:
    """A ``KeyRecord`` from a row of ``KEY_COLUMNS`` (scopes comma-joined)."""
    return KeyRecord(
        key_id=r[0],
        project=r[1],
        name=r[2],
        scopes=frozenset(s for s in r[3].split(",") if s),
        key_hash=r[4],
        created_at=r[5],
        revoked_at=r[6],
        expires_at=r[7],
        last_used_at=r[8],
    )


def audit_entry(r: Sequence[Any]) -> AuditEntry:
    """An ``AuditEntry`` from seq, project, at, actor, action, subject, detail (JSON)."""
    return AuditEntry(
        seq=r[0],
        project=r[1],
        at=r[2],
        actor=r[3],
        action=r[4],
        subject=r[5],
        detail=msgspec.json.decode(r[6]),
    )


class StorageStatus(enum.Enum):
    OK = "ok"
    FULL = "full"
    UNAVAILABLE = "unavailable"


@dataclass(slots=True)
class StorageHealth:
    status: StorageStatus
    backend: str
    size_bytes: int
    events: int
    reason: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


class Storage(abc.ABC):
    """Durable event storage. ``insert_events`` returns only once rows are committed."""

    backend: str = "abstract"

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def insert_events(self, project: str, rows: Sequence[EventRow]) -> set[str]:
        """Store rows durably, skipping (project, eventId) pairs already stored.

        Returns the event ids that were newly stored. Raises ``StorageError``
        (``StorageFullError`` when out of space).
        """

    @abc.abstractmethod
    async def query_events(
        self, project: str, flt: EventFilter, cursor: int | None, limit: int
    ) -> EventPage: ...

    @abc.abstractmethod
    async def stats(
        self,
        project: str,
        flt: EventFilter,
        bucket_ms: int,
        *,
        persons: Mapping[str, str] | None = None,
        uniques: bool = True,
    ) -> Stats:
        """Counts, a series of ``bucket_ms`` buckets, and (with ``uniques``) the distinct
        sessions and actors: an actor is the ``userId``, else the ``anonymousId``; with
        ``persons`` (id -> its person's root, for persons of several ids) the actors of
        one person count once. Without ``uniques`` both are 0 (and cost nothing)."""

    @abc.abstractmethod
    async def get_config(self, project: str) -> ClientConfig | None: ...

    @abc.abstractmethod
    async def put_config(self, project: str, config: ClientConfig) -> ClientConfig:
        """Store the config with its version bumped; returns what was stored."""

    @abc.abstractmethod
    async def create_key(self, record: KeyRecord) -> None: ...

    @abc.abstractmethod
    async def find_key(self, key_hash: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def list_keys(self, project: str | None = None) -> list[KeyRecord]: ...

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, at: int) -> bool: ...

    @abc.abstractmethod
    async def count_keys(self) -> int: ...

    @abc.abstractmethod
    async def expire_key(self, key_id: str, at: int) -> bool:
        """Set an active key to expire at ``at`` (never later than an expiry it has).

        Returns False when there is no such key or it is revoked.
        """

    @abc.abstractmethod
    async def record_key_use(self, used: dict[str, int]) -> None:
        """Raise each key's ``last_used_at`` to the given time (never lower it)."""

    @abc.abstractmethod
    async def delete_events_before(self, project: str | None, before: int) -> int:
        """Retention: delete events whose corrected time is before ``before``."""

    @abc.abstractmethod
    async def delete_user(self, project: str, user_id: str, at: int) -> int:
        """Delete the events whose ``user_id`` *or* ``anonymous_id`` is the id, and
        suppress the id, in one transaction.

        Returns the number of events deleted.
        """

    async def delete_users(self, project: str, user_ids: Sequence[str], at: int) -> int:
        """``delete_user`` for each of ``user_ids`` (a person's), in one pass over the
        stored events where the backend can (both engines rewrite a segment once for
        all the ids, not once per id). Returns the number of events deleted."""
        deleted = 0
        for user_id in user_ids:
            deleted += await self.delete_user(project, user_id, at)
        return deleted

    @abc.abstractmethod
    async def suppressed_users(self, project: str | None = None) -> list[Suppression]: ...

    @abc.abstractmethod
    async def append_audit(self, entry: AuditEntry) -> None: ...

    @abc.abstractmethod
    async def list_audit(self, project: str, limit: int, before: int | None) -> list[AuditEntry]:
        """Newest first; ``before`` is an exclusive upper bound on ``seq``."""

    @abc.abstractmethod
    async def health(self) -> StorageHealth: ...
