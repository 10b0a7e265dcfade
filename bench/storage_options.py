"""Which write-path layout keeps its rate as the database grows? (issue 14, measure first)

    python bench/storage_options.py [--events 1000000] [--slice 250000] [--cache-mib 64]

Raw SQLite in one process, no HTTP, no writer process: the same rows as
bench/ingest_scale.py's mix (50 % UUIDv7 now, 30 % UUIDv4 now, 20 % late UUIDv7
over 30 days), committed 500 rows at a time with ``synchronous=FULL`` in WAL
mode — the commit pattern of the server's group commit. Layouts, each into a
fresh database, rate printed per slice:

* ``v3``: today's schema: ``events`` (rowid) with a UNIQUE index on
  (project, event_id) for dedup, and indexes on (project, corrected) and
  (project, event_type, corrected); ``INSERT ... ON CONFLICT DO NOTHING``.
* ``dayed``: the same table and time indexes, but dedup through a WITHOUT ROWID
  table keyed by (project, day of the event's own timestamp, event_id), whose
  pages for "today" stay hot whatever the id order.
* ``log``: an arrival-ordered log (rowid table, no secondary index) plus the
  dayed dedup table: what a hot log in front of columnar segments needs.
* ``uniqlog``: the same log with today's unique index on (project, event_id)
  instead: what the dedup index alone costs, without the time indexes.
* ``bulk``: today's unique index, and the two time indexes as WITHOUT ROWID
  tables filled in sorted bulk every 20,000 rows (in a transaction of their
  own, as the writer fills the user and session tables since schema v3).

A smaller ``--cache-mib`` shows at 1M events what a bigger database does at
10M (the working set outgrows the page cache); the server uses 64 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from innkt_analytics.shared._ids import uuid7

DAY_MS = 86_400_000
COMMIT = 500

EVENTS = """CREATE TABLE events (
    seq INTEGER PRIMARY KEY, project TEXT NOT NULL, event_id TEXT NOT NULL,
    event_type TEXT NOT NULL, session_id TEXT, user_id TEXT, anonymous_id TEXT,
    ts INTEGER NOT NULL, sent_at INTEGER, received_at INTEGER NOT NULL,
    corrected INTEGER NOT NULL, future INTEGER NOT NULL DEFAULT 0, payload BLOB NOT NULL)"""
TIME_INDEXES = [
    "CREATE INDEX events_time ON events (project, corrected)",
    "CREATE INDEX events_type ON events (project, event_type, corrected)",
]
DEDUP = """CREATE TABLE event_keys (project TEXT NOT NULL, day INTEGER NOT NULL,
    event_id TEXT NOT NULL, PRIMARY KEY (project, day, event_id)) WITHOUT ROWID"""
LAYOUTS = {
    "v3": [EVENTS, "CREATE UNIQUE INDEX events_dedup ON events (project, event_id)", *TIME_INDEXES],
    "dayed": [EVENTS, DEDUP, *TIME_INDEXES],
    "log": [EVENTS, DEDUP],
    "uniqlog": [EVENTS, "CREATE UNIQUE INDEX events_dedup ON events (project, event_id)"],
    "bulk": [
        EVENTS,
        "CREATE UNIQUE INDEX events_dedup ON events (project, event_id)",
        "CREATE TABLE by_time (project TEXT NOT NULL, corrected INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, PRIMARY KEY (project, corrected, seq)) WITHOUT ROWID",
        "CREATE TABLE by_type (project TEXT NOT NULL, event_type TEXT NOT NULL,"
        " corrected INTEGER NOT NULL, seq INTEGER NOT NULL,"
        " PRIMARY KEY (project, event_type, corrected, seq)) WITHOUT ROWID",
    ],
}
#: rows between two sorted bulk fills of the ``bulk`` layout's time tables
BULK_EVERY = 20_000
BULK_FILL = [
    "INSERT INTO by_time SELECT project, corrected, seq FROM events WHERE seq > ? ORDER BY 1, 2, 3",
    "INSERT INTO by_type SELECT project, event_type, corrected, seq FROM events WHERE seq > ?"
    " ORDER BY 1, 2, 3, 4",
]
INSERT = (
    "INSERT INTO events (project, event_id, event_type, session_id, user_id, anonymous_id,"
    " ts, sent_at, received_at, corrected, future, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
PAYLOAD = b'{"eventType":"click","properties":{"path":"/products/12","referrer":"search"}}' * 2


def rows(n: int, rng: random.Random) -> list[tuple[object, ...]]:
    now = time.time()
    out: list[tuple[object, ...]] = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.8:
            t = now - i * 1e-5
            event_id = uuid7(t) if kind < 0.5 else str(uuid.uuid4())
        else:
            t = now - rng.random() * 30 * 86_400
            event_id = uuid7(t)
        ms = int(t * 1000)
        user = rng.randrange(20_000)
        out.append(
            (
                "default",
                event_id,
                "click",
                f"s{user}-{ms // 1_800_000}",
                f"u{user}",
                None,
                ms,
                ms,
                ms,
                ms,
                0,
                PAYLOAD,
            )
        )
    return out


def run(layout: str, n: int, slice_: int, cache_mib: int, tmp: Path) -> list[float]:
    path = tmp / f"{layout}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
    for statement in LAYOUTS[layout]:
        conn.execute(statement)
    rng = random.Random(7)
    rates = []
    filled = 0  # the bulk layout's high-water mark (seq)
    with contextlib.closing(conn):
        for _ in range(0, n, slice_):
            batch = rows(slice_, rng)
            start = time.perf_counter()
            for i in range(0, len(batch), COMMIT):
                group = batch[i : i + COMMIT]
                conn.execute("BEGIN IMMEDIATE")
                if layout in ("v3", "uniqlog", "bulk"):
                    conn.executemany(INSERT + " ON CONFLICT (project, event_id) DO NOTHING", group)
                else:
                    conn.executemany(
                        "INSERT OR IGNORE INTO event_keys VALUES (?, ?, ?)",
                        [(r[0], int(r[6]) // DAY_MS, r[1]) for r in group],  # type: ignore[call-overload]
                    )
                    conn.executemany(INSERT, group)
                conn.execute("COMMIT")
                if layout == "bulk" and (i + COMMIT) % BULK_EVERY == 0:
                    conn.execute("BEGIN IMMEDIATE")
                    for statement in BULK_FILL:
                        conn.execute(statement, (filled,))
                    filled = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
                    conn.execute("COMMIT")
            rates.append(slice_ / (time.perf_counter() - start))
        size = sum(p.stat().st_size for p in tmp.iterdir() if p.name.startswith(path.name))
    print(
        f"  {layout:6s}: "
        + ", ".join(f"{r:8,.0f}" for r in rates)
        + f" rows/s per slice; last/first {rates[-1] / rates[0]:.0%};"
        f" {size / n:.0f} B/row on disk (load {' '.join(f'{x:.2f}' for x in os.getloadavg())})",
        flush=True,
    )
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--slice", type=int, default=250_000)
    parser.add_argument("--cache-mib", type=int, default=64)
    parser.add_argument("--layouts", default="v3,dayed,log")
    args = parser.parse_args()
    print(
        f"{args.events:,} rows, commits of {COMMIT}, page cache {args.cache_mib} MiB,"
        f" slices of {args.slice:,}"
    )
    for layout in args.layouts.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            run(layout, args.events, args.slice, args.cache_mib, Path(tmp))


if __name__ == "__main__":
    main()
