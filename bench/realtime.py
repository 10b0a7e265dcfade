"""Real-time hub: event latency with 1/100/1,000 subscribers, ingest with subscribers connected.

    python bench/realtime.py [--latency-events 200] [--events 50000] [--senders 8]

Latency: one real server (SQLite, rate limits off); N WebSocket subscribers of
the event stream, spread over worker processes so the receiving side is not
one Python loop; one poster sends ``POST /v1/events`` (one event each, keep-alive,
open loop at a fixed pace). Reported: from the moment the ``200`` was read by
the poster to the moment each subscriber received the ``event`` message,
p50/p99 over every (event, subscriber) pair; CLOCK_MONOTONIC is system-wide, so
the processes' clocks agree. A negative figure means the message beat the HTTP
answer to its client.

Throughput: events/s through ``POST /v1/events/batch`` (batches of 100,
concurrent keep-alive senders) on a fresh server, (a) with nobody connected —
the baseline — (b) with 1,000 subscribers connected (default streams:
``analytics_update`` every second, ``config_update``), (c) with 1,000 subscribers
of the full event stream, each receiving every batch. The ratio to (a) is
printed, with the server's CPU time per event. All processes share this
machine's cores, so (c) also measures the subscribers' own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _load import cpu_seconds, http_request, read_response
from tests._server import ServerProcess

BATCH = 100
PER_WORKER = 250


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- subscribers (worker processes) -----------------------------------------------------


async def _subscribers(
    url: str, key: str, n: int, events: bool, latency: bool, pipe: Connection
) -> None:
    sockets = []
    for start in range(0, n, 50):
        sockets += await asyncio.gather(
            *(
                connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {key}"},
                    subprotocols=["innkt.v1"],  # type: ignore[list-item]
                    compression=None,
                    ping_interval=None,
                    open_timeout=60,
                    max_size=None,
                )
                for _ in range(start, min(n, start + 50))
            )
        )
    if events:
        for ws in sockets:
            await ws.send(json.dumps({"type": "subscribe", "payload": {"streams": ["event"]}}))
            if latency:
                # Event latency alone: no analytics tick competing with the events.
                await ws.send(
                    json.dumps(
                        {"type": "unsubscribe", "payload": {"streams": ["analytics_update"]}}
                    )
                )
    seen: dict[str, list[float]] = {}
    counts = {"messages": 0, "dropped": 0}

    async def reader(ws: Any) -> None:
        while True:
            raw = await ws.recv(decode=False)  # bytes: no UTF-8 decoding of every frame
            now = time.monotonic()
            counts["messages"] += 1
            # Parse only what is measured: a subscriber process parsing 1,000 copies of
            # every batch would measure this process, not the server.
            if raw.startswith(b'{"type":"dropped"'):
                counts["dropped"] += json.loads(raw)["payload"]["dropped"]
            elif latency and raw.startswith(b'{"type":"event"'):
                for e in json.loads(raw)["payload"]["events"]:
                    seen.setdefault(e["eventId"], []).append(now)

    tasks = [asyncio.create_task(reader(ws)) for ws in sockets]
    await asyncio.sleep(0.5)  # subscriptions are processed
    pipe.send("ready")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pipe.recv)  # "stop"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    pipe.send((seen, counts))


def _worker(url: str, key: str, n: int, events: bool, latency: bool, pipe: Connection) -> None:
    asyncio.run(_subscribers(url, key, n, events, latency, pipe))


class Subscribers:
    """``n`` subscribers spread over worker processes of ``PER_WORKER`` each."""

    def __init__(self, server: ServerProcess, n: int, events: bool, latency: bool) -> None:
        url = server.url.replace("http://", "ws://") + "/v1/realtime"
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs = []
        for start in range(0, n, PER_WORKER):
            mine, theirs = ctx.Pipe()
            count = min(PER_WORKER, n - start)
            proc = ctx.Process(
                target=_worker, args=(url, server.read_key, count, events, latency, theirs)
            )
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)
        for pipe in self.pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("subscriber worker failed")

    def stop(self) -> tuple[dict[str, list[float]], dict[str, int]]:
        seen: dict[str, list[float]] = {}
        totals = {"messages": 0, "dropped": 0}
        for pipe in self.pipes:
            pipe.send("stop")
        for pipe in self.pipes:
            their_seen, counts = pipe.recv()
            for event_id, times in their_seen.items():
                seen.setdefault(event_id, []).extend(times)
            for name, value in counts.items():
                totals[name] += value
        for proc in self.procs:
            proc.join(30)
        return seen, totals


# -- HTTP load ----------------------------------------------------------------------------


async def read_answer(reader: asyncio.StreamReader) -> None:
    status, _ = await read_response(reader)
    if b" 200 " not in status:
        raise RuntimeError(f"server answered {status!r}")


def make_event(i: int, tag: str) -> dict[str, Any]:
    return {
        "eventId": f"{tag}-{uuid.uuid4().hex}",
        "eventType": ("page_view", "click", "purchase")[i % 3],
        "sessionId": f"s{i // 50}",
        "timestamp": "2026-11-27T10:00:00+00:00",
        "properties": {"path": f"/products/{i % 321}", "n": i},
    }


async def post_paced(server: ServerProcess, n: int, interval: float) -> dict[str, float]:
    """POST ``n`` single events, one every ``interval`` s; event id -> ack time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    acks: dict[str, float] = {}
    start = time.monotonic()
    for i in range(n):
        event = make_event(i, "lat")
        writer.write(
            http_request(
                msgspec.json.encode(event), server.port, server.write_key, path="/v1/events"
            )
        )
        await read_answer(reader)
        acks[event["eventId"]] = time.monotonic()
        await asyncio.sleep(max(0.0, start + (i + 1) * interval - time.monotonic()))
    writer.close()
    return acks


