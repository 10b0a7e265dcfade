"""Benchmark of the SDK's persistence service.

    python bench/persistence.py [--rows 200000] [--backup-rows 1000000] [--rounds 3]

Prints, measured in the same run:

1. ``store_batch`` rows/s against raw ``sqlite3`` ``executemany`` of the same rows
   into the same schema with the same pragmas (WAL, synchronous=NORMAL), one
   transaction per batch of 1,000; the baseline encodes the data to JSON as any
   hand-written store must, but neither compresses, accounts for size nor evicts.
   Target: ratio >= 70 %. Rounds alternate and the best of each side is kept; the
   ratio is shown for wall time and for this process's CPU time, which other
   processes on a shared machine cannot skew.
2. ``perform_backup`` + ``verify_backup`` (SHA-256 and integrity_check) of a store
   with ``--backup-rows`` records. Target: < 10 s for 1,000,000.
3. The longest ``store_data`` call of 10 writer threads while a backup of a store
   with ``--stall-rows`` records runs (target: no stall over 1 s).
4. ``export_data`` rows/s for ndjson, json and csv.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from innkt_analytics.sdk._atrest import SCHEMA
from innkt_analytics.sdk._persistence import (
    AnalyticsDataPersistenceService,
    PersistenceConfig,
    StoredRecord,
)

BATCH = 1000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
US = dt.timedelta(microseconds=1)


def make_records(n: int, seed: int = 1) -> list[StoredRecord]:
    """Events shaped like the SDK's: a few properties, device info and context."""
    rnd = random.Random(seed)
    screens = [f"Screen{i}" for i in range(40)]
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    out = []
    for i in range(n):
        etype = rnd.choice(["screen_view", "tap", "purchase", "login", "search"])
        out.append(
            StoredRecord(
                id=str(uuid.UUID(int=rnd.getrandbits(128))),
                type="event",
                data={
                    "eventType": etype,
                    "properties": {
                        "screen": rnd.choice(screens),
                        "durationMs": rnd.randint(1, 100_000),
                        "itemId": str(uuid.UUID(int=rnd.getrandbits(128))),
                        "price": round(rnd.random() * 100, 2),
                    },
                    "deviceInfo": {
                        "os": rnd.choice(["android", "ios"]),
                        "osVersion": str(rnd.randint(10, 17)),
                        "model": rnd.choice(["Pixel 8", "iPhone 15", "SM-G991B"]),
                        "appVersion": "5.2.0",
                        "locale": rnd.choice(["en-US", "de-DE", "fr-FR"]),
                    },
                    "context": {"tz": "Europe/Berlin", "network": rnd.choice(["wifi", "cell"])},
                },
                timestamp=start + dt.timedelta(milliseconds=i * 37),
                session_id=f"session-{i // 200}",
            )
        )
    return out


def batches(records: list[StoredRecord]) -> list[list[StoredRecord]]:
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


