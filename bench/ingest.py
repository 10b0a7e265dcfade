"""End-to-end ingest over loopback against the raw ceiling of the SQLite storage.

    python bench/ingest.py [--events 200000] [--rounds 3] [--processes 2] [--connections 8]
                           [--random-ids] [--tls] [--quick]

Measured in the same run:

1. The ceiling: the very rows the server would store, inserted straight through
   ``SQLiteStorage.insert_events`` (WAL, synchronous=FULL, group commit) in
   batches of 100 from as many concurrent asyncio tasks as there are HTTP
   connections below. No HTTP, no JSON parsing.
2. The server: a real ``innkt-analytics serve`` process (tests/_server.py, rate
   limits off) on a fresh database, fed the same kind of events as pre-encoded
   JSON batches of 100 by sender *processes* (so the load generator does not
   share a GIL with itself), each with keep-alive connections written with raw
   asyncio streams. An event counts once the server answered 200 for its batch,
   which it does only after the commit.

3. With ``--tls``: the same server over HTTPS (``serve --tls-certfile/--tls-keyfile``,
   a certificate made with trustme, verified by the senders), in the same rounds,
   reported as a ratio to plain HTTP: what TLS costs.

The sides alternate for ``--rounds`` rounds and the best of each is kept.
Prints accepted events/s, p50/p99 request latency, the ceiling and the ratio,
and the CPU time per event of the server and of the senders (robust to other
load on a shared machine, unlike wall time). Targets on a 2-core machine:
>= 50,000 events/s and >= 40 % of the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import os
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _load
from _load import cpu_seconds, http_request, read_response
from tests._server import ServerProcess

from innkt_analytics.server._ingest import to_row
from innkt_analytics.server.storage import EventRow, SQLiteStorage
from innkt_analytics.shared._ids import uuid7
from innkt_analytics.shared._protocol import Limits, parse_batch

BATCH = 100


def make_events(n: int, random_ids: bool = False) -> list[dict[str, Any]]:
    """SDK-shaped events with UUIDv7 ids as the SDK makes them (time-ordered);
    ``random_ids``: UUIDv4 ids, which scatter the dedup index inserts (a client
    that is not our SDK)."""
    return _load.make_events(n, (lambda: str(uuid.uuid4())) if random_ids else uuid7)


def batch_bodies(events: list[dict[str, Any]]) -> list[bytes]:
    sent = dt.datetime.now(dt.UTC).isoformat()
    return [
        msgspec.json.encode({"events": events[i : i + BATCH], "sentAt": sent})
        for i in range(0, len(events), BATCH)
    ]


# -- 1. the storage ceiling ----------------------------------------------------------


def rows_for(bodies: list[bytes]) -> list[list[EventRow]]:
    """The rows the server stores for these bodies, built the way the server builds them."""
    received = dt.datetime.now(dt.UTC)
    out = []
    for body in bodies:
        parsed = parse_batch(body, Limits(), received)
        assert parsed.sent_at is not None
        sent_ms = int(parsed.sent_at.timestamp() * 1000)
        received_ms = int(received.timestamp() * 1000)
        out.append([to_row(v, received_ms, sent_ms) for v in parsed.valid])
    return out


async def insert_all(path: str, batches: list[list[EventRow]], tasks: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the storage's writer process)."""
    storage = SQLiteStorage(path)
    await storage.open()
    pending = iter(batches)

    async def worker() -> None:
        for rows in pending:  # the iterator is shared: each batch is taken once
            await storage.insert_events("default", rows)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        seconds = time.perf_counter() - start
        assert storage.writer_pid is not None
        writer_cpu = cpu_seconds(storage.writer_pid)
    finally:
        await storage.close()
    return seconds, writer_cpu


