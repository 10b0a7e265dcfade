"""Ingest at scale: one SQLite server database growing from 0 to N events, a realistic mix.

    python bench/ingest_scale.py [--events 10000000] [--slice 1000000] [--batch 500]
                                 [--processes 2] [--connections 4] [--ceiling-events 200000]
                                 [--keep DIR] [--pg-url URL [--instances 1|2] [--keep-pg]]

The traffic is what real clients send, not what our SDK sends on a good day:

* 50 % SDK events: UUIDv7 ids (time-ordered), stamped now;
* 30 % events from other clients (Segment, RudderStack): random UUIDv4 ids, stamped now;
* 20 % late events from offline-first clients: times spread uniformly over the
  last 30 days, UUIDv7 ids made at the event's time (as the SDK made them when
  the event happened);

20,000 users, sessions of ~20 events, five event types, in batches of ``--batch``
from ``--processes`` sender processes x ``--connections`` keep-alive connections
(bench/ingest.py's raw HTTP/1.1 senders). An event counts once the server
answered 200 for its batch, which it does only after the durable commit.

The rate is printed per ``--slice`` events as the database grows, with the load
average and the bytes on disk per event, with and without the segment files merges
replaced that still wait out their 5-minute grace before they are unlinked. The
baseline, measured in the same run (before the server run and again after it, to
bracket the machine's load): the raw ceiling of the storage layer, the same mix of
rows inserted straight through ``SQLiteStorage.insert_events`` into a fresh
database by as many tasks as there are connections (no HTTP, no JSON parsing).

With ``--pg-url`` (a PostgreSQL server URL; a fresh database is made in it and
dropped after) the servers run on PostgreSQL, ``--instances`` of them, sender
process i sending to instance i mod N; the baseline is then PostgreSQL's own
COPY of the same mix into ``events`` and the dedup tables (``event_uuids``,
``event_ids``) in one transaction (bench/ingest_pg.py's ``copy_ceiling``), and
the size on disk is ``pg_database_size``.

Targets (issue 14): SQLite, every slice >= 40,000 events/s and the last slice >=
75 % of the first; PostgreSQL (1 and 2 instances), the last slice >= 50 % of the
COPY baseline. ``--keep DIR`` keeps a SQLite database (``DIR/scale.db``) for
bench/query.py.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _load import TYPES, cpu_seconds, http_request
from ingest import rows_for, sender_process
from tests._server import ServerProcess

from innkt_analytics.server.storage import EventRow, SQLiteStorage
from innkt_analytics.shared._ids import uuid7

USERS = 20_000
DAY_S = 86_400.0
LATE_DAYS = 30


#: the share of events that are identify calls (``--identify``)
IDENTIFY: list[float] = [0.0]


def make_events(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` events of the mix: 50 % UUIDv7 now, 30 % UUIDv4 now, 20 % late UUIDv7;
    with ``--identify``, that share of them are identify calls linking the user's
    anonymous id (one of two devices) to the user id."""
    now = time.time()
    out = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.8:
            t = now - i * 1e-5  # now (a few ms apart within the slice's generation)
            event_id = uuid7(t) if kind < 0.5 else str(uuid.uuid4())
        else:
            t = now - rng.random() * LATE_DAYS * DAY_S
            event_id = uuid7(t)
        user = rng.randrange(USERS)
        event: dict[str, Any] = {
            "eventId": event_id,
            "eventType": TYPES[rng.randrange(len(TYPES))],
            "sessionId": f"s{user}-{int(t // 1800)}",
            "userId": f"u{user}",
            "timestamp": dt.datetime.fromtimestamp(t, dt.UTC).isoformat(),
            "properties": {"path": f"/products/{i % 321}", "referrer": "search", "n": i},
            "context": {"app": {"version": "1.4.2"}, "locale": "en-GB"},
        }
        if rng.random() < IDENTIFY[0]:
            event["eventType"] = "identify"
            event["anonymousId"] = f"a{user}-{rng.randrange(2)}"
            event["properties"] = {"plan": ("free", "pro")[user % 2], "n": i}
        out.append(event)
    return out


def bodies(events: list[dict[str, Any]], batch: int) -> list[bytes]:
    sent = dt.datetime.now(dt.UTC).isoformat()
    return [
        msgspec.json.encode({"events": events[i : i + batch], "sentAt": sent})
        for i in range(0, len(events), batch)
    ]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def db_bytes(path: Path) -> int:
    """The database and its WAL (and any segment directory beside it)."""
    total = 0
    for p in path.parent.iterdir():
        if p.name.startswith(path.name):
            if p.is_dir():
                total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            else:
                total += p.stat().st_size
    return total


