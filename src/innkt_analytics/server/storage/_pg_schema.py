"""PostgreSQL schema, migrations and monthly partition arithmetic (no I/O).

Layout, and why:

* ``events`` is partitioned by RANGE on ``corrected`` (epoch ms), one partition
  per UTC calendar month, so retention drops whole partitions instead of
  deleting rows one by one.
* Deduplication cannot be a unique index on ``events``: PostgreSQL requires a
  unique index on a partitioned table to include the partition key, and the
  partition key of a retried event differs from the first attempt (the
  corrected time is computed from the request's ``sentAt``, which changes on
  every retry). So the ids go first, in the same transaction, into narrow
  unpartitioned tables keyed by (project, id), and only the ids they newly
  accepted reach ``events``: ``event_uuids`` for ids written as a canonical
  UUID (lowercase, hyphenated: what the SDKs and most clients send), stored as
  the 16-byte ``uuid`` type, and ``event_ids`` (text) for every other id. The
  split is exact (``uuid::text`` gives back the very string), and it halves the
  dedup index: at 10M events that index no longer fits the buffer cache and
  every random id (UUIDv4, late events) touches one of its pages, so its size
  is what ingest pays as the database grows (docs/benchmarks.md).
* Time is indexed by BRIN (the smallest and largest ``corrected`` of every 32
  heap pages), not B-trees on (project, corrected) and (project, event_type,
  corrected): late events (delivered hours or days after they happened) land
  at random places of a time B-tree, and once those trees outgrow the buffer
  cache each such insert read and dirtied a page of its own (at 4M events of
  the benchmark's mix the two took a quarter of all index page misses). A BRIN
  insert only widens the range of the page being appended to. Events arrive
  roughly in time order, so time windows still skip most of a month; the
  30-day statistics read the month partitions whole either way, and a type
  filter is checked on the rows paged by ``seq``.
* Identifiers are ``COLLATE "C"``: they are compared for equality, never
  sorted for people, and byte comparison makes every index insert cheaper than
  the database's locale collation would.
* Months outside a window around "now" go to ``events_default`` so a client
  with a wild clock cannot create thousands of partitions. When a month's
  partition is created later, its rows are moved out of the default first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CANONICAL_UUID",
    "KEY_COLUMNS_DDL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SEGMENT_LOCK",
    "PartitionWindow",
    "month_bounds",
    "month_start",
    "months_ahead",
    "partition_name",
    "partitions_to_create",
]

SCHEMA_VERSION: Final = 4
#: pg_advisory lock key held by whoever changes the storage engine's segment list
#: (``_pg_engine``), and taken first by partition DDL, which would otherwise
#: deadlock with a compaction reading and deleting hot rows
SEGMENT_LOCK: Final = 0x494E4B54_0003
_DAY_MS: Final = 86_400_000

#: the ids stored as ``uuid`` in ``event_uuids`` (a regular expression both
#: PostgreSQL and Python read the same way); ``uuid::text`` prints exactly this form
CANONICAL_UUID: Final = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

#: statements per schema version; each version runs in one transaction
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        "CREATE SEQUENCE events_seq AS bigint",
        """
        CREATE TABLE events (
            seq bigint NOT NULL DEFAULT nextval('events_seq'),
            project text COLLATE "C" NOT NULL,
            event_id text COLLATE "C" NOT NULL,
            event_type text COLLATE "C" NOT NULL,
            session_id text COLLATE "C",
            user_id text COLLATE "C",
            anonymous_id text COLLATE "C",
            ts bigint NOT NULL,
            sent_at bigint,
            received_at bigint NOT NULL,
            corrected bigint NOT NULL,
            future boolean NOT NULL DEFAULT false,
            payload bytea NOT NULL
        ) PARTITION BY RANGE (corrected)
        """,
        "ALTER SEQUENCE events_seq OWNED BY events.seq",
        "CREATE TABLE events_default PARTITION OF events DEFAULT",
        # The query API pages by seq within a project and filters by type,
        # session, user and time; these mirror the SQLite indexes.
        "CREATE INDEX events_seq_idx ON events (project, seq)",
        "CREATE INDEX events_time_idx ON events (project, corrected)",
        "CREATE INDEX events_type_idx ON events (project, event_type, corrected)",
        "CREATE INDEX events_session_idx ON events (project, session_id)"
        " WHERE session_id IS NOT NULL",
        "CREATE INDEX events_user_idx ON events (project, user_id) WHERE user_id IS NOT NULL",
        """
        CREATE TABLE event_ids (
            project text COLLATE "C" NOT NULL,
            event_id text COLLATE "C" NOT NULL,
            PRIMARY KEY (project, event_id)
        )
        """,
        # months detached by retention and not yet dropped (see _pg_partitions)
        "CREATE TABLE innkt_retired (table_name text PRIMARY KEY, project text)",
        """
        CREATE TABLE api_keys (
            key_id text PRIMARY KEY,
            project text NOT NULL,
            name text NOT NULL,
            scopes text NOT NULL,
            key_hash text COLLATE "C" NOT NULL UNIQUE,
            created_at bigint NOT NULL,
            revoked_at bigint
        )
        """,
        """
        CREATE TABLE project_config (
            project text PRIMARY KEY,
            config bytea NOT NULL
        )
        """,
    ),
    # privacy: suppressed (deleted) users and the audit log
    2: (
        """
        CREATE TABLE suppressed_users (
            project text COLLATE "C" NOT NULL,
            user_id text COLLATE "C" NOT NULL,
            deleted_at bigint NOT NULL,
            PRIMARY KEY (project, user_id)
        )
        """,
        """
        CREATE TABLE audit_log (
            seq bigserial PRIMARY KEY,
            project text COLLATE "C" NOT NULL,
            at bigint NOT NULL,
            actor text NOT NULL,
            action text NOT NULL,
            subject text NOT NULL,
            detail jsonb NOT NULL
        )
        """,
        "CREATE INDEX audit_project_idx ON audit_log (project, seq)",
    ),
    # canonical UUID ids deduplicated as 16-byte uuids (see the module docstring)
    3: (
        # the uuid an id is stored as in event_uuids, or NULL (then it is in event_ids)
        f"""
        CREATE FUNCTION innkt_uuid_key(id text) RETURNS uuid
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS $$ SELECT CASE WHEN id ~ '^{CANONICAL_UUID}$' THEN id::uuid END $$
        """,
        """
        CREATE TABLE event_uuids (
            project text COLLATE "C" NOT NULL,
            id uuid NOT NULL,
            PRIMARY KEY (project, id)
        )
        """,
        "INSERT INTO event_uuids (project, id) SELECT project, innkt_uuid_key(event_id)"
        " FROM event_ids WHERE innkt_uuid_key(event_id) IS NOT NULL",
        "DELETE FROM event_ids WHERE innkt_uuid_key(event_id) IS NOT NULL",
        # time as a BRIN index instead of two B-trees (see the module docstring)
        "DROP INDEX events_time_idx",
        "DROP INDEX events_type_idx",
        "CREATE INDEX events_time_brin ON events USING brin (corrected)"
        " WITH (pages_per_range = 32)",
    ),
    # the storage engine's segments (_pg_engine): events leave ``events`` for zstd
    # Parquet files kept in ``segment_parts``; ``events`` holds only the hot rows,
    # which the compactor reads by seq, and which need no other index
    4: (
        """
        CREATE TABLE segments (
            file text COLLATE "C" PRIMARY KEY,
            rows bigint NOT NULL,
            bytes bigint NOT NULL,
            min_seq bigint NOT NULL,
            max_seq bigint NOT NULL,
            min_corrected bigint NOT NULL,
            max_corrected bigint NOT NULL,
            tier integer NOT NULL,
            sha256 text NOT NULL
        )
        """,
        """
        CREATE TABLE segment_parts (
            file text COLLATE "C" NOT NULL,
            part integer NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (file, part)
        )
        """,
        # zstd already: PostgreSQL's own compression would only cost CPU
        "ALTER TABLE segment_parts ALTER COLUMN data SET STORAGE EXTERNAL",
        "CREATE INDEX events_hot_seq_idx ON events (seq)",
        "DROP INDEX events_seq_idx",
        "DROP INDEX events_session_idx",
        "DROP INDEX events_user_idx",
    ),
}


#: key expiry and last use (key rotation): idempotent statements run after the
#: numbered migrations, so they compose with versions added at the same time
KEY_COLUMNS_DDL: Final = (
    "ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS expires_at bigint",
    "ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS last_used_at bigint",
)


def month_start(ms: int) -> int:
    """The start (epoch ms, UTC) of the calendar month containing ``ms``."""
    day = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    first = day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return _to_ms(first)


def month_bounds(start: int) -> tuple[int, int]:
    """``(start, next month's start)`` for a month start."""
    first = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=start)
    year, month = (first.year + 1, 1) if first.month == 12 else (first.year, first.month + 1)
    return start, _to_ms(first.replace(year=year, month=month))


