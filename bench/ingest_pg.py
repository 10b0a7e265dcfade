"""Ingest throughput on PostgreSQL: 1 and 2 server instances against PostgreSQL's COPY.

    python bench/ingest_pg.py [--events 100000] [--senders 16] [--pg-url URL]

Each run gets a fresh database. The baseline, measured in the same run, is
PostgreSQL's own COPY of the very rows the server stores (the same ``events``
table with its indexes, and the same ids into the dedup tables) in one
transaction. Then real server processes (tests/_server.py ServerProcess, rate
limits off) take the same events as JSON batches of 100 from concurrent
senders over loopback, and the events/s are compared with the COPY ceiling.
Rounds are interleaved and medians reported, because this machine is shared.
The senders are a minimal keep-alive HTTP/1.1 client with pre-encoded
requests, so the load generator takes as little of the machine's CPU as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import msgspec
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _load
from _load import http_request, process_cpu_seconds, read_response
from tests._server import ServerProcess

from innkt_analytics.server.storage._pg_ingest import EVENT_COLUMNS, uuid_key
from innkt_analytics.server.storage._postgres import PostgresStorage

BATCH = 100
COLUMNS = list(EVENT_COLUMNS)


def make_events(n: int, tag: str) -> list[dict[str, object]]:
    return _load.make_events(n, lambda: f"{tag}-{uuid.uuid4().hex}")


def bodies(events: list[dict[str, object]]) -> list[bytes]:
    """One JSON batch body per BATCH events."""
    return [
        msgspec.json.encode({"events": events[start : start + BATCH]})
        for start in range(0, len(events), BATCH)
    ]


async def sender(port: int, queue: asyncio.Queue[bytes], done: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            try:
                req = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            writer.write(req)
            status_line, _ = await read_response(reader)
            if b" 200 " not in status_line:
                raise RuntimeError(f"server answered {status_line!r}")
            done[0] += 1
    finally:
        writer.close()
        await writer.wait_closed()


async def blast(targets: list[tuple[int, list[bytes]]], senders: int) -> float:
    """Send every request; returns the seconds it took."""
    queues: list[asyncio.Queue[bytes]] = []
    for _, reqs in targets:
        q: asyncio.Queue[bytes] = asyncio.Queue()
        for r in reqs:
            q.put_nowait(r)
        queues.append(q)
    done = [0]
    start = time.perf_counter()
    await asyncio.gather(
        *(
            sender(targets[i % len(targets)][0], queues[i % len(targets)], done)
            for i in range(senders)
        )
    )
    return time.perf_counter() - start


def database(pg_url: str) -> str:
    name = f"innkt_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(pg_url)._replace(path="/" + name))


def drop(pg_url: str, url: str) -> None:
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def copy_ceiling(url: str, events: list[dict[str, object]]) -> tuple[float, float, float]:
    """By COPY: (events/s into events + the dedup tables, events/s into events alone,
    PostgreSQL CPU microseconds per event for the first)."""
    storage = PostgresStorage(url)
    await storage.open()  # the real schema, partitions included
    await storage.close()
    now = time.time_ns() // 1_000_000
    records = []
    for e in events:
        ts = int(dt.datetime.fromisoformat(str(e["timestamp"])).timestamp() * 1000)
        records.append(
            (
                "default",
                e["eventId"],
                e["eventType"],
                e["sessionId"],
                e["userId"],
                None,
                ts,
                now,
                now,
                ts,
                False,
                msgspec.json.encode(e),
            )
        )
    uuids = sorted((r[0], r[1]) for r in records if uuid_key(str(r[1])))
    others = sorted((r[0], r[1]) for r in records if not uuid_key(str(r[1])))
    conn = await asyncpg.connect(url)
    try:
        rates = []
        cpu = 0.0
        for with_ids in (True, False):
            await conn.execute("TRUNCATE events, event_ids, event_uuids")
            await conn.execute("CHECKPOINT")
            pids = postgres_pids(url) | {conn.get_server_pid()}
            before = cpu_seconds(pids)
            start = time.perf_counter()
            async with conn.transaction():
                if with_ids:  # the ids into the dedup tables, split as the server splits them
                    await conn.copy_records_to_table("event_uuids", records=uuids)
                    await conn.copy_records_to_table("event_ids", records=others)
                await conn.copy_records_to_table("events", records=records, columns=COLUMNS)
            rates.append(len(records) / (time.perf_counter() - start))
            if with_ids:
                after = cpu_seconds(pids)
                used = sum(after[p] - before.get(p, 0.0) for p in after)
                cpu = used / len(records) * 1e6
        return rates[0], rates[1], cpu
    finally:
        await conn.close()


@dataclass
class Run:
    rate: float  # events/s
    bytes_per_event: float  # tables and indexes
    server_us: float  # server CPU per event (all instances)
    postgres_us: float  # PostgreSQL CPU per event (its backends and WAL/background work)
    sender_us: float  # this load generator's CPU per event


def cpu_seconds(pids: set[int]) -> dict[int, float]:
    """CPU seconds of each process still alive (PostgreSQL backends come and go)."""
    return {pid: cpu for pid in pids if (cpu := process_cpu_seconds(pid)) is not None}


def postgres_pids(url: str) -> set[int]:
    """This database's backends and the shared background processes (WAL writer...)."""
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND (datname = %s OR backend_type <> 'client backend')",
            (name,),
        ).fetchall()
    return {int(r[0]) for r in rows}


