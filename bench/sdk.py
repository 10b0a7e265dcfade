"""SDK benchmark: innkt-analytics vs segment-analytics-python vs posthog, one run.

    python bench/sdk.py [--events 100000] [--repeat 3]

Each client runs in its own subprocess (fair peak RSS), tracks ``--events``
events in a tight loop, then flushes and waits until everything is delivered:

* innkt (durable SQLite queue, and memory queue) -> our real server, started
  here in a subprocess on a fresh database (so delivery includes the server's
  durable commit);
* segment and posthog -> a local sink (its own subprocess) that accepts any
  POST, gunzips, and counts the events in ``batch`` — the peers use their own
  endpoint paths, so they cannot talk to our server.

Printed per client (median of ``--repeat`` runs): µs per ``track()`` call in
the caller's thread, seconds until all events were delivered, events dropped,
peak RSS. Then the ratios against the fastest peer measured in the same run.
Targets: per-call <= 0.5x the fastest peer; delivery >= 2x faster; 0 dropped;
durable per-call <= 1.5x memory per-call.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIENTS = ("innkt-durable", "innkt-memory", "segment", "posthog")


# -- the sink for the peers ---------------------------------------------------------------


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle plus the
    # client's delayed ACK would add ~40 ms to every request and slow the peers unfairly.
    disable_nagle_algorithm = True
    count = 0
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/reset"):
            with _Sink.lock:
                _Sink.count = 0
        self._answer(json.dumps({"count": _Sink.count}).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding", "") == "gzip":
            body = gzip.decompress(body)
        data = json.loads(body)
        n = len(data.get("batch", [])) if isinstance(data, dict) else 0
        with _Sink.lock:
            _Sink.count += n
        self._answer(b'{"status":1}')


def run_sink() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    print(server.server_address[1], flush=True)
    server.serve_forever()


# -- one measured client, in its own process ------------------------------------------------


def measure(client: str, url: str, key: str, n: int, session: str) -> dict[str, Any]:
    props = {"plan": "pro", "path": "/checkout", "value": 42}
    if client.startswith("innkt"):
        from innkt_analytics.sdk._backend import AnalyticsBackendService
        from innkt_analytics.sdk._config import BackendConfig, QueueMode

        mode = QueueMode.DURABLE if client == "innkt-durable" else QueueMode.MEMORY
        queue_dir = tempfile.mkdtemp(prefix="innkt-bench-")
        service = AnalyticsBackendService(
            BackendConfig(
                base_url=url,
                api_key=key,
                queue_mode=mode,
                queue_path=Path(queue_dir) / "q.sqlite3",
                batch_size=1000,
                config_refresh_interval=0,
            )
        )
        track = service.track
        start = time.perf_counter()
        for _ in range(n):
            track("page_view", props, session_id=session, user_id="user-1")
        tracked = time.perf_counter()
        ok = service.flush(600)
        delivered = time.perf_counter()
        status = service.get_status()
        service.shutdown(10)
        dropped = sum(status.dropped.values()) + (0 if ok else status.queue_events)
    elif client == "segment":
        from segment.analytics.client import Client

        seg = Client("bench-key", host=url, max_queue_size=n + 1)
        start = time.perf_counter()
        for _ in range(n):
            seg.track("user-1", "page_view", props)
        tracked = time.perf_counter()
        seg.flush()
        delivered = time.perf_counter()
        seg.shutdown()
        dropped = -1  # counted at the sink by the parent
    else:
        from posthog import Posthog

        ph = Posthog("bench-key", host=url, max_queue_size=n + 1, disable_geoip=True)
        start = time.perf_counter()
        for _ in range(n):
            ph.capture("page_view", distinct_id="user-1", properties=props)
        tracked = time.perf_counter()
        ph.flush()
        delivered = time.perf_counter()
        ph.shutdown()
        dropped = -1
    return {
        "per_call_us": (tracked - start) / n * 1e6,
        "deliver_s": delivered - start,
        "dropped": dropped,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# -- the orchestrating parent -------------------------------------------------------------


def _run_child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _server_count(db: str, session: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(
            conn.execute("SELECT count(*) FROM events WHERE session_id = ?", (session,)).fetchone()[
                0
            ]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--child", nargs=5, metavar=("CLIENT", "URL", "KEY", "N", "SESSION"))
    parser.add_argument("--sink", action="store_true")
    args = parser.parse_args()
    if args.sink:
        run_sink()
        return
    if args.child:
        client, url, key, n, session = args.child
        print(json.dumps(measure(client, url, key, int(n), session)))
        return

    import httpx
    from tests._server import ServerProcess

    n = args.events
    work = Path(tempfile.mkdtemp(prefix="innkt-bench-"))
    server = ServerProcess(
        work / "server.db", log_dir=work / "logs", env={"INNKT_RATE_LIMIT_PER_SECOND": "0"}
    ).start()
    sink = subprocess.Popen([sys.executable, __file__, "--sink"], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    sink_url = f"http://127.0.0.1:{sink.stdout.readline().strip()}"
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for round_ in range(args.repeat):
            for client in args.clients.split(","):
                session = f"{client}-{round_}-{os.getpid()}"
                if client.startswith("innkt"):
                    r = _run_child([
                        "--child", client, server.url, server.write_key, str(n), session
                    ])  # fmt: skip
                    r["dropped"] = n - _server_count(server.db_path, session)
                else:
                    httpx.get(sink_url + "/reset")
                    r = _run_child(["--child", client, sink_url, "-", str(n), session])
                    r["dropped"] = n - int(httpx.get(sink_url + "/count").json()["count"])
                results.setdefault(client, []).append(r)
                print(
                    f"  round {round_ + 1} {client:14} {r['per_call_us']:8.2f} µs/call "
                    f"{r['deliver_s']:7.2f} s  dropped {r['dropped']}",
                    file=sys.stderr,
                )
    finally:
        sink.kill()
        sink.wait()
        sink.stdout.close()
        server.kill()
    report(results, n)


def report(results: dict[str, list[dict[str, Any]]], n: int) -> None:
    med = {
        client: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for client, runs in results.items()
    }
    print(f"\n{n:,} events per client, median of {len(next(iter(results.values())))} runs")
    print("innkt: batch_size 1000, gzip level 1, real server with durable SQLite commits;")
    print("segment/posthog: their defaults (100 per request), to a counting sink")
    print(f"{'client':15} {'µs/track()':>11} {'deliver s':>10} {'events/s':>10} "
          f"{'dropped':>8} {'peak RSS MB':>12}")  # fmt: skip
    for client, m in med.items():
        print(
            f"{client:15} {m['per_call_us']:11.2f} {m['deliver_s']:10.2f} "
            f"{n / m['deliver_s']:10.0f} {int(max(r['dropped'] for r in results[client])):8d} "
            f"{m['peak_rss_mb']:12.1f}"
        )
    peers = [c for c in med if not c.startswith("innkt")]
    if not peers:
        return
    fastest_call = min(peers, key=lambda c: med[c]["per_call_us"])
    fastest_delivery = min(peers, key=lambda c: med[c]["deliver_s"])
    print()
    for ours in (c for c in med if c.startswith("innkt")):
        call = med[ours]["per_call_us"] / med[fastest_call]["per_call_us"]
        speed = med[fastest_delivery]["deliver_s"] / med[ours]["deliver_s"]
        print(
            f"{ours}: per-call {call:.2f}x of {fastest_call} (target <= 0.5), "
            f"delivery {speed:.2f}x faster than {fastest_delivery} (target >= 2)"
        )
    if "innkt-durable" in med and "innkt-memory" in med:
        ratio = med["innkt-durable"]["per_call_us"] / med["innkt-memory"]["per_call_us"]
        print(f"durable/memory per-call: {ratio:.2f}x (target <= 1.5)")


if __name__ == "__main__":
    main()
