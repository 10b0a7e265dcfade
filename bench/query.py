"""Analytical reads: the server's GET /v1/stats and export against DuckDB over Parquet.

    python bench/query.py --db DIR/scale.db [--repeat 5] [--export] [--export-limit N]
    python bench/query.py --pg-url postgresql://.../DB [--repeat 5] [--export]

``--db`` is a server database with events in project ``default`` (made by
``python bench/ingest_scale.py --keep DIR``); ``--pg-url`` a PostgreSQL
database the server has stored events in (made by ``python
bench/ingest_scale.py --pg-url URL --keep-pg``, which prints its URL). Measured
in the same run:

1. ``GET /v1/stats`` for the last 30 days by day (total, unique users, unique
   sessions, counts by type, the daily series) from a real server on that
   database, ``--repeat`` times after one warm-up call; the best and the median.
2. The baseline: the same question hand-written for DuckDB over a zstd Parquet
   copy of the same events (5 columns: event_id, event_type, user_id,
   session_id, corrected), made before the timing from the database itself, in
   this process (the Parquet copy's size per event is printed too). The answers
   of both are compared, so the baseline is known to count the same thing.
3. With ``--export``: ``GET /v1/export`` as NDJSON and as CSV (the body read to
   the end and its lines counted), and ``innkt-analytics export --format
   parquet``, in events/s; the peak RSS of the server process during each
   export above its RSS before it (``VmHWM``, reset through ``clear_refs``).

Targets (issue 14, on 10M events): stats <= 0.5 s warm and <= 1.5x the DuckDB
baseline; export NDJSON >= 150k events/s, Parquet >= 500k events/s, memory flat.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests._server import ServerProcess

from innkt_analytics.server.storage import EventFilter, SQLiteStorage

DAY_MS = 86_400_000


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def parquet_copy(db: str, path: Path) -> int:
    """Copy the project's events (5 columns) into a zstd Parquet file sorted by time (the
    layout that favours the baseline most); the row count. The events are read from
    the storage engine's segments and hot log with ``SQLiteStorage.scan``."""
    storage = SQLiteStorage(db)
    storage.open_sync(start_writer=False)
    unsorted = path.with_suffix(".unsorted.parquet")
    total = 0
    try:
        batches = storage.scan(
            "default", EventFilter(), "event_id, event_type, user_id, session_id, corrected"
        )
        first = next(batches, None)
        if first is None:
            return 0
        with pq.ParquetWriter(unsorted, first.schema, compression="zstd") as writer:
            for batch in (first, *batches):
                writer.write_batch(batch)
                total += batch.num_rows
    finally:
        storage.close_sync()
    duckdb.connect().execute(
        f"COPY (SELECT * FROM read_parquet('{unsorted}') ORDER BY corrected)"
        f" TO '{path}' (FORMAT parquet, COMPRESSION zstd)"
    )
    unsorted.unlink()
    return total


def parquet_copy_pg(url: str, path: Path) -> int:
    """``parquet_copy`` for a PostgreSQL database: the 5 columns; the row count."""
    return pg_parquet(
        url, path, "event_id, event_type, user_id, session_id, corrected", "corrected"
    )


def pg_parquet(url: str, path: Path, select: str, order: str) -> int:
    """DuckDB's ``select`` (SQL over the storage engine's columns) of project
    ``default``'s events in PostgreSQL (its segments and hot rows, one snapshot),
    written sorted by ``order`` as zstd Parquet to ``path``; the row count."""
    import asyncio

    from innkt_analytics.server.storage import EventFilter
    from innkt_analytics.server.storage._pg_engine import PgEngineSettings
    from innkt_analytics.server.storage._postgres import PostgresStorage
    from innkt_analytics.server.storage._segments import HOT_COLUMNS

    async def copy() -> None:
        storage = PostgresStorage(url, engine=PgEngineSettings(interval=None))
        await storage.open()
        try:
            snap = await storage.snapshot("default", EventFilter(), HOT_COLUMNS)
            con = duckdb.connect()
            con.register("hot", snap.hot)
            con.execute(
                f"COPY (SELECT {select} FROM ({snap.source(HOT_COLUMNS)}) ORDER BY {order})"
                f" TO '{path}' (FORMAT parquet, COMPRESSION zstd)"
            )
        finally:
            await storage.close()

    asyncio.run(copy())
    [(n,)] = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()
    return int(n)


