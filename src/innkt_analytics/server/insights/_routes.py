"""``POST /v1/insights/{trends|funnels|retention|paths|lifecycle|stickiness}`` (read scope).

The events come from the storage's public interface (``query_events``, paged) into
an Arrow table, and the DuckDB engine answers in a worker thread. This is the seam
until the storage has a columnar read path: the whole range is read per query, so
``MAX_EVENTS`` bounds what one query may load (422 ``query_too_large`` past it).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import msgspec
from litestar import Request, Response, post

from innkt_analytics.server._ingest import read_json_body
from innkt_analytics.server._state import JSON, ApiError, authenticate, state_of
from innkt_analytics.server.insights._events import InsightEvent, to_arrow
from innkt_analytics.server.insights._model import (
    LifecycleQuery,
    Query,
    QueryError,
    QueryTooLarge,
    TrendsQuery,
    parse_query,
)
from innkt_analytics.server.storage import EventFilter, Storage

__all__ = ["KINDS", "MAX_EVENTS", "insights"]

KINDS: Final = ("trends", "funnels", "retention", "paths", "lifecycle", "stickiness")
MAX_EVENTS: Final = 1_000_000
_PAGE: Final = 1000
_encoder = msgspec.json.Encoder()


def _read_range(query: Query) -> tuple[int | None, int]:
    """The corrected-time range of the events a query reads."""
    start, end = query.range_ms()
    if isinstance(query, LifecycleQuery):
        return None, end  # "new" and "resurrecting" look at all earlier activity
    if isinstance(query, TrendsQuery) and query.compare:
        return start - (end - start), end
    return start, end


async def _load(
    storage: Storage, project: str, since: int | None, until: int
) -> list[InsightEvent]:
    events: list[InsightEvent] = []
    cursor: int | None = None
    flt = EventFilter(since=since, until=until)
    while True:
        page = await storage.query_events(project, flt, cursor, _PAGE)
        events.extend(InsightEvent.from_row(project, row) for row in page.rows)
        if len(events) > MAX_EVENTS:
            raise ApiError(422, "query_too_large", f"the range holds more than {MAX_EVENTS} events")
        if page.next_cursor is None:
            return events
        cursor = page.next_cursor


def _answer(query: Query, events: list[InsightEvent], project: str) -> bytes:
    # imported on first use: DuckDB and pyarrow cost the server ~0.3 s at start
    from innkt_analytics.server.insights._engine import run

    try:
        return _encoder.encode(run(query, to_arrow(events), project))
    except QueryTooLarge as exc:
        raise ApiError(422, "query_too_large", str(exc)) from None


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
    since, until = _read_range(query)
    events = await _load(state.storage, key.project, since, until)
    answer = await asyncio.to_thread(_answer, query, events, key.project)
    return Response(answer, media_type=JSON)
