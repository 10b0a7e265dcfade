"""Our raw-frame fan-out against websockets' public ``broadcast()``, on the same connections.

    python bench/ws_broadcast.py [--subscribers 100,1000] [--events 100] [--no-pin]

Why standalone: the hub sends through uvicorn's WebSocket protocol
(``server/_ws_protocol.py``), whose connections are not websockets' asyncio
``Connection`` objects, so ``websockets.broadcast()`` cannot be handed them
without faking one; and it sends one message to all, while the hub splices a
per-connection ``seq`` into each copy. So the paths are measured here, in one
bare server process on websockets' own asyncio server (uvloop, no compression):

* ``ours``: what ``FastSendProtocol.send_text_now`` does on an open,
  uncompressed connection — check the state, prepend ``text_frame_header`` to
  the encoded text and ``transport.write`` it;
* ``broadcast``: ``websockets.asyncio.server.broadcast(connections, text)``;
* ``ours+seq``: ``ours`` with the hub's per-connection ``"seq":N`` spliced into
  each copy (``Prepared``), which ``broadcast`` cannot do: the hub's real cost.

Events rotate through the paths on the same N subscribers (bench/realtime.py's
sans-I/O subscribers, in their own processes, pinned away from the server's CPU),
so all see the same connections and the same machine load. Reported per path:
latency from the start of the fan-out to each receipt (p50/p99, CLOCK_MONOTONIC is
system-wide), and the server's time inside the fan-out call per delivery; then the
ratios broadcast / ours and broadcast / ours+seq.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from realtime import Load, Subscribers, make_event, pace, percentile
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.protocol import State

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from innkt_analytics.server._ws_protocol import text_frame_header

MODES = ("ours", "broadcast", "ours+seq")


def fan_out_ours(connections: list[ServerConnection], text: str) -> None:
    data = (text + "}").encode()
    frame = text_frame_header(len(data)) + data
    for conn in connections:
        if conn.protocol.state is State.OPEN and not conn.transport.is_closing():
            conn.transport.write(frame)


def fan_out_ours_seq(connections: list[ServerConnection], text: str) -> None:
    for seq, conn in enumerate(connections, 1):
        if conn.protocol.state is State.OPEN and not conn.transport.is_closing():
            data = f'{text},"seq":{seq}}}'.encode()
            conn.transport.write(text_frame_header(len(data)) + data)


def fan_out_broadcast(connections: list[ServerConnection], text: str) -> None:
    broadcast(connections, text + "}")


FAN_OUT = {"ours": fan_out_ours, "broadcast": fan_out_broadcast, "ours+seq": fan_out_ours_seq}


def _server(pipe: Connection, cpus: set[int] | None) -> None:
    """Accept WebSockets; on each (mode, text) from the pipe, fan ``text`` out to all."""
    if cpus:
        os.sched_setaffinity(0, cpus)

    async def main() -> None:
        connections: list[ServerConnection] = []

        async def handler(conn: ServerConnection) -> None:
            connections.append(conn)
            await conn.wait_closed()

        async with serve(
            handler,
            "127.0.0.1",
            0,
            subprotocols=["innkt.v1"],  # type: ignore[list-item]
            compression=None,
            ping_interval=None,
            max_size=None,
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            pipe.send(port)
            loop = asyncio.get_running_loop()
            while (job := await loop.run_in_executor(None, pipe.recv)) is not None:
                mode, text = job
                fan = FAN_OUT[mode]
                start = time.monotonic()
                began = time.perf_counter()
                fan(connections, text)
                pipe.send((start, time.perf_counter() - began))

    uvloop.run(main())


def _message(i: int) -> tuple[str, str]:
    """(event id, an ``event`` envelope as the hub sends it, open: the fan-out closes it)."""
    event = make_event(i, "broadcast")
    payload = msgspec.json.encode({"events": [event]}).decode()
    head = f'{{"type":"event","id":"{uuid.uuid4()}","timestamp":"{event["timestamp"]}"'
    return event["eventId"], f'{head},"payload":{payload}'


def compare(subscribers: int, events: int, load: Load) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    pipe, theirs = ctx.Pipe()
    proc = ctx.Process(target=_server, args=(theirs, load.server_cpus if load.pin else None))
    proc.start()
    starts: dict[str, tuple[str, float]] = {}
    call: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        url = f"ws://127.0.0.1:{pipe.recv()}/v1/realtime"
        subs = Subscribers(url, "unused", subscribers, events=True, latency=True, load=load)
        interval = pace(subscribers)
        for i in range(events * len(MODES)):
            mode = MODES[i % len(MODES)]  # rotated: every path meets the same load
            event_id, text = _message(i)
            pipe.send((mode, text))
            start, seconds = pipe.recv()
            starts[event_id] = (mode, start)
            call[mode].append(seconds)
            time.sleep(interval)
        seen, _ = subs.stop()
    finally:
        pipe.send(None)
        proc.join(10)
    delays: dict[str, list[float]] = {m: [] for m in MODES}
    for event_id, times in seen.items():
        mode, start = starts[event_id]
        delays[mode] += [(t - start) * 1000 for t in times]
    out: dict[str, Any] = {}
    for mode in MODES:
        got = delays[mode]
        out[mode] = {
            "deliveries": len(got),
            "p50": percentile(got, 0.5),
            "p99": percentile(got, 0.99),
            "us_per_delivery": statistics.median(call[mode]) / subscribers * 1e6,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", default="100,1000", help="comma-separated")
    parser.add_argument("--events", type=int, default=100, help="events per path and size")
    parser.add_argument("--no-pin", action="store_true", help="let the OS place every process")
    args = parser.parse_args()
    load = Load("sansio", 1000, pin=not args.no_pin)
    print(
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, websockets "
        f"{version('websockets')}; {load.describe()}"
    )
    for subscribers in (int(n) for n in args.subscribers.split(",")):
        result = compare(subscribers, args.events, load)
        print(f"{subscribers:,} subscribers, {args.events} events per path, interleaved:")
        for mode in MODES:
            r = result[mode]
            print(
                f"  {mode:<10} p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms"
                f"  fan-out call {r['us_per_delivery']:5.2f} us/delivery"
                f"  ({r['deliveries']:,} of {args.events * subscribers:,} deliveries)"
            )
        theirs = result["broadcast"]
        for mode in ("ours", "ours+seq"):
            ours = result[mode]
            print(
                f"  broadcast / {mode}: p50 {theirs['p50'] / ours['p50']:.2f}x,"
                f" p99 {theirs['p99'] / ours['p99']:.2f}x,"
                f" call {theirs['us_per_delivery'] / ours['us_per_delivery']:.2f}x"
            )


if __name__ == "__main__":
    main()