def duckdb_stats(con: duckdb.DuckDBPyConnection, path: Path, since: int, until: int) -> Any:
    """The stats question, hand-written for DuckDB."""
    src = f"read_parquet('{path}')"
    where = f"corrected >= {since} AND corrected < {until}"
    totals = con.execute(
        f"SELECT count(*), count(DISTINCT user_id), count(DISTINCT session_id)"
        f" FROM {src} WHERE {where}"
    ).fetchone()
    by_type = con.execute(
        f"SELECT event_type, count(*) FROM {src} WHERE {where} GROUP BY 1 ORDER BY 2 DESC"
    ).fetchall()
    series = con.execute(
        f"SELECT (corrected // {DAY_MS}) * {DAY_MS}, count(*) FROM {src} WHERE {where}"
        f" GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert totals is not None
    return {
        "total": totals[0],
        "uniqueUsers": totals[1],
        "uniqueSessions": totals[2],
        "byEventType": dict(by_type),
        "days": len(series),
    }


#: the time of each ``timed`` function's first call (cold: the server builds its
#: rollups of the segments then, the OS reads the files)
FIRST: list[float] = []


def timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    """The times of ``repeat`` calls after a first one (whose time is ``FIRST[-1]``)."""
    start = time.perf_counter()
    fn()  # warm
    FIRST.append(time.perf_counter() - start)
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak(pid: int) -> None:
    # "5" resets VmHWM to the current RSS (Linux >= 4.0), so each export's peak is its own.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def export_http(server: ServerProcess, fmt: str, key: str) -> tuple[int, float, int]:
    """(lines, seconds, peak RSS growth in kB) of one GET /v1/export."""
    assert server.proc is not None
    pid = server.proc.pid
    reset_peak(pid)
    before = rss_kb(pid, "VmRSS")
    lines = 0
    start = time.perf_counter()
    with (
        httpx.Client(timeout=600) as client,
        client.stream(
            "GET",
            f"{server.url}/v1/export",
            params={"format": fmt},
            headers={"Authorization": f"Bearer {key}"},
        ) as response,
    ):
        response.raise_for_status()
        for chunk in response.iter_bytes(1 << 20):
            lines += chunk.count(b"\n")
    seconds = time.perf_counter() - start
    if fmt == "csv":
        lines -= 1  # the header
    return lines, seconds, max(0, rss_kb(pid, "VmHWM") - before)


def export_parquet_cli(db: str, out: Path) -> tuple[int, float, int]:
    """(rows, seconds, peak RSS in kB of the CLI process) of ``export --format parquet``."""
    start = time.perf_counter()
    proc = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            sys.executable,
            "-m",
            "innkt_analytics",
            "export",
            "--format",
            "parquet",
            "-o",
            str(out),
            "--db",
            db,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    peak = int(proc.stderr.strip().splitlines()[-1])
    return pq.ParquetFile(out).metadata.num_rows, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="a server SQLite database with events")
    where.add_argument("--pg-url", help="a PostgreSQL database with events (the server's)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--export", action="store_true", help="also measure the exports")
    args = parser.parse_args()
    db = args.pg_url or str(Path(args.db).resolve())
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        copy = tmp / "events.parquet"
        start = time.perf_counter()
        n = parquet_copy_pg(db, copy) if args.pg_url else parquet_copy(db, copy)
        print(
            f"{n:,} events; Parquet copy (5 columns, zstd): {copy.stat().st_size / n:.1f} B/event,"
            f" made in {time.perf_counter() - start:.1f} s"
        )
        if not args.pg_url:
            # Open it once here: an older schema is migrated in place (timed), and not
            # inside the server's start-up wait.
            start = time.perf_counter()
            storage = SQLiteStorage(db)
            storage.open_sync()
            storage.close_sync()
            print(f"opened (migrated if older) in {time.perf_counter() - start:.1f} s")
        server = ServerProcess(
            db, log_dir=tmp / "logs", env={"INNKT_RATE_LIMIT_PER_SECOND": "0"}
        ).start()
        try:
            read_key = server.create_key("read")
            now = int(time.time() * 1000)
            since, until = (now // DAY_MS - 29) * DAY_MS, now + 3_600_000
            params = {"since": iso(since), "until": iso(until), "bucket": "day"}
            headers = {"Authorization": f"Bearer {read_key}"}
            with httpx.Client(timeout=600) as client:

                def ask() -> dict[str, Any]:
                    response = client.get(f"{server.url}/v1/stats", params=params, headers=headers)
                    response.raise_for_status()
                    body: dict[str, Any] = response.json()
                    return body

                server_times, answer = timed(ask, args.repeat)
            con = duckdb.connect()
            duck_times, duck = timed(lambda: duckdb_stats(con, copy, since, until), args.repeat)
            for name in ("total", "uniqueUsers", "uniqueSessions", "byEventType"):
                if answer[name] != duck[name]:
                    raise RuntimeError(f"{name}: server {answer[name]!r}, DuckDB {duck[name]!r}")
            best, dbest = min(server_times), min(duck_times)
            print(
                f"GET /v1/stats, 30 days by day ({answer['total']:,} events,"
                f" {len(answer['series'])} days): best {best:.3f} s,"
                f" median {statistics.median(server_times):.3f} s"
                f" (target <= 0.5 s warm); first {FIRST[0]:.3f} s"
            )
            print(
                f"DuckDB over the Parquet copy, same answer: best {dbest:.3f} s,"
                f" median {statistics.median(duck_times):.3f} s; first {FIRST[1]:.3f} s"
            )
            print(f"    server / DuckDB = {best / dbest:.1f}x (best of each; target <= 1.5x)")
            print(f"    load average: {load()}")
            if args.export:
                for fmt in ("ndjson", "csv"):
                    lines, seconds, peak = export_http(server, fmt, read_key)
                    if lines != n:
                        raise RuntimeError(f"{fmt} export: {lines} events, expected {n}")
                    print(
                        f"GET /v1/export?format={fmt}: {lines / seconds:,.0f} events/s"
                        f" ({seconds:.1f} s); server peak RSS +{peak / 1024:.0f} MiB"
                        f" (load {load()})",
                        flush=True,
                    )
                rows, seconds, peak = export_parquet_cli(db, tmp / "export.parquet")
                print(
                    f"innkt-analytics export --format parquet: {rows / seconds:,.0f} events/s"
                    f" ({seconds:.1f} s, process start included); peak RSS {peak / 1024:.0f} MiB"
                    f" (load {load()})"
                )
        finally:
            server.stop()
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
