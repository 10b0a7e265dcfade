"""Insights at scale: the server's POST /v1/insights/* against hand-written DuckDB.

    python bench/insights.py --db DIR/scale.db [--repeat 3]
    python bench/insights.py --pg-url postgresql://.../DB [--repeat 3]

``--db`` is a server database with events in project ``default`` (made by
``python bench/ingest_scale.py --keep DIR``: 20,000 users, five event types,
``properties.path`` with 321 values, events over 30 days); ``--pg-url`` a
PostgreSQL database the server has stored such events in (``python
bench/ingest_scale.py --pg-url URL --keep-pg``, which prints its URL). A query the
server refuses (422: on PostgreSQL a range of more than 1,000,000 events) is
printed as such, with the DuckDB time. Measured in the same
run, each the best of ``--repeat`` after one warm-up (the answer cache is off):

1. trends over 30 days by day with a breakdown by ``path`` (top 10 + other);
2. a 3-step funnel (page_view -> signup -> purchase) over 30 days, 7-day window;
3. retention over 8 weeks (cohorts by first page_view, returning with any event).

The baseline: each question hand-written for DuckDB over a zstd Parquet copy of
the same events (event_type, actor, time, path), in this process. The funnel
baseline counts, per user, the first page_view followed by a signup and then a
purchase within 7 days of that page_view; the server's funnel takes each user's
best attempt, which is at least as much work. The retention baseline counts, per
weekly cohort of first page_view, the users with any event N weeks later.

Targets (issue 15, on 10M events): trends with breakdown <= 1 s, funnel <= 2 s,
retention <= 2 s, each <= 2x the hand-written DuckDB query.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from query import DAY_MS, load, pg_parquet, timed  # bench/query.py
from tests._server import ServerProcess

from innkt_analytics.server.storage import SQLiteStorage

WEEK_MS = 7 * DAY_MS


def parquet_copy(db: str, path: Path) -> int:
    """The project's events as (event_type, actor, ts, path), sorted by time."""
    storage = SQLiteStorage(db)
    storage.open_sync(start_writer=False)
    try:
        paths, hot = storage.insight_source("default", None, None)
    finally:
        storage.close_sync()
    con = duckdb.connect()
    con.register("hot", hot)
    cols = (
        "event_type, coalesce(user_id, anonymous_id) AS actor, corrected AS ts,"
        " json_extract_string(payload, '$.properties.path') AS path"
    )
    files = ", ".join(f"'{p}'" for p in paths)
    union = f"SELECT {cols} FROM hot" + (
        f" UNION ALL SELECT {cols} FROM read_parquet([{files}])" if paths else ""
    )
    con.execute(f"COPY ({union} ORDER BY ts) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")
    [(n,)] = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()
    return int(n)


class Refused(Exception):
    """The server answered 422 (``query_too_large``: PostgreSQL past ``MAX_EVENTS``)."""


def parquet_copy_pg(url: str, path: Path) -> int:
    """``parquet_copy`` for a PostgreSQL database: the same four columns, sorted by
    time; the row count."""
    return pg_parquet(
        url,
        path,
        "event_type, coalesce(user_id, anonymous_id) AS actor, corrected AS ts,"
        " json_extract_string(payload, '$.properties.path') AS path",
        "ts",
    )


def duck_trends(con: duckdb.DuckDBPyConnection, src: str, start: int, end: int) -> Any:
    return con.execute(
        f"WITH ev AS (SELECT ts, path FROM {src} WHERE event_type = 'page_view'"
        f" AND ts >= {start} AND ts < {end}),"
        " top AS (SELECT path FROM ev GROUP BY 1 ORDER BY count(*) DESC, path LIMIT 10)"
        f" SELECT ts // {DAY_MS} AS day, CASE WHEN path IN (SELECT path FROM top)"
        " THEN path ELSE '$other' END AS value, count(*) FROM ev GROUP BY 1, 2"
    ).fetchall()


def duck_funnel(con: duckdb.DuckDBPyConnection, src: str, start: int, end: int) -> Any:
    window = 7 * DAY_MS
    return con.execute(
        f"WITH ev AS (SELECT actor, event_type, ts FROM {src} WHERE ts >= {start}"
        f" AND ts < {end} AND event_type IN ('page_view', 'signup', 'purchase')),"
        " s1 AS (SELECT actor, min(ts) AS t1 FROM ev WHERE event_type = 'page_view'"
        " GROUP BY 1),"
        " s2 AS (SELECT s1.actor, s1.t1, min(ev.ts) AS t2 FROM s1 JOIN ev USING (actor)"
        f" WHERE ev.event_type = 'signup' AND ev.ts >= s1.t1 AND ev.ts <= s1.t1 + {window}"
        " GROUP BY 1, 2),"
        " s3 AS (SELECT s2.actor FROM s2 JOIN ev USING (actor)"
        f" WHERE ev.event_type = 'purchase' AND ev.ts >= s2.t2 AND ev.ts <= s2.t1 + {window}"
        " GROUP BY 1)"
        " SELECT (SELECT count(*) FROM s1), (SELECT count(*) FROM s2), (SELECT count(*) FROM s3)"
    ).fetchall()


