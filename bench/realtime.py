"""Real-time hub: event latency with 1/100/1,000 subscribers, ingest with subscribers connected.

    python bench/realtime.py [--latency-events 200] [--events 50000] [--senders 8]

Latency: one real server (SQLite, rate limits off); N WebSocket subscribers of
the event stream; one poster sends ``POST /v1/events`` (one event each, keep-alive,
open loop at a fixed pace). Reported: from the moment the ``200`` was read by
the poster to the moment each subscriber received the ``event`` message,
p50/p99 over every (event, subscriber) pair; CLOCK_MONOTONIC is system-wide, so
the processes' clocks agree. A negative figure means the message beat the HTTP
answer to its client. By default the subscribers are websockets' sans-I/O
protocol on a bare uvloop protocol, 1,000 to a process, timed when the bytes
arrive, and the server has CPU 0 to itself while they run on the others: on a
small machine the load generator would otherwise take the server's core and
the figure would measure both. ``--client asyncio``, ``--latency-per-process``
and ``--no-pin`` measure the other arrangements (docs/benchmarks.md has both).

Baseline (the "floor"): the same subscribers, with the same placement, fed by
a bare WebSocket endpoint that writes a same-size event frame to every
connection — no HTTP, hub or storage. Its latency runs from its first write,
the hub's from the poster reading its ``200`` (by then the hub may have begun
the fan-out), so with few subscribers the hub can show less than the floor.
The ratio of the two p99s is what the hub costs over this machine's loopback.

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
from typing import Any, cast

import msgspec
import uvloop
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _load import cpu_seconds, http_request, read_response
from tests._server import ServerProcess

from innkt_analytics.server._ws_protocol import text_frame_header

BATCH = 100


class Load:
    """How the subscribers are run: their client, processes, and CPU placement."""

    def __init__(self, client: str, per_worker: int, pin: bool) -> None:
        self.client = client
        self.per_worker = per_worker
        # Server on CPU 0, subscribers on the others: the load generator does not take
        # the server's core, as on separate machines. Needs two CPUs.
        cpus = os.sched_getaffinity(0)
        self.pin = pin and len(cpus) >= 2
        first = min(cpus)
        self.server_cpus = {first}
        self.subscriber_cpus = cpus - {first}

    def describe(self) -> str:
        where = (
            f"server pinned to CPU {min(self.server_cpus)}, subscribers to the other CPUs"
            if self.pin
            else "no CPU pinning"
        )
        return f"{self.client} subscribers, {self.per_worker} per process, {where}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- subscribers (worker processes) -----------------------------------------------------


class Tally:
    """What one worker's subscribers received: event id -> receive times, and counts."""

    def __init__(self, latency: bool) -> None:
        self.latency = latency
        self.seen: dict[str, list[float]] = {}
        self.counts = {"messages": 0, "dropped": 0}

    def message(self, raw: bytes, now: float) -> None:
        self.counts["messages"] += 1
        # Parse only what is measured: a subscriber process parsing 1,000 copies of
        # every batch would measure this process, not the server.
        if raw.startswith(b'{"type":"dropped"'):
            self.counts["dropped"] += json.loads(raw)["payload"]["dropped"]
        elif self.latency and raw.startswith(b'{"type":"event"'):
            for e in json.loads(raw)["payload"]["events"]:
                self.seen.setdefault(e["eventId"], []).append(now)


def _requests(events: bool, latency: bool) -> list[str]:
    if not events:
        return []
    sent = [json.dumps({"type": "subscribe", "payload": {"streams": ["event"]}})]
    if latency:
        # Event latency alone: no analytics tick competing with the events.
        sent.append(
            json.dumps({"type": "unsubscribe", "payload": {"streams": ["analytics_update"]}})
        )
    return sent


class SansIOSubscriber(asyncio.Protocol):
    """A WebSocket client on websockets' sans-I/O core, with no task per message.

    Each message is timed when its bytes arrive, in ``data_received``; the
    library's asyncio client would add a queue and a task switch per message,
    which on a 2-core machine shared with the server delays the server too.
    """

    def __init__(self, url: str, key: str, sent: list[str], tally: Tally) -> None:
        self.proto = ClientProtocol(parse_uri(url), subprotocols=["innkt.v1"])  # type: ignore[list-item]
        self.key = key
        self.sent = sent
        self.tally = tally
        self.open: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        request = self.proto.connect()
        request.headers["Authorization"] = f"Bearer {self.key}"
        self.proto.send_request(request)
        self._flush()

    def _flush(self) -> None:
        out = self.proto.data_to_send()
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    self.open.set_exception(RuntimeError(f"refused: {event.status_code}"))
                    continue
                for text in self.sent:
                    self.proto.send_text(text.encode())
                self.open.set_result(None)
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.tally.message(bytes(event.data), now)
        self._flush()  # pongs, close frames

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(exc or ConnectionError("closed during the handshake"))


