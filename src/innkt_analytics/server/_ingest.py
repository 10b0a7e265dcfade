"""Ingest routes: ``POST /v1/events`` and ``POST /v1/events/batch``.

The answer is sent only after the storage has durably committed the events.
Per-event problems are reported per event while the valid events are stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import msgspec
from litestar import Request, Response, post

from innkt_analytics.server._persons import record_identity
from innkt_analytics.server._state import JSON, ApiError, ServerState, authenticate, state_of
from innkt_analytics.server._suppress import suppressions_of
from innkt_analytics.server.insights._cache import data_changed
from innkt_analytics.server.storage import EventRow
from innkt_analytics.shared._exceptions import StorageError
from innkt_analytics.shared._protocol import (
    IngestResponse,
    ParsedBatch,
    ProtocolError,
    ValidEvent,
    decode_gzip_bounded,
    parse_batch,
    parse_event,
    to_ms,
)

__all__ = ["ingest_batch", "ingest_event", "read_json_body", "store_parsed", "to_row"]

_encoder = msgspec.json.Encoder()


def to_row(valid: ValidEvent, received_ms: int, sent_ms: int | None) -> EventRow:
    event = valid.event
    return EventRow(
        event_id=event.event_id,
        event_type=event.event_type,
        session_id=event.session_id,
        user_id=event.user_id,
        anonymous_id=event.anonymous_id,
        timestamp=valid.timestamp_ms,
        sent_at=sent_ms,
        received_at=received_ms,
        corrected=valid.corrected_ms,
        future=valid.future,
        payload=valid.raw,
    )


async def read_json_body(
    request: Request[Any, Any, Any],
    state: ServerState,
    *,
    also_json: frozenset[str] = frozenset(),
) -> bytes:
    """The request body, gunzipped within the limits. Raises ``ApiError`` 400/413/415.

    ``also_json``: other Content-Types whose bodies are read as JSON all the same.
    """
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != JSON and not media.endswith("+json") and media not in also_json:
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    limit = state.settings.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdecimal() and int(length) > limit:
        raise ApiError(413, "payload_too_large", f"body over the limit of {limit} bytes")
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", f"body over the limit of {limit} bytes")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        try:
            body = decode_gzip_bounded(body, limit)
        except ProtocolError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
    elif encoding not in ("", "identity"):
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} not supported")
    return body


async def store_parsed(
    state: ServerState, project: str, parsed: ParsedBatch, received: dt.datetime
) -> IngestResponse:
    """Store the valid events durably and build the answer. Raises ``ApiError`` 503."""
    valid_before = len(parsed.valid)
    await suppressions_of(state).filter(project, parsed)
    suppressed = valid_before - len(parsed.valid)
    received_ms = to_ms(received)
    sent_ms = None if parsed.sent_at is None else to_ms(parsed.sent_at)
    rows = [to_row(v, received_ms, sent_ms) for v in parsed.valid]
    metrics = state.metrics
    commit = metrics.commit_started()

    async def insert() -> set[str]:
        try:
            return await state.storage.insert_events(project, rows)
        finally:
            metrics.commit_done(commit)
            data_changed(state, project)  # even a failed commit may have stored some

    # The links are written alongside the events, not after them: both are durable
    # before the answer, and a batch waits for one flush to disk instead of two in a
    # row. They come from every valid event, not only the new ones, so a resend
    # after a 503 (of either write) repairs a failed link write.
    stored, linked = await asyncio.gather(
        insert(), record_identity(state, project, parsed.valid), return_exceptions=True
    )
    for failed in (stored, linked):
        if isinstance(failed, StorageError):
            raise ApiError(
                503,
                "storage_unavailable",
                str(failed),
                retry_after=state.settings.unavailable_retry_after,
            ) from None
        if isinstance(failed, BaseException):
            raise failed
    if isinstance(stored, BaseException):  # for the type checker: raised above
        raise stored
    metrics.ingested(
        accepted=len(stored),
        duplicate=len(rows) - len(stored),
        rejected=len(parsed.rejected) - suppressed,
        suppressed=suppressed,
    )
    state.ingest_meter.add(len(stored))
    if stored and state.observers:
        fresh = [v for v in parsed.valid if v.event.event_id in stored]
        state.notify_events(project, fresh)
    return IngestResponse(
        accepted=len(stored), duplicates=len(rows) - len(stored), rejected=parsed.rejected
    )


def _answer(result: IngestResponse) -> Response[bytes]:
    return Response(_encoder.encode(result), status_code=200, media_type=JSON)


@post("/v1/events/batch", status_code=200, summary="Ingest a batch of events", tags=["ingest"])
async def ingest_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Store a batch; invalid events are reported per event and the rest are stored."""
    state = state_of(request)
    key = await authenticate(request, "write")
    body = await read_json_body(request, state)
    received = dt.datetime.now(dt.UTC)
    parsed = parse_batch(body, state.settings.limits, received)  # ProtocolError: 4xx
    if parsed.rejected and not parsed.valid:
        state.metrics.ingested(accepted=0, duplicate=0, rejected=len(parsed.rejected), suppressed=0)
        raise ApiError(
            400, "invalid_batch", "no event in the batch is valid", rejected=parsed.rejected
        )
    return _answer(await store_parsed(state, key.project, parsed, received))


@post("/v1/events", status_code=200, summary="Ingest one event", tags=["ingest"])
async def ingest_event(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Store one event (the body is a bare Event object)."""
    state = state_of(request)
    key = await authenticate(request, "write")
    body = await read_json_body(request, state)
    received = dt.datetime.now(dt.UTC)
    valid = parse_event(body, state.settings.limits, received)  # ProtocolError: 4xx
    parsed = ParsedBatch(valid=[valid])
    return _answer(await store_parsed(state, key.project, parsed, received))