def trash_bytes(path: Path) -> int:
    """The bytes of the segment files merges replaced that still wait out their grace
    period (``trash``: unlinked ``trash_grace`` seconds later, so that a query reading
    the old list can finish): on disk now, not at rest."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            files = [f for (f,) in conn.execute("SELECT file FROM trash")]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    segments = Path(str(path) + ".segments")
    return sum(p.stat().st_size for f in files if (p := segments / f).is_file())


# -- the baseline: the storage layer's raw ceiling -----------------------------------------


async def _insert_all(path: str, batches: list[list[EventRow]], tasks: int) -> float:
    storage = SQLiteStorage(path)
    await storage.open()
    pending = iter(batches)

    async def worker() -> None:
        for rows in pending:  # shared iterator: each batch is taken once
            await storage.insert_events("default", rows)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        return time.perf_counter() - start
    finally:
        await storage.close()


def copy_ceiling(pg_url: str, n: int, seed: int) -> float:
    """Events/s of PostgreSQL's COPY of the mix (events + dedup ids) into a fresh database."""
    import ingest_pg  # PostgreSQL runs only: it imports asyncpg and psycopg

    url = ingest_pg.database(pg_url)
    try:
        rate, _, _ = asyncio.run(ingest_pg.copy_ceiling(url, make_events(n, random.Random(seed))))
    finally:
        ingest_pg.drop(pg_url, url)
    return rate


