"""What linking ids into persons costs ingest (issue #19): the same traffic into a
server with the identity graph on and off (``INNKT_IDENTITY``), on SQLite.

    python bench/identity_ingest.py [--events 200000] [--batch 500] [--rounds 2]
                                    [--processes 2] [--connections 4] [--identify 0.05]

Traffic: 20,000 people, each with an anonymous id; 5 % of events (``--identify``) are
``identify`` calls (anonymousId + userId + traits), the rest are split evenly between
anonymous events (anonymousId only) and signed-in events (userId, and the anonymous id
as the SDK sends it). Each round runs both servers on fresh databases, off first then
on, and prints events/s and the ratio; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
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

from _load import TYPES, http_request
from ingest import blast
from tests._server import ServerProcess

PEOPLE = 20_000


def make_bodies(n: int, batch: int, identify: float, rng: random.Random) -> list[bytes]:
    now = time.time()
    events: list[dict[str, Any]] = []
    for i in range(n):
        person = rng.randrange(PEOPLE)
        event: dict[str, Any] = {
            "eventId": str(uuid.uuid4()),
            "eventType": TYPES[rng.randrange(len(TYPES))],
            "timestamp": dt.datetime.fromtimestamp(now - i * 1e-4, dt.UTC).isoformat(),
            "sessionId": f"s{person}",
            "anonymousId": f"anon-{person}",
            "properties": {"path": f"/p/{i % 321}"},
        }
        r = rng.random()
        if r < identify:
            event.update(eventType="identify", userId=f"u{person}", properties={"plan": "pro"})
        elif r < identify + (1 - identify) / 2:
            event["userId"] = f"u{person}"
        events.append(event)
    sent = dt.datetime.now(dt.UTC).isoformat()
    return [
        msgspec.json.encode({"events": events[i : i + batch], "sentAt": sent})
        for i in range(0, n, batch)
    ]


def rate(identity: bool, bodies: list[bytes], args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(
            str(Path(tmp) / "bench.db"),
            log_dir=Path(tmp) / "logs",
            env={"INNKT_RATE_LIMIT_PER_SECOND": "0", "INNKT_IDENTITY": str(identity).lower()},
        ).start()
        try:
            requests = [http_request(b, server.port, server.write_key) for b in bodies]
            _, accepted, wall, _ = blast(server.port, requests, args.processes, args.connections)
            if accepted != args.events:
                raise RuntimeError(f"{accepted} of {args.events} events accepted")
        finally:
            server.stop()
    return args.events / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--identify", type=float, default=0.05)
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{args.events:,} events per run, batches of {args.batch}, identify on"
        f" {args.identify:.0%}; {os.cpu_count()} CPUs; load before {load}"
    )
    bodies = make_bodies(args.events, args.batch, args.identify, random.Random(1))
    for n in range(args.rounds):
        off = rate(False, bodies, args)
        on = rate(True, bodies, args)
        print(f"  round {n + 1}: off {off:9,.0f} events/s, on {on:9,.0f} ({on / off:.1%})")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load after {load}")


if __name__ == "__main__":
    main()