def run_raw(path: Path, chunks: list[list[StoredRecord]]) -> tuple[float, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    # The same file layout and pragmas as the service, so the ratio is the SDK's own cost.
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA cache_size = -16384")
    conn.executescript(SCHEMA)
    encode = msgspec.json.Encoder().encode
    sql = "INSERT INTO records (id, type, ts, session_id, size, data) VALUES (?,?,?,?,?,?)"
    t0, c0 = time.perf_counter(), time.process_time()
    for chunk in chunks:
        rows = []
        for r in chunk:
            data = encode(r.data)
            rows.append((r.id, r.type, (r.timestamp - EPOCH) // US, r.session_id, len(data), data))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    conn.close()
    return elapsed


def service(root: Path, **overrides: object) -> AnalyticsDataPersistenceService:
    options: dict[str, object] = {
        "db_path": root / "store.sqlite3",
        "backup_dir": root / "backups",
        "backup_interval": None,
        "cleanup_interval": None,
        "max_storage_size": 4 * 1024**3,
    }
    options.update(overrides)
    return AnalyticsDataPersistenceService(PersistenceConfig(**options))  # type: ignore[arg-type]


def run_ours(
    root: Path, chunks: list[list[StoredRecord]], **overrides: object
) -> tuple[float, float]:
    svc = service(root, **overrides)
    t0, c0 = time.perf_counter(), time.process_time()
    for chunk in chunks:
        svc.store_batch(chunk)
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    svc.close()
    return elapsed


def fresh(base: Path, name: str) -> Path:
    d = base / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def bench_store(base: Path, rows: int, rounds: int) -> None:
    chunks = batches(make_records(rows))
    key = os.urandom(32)
    runs: dict[str, Callable[[], tuple[float, float]]] = {
        "raw sqlite3 executemany": lambda: run_raw(fresh(base, "raw") / "raw.sqlite3", chunks),
        "ours, zstd (default)": lambda: run_ours(fresh(base, "ours"), chunks),
        "ours, no compression": lambda: run_ours(
            fresh(base, "plain"), chunks, enable_compression=False
        ),
        "ours, zstd + AES-256-GCM": lambda: run_ours(
            fresh(base, "enc"), chunks, enable_encryption=True, encryption_key=key
        ),
    }
    best = {name: (math.inf, math.inf) for name in runs}
    for _ in range(rounds):  # interleaved, so a noisy moment hurts every side alike
        for name, run in runs.items():
            wall, cpu = run()
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    raw_wall, raw_cpu = best["raw sqlite3 executemany"]
    print(f"store_batch, {rows:,} rows in batches of {BATCH} (best of {rounds} rounds)")
    print(f"  {'':<26} {'rows/s (wall)':>14} {'vs raw':>7}   {'rows/s (CPU)':>13} {'vs raw':>7}")
    for name, (wall, cpu) in best.items():
        print(
            f"  {name:<26} {rows / wall:14,.0f} {raw_wall / wall:7.1%}   "
            f"{rows / cpu:13,.0f} {raw_cpu / cpu:7.1%}"
        )
    sizes = {
        name: sum(p.stat().st_size for p in (base / name).glob("*.sqlite3*"))
        for name in ("raw", "ours", "enc")
    }
    print("  file size: raw {raw:,} B, zstd {ours:,} B, zstd+AES {enc:,} B".format(**sizes))


def bench_backup(base: Path, rows: int) -> None:
    root = fresh(base, "big")
    svc = service(root)
    t0 = time.perf_counter()
    chunk = []
    for record in make_records(rows, seed=2):
        chunk.append(record)
        if len(chunk) == 10_000:
            svc.store_batch(chunk)
            chunk = []
    if chunk:
        svc.store_batch(chunk)
    fill = time.perf_counter() - t0
    size = (root / "store.sqlite3").stat().st_size
    print(f"\nbackup of {rows:,} records ({size / 1e6:,.0f} MB file, filled in {fill:.1f} s)")
    t0, c0 = time.perf_counter(), time.process_time()
    manifest = svc.perform_backup()
    t_backup, c_backup = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    svc.verify_backup(manifest.backup_id)
    t_verify, c_verify = time.perf_counter() - t0, time.process_time() - c0
    total = t_backup + t_verify
    print(
        f"  perform_backup {t_backup:.2f} s + verify_backup {t_verify:.2f} s = {total:.2f} s wall"
    )
    print(
        f"  (CPU of this process: {c_backup:.2f} s + {c_verify:.2f} s; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    print(f"  target < 10 s wall: {'met' if total < 10 else 'NOT met'}")

    for fmt in ("ndjson", "json", "csv"):
        out = root / f"export.{fmt}"
        t0 = time.perf_counter()
        n = svc.export_data(fmt, path=out)
        elapsed = time.perf_counter() - t0
        print(
            f"  export {fmt:<6} {n / elapsed:12,.0f} rows/s  ({out.stat().st_size / 1e6:,.0f} MB)"
        )
        out.unlink()
    svc.close()


def bench_stall(base: Path, preload: int) -> None:
    root = fresh(base, "stall")
    svc = service(root)
    for chunk in batches(make_records(preload, seed=3)):
        svc.store_batch(chunk)
    stop = threading.Event()
    spans: list[list[tuple[float, float]]] = [[] for _ in range(10)]
    # Made up front: generating records in the threads would compete for the GIL.
    work = [make_records(20_000, seed=100 + n) for n in range(10)]

    def writer(n: int) -> None:
        for record in work[n]:
            if stop.is_set():
                return
            t0 = time.perf_counter()
            svc.store_data(record)
            spans[n].append((t0, time.perf_counter()))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    b0 = time.perf_counter()
    manifest = svc.perform_backup()
    b1 = time.perf_counter()
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    svc.close()
    every = [span for per_thread in spans for span in per_thread]
    during = [end - start for start, end in every if start < b1 and end > b0]
    print(
        f"\nbackup of {manifest.record_count:,} records ({b1 - b0:.2f} s) while 10 threads "
        f"call store_data: {len(during):,} writes overlapped it, longest "
        f"{max(during, default=0) * 1000:.1f} ms; longest of all {len(every):,} writes "
        f"{max(end - start for start, end in every) * 1000:.1f} ms (target < 1000 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--backup-rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stall-rows", type=int, default=300_000)
    parser.add_argument(
        "--parts", default="store,stall,backup", help="comma-separated subset to run"
    )
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} cpus, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="innkt-bench-") as tmp:
        base = Path(tmp)
        parts = set(args.parts.split(","))
        if "store" in parts:
            bench_store(base, args.rows, args.rounds)
        if "stall" in parts:
            bench_stall(base, args.stall_rows)
        if "backup" in parts:
            bench_backup(base, args.backup_rows)


if __name__ == "__main__":
    main()