async def blast(port: int, requests: list[bytes], senders: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)

    async def sender() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not queue.empty():
            writer.write(queue.get_nowait())
            await read_answer(reader)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    return time.perf_counter() - start


# -- the runs ---------------------------------------------------------------------------


def start_server(tmp: Path, name: str) -> ServerProcess:
    env = {"INNKT_RATE_LIMIT_PER_SECOND": "0", "INNKT_REALTIME_MAX_CONNECTIONS": "5000"}
    return ServerProcess(tmp / f"{name}.db", log_dir=tmp / "logs", env=env).start()


def latency(tmp: Path, subscribers: int, events: int) -> None:
    server = start_server(tmp, f"latency{subscribers}")
    try:
        subs = Subscribers(server, subscribers, events=True, latency=True)
        # Pace so the hub finishes one fan-out before the next event: latency, not backlog.
        # One event per second at 1,000 subscribers: 1,000 frames/s, the default send
        # budget of the event stream (INNKT_REALTIME_FANOUT_FRAMES_PER_SECOND, burst 2,000).
        interval = max(0.01, subscribers * 0.001)
        assert server.proc is not None
        cpu_before = cpu_seconds(server.proc.pid)
        acks = asyncio.run(post_paced(server, events, interval))
        time.sleep(1.0)
        server_cpu = cpu_seconds(server.proc.pid) - cpu_before
        seen, totals = subs.stop()
    finally:
        server.stop()
    delays = [(t - acks[eid]) * 1000 for eid, times in seen.items() for t in times]
    expected = events * subscribers
    print(
        f"  {subscribers:>5} subscribers: p50 {percentile(delays, 0.5):6.2f} ms"
        f"  p99 {percentile(delays, 0.99):6.2f} ms  max {max(delays):7.2f} ms"
        f"  ({len(delays):,} of {expected:,} deliveries, {totals['dropped']} dropped,"
        f" one event every {interval * 1000:.0f} ms;"
        f" server CPU {server_cpu / max(1, len(delays)) * 1e6:.0f} us per delivery)"
    )


def throughput(tmp: Path, mode: str, n: int, senders: int) -> tuple[float, float, float, int]:
    """(events/s, server CPU us per event, subscribers' CPU us per event, events dropped)."""
    server = start_server(tmp, f"ingest-{mode}-{uuid.uuid4().hex[:8]}")
    subs = None
    try:
        if mode != "none":
            subs = Subscribers(server, 1000, events=mode == "events", latency=False)
        events = [make_event(i, mode) for i in range(n)]
        bodies = [
            http_request(
                msgspec.json.encode({"events": events[i : i + BATCH]}),
                server.port,
                server.write_key,
            )
            for i in range(0, n, BATCH)
        ]
        warm, timed = bodies[: senders * 2], bodies[senders * 2 :]
        asyncio.run(blast(server.port, warm, senders))
        assert server.proc is not None
        workers = [p.pid for p in subs.procs if p.pid is not None] if subs else []
        cpu_before = cpu_seconds(server.proc.pid)
        subs_before = sum(cpu_seconds(pid) for pid in workers)
        seconds = asyncio.run(blast(server.port, timed, senders))
        server_cpu = cpu_seconds(server.proc.pid) - cpu_before
        subs_cpu = sum(cpu_seconds(pid) for pid in workers) - subs_before
        dropped = subs.stop()[1]["dropped"] if subs is not None else 0
        subs = None
        stored = server.count_events()
        if stored != n:
            raise RuntimeError(f"stored {stored} of {n}")
        k = len(timed) * BATCH
        return k / seconds, server_cpu / k * 1e6, subs_cpu / k * 1e6, dropped
    finally:
        if subs is not None:
            subs.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-events", type=int, default=200)
    parser.add_argument("--subscribers", default="1,100,1000", help="latency runs, comma-separated")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="throughput runs per mode")
    parser.add_argument("--only", choices=["latency", "throughput"])
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.only != "throughput":
            print("Latency, POST /v1/events answered -> event message received:")
            for subscribers in (int(n) for n in args.subscribers.split(",")):
                count = args.latency_events if subscribers < 1000 else args.latency_events // 4
                latency(tmp, subscribers, count)
        if args.only == "latency":
            return
        n = args.events // BATCH * BATCH
        print(
            f"Ingest throughput, {n:,} events in batches of {BATCH}, {args.senders} senders,"
            f" median of {args.repeat} interleaved runs:"
        )
        modes = {
            "none": "no subscribers (baseline):",
            "connected": "1,000 connected (analytics):",
            "events": "1,000 on the event stream:",
        }
        runs: dict[str, list[tuple[float, float, float, int]]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            # Interleaved, so a burst of load from elsewhere hits every mode alike.
            for mode in modes:
                runs[mode].append(throughput(tmp, mode, n, args.senders))
        base = statistics.median(r[0] for r in runs["none"])
        for mode, label in modes.items():
            rate = statistics.median(r[0] for r in runs[mode])
            cpu = statistics.median(r[1] for r in runs[mode])
            subs_cpu = statistics.median(r[2] for r in runs[mode])
            dropped = sum(r[3] for r in runs[mode])
            line = f"  {label:<32}{rate:9,.0f} events/s  server {cpu:5.1f} us/event"
            if mode != "none":
                line += (
                    f"  = {rate / base:5.1%} of baseline; subscribers {subs_cpu:5.1f} us/event,"
                    f" {dropped:,} events dropped for them"
                )
            print(line)


if __name__ == "__main__":
    main()
