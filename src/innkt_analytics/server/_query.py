"""Read routes: events with cursor pagination, stats, and the per-project client config."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any, Final

import msgspec
from litestar import Request, Response, get, put

from innkt_analytics.server._ingest import read_json_body
from innkt_analytics.server._state import JSON, ApiError, authenticate, state_of
from innkt_analytics.server.insights._persons_map import project_persons
from innkt_analytics.server.storage import EventFilter, EventRow
from innkt_analytics.shared._exceptions import StorageError
from innkt_analytics.shared._protocol import ClientConfig

__all__ = ["get_config", "list_events", "put_config", "row_to_json", "stats"]

BUCKETS: Final = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
MAX_PAGE: Final = 1000
COUNT_BY: Final = ("person", "id")
_encoder = msgspec.json.Encoder()


class _StrictClientConfig(ClientConfig, forbid_unknown_fields=True):
    """A PUT body: a misspelt option must be an error, not a silent reset to defaults.

    (Clients reading ``GET /v1/config`` stay lenient, so servers can add options.)
    """


_config_decoder = msgspec.json.Decoder(_StrictClientConfig)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def parse_time(name: str, value: str | None) -> int | None:
    """An ISO 8601 query parameter as epoch ms. Raises ``ApiError`` 400."""
    if value is None or value == "":
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name}: not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def _filter(request: Request[Any, Any, Any]) -> EventFilter:
    q = request.query_params
    return EventFilter(
        event_type=q.get("eventType") or None,
        session_id=q.get("sessionId") or None,
        user_id=q.get("userId") or None,
        since=parse_time("since", q.get("since")),
        until=parse_time("until", q.get("until")),
    )


def row_to_json(row: EventRow) -> dict[str, Any]:
    """A stored event as the API shows it: the client's event plus server fields."""
    out: dict[str, Any] = msgspec.json.decode(row.payload)
    out["receivedAt"] = _iso(row.received_at)
    out["sentAt"] = _iso(row.sent_at)
    out["correctedTimestamp"] = _iso(row.corrected)
    out["future"] = row.future
    return out


def _encode_cursor(seq: int | None) -> str | None:
    return None if seq is None else base64.urlsafe_b64encode(str(seq).encode()).decode()


def _decode_cursor(value: str | None) -> int | None:
    if not value:
        return None
    try:
        seq = int(base64.urlsafe_b64decode(value.encode()).decode())
    except (ValueError, UnicodeError):
        seq = -1
    if not 0 <= seq < 2**63:  # storage integers are 64-bit; a bigger one cannot be bound
        raise ApiError(400, "invalid_parameter", "cursor: not a cursor from this API")
    return seq


@get("/v1/events", summary="Query stored events", tags=["query"])
async def list_events(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Events of the key's project, oldest first; follow ``nextCursor`` for more.

    Query: eventType, sessionId, userId, since, until (ISO 8601), limit (1..1000), cursor.
    """
    key = await authenticate(request, "read")
    flt = _filter(request)
    raw_limit = request.query_params.get("limit", "100")
    # isdecimal, not isdigit: int() refuses digits such as "²" that isdigit accepts;
    # the length keeps int() under its digit limit (a ValueError, so a 500, past it)
    if not (len(raw_limit) <= 4 and raw_limit.isdecimal() and 1 <= int(raw_limit) <= MAX_PAGE):
        raise ApiError(400, "invalid_parameter", f"limit: an integer in 1..{MAX_PAGE}")
    cursor = _decode_cursor(request.query_params.get("cursor"))
    page = await state_of(request).storage.query_events(key.project, flt, cursor, int(raw_limit))
    body = {
        "events": [row_to_json(r) for r in page.rows],
        "nextCursor": _encode_cursor(page.next_cursor),
    }
    return Response(_encoder.encode(body), media_type=JSON)


@get("/v1/stats", summary="Counts, time series and uniques", tags=["query"])
async def stats(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Counts per event type, a time series and unique sessions/users over a range.

    Query: since, until (ISO 8601), bucket (minute|hour|day), eventType, countBy
    (person|id: ``uniqueUsers`` counts persons, the default, or raw ids).
    """
    key = await authenticate(request, "read")
    state = state_of(request)
    flt = _filter(request)
    bucket = request.query_params.get("bucket", "hour")
    if bucket not in BUCKETS:
        raise ApiError(400, "invalid_parameter", "bucket: one of minute, hour, day")
    count_by = request.query_params.get("countBy", "person")
    if count_by not in COUNT_BY:
        raise ApiError(400, "invalid_parameter", "countBy: one of person, id")
    persons = None
    if count_by == "person":
        try:
            found = await project_persons(state, key.project)
        except StorageError as exc:
            raise ApiError(
                503,
                "storage_unavailable",
                str(exc),
                retry_after=state.settings.unavailable_retry_after,
            ) from None
        persons = None if found is None else found.roots
    result = await state.storage.stats(key.project, flt, BUCKETS[bucket], persons=persons)
    body = {
        "total": result.total,
        "byEventType": result.by_event_type,
        "series": [{"t": _iso(t), "count": c} for t, c in result.series],
        "uniqueSessions": result.unique_sessions,
        "uniqueUsers": result.unique_users,
        "countBy": count_by,
        "bucket": bucket,
    }
    return Response(_encoder.encode(body), media_type=JSON)


@get("/v1/config", summary="The client configuration of the key's project", tags=["config"])
async def get_config(request: Request[Any, Any, Any]) -> Response[bytes]:
    key = await authenticate(request, None)
    config = await state_of(request).storage.get_config(key.project) or ClientConfig()
    return Response(_encoder.encode(config), media_type=JSON)


@put("/v1/config", summary="Replace the client configuration (admin)", tags=["config"])
async def put_config(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Validate and store; connected real-time clients get a ``config_update``."""
    state = state_of(request)
    key = await authenticate(request, "admin")
    body = await read_json_body(request, state)
    try:
        config = ClientConfig(**msgspec.structs.asdict(_config_decoder.decode(body)))
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_config", str(exc)) from None
    stored = await state.storage.put_config(key.project, config)
    state.notify_config(key.project, stored)
    return Response(_encoder.encode(stored), media_type=JSON)