def storage_ceiling(n: int, tasks: int, tmp: Path, random_ids: bool) -> tuple[float, float]:
    """(events/s, CPU microseconds per event: this process and the writer process)."""
    batches = rows_for(batch_bodies(make_events(n, random_ids)))
    asyncio.run(insert_all(str(tmp / "warm.db"), batches[: tasks * 2], tasks))
    cpu = time.process_time()
    seconds, writer_cpu = asyncio.run(insert_all(str(tmp / "raw.db"), batches, tasks))
    return n / seconds, (time.process_time() - cpu + writer_cpu) / n * 1e6


# -- 2. the server over HTTP -----------------------------------------------------------


async def _send(
    port: int, requests: list[bytes], connections: int, ca_file: str | None = None
) -> tuple[list[float], int, float, float]:
    pending = iter(requests)
    context = None if ca_file is None else ssl.create_default_context(cafile=ca_file)
    latencies: list[float] = []
    accepted = 0

    async def connection() -> None:
        nonlocal accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        try:
            for req in pending:
                start = time.perf_counter()
                writer.write(req)
                status, body = await read_response(reader)
                latencies.append(time.perf_counter() - start)
                if b" 200 " not in status:
                    raise RuntimeError(f"server answered {status!r}: {body[:200]!r}")
                accepted += msgspec.json.decode(body)["accepted"]
        finally:
            writer.close()

    began = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return latencies, accepted, began, time.monotonic()


def sender_process(
    port: int,
    requests: list[bytes],
    connections: int,
    barrier: Any,
    results: Any,
    ca_file: str | None,
) -> None:
    """One load-generating process: waits for the start signal, then sends."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    barrier.wait()
    cpu = time.process_time()
    latencies, accepted, began, ended = asyncio.run(_send(port, requests, connections, ca_file))
    results.put((latencies, accepted, began, ended, time.process_time() - cpu))


def blast(
    port: int, requests: list[bytes], processes: int, connections: int, ca_file: str | None = None
) -> tuple[list[float], int, float, float]:
    """(latencies, events accepted, wall seconds, sender CPU seconds)."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=sender_process,
            args=(port, requests[i::processes], connections, barrier, results, ca_file),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    got = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    latencies = [x for r in got for x in r[0]]
    wall = max(r[3] for r in got) - min(r[2] for r in got)
    return latencies, sum(r[1] for r in got), wall, sum(r[4] for r in got)


