"""Segment-compatible HTTP tracking API: ``/v1/batch``, ``/v1/track``, ``/v1/identify``, ...

Apps already instrumented with Segment's SDKs (analytics-python,
analytics-react-native, analytics.js, RudderStack's) point their host at this
server and send unchanged. Each Segment message is translated into our
``Event`` (see ``docs/segment.md`` for the table) and then goes through the
very same path as ``POST /v1/events/batch``: ``parse_batch`` (limits, skew
correction) and ``store_parsed`` (dedup by ``eventId``, durable commit,
real-time observers). The translation itself is pure (``translate_message``).

Write keys are accepted as HTTP Basic user name (Segment's way), as
``writeKey`` in the body (analytics.js), or as our usual Bearer/X-API-Key.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from litestar import Request, Response, post

from innkt_analytics.server._ingest import read_json_body, store_parsed
from innkt_analytics.server._state import (
    JSON,
    ApiError,
    ServerState,
    authorize,
    presented_key,
    state_of,
)
from innkt_analytics.server.storage import KeyRecord
from innkt_analytics.shared._protocol import (
    Batch,
    Event,
    Limits,
    ParsedBatch,
    Rejection,
    parse_batch,
)

__all__ = [
    "SEGMENT_HANDLERS",
    "SegmentMessage",
    "TranslatedMessage",
    "parse_segment",
    "segment_batch",
    "segment_single",
    "translate_message",
]

#: route name → message type; analytics.js posts to the one-letter forms
_SINGLE_ROUTES: Final = {
    "track": "track",
    "identify": "identify",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
TYPES: Final = frozenset(_SINGLE_ROUTES.values())
_MAX_ID: Final = 128
#: Content-Types whose body is JSON all the same (see ``_read_body``)
_JSON_AS_OTHER_MEDIA: Final = frozenset({"", "text/plain", "application/x-www-form-urlencoded"})

IdValue = str | int | float


class SegmentMessage(msgspec.Struct, rename="camel", kw_only=True):
    """One Segment message as the SDKs send it; unknown fields are ignored."""

    type: str | None = None
    event: str | None = None
    message_id: IdValue | None = None
    user_id: IdValue | None = None
    anonymous_id: IdValue | None = None
    previous_id: IdValue | None = None
    group_id: IdValue | None = None
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    timestamp: str | None = None
    original_timestamp: str | None = None
    sent_at: str | None = None
    write_key: str | None = None


class _SegmentBatch(msgspec.Struct, rename="camel", kw_only=True):
    # Messages stay raw so one bad message cannot fail its neighbours' decode.
    batch: list[msgspec.Raw]
    sent_at: str | None = None
    write_key: str | None = None
    context: dict[str, Any] | None = None


class _WriteKeyOnly(msgspec.Struct, rename="camel"):
    write_key: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TranslatedMessage:
    """A Segment message as our ``Event``, with the ``sentAt`` to correct its clock by."""

    event: Event
    sent_at: dt.datetime | None


_message_decoder: Final = msgspec.json.Decoder(SegmentMessage)
_batch_decoder: Final = msgspec.json.Decoder(_SegmentBatch)
_key_decoder: Final = msgspec.json.Decoder(_WriteKeyOnly)
_encoder: Final = msgspec.json.Encoder()


# -- translation (pure) ---------------------------------------------------------


def _id(value: IdValue | None) -> str | None:
    # Segment ids may be numbers; an integral float (JSON 42.0) reads as "42".
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _time(field: str, value: str | None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field}: not an ISO 8601 time: {value!r}") from None
    # Segment treats a time without an offset as UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _session_id(context: dict[str, Any], anonymous_id: str | None) -> str | None:
    for name in ("sessionId", "session_id"):
        value = context.get(name)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return _id(value)
    session = context.get("session")
    if isinstance(session, dict):
        value = session.get("id")
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return _id(value)
    return anonymous_id


def _device_time(
    msg: SegmentMessage, batch_sent_at: dt.datetime | None, received: dt.datetime
) -> tuple[dt.datetime, dt.datetime | None]:
    """The device time of ``msg`` and the ``sentAt`` to correct it by (``None``: store as is).

    RudderStack's SDKs always send ``originalTimestamp`` (the call time) and
    ``timestamp`` only when the app passed one; rudder-server then keeps that
    ``timestamp`` as sent and otherwise computes ``receivedAt - (sentAt -
    originalTimestamp)`` (processor.go, ``enhanceWithTimeFields``). We do the
    same, so a backfill with an explicit time keeps it. Segment's SDKs send only
    ``timestamp``, which is their device time and is corrected by ``sentAt``.
    """
    sent_at = _time("sentAt", msg.sent_at) or batch_sent_at
    original = _time("originalTimestamp", msg.original_timestamp)
    explicit = _time("timestamp", msg.timestamp)
    if original is not None:
        if explicit is not None:
            return explicit, None
        return original, sent_at
    if explicit is not None:
        return explicit, sent_at
    # No client time at all: it happened now, and there is nothing to correct.
    return received, None


def translate_message(
    msg: SegmentMessage,
    raw: bytes,
    *,
    kind: str | None = None,
    batch_sent_at: dt.datetime | None = None,
    batch_context: dict[str, Any] | None = None,
    received: dt.datetime,
) -> TranslatedMessage:
    """Map one Segment message onto our ``Event`` (see docs/segment.md).

    ``kind`` is the type implied by the route (``/v1/track`` → ``"track"``);
    in a batch each message carries its own ``type``. Raises ``ValueError``
    with a message fit for a per-message rejection.
    """
    kind = kind or msg.type
    if kind not in TYPES:
        raise ValueError(f"type: must be one of {', '.join(sorted(TYPES))}, got {kind!r}")
    if kind == "track":
        if not msg.event:
            raise ValueError("event: a track message needs an event name")
        event_type = msg.event
    else:
        event_type = kind

    user_id = _id(msg.user_id)
    anonymous_id = _id(msg.anonymous_id)
    if kind == "alias":
        if user_id is None or _id(msg.previous_id) is None:
            raise ValueError("alias: userId and previousId are required")
    elif kind == "group" and _id(msg.group_id) is None:
        raise ValueError("groupId: a group message needs a groupId")
    elif user_id is None and anonymous_id is None:
        raise ValueError("userId or anonymousId is required")

    device_time, sent_at = _device_time(msg, batch_sent_at, received)

    context = {**(batch_context or {}), **(msg.context or {})}
    device = context.pop("device", None)
    device_info = dict(device) if isinstance(device, dict) else {}

    if kind == "identify":
        # RudderStack's SDKs put an identify's traits under context.traits
        # (rudder-sdk-python only there); Segment's at the top. Either way they
        # are the properties, so the same identify stores the same.
        nested = context.pop("traits", None)
        properties = {**(nested if isinstance(nested, dict) else {}), **(msg.traits or {})}
    elif kind == "group":
        properties = dict(msg.traits or {})
    else:
        properties = dict(msg.properties or {})
    if kind in ("page", "screen"):
        for name, value in (("name", msg.name), ("category", msg.category)):
            if value is not None:
                properties.setdefault(name, value)
    elif kind == "group":
        properties["groupId"] = _id(msg.group_id)
    elif kind == "alias":
        properties["previousId"] = _id(msg.previous_id)

    message_id = _id(msg.message_id)
    if message_id is None:
        # Without a messageId a retried message still dedups: the SDK resends
        # the same bytes, so their hash is a stable id.
        message_id = "seg-" + hashlib.sha256(raw).hexdigest()[:40]
    if len(message_id) > _MAX_ID:
        raise ValueError(f"messageId: longer than {_MAX_ID} characters")

    event = Event(
        event_id=message_id,
        event_type=event_type,
        timestamp=device_time,
        session_id=_session_id(context, anonymous_id),
        user_id=user_id,
        anonymous_id=anonymous_id,
        properties=properties,
        device_info=device_info,
        context=context,
    )
    return TranslatedMessage(event=event, sent_at=sent_at)


def _decode_message(raw: bytes) -> SegmentMessage:
    try:
        return _message_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed message: {exc}") from None


def parse_segment(
    messages: Sequence[tuple[bytes, str | None]],
    limits: Limits,
    received: dt.datetime,
    *,
    batch_sent_at: dt.datetime | None = None,
    batch_context: dict[str, Any] | None = None,
) -> list[ParsedBatch]:
    """Translate and validate messages; one ``ParsedBatch`` per distinct ``sentAt``.

    Each group then goes through ``parse_batch`` exactly like a native batch,
    so limits, nesting checks and skew correction are the ones of our own API.
    Rejection indices refer to positions in ``messages``; they are all carried
    by the first group.
    """
    rejected: list[Rejection] = []
    groups: dict[dt.datetime | None, list[tuple[int, Event]]] = {}
    for index, (raw, kind) in enumerate(messages):
        try:
            msg = _decode_message(raw)
            translated = translate_message(
                msg,
                raw,
                kind=kind,
                batch_sent_at=batch_sent_at,
                batch_context=batch_context,
                received=received,
            )
        except ValueError as exc:
            rejected.append(Rejection(index=index, event_id=_raw_message_id(raw), error=str(exc)))
            continue
        groups.setdefault(translated.sent_at, []).append((index, translated.event))

    # The translated body can be a little larger than what was sent; the real
    # body limit was already enforced on the request.
    group_limits = dataclasses.replace(limits, max_body_bytes=2**62, max_batch_events=2**62)
    results: list[ParsedBatch] = []
    for sent_at, members in groups.items():
        body = _encoder.encode(Batch(events=[e for _, e in members], sent_at=sent_at))
        parsed = parse_batch(body, group_limits, received)
        for valid in parsed.valid:
            valid.index = members[valid.index][0]
        for rejection in parsed.rejected:
            rejection.index = members[rejection.index][0]
            rejected.append(rejection)
        parsed.rejected = []
        results.append(parsed)
    if not results:
        results.append(ParsedBatch())
    results[0].rejected = sorted(rejected, key=lambda r: r.index)
    return results


def _raw_message_id(raw: bytes) -> str | None:
    try:
        value = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    if isinstance(value, dict):
        mid = value.get("messageId")
        return mid if isinstance(mid, str) else None
    return None


# -- the HTTP front-end -----------------------------------------------------------


def _segment_error(exc: ApiError) -> Response[bytes]:
    # Segment's SDKs read "code" and "message"; ours read "error". Send both.
    body: dict[str, Any] = {
        "success": False,
        "code": exc.code,
        "error": exc.code,
        "message": exc.message,
    }
    headers = {}
    if exc.retry_after is not None:
        body["retryAfter"] = exc.retry_after
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if exc.rejected:
        body["rejected"] = [msgspec.to_builtins(r) for r in exc.rejected]
    return Response(_encoder.encode(body), status_code=exc.status, media_type=JSON, headers=headers)


async def _read_body(request: Request[Any, Any, Any], state: ServerState) -> bytes:
    """The body, gunzipped within the limits: JSON, whatever ``Content-Type`` the SDKs label it.

    analytics.js posts ``text/plain`` so that browsers skip the CORS preflight;
    @rudderstack/rudder-sdk-node with gzip on (its default) posts a gzipped
    JSON Buffer through axios, which labels it
    ``application/x-www-form-urlencoded``. rudder-server reads every body as
    JSON whatever its type; so do we, for these labels.
    """
    return await read_json_body(request, state, also_json=_JSON_AS_OTHER_MEDIA)


def _basic_user(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    # The write key is the user name; some clients put it in the password.
    return user or password or None


async def _authenticate(
    request: Request[Any, Any, Any], state: ServerState, body_key: str | None
) -> KeyRecord:
    """Find the write key in Basic auth, Bearer/X-API-Key, or the body's ``writeKey``.

    Raises ``ApiError`` 401, 403 or 429.
    """
    header = request.headers.get("authorization", "")
    presented = _basic_user(header) if header else None
    return await authorize(
        state,
        presented or presented_key(request) or body_key,
        "write",
        missing="missing write key (HTTP Basic user name or writeKey)",
    )


def _cors(request: Request[Any, Any, Any], state: ServerState) -> dict[str, str]:
    # Browsers (analytics.js) read the answer only with a CORS grant.
    origin = request.headers.get("origin")
    allowed = state.settings.allowed_origins
    if origin and ("*" in allowed or origin in allowed):
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


async def _ingest(
    request: Request[Any, Any, Any], state: ServerState, body: bytes, kind: str | None
) -> Response[bytes]:
    received = dt.datetime.now(dt.UTC)
    limits = state.settings.limits
    if kind is None:
        try:
            batch = _batch_decoder.decode(body)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_batch", f"not a Segment batch: {exc}") from None
        if len(batch.batch) > limits.max_batch_events:
            raise ApiError(
                413,
                "too_many_events",
                f"{len(batch.batch)} messages, over the limit of {limits.max_batch_events}",
            )
        try:
            batch_sent_at = _time("sentAt", batch.sent_at)
        except ValueError as exc:
            raise ApiError(400, "invalid_batch", str(exc)) from None
        messages: list[tuple[bytes, str | None]] = [(bytes(r), None) for r in batch.batch]
        write_key, batch_context = batch.write_key, batch.context
    else:
        try:
            write_key = _key_decoder.decode(body).write_key
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_message", f"not a Segment message: {exc}") from None
        messages, batch_sent_at, batch_context = [(body, kind)], None, None
    key = await _authenticate(request, state, write_key)

    groups = parse_segment(
        messages, limits, received, batch_sent_at=batch_sent_at, batch_context=batch_context
    )
    rejected = groups[0].rejected
    if rejected and not any(g.valid for g in groups):
        raise ApiError(
            400, "invalid_batch", "no message in the request is valid", rejected=rejected
        )
    accepted = duplicates = 0
    for parsed in groups:
        if parsed.valid:
            parsed.rejected = []
            result = await store_parsed(state, key.project, parsed, received)
            accepted += result.accepted
            duplicates += result.duplicates
    body_out = {
        "success": True,
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": [msgspec.to_builtins(r) for r in rejected],
    }
    return Response(
        _encoder.encode(body_out), status_code=200, media_type=JSON, headers=_cors(request, state)
    )


@post(
    ["/v1/batch", "/v1/import", "/v1/b"],
    status_code=200,
    summary="Segment-compatible batch",
    tags=["segment"],
)
async def segment_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Segment's ``/v1/batch``: ``{"batch": [messages], "sentAt", "writeKey"?, "context"?}``."""
    state = state_of(request)
    try:
        body = await _read_body(request, state)
        return await _ingest(request, state, body, None)
    except ApiError as exc:
        return _segment_error(exc)


@post(
    [f"/v1/{name}" for name in _SINGLE_ROUTES],
    status_code=200,
    summary="Segment-compatible single message (track, identify, page, screen, group, alias)",
    tags=["segment"],
)
async def segment_single(request: Request[Any, Any, Any]) -> Response[bytes]:
    """One Segment message; the route names its type (``/v1/track`` or ``/v1/t``, ...)."""
    state = state_of(request)
    kind = _SINGLE_ROUTES[request.url.path.rstrip("/").rsplit("/", 1)[-1]]
    try:
        body = await _read_body(request, state)
        return await _ingest(request, state, body, kind)
    except ApiError as exc:
        return _segment_error(exc)


SEGMENT_HANDLERS: Final = (segment_batch, segment_single)
