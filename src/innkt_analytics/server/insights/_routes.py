"""``POST /v1/insights/{trends|funnels|retention|paths|lifecycle|stickiness}`` (read scope).

On the SQLite storage engine the DuckDB engine reads the Parquet segments and the
hot rows of one snapshot directly (``SQLiteStorage.insight_source``,
``_engine.connect_segments``): only the columns a query needs, bounded by DuckDB's
memory limit. PostgreSQL's engine has the same segments (``_pg_engine``: cached on
each instance) and its hot rows come as one Arrow table
(``PostgresStorage.insight_source``: a COPY as CSV, the JSON only when the query
reads it); there ``MAX_EVENTS`` bounds the hot rows one query may load (422
``query_too_large``), which compaction keeps few.

Answers are cached (``_cache``): ``X-Innkt-Cache: hit`` or ``miss`` says which. A
query gets ``insights_timeout`` seconds for loading and running together; past it
its DuckDB connection is interrupted from the event loop's thread and the answer is
422 ``query_timeout`` (a narrower range or fewer steps is the cure, not a retry).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec
from litestar import Request, Response, post

from innkt_analytics.server._ingest import read_json_body
from innkt_analytics.server._state import JSON, ApiError, authenticate, state_of
from innkt_analytics.server.insights._cache import insights_of
from innkt_analytics.server.insights._events import InsightEvent, to_arrow
from innkt_analytics.server.insights._model import (
    LifecycleQuery,
    Query,
    QueryError,
    QueryTooLarge,
    TrendsQuery,
    counts_persons,
    parse_query,
    reads_json,
)
from innkt_analytics.server.insights._persons_map import PersonsMap, graph_version, persons_for
from innkt_analytics.server.storage import SQLiteStorage, Storage

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = ["CACHE_HEADER", "KINDS", "MAX_EVENTS", "Job", "answer_within", "insights", "run_within"]

KINDS: Final = ("trends", "funnels", "retention", "paths", "lifecycle", "stickiness")
MAX_EVENTS: Final = 1_000_000
#: the response header that says whether the answer came from the cache
CACHE_HEADER: Final = "X-Innkt-Cache"
#: how often a stopped query's connection is interrupted again, and for how long at
#: most the answer waits for its thread to give up (a query between two statements
#: has nothing to interrupt yet)
_REINTERRUPT: Final = 0.02
_STOP_GRACE: Final = 2.0
_encoder = msgspec.json.Encoder()


class _Stopped(Exception):
    """The query's job was stopped (its time limit passed)."""


class Job:
    """One query's DuckDB connection, which another thread may interrupt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self.stopped = False
        #: whether DuckDB gave up a statement because of ``stop``
        self.interrupted = False

    def attach(self, con: duckdb.DuckDBPyConnection | None) -> None:
        with self._lock:
            self._con = con
            if con is not None and self.stopped:
                con.interrupt()

    @property
    def running(self) -> bool:
        """Whether a DuckDB connection is open for the query (it can be interrupted)."""
        return self._con is not None

    def stop(self) -> None:
        """Interrupt the running statement (thread-safe; repeat it between statements)."""
        with self._lock:
            self.stopped = True
            if self._con is not None:
                self._con.interrupt()


def _read_range(query: Query) -> tuple[int | None, int]:
    """The corrected-time range of the events a query reads."""
    start, end = query.range_ms()
    if isinstance(query, LifecycleQuery):
        return None, end  # "new" and "resurrecting" look at all earlier activity
    if isinstance(query, TrendsQuery) and query.compare:
        return start - (end - start), end
    return start, end


@dataclass(frozen=True, slots=True)
class Segments:
    """A query's events: the storage engine's Parquet files and hot rows (on SQLite
    and on PostgreSQL alike)."""

    paths: list[str]
    hot: pa.Table


#: what ``run_within`` answers over: a storage's rows, or events in memory
Source = list[InsightEvent] | Segments


async def _load(
    storage: Storage,
    project: str,
    since: int | None,
    until: int,
    *,
    payload: bool = True,
    max_events: int = MAX_EVENTS,
) -> Segments:
    if isinstance(storage, SQLiteStorage):
        paths, hot = await asyncio.to_thread(
            storage.insight_source, project, since, until, payload=payload
        )
        return Segments(paths, hot)
    from innkt_analytics.server.storage._postgres import PostgresStorage  # loaded with it

    if not isinstance(storage, PostgresStorage):  # make_storage makes no other
        raise TypeError(f"no insights over {type(storage).__name__}")
    # the same engine's segments and hot rows; the hot rows, copied into memory,
    # are bounded (compaction keeps them few: a backlog could hold millions)
    paths, hot = await storage.insight_source(
        project, since, until, payload=payload, hot_limit=max_events + 1
    )
    if hot.num_rows > max_events:
        raise ApiError(422, "query_too_large", f"the range holds more than {max_events} hot events")
    return Segments(paths, hot)


def _answer(
    query: Query,
    events: Source,
    project: str,
    job: Job,
    persons: PersonsMap | None = None,
) -> bytes:
    # imported on first use: DuckDB and pyarrow cost the server ~0.3 s at start
    import duckdb

    from innkt_analytics.server.insights._engine import MEMORY_LIMIT, run_interruptible

    source = (events.paths, events.hot) if isinstance(events, Segments) else to_arrow(events)
    if job.stopped:
        raise _Stopped
    try:
        answer = run_interruptible(
            query,
            source,
            project,
            job.attach,
            persons=None if persons is None else persons.roots,
            memory_limit=MEMORY_LIMIT,
        )
    except duckdb.InterruptException:
        job.interrupted = True
        raise _Stopped from None
    except QueryTooLarge as exc:
        raise ApiError(422, "query_too_large", str(exc)) from None
    return _encoder.encode(answer)


def _timed_out(limit: float) -> ApiError:
    return ApiError(
        422,
        "query_timeout",
        f"the query ran past the time limit of {limit:g} s (INNKT_INSIGHTS_TIMEOUT) and "
        "was stopped: narrow its range or simplify it",
    )


async def _stop(job: Job, work: asyncio.Future[bytes]) -> None:
    """Interrupt ``job`` until its thread gives up (at most ``_STOP_GRACE`` seconds)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + _STOP_GRACE
    while not work.done() and loop.time() < until:
        job.stop()
        await asyncio.wait({work}, timeout=_REINTERRUPT)
    # whatever it ends with, nobody awaits it any more
    work.add_done_callback(lambda f: f.cancelled() or f.exception())