def make_certificate(tmp: Path) -> tuple[tuple[str, ...], str]:
    """``serve`` TLS options for a new certificate of 127.0.0.1, and its CA's PEM file."""
    import trustme  # a test dependency: only --tls needs it

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp / "cert.pem", tmp / "key.pem", tmp / "ca.pem"
    cert.write_bytes(b"".join(p.bytes() for p in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return ("--tls-certfile", str(cert), "--tls-keyfile", str(key)), str(ca_file)


def serve_and_send(
    n: int, processes: int, connections: int, tmp: Path, random_ids: bool, tls: bool = False
) -> tuple[float, float, float, float, float]:
    """(events/s, p50 s, p99 s, server CPU us/event, sender CPU us/event)."""
    args, ca_file = make_certificate(tmp) if tls else ((), None)
    server = ServerProcess(
        tmp / "server.db",
        log_dir=tmp / "logs",
        env={"INNKT_RATE_LIMIT_PER_SECOND": "0"},
        args=args,
        verify=True if ca_file is None else ssl.create_default_context(cafile=ca_file),
    ).start()
    try:
        assert server.proc is not None
        key = server.write_key
        warm = [
            http_request(b, server.port, key) for b in batch_bodies(make_events(20_000, random_ids))
        ]
        blast(server.port, warm, processes, connections, ca_file)
        timed = [
            http_request(b, server.port, key) for b in batch_bodies(make_events(n, random_ids))
        ]
        cpu_before = cpu_seconds(server.proc.pid)
        latencies, accepted, wall, sender_cpu = blast(
            server.port, timed, processes, connections, ca_file
        )
        server_cpu = cpu_seconds(server.proc.pid) - cpu_before
        if accepted != n:
            raise RuntimeError(f"{accepted} of {n} events accepted")
        stored = server.count_events()
        if stored != n + 20_000:
            raise RuntimeError(f"{stored} events stored, expected {n + 20_000}")
    finally:
        server.stop()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return (
        n / wall,
        statistics.median(latencies),
        p99,
        server_cpu / n * 1e6,
        sender_cpu / n * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--processes", type=int, default=2, help="sender processes")
    parser.add_argument("--connections", type=int, default=8, help="connections per process")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20,000 events, 1 round")
    parser.add_argument(
        "--random-ids", action="store_true", help="UUIDv4 event ids instead of the SDK's UUIDv7"
    )
    parser.add_argument(
        "--tls", action="store_true", help="also run the server over HTTPS; print the ratio"
    )
    args = parser.parse_args()
    n = (20_000 if args.quick else args.events) // BATCH * BATCH
    rounds = 1 if args.quick else args.rounds
    conns = args.processes * args.connections
    print(
        f"{n:,} events in batches of {BATCH}; {args.processes} sender processes x"
        f" {args.connections} connections; {os.cpu_count()} CPUs;"
        f" {'UUIDv4' if args.random_ids else 'UUIDv7'} event ids; {rounds} rounds"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ceilings: list[tuple[float, float]] = []
    runs: list[tuple[float, float, float, float, float]] = []
    tls_runs: list[tuple[float, float, float, float, float]] = []
    for _ in range(rounds):  # alternate, so a burst of other load hits all sides alike
        with tempfile.TemporaryDirectory() as tmp:
            ceilings.append(storage_ceiling(n, conns, Path(tmp), args.random_ids))
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(
                serve_and_send(n, args.processes, args.connections, Path(tmp), args.random_ids)
            )
        if args.tls:
            with tempfile.TemporaryDirectory() as tmp:
                tls_runs.append(
                    serve_and_send(
                        n, args.processes, args.connections, Path(tmp), args.random_ids, tls=True
                    )
                )
    ceiling = max(c[0] for c in ceilings)
    best = max(runs)
    rate, p50, p99, _, _ = best
    median_ceiling = statistics.median(c[0] for c in ceilings)
    print(
        f"storage ceiling (SQLiteStorage.insert_events, {conns} tasks):"
        f" {ceiling:10,.0f} events/s (best; median {median_ceiling:,.0f})"
    )
    print(f"    CPU per event: {statistics.median(c[1] for c in ceilings):.1f} us (median)")
    print(
        f"server over HTTP, durably acknowledged:        {rate:10,.0f} events/s"
        f" (best; median {statistics.median(r[0] for r in runs):,.0f})"
    )
    print(f"    = {rate / ceiling:.1%} of the storage ceiling (best of each; target >= 40 %)")
    print(f"    request latency (batch of {BATCH}): p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
    print(
        f"    CPU per event: server {statistics.median(r[3] for r in runs):.1f} us,"
        f" senders {statistics.median(r[4] for r in runs):.1f} us (medians)"
    )
    verdict = "meets" if rate >= 50_000 and rate >= 0.4 * ceiling else "misses"
    print(f"    {verdict} the targets (>= 50,000 events/s and >= 40 % of the ceiling)")
    if tls_runs:
        tls_rate, tls_p50, tls_p99, _, _ = max(tls_runs)
        pairs = [t[0] / r[0] for t, r in zip(tls_runs, runs, strict=True)]
        print(
            f"server over HTTPS (TLS, verified), acknowledged: {tls_rate:10,.0f} events/s"
            f" (best; median {statistics.median(r[0] for r in tls_runs):,.0f})"
        )
        print(
            f"    = {tls_rate / rate:.1%} of plain HTTP (best of each);"
            f" per round: {', '.join(f'{p:.1%}' for p in pairs)}"
        )
        print(f"    request latency: p50 {tls_p50 * 1e3:.1f} ms, p99 {tls_p99 * 1e3:.1f} ms")
        print(
            f"    CPU per event: server {statistics.median(r[3] for r in tls_runs):.1f} us,"
            f" senders {statistics.median(r[4] for r in tls_runs):.1f} us (medians)"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
