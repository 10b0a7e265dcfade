"""The SQLite schema and its migrations; ``PRAGMA user_version`` is the version.

Version 3 moved the indexes by user and by session out of the events table into
``events_by_user`` and ``events_by_session``, which the writer process fills in
sorted bulk (see ``_sqlite_writer.py``): per insert, those two indexes touched a
page for nearly every distinct user and session of the group, and cost half the
time of an insert.

Version 4 is the storage engine of ``_engine.py``: ``events`` becomes the hot log
(arrival order, ``seq`` from AUTOINCREMENT so a seq is never handed out twice even
after compaction empties the table, one unique index for dedup and nothing else);
``segments`` and ``dedup_runs`` list the Parquet segments and dedup runs the
compactor made; ``trash`` holds files replaced by a merge until no reader can still
have them open; ``pending_deletes`` holds user deletions still to apply to segments.
The v3 rows are copied into the new table once (the migration of a big database
takes a while: about a minute per 10M events) and then compacted in the background.
"""

from __future__ import annotations

import sqlite3
from typing import Final

__all__ = ["SCHEMA_VERSION", "migrate"]

SCHEMA_VERSION: Final = 4

_MIGRATIONS: Final[dict[int, str]] = {
    1: """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        session_id TEXT,
        user_id TEXT,
        anonymous_id TEXT,
        ts INTEGER NOT NULL,
        sent_at INTEGER,
        received_at INTEGER NOT NULL,
        corrected INTEGER NOT NULL,
        future INTEGER NOT NULL DEFAULT 0,
        payload BLOB NOT NULL
    );
    CREATE UNIQUE INDEX events_dedup ON events (project, event_id);
    CREATE INDEX events_time ON events (project, corrected);
    CREATE INDEX events_type ON events (project, event_type, corrected);
    CREATE INDEX events_session ON events (project, session_id) WHERE session_id IS NOT NULL;
    CREATE INDEX events_user ON events (project, user_id) WHERE user_id IS NOT NULL;
    CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        scopes TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE project_config (
        project TEXT PRIMARY KEY,
        config BLOB NOT NULL
    );
    """,
    2: """
    CREATE TABLE suppressed_users (
        project TEXT NOT NULL,
        user_id TEXT NOT NULL,
        deleted_at INTEGER NOT NULL,
        PRIMARY KEY (project, user_id)
    );
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail BLOB NOT NULL
    );
    CREATE INDEX audit_project ON audit_log (project, seq);
""",
    3: """
    CREATE TABLE events_by_user (
        project TEXT NOT NULL,
        user_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (project, user_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE events_by_session (
        project TEXT NOT NULL,
        session_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (project, session_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE index_state (hwm INTEGER NOT NULL);
    INSERT INTO events_by_user SELECT project, user_id, seq FROM events
        WHERE user_id IS NOT NULL;
    INSERT INTO events_by_session SELECT project, session_id, seq FROM events
        WHERE session_id IS NOT NULL;
    INSERT INTO index_state (hwm) SELECT coalesce(max(seq), 0) FROM events;
    DROP INDEX events_session;
    DROP INDEX events_user;
    CREATE TRIGGER events_unindex AFTER DELETE ON events BEGIN
        DELETE FROM events_by_user
            WHERE project = old.project AND user_id = old.user_id AND seq = old.seq;
        DELETE FROM events_by_session
            WHERE project = old.project AND session_id = old.session_id AND seq = old.seq;
        -- Deleting the newest rows lets SQLite hand their seqs out again: those
        -- must count as not indexed yet.
        UPDATE index_state SET hwm = (SELECT coalesce(max(seq), 0) FROM events)
            WHERE hwm > (SELECT coalesce(max(seq), 0) FROM events);
    END;
""",
    4: """
    CREATE TABLE hot_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        session_id TEXT,
        user_id TEXT,
        anonymous_id TEXT,
        ts INTEGER NOT NULL,
        sent_at INTEGER,
        received_at INTEGER NOT NULL,
        corrected INTEGER NOT NULL,
        future INTEGER NOT NULL DEFAULT 0,
        payload BLOB NOT NULL
    );
    INSERT INTO hot_log SELECT seq, project, event_id, event_type, session_id, user_id,
        anonymous_id, ts, sent_at, received_at, corrected, future, payload
        FROM events ORDER BY seq;
    DROP TRIGGER events_unindex;
    DROP TABLE events;
    DROP TABLE events_by_user;
    DROP TABLE events_by_session;
    DROP TABLE index_state;
    ALTER TABLE hot_log RENAME TO events;
    CREATE UNIQUE INDEX events_dedup ON events (project, event_id);
    CREATE TABLE segments (
        id INTEGER PRIMARY KEY,
        file TEXT NOT NULL UNIQUE,
        rows INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        min_seq INTEGER NOT NULL,
        max_seq INTEGER NOT NULL,
        min_corrected INTEGER NOT NULL,
        max_corrected INTEGER NOT NULL,
        tier INTEGER NOT NULL DEFAULT 0,
        sha256 TEXT NOT NULL
    );
    CREATE TABLE dedup_runs (
        id INTEGER PRIMARY KEY,
        file TEXT NOT NULL UNIQUE,
        entries INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL
    );
    CREATE TABLE trash (file TEXT PRIMARY KEY, at INTEGER NOT NULL);
    CREATE TABLE pending_deletes (
        project TEXT NOT NULL,
        id TEXT NOT NULL,
        PRIMARY KEY (project, id)
    ) WITHOUT ROWID;
""",
}


def statements(script: str) -> list[str]:
    """Split a script into statements; a trigger body's semicolons stay inside."""
    out: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            out.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        out.append(buffer.strip())
    return out


#: key expiry and last use (key rotation). Added by a column check rather than a
#: version number, so it composes with numbered migrations made at the same time.
_KEY_COLUMNS_ADDED: Final = {"expires_at": "INTEGER", "last_used_at": "INTEGER"}


def add_key_columns(conn: sqlite3.Connection) -> None:
    """Add the api_keys columns of key rotation where missing (idempotent)."""

    def missing() -> list[tuple[str, str]]:
        have = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
        return [(n, t) for n, t in _KEY_COLUMNS_ADDED.items() if n not in have]

    if not missing():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name, kind in missing():  # again under the lock: another process may have won
            conn.execute(f"ALTER TABLE api_keys ADD COLUMN {name} {kind}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def migrate(conn: sqlite3.Connection, upto: int = SCHEMA_VERSION) -> None:
    """Bring the database to ``upto`` (the current version unless a test makes an
    older file), one transaction per version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for target in sorted(v for v in _MIGRATIONS if version < v <= upto):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements(_MIGRATIONS[target]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    add_key_columns(conn)