def serve_and_send(
    pg_url: str, instances: int, events: list[dict[str, object]], senders: int, logs: Path
) -> Run:
    """Send ``events`` through ``instances`` real servers on a fresh database."""
    url = database(pg_url)
    servers: list[ServerProcess] = []
    try:
        env = {"INNKT_RATE_LIMIT_PER_SECOND": "0"}
        for i in range(instances):
            log_dir = tempfile.mkdtemp(prefix=f"{instances}-{i}-", dir=logs)
            servers.append(ServerProcess(url, log_dir=log_dir, env=env).start())
        key = servers[0].write_key
        batches = bodies(events)
        warmup_count = min(senders * 4, len(batches) // 5)
        warm, timed = batches[:warmup_count], batches[warmup_count:]
        targets = []
        for i, server in enumerate(servers):
            mine = [http_request(b, server.port, key) for b in timed[i :: len(servers)]]
            warmup = [http_request(b, server.port, key) for b in warm[i :: len(servers)]]
            targets.append((server.port, mine, warmup))
        asyncio.run(blast([(p, w) for p, _, w in targets], senders))  # pools grow here
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        server_pids = {s.proc.pid for s in servers if s.proc is not None}
        pg_pids = postgres_pids(url)
        before = cpu_seconds(server_pids | pg_pids)
        mine_before = sum(os.times()[:2])
        seconds = asyncio.run(blast([(p, m) for p, m, _ in targets], senders))
        sender_cpu = sum(os.times()[:2]) - mine_before
        pg_pids |= postgres_pids(url)
        after = cpu_seconds(server_pids | pg_pids)
        used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
        n = len(timed) * BATCH
        stored = servers[0].count_events()
        if stored != len(events):
            raise RuntimeError(f"stored {stored} of {len(events)} events")
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_total_relation_size('event_ids') + pg_total_relation_size('event_uuids')"
                " + coalesce(sum("
                "pg_total_relation_size(inhrelid)), 0) FROM pg_inherits"
                " WHERE inhparent = 'events'::regclass"
            ).fetchone()
        size = int(row[0]) if row else 0
        return Run(
            rate=n / seconds,
            bytes_per_event=size / stored,
            server_us=sum(used.get(p, 0.0) for p in server_pids) / n * 1e6,
            postgres_us=sum(v for p, v in used.items() if p in pg_pids) / n * 1e6,
            sender_us=sender_cpu / n * 1e6,
        )
    finally:
        for server in servers:
            server.stop()
        drop(pg_url, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of (COPY, 1, 2 instances); medians reported"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("INNKT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    n = args.events // BATCH * BATCH
    print(
        f"{n} events in batches of {BATCH}, {args.senders} senders, {os.cpu_count()} CPUs,"
        f" {args.rounds} rounds (each line: median, then every round)"
    )
    copies: list[tuple[float, float, float]] = []
    runs: dict[int, list[Run]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        # Interleaved, so a slow minute on a shared machine hits every measurement alike.
        for round_ in range(args.rounds):
            url = database(args.pg_url)
            try:
                copies.append(asyncio.run(copy_ceiling(url, make_events(n, f"copy{round_}"))))
            finally:
                drop(args.pg_url, url)
            for instances in (1, 2):
                events = make_events(n, f"run{round_}-{instances}")
                runs[instances].append(
                    serve_and_send(args.pg_url, instances, events, args.senders, Path(tmp))
                )

    def line(label: str, values: list[float], unit: str = "events/s") -> float:
        mid = statistics.median(values)
        each = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{label:<52}{mid:10,.0f} {unit}  ({each})")
        return mid

    ceiling = line("COPY ceiling (events + dedup tables, one transaction):", [c[0] for c in copies])
    events_only = line("COPY into events alone (reference):", [c[1] for c in copies])
    copy_cpu = statistics.median(c[2] for c in copies)
    print(f"    CPU per event: PostgreSQL {copy_cpu:5.1f} us under COPY")
    for instances, results in runs.items():
        label = f"{instances} instance{'s' if instances > 1 else ''} over HTTP:"
        rate = line(label, [r.rate for r in results])
        print(
            f"    = {rate / ceiling:5.1%} of the COPY ceiling"
            f" ({rate / events_only:5.1%} of events-only COPY)"
        )
        print(
            f"    CPU per event: server {statistics.median(r.server_us for r in results):5.1f} us,"
            f" PostgreSQL {statistics.median(r.postgres_us for r in results):5.1f} us,"
            f" senders {statistics.median(r.sender_us for r in results):5.1f} us;"
            f" on disk {statistics.median(r.bytes_per_event for r in results):,.0f} bytes/event"
        )


if __name__ == "__main__":
    main()