def months_ahead(now: int, count: int) -> list[int]:
    """The month starts of the current month and the ``count`` months after it."""
    starts = [month_start(now)]
    for _ in range(count):
        starts.append(month_bounds(starts[-1])[1])
    return starts


def partition_name(start: int) -> str:
    first = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=start)
    return f"events_p{first.year:04d}{first.month:02d}"


def _to_ms(value: dt.datetime) -> int:
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


@dataclass(frozen=True, slots=True)
class PartitionWindow:
    """Months that get their own partition: from ``past_months`` ago to ``future_months`` ahead.

    Rows outside go to the default partition; the window keeps a client with a
    broken clock from creating one partition per month of its fantasy.
    """

    past_months: int = 36
    future_months: int = 3

    def bounds(self, now: int) -> tuple[int, int]:
        """``[low, high)`` in epoch ms for the window around ``now``."""
        first = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=now)
        index = first.year * 12 + first.month - 1
        low_index = index - self.past_months
        high_index = index + self.future_months + 1
        low = dt.datetime(low_index // 12, low_index % 12 + 1, 1, tzinfo=dt.UTC)
        high = dt.datetime(high_index // 12, high_index % 12 + 1, 1, tzinfo=dt.UTC)
        return _to_ms(low), _to_ms(high)


def partitions_to_create(
    corrected: Iterable[int], known: set[int], now: int, window: PartitionWindow
) -> list[int]:
    """Month starts the rows need that are in the window and not yet ``known``."""
    low, high = window.bounds(now)
    # Months (and the window's ends) start at midnight UTC, so the day decides;
    # a group of 2,000 rows spans few days, and datetime arithmetic per row cost
    # 8 % of a server's CPU under ingest (py-spy) when late events alternated months.
    wanted: set[int] = set()
    for day in {ms // _DAY_MS for ms in corrected}:
        ms = day * _DAY_MS
        if low <= ms < high:
            wanted.add(month_start(ms))
    return sorted(wanted - known)