async def _sansio_subscribers(
    url: str, key: str, n: int, sent: list[str], tally: Tally
) -> list[asyncio.Transport]:
    loop = asyncio.get_running_loop()
    uri = parse_uri(url)
    host, port = uri.host, uri.port

    async def one() -> asyncio.Transport:
        transport, sub = await loop.create_connection(
            lambda: SansIOSubscriber(url, key, sent, tally), host, port
        )
        await sub.open
        return transport

    transports: list[asyncio.Transport] = []
    for start in range(0, n, 50):
        transports += await asyncio.gather(*(one() for _ in range(start, min(n, start + 50))))
    return transports


async def _asyncio_subscribers(
    url: str, key: str, n: int, sent: list[str], tally: Tally
) -> list[asyncio.Task[None]]:
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
    for ws in sockets:
        for text in sent:
            await ws.send(text)

    async def reader(ws: Any) -> None:
        while True:
            raw = await ws.recv(decode=False)  # bytes: no UTF-8 decoding of every frame
            tally.message(raw, time.monotonic())

    return [asyncio.create_task(reader(ws)) for ws in sockets]


async def _subscribers(
    url: str, key: str, n: int, events: bool, latency: bool, client: str, pipe: Connection
) -> None:
    tally = Tally(latency)
    sent = _requests(events, latency)
    if client == "sansio":
        held: list[Any] = await _sansio_subscribers(url, key, n, sent, tally)
    else:
        held = await _asyncio_subscribers(url, key, n, sent, tally)
    await asyncio.sleep(0.5)  # subscriptions are processed
    pipe.send("ready")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pipe.recv)  # "stop"
    for item in held:
        item.cancel() if isinstance(item, asyncio.Task) else item.abort()
    pipe.send((tally.seen, tally.counts))