def blast(
    targets: list[tuple[int, list[bytes]]], processes: int, connections: int
) -> tuple[int, float]:
    """Sender process i sends its share of target i mod N's requests: (accepted, seconds)."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    procs = []
    for i in range(processes):
        port, requests = targets[i % len(targets)]
        share = max(1, processes // len(targets))
        mine = requests[(i // len(targets)) :: share]
        procs.append(
            ctx.Process(
                target=sender_process,
                args=(port, mine, connections, barrier, results, None),
            )
        )
    for p in procs:
        p.start()
    barrier.wait()
    got = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    return sum(r[1] for r in got), max(r[3] for r in got) - min(r[2] for r in got)


def ceiling(n: int, batch: int, tasks: int, seed: int) -> float:
    """Events/s of the mix straight into ``SQLiteStorage`` on a fresh database."""
    batches = rows_for(bodies(make_events(n, random.Random(seed)), batch))
    with tempfile.TemporaryDirectory() as tmp:
        seconds = asyncio.run(_insert_all(str(Path(tmp) / "ceiling.db"), batches, tasks))
    return n / seconds


# -- the server, slice by slice ---------------------------------------------------------------


def pg_bytes(url: str) -> int:
    import psycopg  # PostgreSQL runs only

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def run_servers(
    args: argparse.Namespace, directory: Path, db_url: str | None
) -> list[tuple[int, float, str, int, int]]:
    """Per slice: (events stored after it, events/s, load average, bytes on disk, of
    which in replaced segment files still in their grace period)."""
    db = directory / "scale.db"
    env = {"INNKT_RATE_LIMIT_PER_SECOND": "0"}
    if args.no_identity:
        env["INNKT_IDENTITY"] = "false"
    servers: list[ServerProcess] = []
    rng = random.Random(1)
    slices: list[tuple[int, float, str, int, int]] = []
    stored = 0
    try:
        for i in range(args.instances if db_url else 1):
            log_dir = directory / f"logs{i}"
            servers.append(ServerProcess(db_url or db, log_dir=log_dir, env=env).start())
        key = servers[0].write_key
        pids = [s.proc.pid for s in servers if s.proc is not None]
        while stored < args.events:
            n = min(args.slice, args.events - stored)
            batches = bodies(make_events(n, rng), args.batch)
            targets = [
                (s.port, [http_request(b, s.port, key) for b in batches[i :: len(servers)]])
                for i, s in enumerate(servers)
            ]
            cpu = sum(cpu_seconds(pid) for pid in pids)
            accepted, wall = blast(targets, args.processes, args.connections)
            server_cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
            if accepted != n:
                raise RuntimeError(f"{accepted} of {n} events accepted")
            stored += n
            size = pg_bytes(db_url) if db_url else db_bytes(db)
            pending = 0 if db_url else trash_bytes(db)
            slices.append((stored, n / wall, load(), size, pending))
            print(
                f"  {stored:>12,} stored: {n / wall:9,.0f} events/s"
                f"  (server CPU {server_cpu / n * 1e6:5.1f} us/event"
                f"{'' if db_url else ' with its writer'};"
                f" {size / stored:5.0f} B/event on disk"
                f"{'' if db_url else f', {(size - pending) / stored:.0f} without replaced files'};"
                f" load {load()})",
                flush=True,
            )
        counted = servers[0].count_events()
        if counted != stored:
            raise RuntimeError(f"{counted} events stored, expected {stored}")
    finally:
        for server in servers:
            server.stop()
    return slices


def run_server(args: argparse.Namespace, directory: Path) -> list[tuple[int, float, str, int, int]]:
    if args.pg_url is None:
        return run_servers(args, directory, None)
    import ingest_pg  # PostgreSQL runs only

    url = ingest_pg.database(args.pg_url)
    try:
        return run_servers(args, directory, url)
    finally:
        if args.keep_pg:
            print(f"database kept (for bench/query.py --pg-url): {url}")
        else:
            ingest_pg.drop(args.pg_url, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--slice", type=int, default=1_000_000, help="events per printed rate")
    parser.add_argument("--batch", type=int, default=500, help="events per request")
    parser.add_argument("--processes", type=int, default=2, help="sender processes")
    parser.add_argument("--connections", type=int, default=4, help="connections per process")
    parser.add_argument(
        "--ceiling-events", type=int, default=200_000, help="events in each baseline run"
    )
    parser.add_argument("--keep", type=Path, help="keep the SQLite database in this directory")
    parser.add_argument("--pg-url", help="run on PostgreSQL (a fresh database made with this URL)")
    parser.add_argument("--instances", type=int, default=1, help="PostgreSQL server instances")
    parser.add_argument(
        "--keep-pg", action="store_true", help="keep the PostgreSQL database (prints its URL)"
    )
    parser.add_argument(
        "--identify", type=float, default=0.0, help="share of identify calls (issue 19: 0.05)"
    )
    parser.add_argument(
        "--no-identity", action="store_true", help="servers with INNKT_IDENTITY=false"
    )
    args = parser.parse_args()
    IDENTIFY[0] = args.identify
    if args.pg_url is not None and args.keep is not None:
        parser.error("--keep is for SQLite databases")
    tasks = args.processes * args.connections
    print(
        f"{args.events:,} events in slices of {args.slice:,}, batches of {args.batch};"
        f" {args.processes} sender processes x {args.connections} connections;"
        f" {os.cpu_count()} CPUs; mix: 50 % UUIDv7 now, 30 % UUIDv4 now,"
        f" 20 % late (UUIDv7, last {LATE_DAYS} days); {USERS:,} users;"
        f" identify calls {args.identify:.0%}; identity linking"
        f" {'off' if args.no_identity else 'on'}"
    )
    print(f"load average before: {load()}")

    def baseline(seed: int) -> float:
        if args.pg_url is not None:
            return copy_ceiling(args.pg_url, args.ceiling_events, seed)
        return ceiling(args.ceiling_events, args.batch, tasks, seed)

    what = (
        f"PostgreSQL COPY into events + dedup ids, fresh db, {args.instances} instance(s) to come"
        if args.pg_url
        else f"storage ceiling (SQLiteStorage.insert_events, fresh db, {tasks} tasks"
    )
    before = baseline(seed=2)
    print(
        f"baseline: {what}, {args.ceiling_events:,} events): {before:,.0f} events/s"
        f" (load {load()})",
        flush=True,
    )
    print("server over HTTP, durably acknowledged, per slice:")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        slices = run_server(args, args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            slices = run_server(args, Path(tmp))
    after = baseline(seed=3)
    print(f"baseline again after the server run: {after:,.0f} events/s (load {load()})")
    rates = [s[1] for s in slices]
    base = (before + after) / 2
    print(f"first slice {rates[0]:,.0f}, last slice {rates[-1]:,.0f} events/s:")
    sqlite_only = "" if args.pg_url else " (target >= 75 %)"
    print(f"    last / first = {rates[-1] / rates[0]:.1%}{sqlite_only}")
    sqlite_only = "" if args.pg_url else " (target >= 40,000)"
    print(f"    slowest slice {min(rates):,.0f} events/s{sqlite_only}")
    print(
        f"    first / baseline = {rates[0] / base:.1%}, last / baseline = {rates[-1] / base:.1%}"
        f" (baseline = mean of the two ceiling runs)"
    )
    if args.pg_url is not None:
        print(f"    on disk: {slices[-1][3] / slices[-1][0]:.0f} B/event")
    else:
        stored, size, pending = slices[-1][0], slices[-1][3], slices[-1][4]
        rest = (size - pending) / stored
        print(
            f"    on disk: {size / stored:.0f} B/event, of which {pending / stored:.0f} in files"
            f" merges replaced (unlinked after their 5-minute grace): {rest:.0f} B/event"
            " without them (target <= 150)"
        )
    if args.pg_url is not None:
        ok = rates[-1] >= 0.5 * base
        print("    PostgreSQL target: last slice >= 50 % of the COPY baseline")
    else:
        ok = min(rates) >= 40_000 and rates[-1] >= 0.75 * rates[0]
    print(f"    {'meets' if ok else 'misses'} the ingest targets")
    if args.keep is not None:
        print(f"database kept: {args.keep / 'scale.db'}")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