async def answer_within(
    storage: Storage,
    query: Query,
    project: str,
    limit: float,
    job: Job | None = None,
    persons: PersonsMap | None = None,
    max_events: int = MAX_EVENTS,
) -> bytes:
    """The encoded answer to ``query``, loading and running within ``limit`` seconds
    (and at most ``max_events`` events on PostgreSQL).

    Raises ``ApiError`` 422 ``query_timeout`` past the limit (the DuckDB statement
    under way is interrupted), 422 ``query_too_large`` past the event or memory bound.
    """
    job = job or Job()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    since, until = _read_range(query)
    try:
        async with asyncio.timeout_at(deadline):
            events = await _load(
                storage, project, since, until, payload=reads_json(query), max_events=max_events
            )
    except TimeoutError:
        raise _timed_out(limit) from None
    return await run_within(
        query, events, project, max(0.0, deadline - loop.time()), job, persons, limit=limit
    )


async def run_within(
    query: Query,
    events: Source,
    project: str,
    seconds: float,
    job: Job,
    persons: PersonsMap | None = None,
    *,
    limit: float | None = None,
) -> bytes:
    """The encoded answer over ``events``, computed in a worker thread within ``seconds``.

    Past them ``job`` is stopped (its DuckDB statement interrupted) and ``ApiError``
    422 ``query_timeout`` names ``limit`` (default ``seconds``), the whole query's limit.
    """
    work = asyncio.ensure_future(asyncio.to_thread(_answer, query, events, project, job, persons))
    try:
        await asyncio.wait({work}, timeout=seconds)
    finally:
        if not work.done():  # past the limit, or the request itself was cancelled
            await _stop(job, work)
    if not work.done() or isinstance(work.exception(), _Stopped):
        raise _timed_out(seconds if limit is None else limit)
    return work.result()  # an answer that made it just past the limit is still good


@post(
    [f"/v1/insights/{kind}" for kind in KINDS],
    summary="Insights: trends, funnels, retention, paths, lifecycle, stickiness",
    tags=["insights"],
    status_code=200,
)
async def insights(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Answer the JSON query in the body over the key's project (docs/insights.md)."""
    key = await authenticate(request, "read")
    state = state_of(request)
    kind = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    body = await read_json_body(request, state)
    try:
        query = parse_query(kind, body)
    except QueryError as exc:
        raise ApiError(400, "invalid_query", str(exc)) from None
    runtime = insights_of(state)
    # identity version: answers counting persons (countBy "person", the default) depend
    # on the identity graph too, so its version (None without identity) joins the key;
    # read before the graph is, like the data version below
    graph = await graph_version(state, key.project) if counts_persons(query) else None
    # the data version is read before the events are: an answer is never filed
    # under a version newer than the data it was computed from
    cache_key = runtime.key(key.project, f"{kind}@{graph}", query)
    cached = runtime.cache.get(cache_key)
    if cached is not None:
        return Response(cached, media_type=JSON, headers={CACHE_HEADER: "hit"})
    try:
        persons = await persons_for(state, key.project, query)
        answer = await answer_within(
            state.storage,
            query,
            key.project,
            runtime.timeout,
            persons=persons,
            max_events=runtime.max_events,
        )
    except ApiError as exc:
        if exc.code in ("query_timeout", "query_too_large"):
            runtime.errors[exc.code] += 1
        raise
    runtime.cache.put(cache_key, answer)
    return Response(answer, media_type=JSON, headers={CACHE_HEADER: "miss"})