def duck_retention(con: duckdb.DuckDBPyConnection, src: str, start: int, end: int) -> Any:
    return con.execute(
        f"WITH ev AS (SELECT actor, event_type, ts FROM {src} WHERE ts >= {start}"
        f" AND ts < {end}),"
        " cohort AS (SELECT actor, min(ts) // "
        f"{WEEK_MS} AS week FROM ev WHERE event_type = 'page_view' GROUP BY 1),"
        f" back AS (SELECT DISTINCT actor, ts // {WEEK_MS} AS week FROM ev)"
        " SELECT c.week, b.week - c.week AS k, count(*) FROM cohort c JOIN back b"
        " USING (actor) WHERE b.week >= c.week GROUP BY 1, 2"
    ).fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="a server SQLite database with events")
    where.add_argument("--pg-url", help="a PostgreSQL database with events (the server's)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    db = args.pg_url or str(Path(args.db).resolve())
    print(f"load average before: {load()}")
    now = int(time.time() * 1000)
    today = dt.datetime.fromtimestamp(now / 1000, dt.UTC).date()
    first = today - dt.timedelta(days=29)
    weeks8 = today - dt.timedelta(weeks=8)
    start30 = (now // DAY_MS - 29) * DAY_MS
    end = (now // DAY_MS + 1) * DAY_MS
    queries: list[tuple[str, str, dict[str, Any], Any, str]] = [
        (
            "trends 30 days by day, breakdown by path",
            "trends",
            {
                "dateFrom": first.isoformat(),
                "dateTo": (today + dt.timedelta(days=1)).isoformat(),
                "interval": "day",
                "series": [{"event": "page_view"}],
                "breakdown": {"property": "path", "limit": 10},
            },
            lambda con, src: duck_trends(con, src, start30, end),
            "<= 1 s",
        ),
        (
            "funnel page_view > signup > purchase, 30 days, 7-day window",
            "funnels",
            {
                "dateFrom": first.isoformat(),
                "dateTo": (today + dt.timedelta(days=1)).isoformat(),
                "steps": [{"event": "page_view"}, {"event": "signup"}, {"event": "purchase"}],
                "windowSeconds": 7 * 86_400,
            },
            lambda con, src: duck_funnel(con, src, start30, end),
            "<= 2 s",
        ),
        (
            "retention, 8 weekly cohorts",
            "retention",
            {
                "dateFrom": weeks8.isoformat(),
                "dateTo": (today + dt.timedelta(days=1)).isoformat(),
                "target": {"event": "page_view"},
                "period": "week",
                "periods": 8,
            },
            lambda con, src: duck_retention(con, src, (now // DAY_MS - 56) * DAY_MS, end),
            "<= 2 s",
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        copy = tmp / "events.parquet"
        started = time.perf_counter()
        n = parquet_copy_pg(db, copy) if args.pg_url else parquet_copy(db, copy)
        print(f"{n:,} events; Parquet copy made in {time.perf_counter() - started:.1f} s")
        server = ServerProcess(
            db,
            log_dir=tmp / "logs",
            env={"INNKT_RATE_LIMIT_PER_SECOND": "0", "INNKT_INSIGHTS_CACHE_SIZE": "0"},
        ).start()
        try:
            headers = {"Authorization": f"Bearer {server.create_key('read')}"}
            con = duckdb.connect()
            src = f"read_parquet('{copy}')"
            with httpx.Client(timeout=600) as client:
                for label, kind, body, duck, target in queries:

                    def ask(kind: str = kind, body: dict[str, Any] = body) -> Any:
                        r = client.post(
                            f"{server.url}/v1/insights/{kind}", json=body, headers=headers
                        )
                        if r.status_code == 422:
                            raise Refused(f"{r.status_code} {r.text[:200]}")
                        if r.status_code != 200:
                            raise RuntimeError(f"{kind}: {r.status_code} {r.text[:300]}")
                        return r.json()

                    dtimes, _ = timed(lambda duck=duck: duck(con, src), args.repeat)
                    try:
                        times, _ = timed(ask, args.repeat)
                    except Refused as exc:
                        # PostgreSQL past the events one query may load: no time
                        print(f"{label}: server {exc}; DuckDB by hand {min(dtimes):.3f} s")
                        continue
                    best, dbest = min(times), min(dtimes)
                    print(
                        f"{label}: server best {best:.3f} s (median"
                        f" {statistics.median(times):.3f}, target {target});"
                        f" DuckDB by hand {dbest:.3f} s; ratio {best / dbest:.1f}x"
                        f" (target <= 2x); load {load()}"
                    )
        finally:
            server.stop()
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