def _worker(
    url: str,
    key: str,
    n: int,
    events: bool,
    latency: bool,
    client: str,
    cpus: set[int] | None,
    pipe: Connection,
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    uvloop.run(_subscribers(url, key, n, events, latency, client, pipe))


class Subscribers:
    """``n`` subscribers spread over worker processes of ``load.per_worker`` each."""

    def __init__(self, url: str, key: str, n: int, events: bool, latency: bool, load: Load) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs = []
        cpus = load.subscriber_cpus if load.pin else None
        for start in range(0, n, load.per_worker):
            mine, theirs = ctx.Pipe()
            count = min(load.per_worker, n - start)
            proc = ctx.Process(
                target=_worker,
                args=(url, key, count, events, latency, load.client, cpus, theirs),
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


def ws_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/v1/realtime"


def pace(subscribers: int) -> float:
    """Seconds between events: the hub finishes one fan-out before the next event.

    One event per second at 1,000 subscribers: 1,000 frames/s, the default send
    budget of the event stream (INNKT_REALTIME_FANOUT_FRAMES_PER_SECOND, burst 2,000).
    """
    return max(0.01, subscribers * 0.001)


def report(label: str, delays: list[float], expected: int, note: str) -> float:
    """Print one latency line; returns the p99."""
    p99 = percentile(delays, 0.99)
    print(
        f"  {label:<26} p50 {percentile(delays, 0.5):6.2f} ms  p99 {p99:6.2f} ms"
        f"  max {max(delays):7.2f} ms  ({len(delays):,} of {expected:,} deliveries{note})"
    )
    return p99


def latency(tmp: Path, subscribers: int, events: int, load: Load) -> float:
    """Hub latency at ``subscribers``; prints it and returns the p99."""
    server = start_server(tmp, f"latency{subscribers}")
    try:
        assert server.proc is not None
        if load.pin:
            os.sched_setaffinity(server.proc.pid, load.server_cpus)
        subs = Subscribers(
            ws_url(server), server.read_key, subscribers, events=True, latency=True, load=load
        )
        interval = pace(subscribers)
        cpu_before = cpu_seconds(server.proc.pid)
        acks = asyncio.run(post_paced(server, events, interval))
        time.sleep(1.0)
        server_cpu = cpu_seconds(server.proc.pid) - cpu_before
        seen, totals = subs.stop()
    finally:
        server.stop()
    delays = [(t - acks[eid]) * 1000 for eid, times in seen.items() for t in times]
    return report(
        f"hub, {subscribers:,} subscribers:",
        delays,
        events * subscribers,
        f", {totals['dropped']} dropped, one event every {interval * 1000:.0f} ms;"
        f" server CPU {server_cpu / max(1, len(delays)) * 1e6:.0f} us per delivery",
    )


# -- the floor: the same subscribers, fed by a bare frame writer ---------------------------


def _floor_server(pipe: Connection, cpus: set[int] | None) -> None:
    """Accept WebSockets; on each request, write one text frame to every connection.

    No ASGI, no hub, no storage: one loopback ``send()`` per subscriber and a
    frame built by concatenation — what fanning out costs on this machine.
    """
    if cpus:
        os.sched_setaffinity(0, cpus)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transports: list[asyncio.Transport] = []

        class Endpoint(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.Transport, transport)
                self.proto = ServerProtocol(subprotocols=["innkt.v1"])  # type: ignore[list-item]

            def data_received(self, data: bytes) -> None:
                self.proto.receive_data(data)
                for event in self.proto.events_received():
                    if isinstance(event, Request):  # the subscriptions that follow are ignored
                        self.proto.send_response(self.proto.accept(event))
                        transports.append(self.transport)
                out = self.proto.data_to_send()
                if out:
                    self.transport.write(b"".join(out))

        server = await loop.create_server(Endpoint, "127.0.0.1", 0, backlog=4096)
        pipe.send(server.sockets[0].getsockname()[1])
        while (body := await loop.run_in_executor(None, pipe.recv)) is not None:
            start = time.monotonic()
            for seq, transport in enumerate(transports, 1):
                data = body + b',"seq":%d}' % seq
                transport.write(text_frame_header(len(data)) + data)
            pipe.send(start)
        server.close()

    uvloop.run(main())


def floor(subscribers: int, events: int, load: Load) -> float:
    """The floor's latency at ``subscribers``: from its first write to each receipt."""
    ctx = mp.get_context("spawn")
    pipe, theirs = ctx.Pipe()
    proc = ctx.Process(target=_floor_server, args=(theirs, load.server_cpus if load.pin else None))
    proc.start()
    starts: dict[str, float] = {}
    try:
        url = f"ws://127.0.0.1:{pipe.recv()}/v1/realtime"
        subs = Subscribers(url, "unused", subscribers, events=True, latency=True, load=load)
        interval = pace(subscribers)
        for i in range(events):
            event = make_event(i, "floor")
            payload = msgspec.json.encode({"events": [event]}).decode()
            head = f'{{"type":"event","id":"{uuid.uuid4()}","timestamp":"{event["timestamp"]}"'
            pipe.send(f'{head},"payload":{payload}'.encode())
            starts[event["eventId"]] = pipe.recv()
            time.sleep(interval)
        seen, _ = subs.stop()
    finally:
        pipe.send(None)
        proc.join(10)
    delays = [(t - starts[eid]) * 1000 for eid, times in seen.items() for t in times]
    return report(f"floor, {subscribers:,} subscribers:", delays, events * subscribers, "")


def throughput(
    tmp: Path, mode: str, n: int, senders: int, load: Load
) -> tuple[float, float, float, int]:
    """(events/s, server CPU us per event, subscribers' CPU us per event, events dropped)."""
    server = start_server(tmp, f"ingest-{mode}-{uuid.uuid4().hex[:8]}")
    subs = None
    try:
        if mode != "none":
            subs = Subscribers(
                ws_url(server), server.read_key, 1000, mode == "events", latency=False, load=load
            )
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
    parser.add_argument(
        "--latency-per-process",
        type=int,
        default=1000,
        help="subscribers per receiving process in the latency runs",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="latency runs: let the OS place every process"
    )
    parser.add_argument(
        "--client",
        choices=["sansio", "asyncio"],
        default="sansio",
        help="subscribers: websockets' sans-I/O core on a bare protocol, or its asyncio client",
    )
    args = parser.parse_args()
    latency_load = Load(args.client, args.latency_per_process, pin=not args.no_pin)
    # Throughput runs measure the machine shared: nothing pinned, subscribers spread.
    throughput_load = Load(args.client, 250, pin=False)
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.only != "throughput":
            print("Latency, POST /v1/events answered -> event message received")
            print(f"  ({latency_load.describe()}):")
            for subscribers in (int(n) for n in args.subscribers.split(",")):
                count = args.latency_events if subscribers < 1000 else args.latency_events // 4
                hub = latency(tmp, subscribers, count, latency_load)
                bare = floor(subscribers, count, latency_load)
                print(f"  {'':<26} hub p99 = {hub / bare:.2f} x the floor's")
        if args.only == "latency":
            return
        n = args.events // BATCH * BATCH
        print(
            f"Ingest throughput, {n:,} events in batches of {BATCH}, {args.senders} senders,"
            f" median of {args.repeat} interleaved runs"
        )
        print(f"  ({throughput_load.describe()}):")
        modes = {
            "none": "no subscribers (baseline):",
            "connected": "1,000 connected (analytics):",
            "events": "1,000 on the event stream:",
        }
        runs: dict[str, list[tuple[float, float, float, int]]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            # Interleaved, so a burst of load from elsewhere hits every mode alike.
            for mode in modes:
                runs[mode].append(throughput(tmp, mode, n, args.senders, throughput_load))
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
