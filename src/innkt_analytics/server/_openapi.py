"""The OpenAPI document (``/openapi.json``, ``/schema``): every operation's shapes.

Handlers read their query strings and bodies by hand (msgspec, per-event
rejections, our own error messages, no per-request cost on the ingest path), so
Litestar sees only ``request`` and would document nothing. The shapes are
declared here instead, one ``Operation`` per route, next to the Structs that
give their schemas; ``openapi_document`` merges them into what Litestar
generates (paths, summaries, tags, path parameters). A route without an entry
keeps Litestar's bare entry, which tests/test_openapi.py refuses, so a new route
cannot stay undocumented; the same test fuzzes the live server with this document
to keep it true.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Litestar, Request
from litestar.openapi.plugins import JsonRenderPlugin

from innkt_analytics.server import _reports as rep
from innkt_analytics.server._alerts import MAX_SILENCE, RuleKind
from innkt_analytics.server._dashboard import Dashboard
from innkt_analytics.server._query import BUCKETS, MAX_PAGE
from innkt_analytics.server._segment import SegmentMessage
from innkt_analytics.server._state import JSON, app_state
from innkt_analytics.server.insights import _model as ins
from innkt_analytics.shared._protocol import (
    Batch,
    ClientConfig,
    ErrorBody,
    Event,
    IngestResponse,
    Rejection,
)

__all__ = [
    "OPERATIONS",
    "DocumentPlugin",
    "Operation",
    "Query",
    "document_bytes",
    "openapi_document",
]

Scope = Literal["write", "read", "admin"]
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


# -- answers the handlers build as dicts, as Structs for their schemas -------------


class StoredEvent(Event, kw_only=True):
    """A stored event: the client's event plus what the server recorded."""

    received_at: str | None = None
    sent_at: str | None = None
    corrected_timestamp: str | None = None
    future: bool = False


class EventPage(msgspec.Struct, rename="camel", kw_only=True):
    """A page of events, oldest first; pass ``nextCursor`` as ``cursor`` for the next."""

    events: list[StoredEvent]
    next_cursor: str | None


class SeriesPoint(msgspec.Struct, kw_only=True):
    t: str | None
    count: int


class Stats(msgspec.Struct, rename="camel", kw_only=True):
    total: int
    by_event_type: dict[str, int]
    series: list[SeriesPoint]
    unique_sessions: int
    #: distinct persons (``countBy=person``) or raw ids (``countBy=id``)
    unique_users: int
    count_by: Literal["person", "id"]
    bucket: Literal["minute", "hour", "day"]


class ClientConfigUpdate(ClientConfig, forbid_unknown_fields=True):
    """A ``PUT /v1/config`` body: an unknown (misspelt) option is a 400."""


class KeyRequest(msgspec.Struct, kw_only=True):
    """A new key: its scopes (``admin`` implies the others) and an optional name."""

    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=3)]
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""


class RotateRequest(msgspec.Struct, rename="camel", kw_only=True):
    """How long the old key keeps working after its successor is made (0: at once)."""

    overlap_seconds: Annotated[int, msgspec.Meta(ge=0, le=365 * 86_400)] = 7 * 86_400


class KeyInfo(msgspec.Struct, rename="camel", kw_only=True):
    """A key as the API shows it (never the secret); times are epoch milliseconds."""

    key_id: str
    project: str
    name: str
    scopes: list[Scope]
    created_at: int
    revoked_at: int | None
    expires_at: int | None
    last_used_at: int | None


class NewKeyAnswer(KeyInfo, kw_only=True):
    """A new key, with the secret ``key`` shown this once."""

    key: str


class RotatedKey(NewKeyAnswer, kw_only=True):
    """The successor (``key`` shown this once), and the old key with its new expiry."""

    replaces: KeyInfo


class KeyList(msgspec.Struct, kw_only=True):
    keys: list[KeyInfo]


class KeyRevoked(msgspec.Struct, rename="camel", kw_only=True):
    key_id: str
    revoked: bool


class UserDeleted(msgspec.Struct, rename="camel", kw_only=True):
    user_id: str
    deleted_events: int
    suppressed: bool
    #: every id of the user's person (docs/identity.md), all deleted and suppressed
    ids: list[str] | None = None


class AuditEntry(msgspec.Struct, kw_only=True):
    seq: int
    at: int
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]


class AuditPage(msgspec.Struct, kw_only=True):
    """Newest first; pass the last ``seq`` as ``before`` for the next page."""

    entries: list[AuditEntry]


class AlertRuleRequest(msgspec.Struct, rename="camel", kw_only=True):
    """A new alert rule; ``event_rate`` needs ``eventType``, ``ingest_lag`` a threshold > 0."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    kind: RuleKind
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    threshold: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    #: within 1..3600, or 1..604800 for no_events
    window_seconds: Annotated[float, msgspec.Meta(ge=1, le=MAX_SILENCE)] = 60.0
    webhook_url: (
        Annotated[str, msgspec.Meta(max_length=2048, pattern="^https?://[^/?#:@]+")] | None
    ) = None
    webhook_secret: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    #: anomaly rules only: trends series watched besides the event types
    series: Annotated[list[ins.Series], msgspec.Meta(max_length=10)] | None = None


class AlertRuleView(msgspec.Struct, rename="camel", kw_only=True):
    """A stored rule with its live state and last webhook delivery (never the secret)."""

    id: str
    project: str
    name: str
    kind: RuleKind
    created_at: int
    status: Literal["ok", "firing"]
    value: float | None
    has_webhook_secret: bool
    last_delivery: dict[str, Any] | None
    event_type: str | None = None
    threshold: float = 0.0
    window_seconds: float = 60.0
    webhook_url: str | None = None


class AlertRuleList(msgspec.Struct, kw_only=True):
    rules: list[AlertRuleView]


class AlertNoticeView(msgspec.Struct, rename="camel", kw_only=True):
    rule_id: str
    name: str
    project: str
    kind: RuleKind
    status: Literal["firing", "resolved"]
    value: float
    threshold: float
    window_seconds: float
    at: str


class Alerts(msgspec.Struct, kw_only=True):
    """Rules firing now, and the latest transitions (newest first)."""

    firing: list[AlertNoticeView]
    recent: list[AlertNoticeView]


class DashboardList(msgspec.Struct, kw_only=True):
    dashboards: list[Dashboard]


class SegmentBatch(msgspec.Struct, rename="camel", kw_only=True):
    """Segment's batch: messages of any type, ``writeKey`` if not sent as Basic auth."""

    batch: list[SegmentMessage]
    sent_at: str | None = None
    write_key: str | None = None
    context: dict[str, Any] | None = None


class SegmentAnswer(msgspec.Struct, kw_only=True):
    success: Literal[True]
    accepted: int
    duplicates: int
    rejected: list[Rejection]


class SegmentError(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """A Segment route's error: Segment's ``code`` and ``message``, and our ``error``."""

    success: Literal[False]
    code: str
    error: str
    message: str
    retry_after: float | None = None
    rejected: list[Rejection] | None = None


class Person(msgspec.Struct, rename="camel", kw_only=True):
    """Every id the identity graph joins into one person, and its latest traits."""

    person_id: str
    ids: list[str]
    user_ids: list[str]
    anonymous_ids: list[str]
    first_seen: str | None
    last_seen: str | None
    traits: dict[str, Any]


class PersonSearch(msgspec.Struct, kw_only=True):
    """Zero or one person."""

    persons: list[Person]


class Health(msgspec.Struct, rename="camel", kw_only=True):
    """``status`` for anyone; ``version`` with any key; the details with a read key."""

    status: Literal["ok", "degraded"]
    version: str | None = None
    uptime_seconds: float | None = None
    storage: dict[str, Any] | None = None
    ingest_rate_per_second: float | None = None


class Liveness(msgspec.Struct, kw_only=True):
    status: Literal["alive"]
    phase: str


class Readiness(msgspec.Struct, kw_only=True):
    status: str
    reason: str | None = None


# -- the declarations --------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    """One query parameter: its JSON schema and what it means."""

    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Operation:
    """What one route takes and answers.

    ``scope``: the key scope it needs; ``None`` any valid key; ``"public"`` none.
    ``answer``: a Struct (JSON), or the media types of a text body (none: no body).
    ``path``: schema keywords (bounds, pattern, example) for path parameters.
    """

    scope: Scope | Literal["public"] | None
    answer: type[msgspec.Struct] | tuple[str, ...]
    status: int = 200
    query: tuple[Query, ...] = ()
    body: type[msgspec.Struct] | None = None
    body_required: bool = True
    body_example: Any = None
    extra_errors: tuple[int, ...] = ()
    rate_limited: bool = True
    segment: bool = False
    path: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: JSON-schema keywords the body must also meet (a Segment type's required fields)
    body_also: dict[str, Any] = dataclasses.field(default_factory=dict)
    storage: bool = True
    etag: bool = False


#: the ISO 8601 forms besides RFC 3339 that ``datetime.fromisoformat`` reads (no offset, a date)
_ISO_8601: Final = (
    r"^\d{4}-?\d{2}-?\d{2}([T ]\d{2}(:?\d{2}(:?\d{2}([.,]\d+)?)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
)


def _time(name: str, what: str) -> Query:
    schema = {
        "type": "string",
        # empty is the same as absent
        "anyOf": [{"format": "date-time"}, {"pattern": _ISO_8601}, {"maxLength": 0}],
        "example": "2026-01-01T00:00:00Z",
    }
    return Query(name, schema, f"{what} (ISO 8601; no offset means UTC)")


def _id(name: str, what: str) -> Query:
    # No maxLength: a longer id is accepted (and matches nothing, ids being <= 128)
    return Query(name, {"type": "string"}, what)


_FILTERS: Final = (
    _id("eventType", "only events of this type"),
    _id("sessionId", "only events of this session"),
    _id("userId", "only events of this user"),
    _time("since", "events at or after this time"),
    _time("until", "events before this time"),
)
_LIMIT: Final = Query(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100},
    "page size",
)

_EVENT_EXAMPLE: Final = {
    "eventId": "0b8f6f0e-7c39-4d5e-9a53-2f1f5c0a7e11",
    "eventType": "page_view",
    "timestamp": "2026-01-01T12:00:00Z",
    "sessionId": "s-1",
    "userId": "u-1",
    "properties": {"path": "/"},
}
_SEGMENT_EXAMPLE: Final = {
    "type": "track",
    "event": "Signed Up",
    "userId": "u-1",
    "messageId": "m-0b8f6f0e",
    "timestamp": "2026-01-01T12:00:00Z",
    "properties": {"plan": "pro"},
}
_DASHBOARD_EXAMPLE: Final = {
    "title": "Overview",
    "panels": [
        {"kind": "events_per_minute", "title": "Events", "width": 2},
        {
            "kind": "insight",
            "insight": {"kind": "trends", "range": "7d", "query": {"series": [{"event": "view"}]}},
        },
    ],
}

_USER: Final = {"minLength": 1, "maxLength": 128, "example": "u-1"}
_NAME: Final = {"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", "example": "overview"}
_KEY_ID: Final = {"example": "key_0123456789ab"}
_RULE_ID: Final = {"example": "alr_0123456789ab"}
_REPORT: Final = {"report_id": {"example": "rpt_0123456789ab"}}

_A_USER: Final = {"anyOf": [{"required": ["userId"]}, {"required": ["anonymousId"]}]}
#: per Segment message type: what its body must also hold, and what the example adds
_SEGMENT_NEEDS: Final[dict[str, tuple[dict[str, Any], dict[str, Any]]]] = {
    "track": ({"required": ["event"], **_A_USER}, {}),
    "identify": (_A_USER, {}),
    "page": (_A_USER, {}),
    "screen": (_A_USER, {}),
    "group": ({"required": ["groupId"], **_A_USER}, {"groupId": "g-1"}),
    "alias": ({"required": ["userId", "previousId"]}, {"previousId": "anon-1"}),
}

_SEGMENT_SINGLE: Final = Operation(
    "write",
    SegmentAnswer,
    body=SegmentMessage,
    body_example=_SEGMENT_EXAMPLE,
    segment=True,
)

#: (method, path) -> Operation for every route in the document
_INSIGHTS_RANGE: Final = {"dateFrom": "2026-03-01", "dateTo": "2026-03-08", "timezone": "UTC"}
#: (kind, query, result, example) of each insights route (docs/insights.md)
_INSIGHTS: Final[tuple[tuple[str, type[msgspec.Struct], type[msgspec.Struct], Any], ...]] = (
    (
        "trends",
        ins.TrendsQuery,
        ins.TrendsResult,
        _INSIGHTS_RANGE | {"series": [{"event": "view"}]},
    ),
    (
        "funnels",
        ins.FunnelQuery,
        ins.FunnelResult,
        _INSIGHTS_RANGE | {"steps": [{"event": "view"}, {"event": "buy"}]},
    ),
    ("retention", ins.RetentionQuery, ins.RetentionResult, _INSIGHTS_RANGE),
    ("paths", ins.PathsQuery, ins.PathsResult, _INSIGHTS_RANGE | {"start": {"event": "view"}}),
    ("lifecycle", ins.LifecycleQuery, ins.LifecycleResult, _INSIGHTS_RANGE),
    ("stickiness", ins.StickinessQuery, ins.StickinessResult, _INSIGHTS_RANGE),
)

OPERATIONS: Final[dict[tuple[str, str], Operation]] = {
    ("get", "/v1/health"): Operation("public", Health, extra_errors=(503,)),
    ("get", "/v1/health/live"): Operation("public", Liveness, storage=False),
    ("get", "/v1/health/ready"): Operation("public", Readiness, extra_errors=(503,)),
    ("get", "/metrics"): Operation("admin", ("text/plain",), rate_limited=False),
    ("post", "/v1/events"): Operation(
        "write", IngestResponse, body=Event, body_example=_EVENT_EXAMPLE
    ),
    ("post", "/v1/events/batch"): Operation(
        "write",
        IngestResponse,
        body=Batch,
        body_example={"events": [_EVENT_EXAMPLE], "sentAt": "2026-01-01T12:00:01Z"},
    ),
    ("get", "/v1/events"): Operation(
        "read",
        EventPage,
        query=(
            *_FILTERS,
            _LIMIT,
            Query("cursor", {"type": "string"}, "``nextCursor`` of the previous page"),
        ),
    ),
    ("get", "/v1/stats"): Operation(
        "read",
        Stats,
        query=(
            *_FILTERS,
            Query(
                "bucket",
                {"type": "string", "enum": sorted(BUCKETS), "default": "hour"},
                "the series' bucket width",
            ),
            Query(
                "countBy",
                {"type": "string", "enum": ["id", "person"], "default": "person"},
                "``uniqueUsers`` counts persons (an anonymous visitor and the user it"
                " became are one) or raw ids (the userId, else the anonymousId)",
            ),
        ),
    ),
    **{
        ("post", f"/v1/insights/{kind}"): Operation(
            "read", answer, body=body, body_example=example, extra_errors=(422,)
        )
        for kind, body, answer, example in _INSIGHTS
    },
    ("get", "/v1/export"): Operation(
        "read",
        ("application/x-ndjson", "text/csv"),
        query=(
            Query(
                "format",
                {"type": "string", "enum": ["ndjson", "csv"], "default": "ndjson"},
                "NDJSON (one stored event per line) or CSV",
            ),
            *_FILTERS,
        ),
    ),
    ("get", "/v1/config"): Operation(None, ClientConfig),
    ("put", "/v1/config"): Operation(
        "admin", ClientConfig, body=ClientConfigUpdate, body_example={"batchSize": 100}
    ),
    ("get", "/v1/keys"): Operation("admin", KeyList),
    ("post", "/v1/keys"): Operation(
        "admin",
        NewKeyAnswer,
        status=201,
        body=KeyRequest,
        body_example={"scopes": ["write"], "name": "web app"},
    ),
    ("delete", "/v1/keys/{key_id}"): Operation(
        "admin", KeyRevoked, extra_errors=(404, 409), path={"key_id": _KEY_ID}
    ),
    ("post", "/v1/keys/{key_id}/rotate"): Operation(
        "admin",
        RotatedKey,
        status=201,
        body=RotateRequest,
        body_required=False,
        body_example={"overlapSeconds": 3600},
        extra_errors=(404,),
        path={"key_id": _KEY_ID},
    ),
    ("delete", "/v1/users/{user_id}"): Operation(
        "admin", UserDeleted, path={"user_id": _USER}, extra_errors=(422,)
    ),
    ("get", "/v1/users/{user_id}/export"): Operation(
        "admin", ("application/x-ndjson",), path={"user_id": _USER}, extra_errors=(422,)
    ),
    ("get", "/v1/audit"): Operation(
        "admin",
        AuditPage,
        query=(
            _LIMIT,
            Query(
                "before",
                {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                "only entries with a smaller ``seq`` (the last one of the previous page)",
            ),
        ),
    ),
    ("get", "/v1/persons"): Operation(
        "read",
        PersonSearch,
        query=(
            Query(
                "id",
                {"type": "string", "minLength": 1, "maxLength": 128, "example": "u-1"},
                "a userId, anonymousId or personId",
                required=True,
            ),
        ),
        extra_errors=(422,),
    ),
    ("get", "/v1/persons/{person_or_id}"): Operation(
        "read", Person, extra_errors=(404, 422), path={"person_or_id": _USER}
    ),
    ("get", "/v1/alerts"): Operation("read", Alerts),
    ("get", "/v1/alerts/rules"): Operation("admin", AlertRuleList),
    ("post", "/v1/alerts/rules"): Operation(
        "admin",
        AlertRuleView,
        status=201,
        body=AlertRuleRequest,
        body_example={
            "name": "signups stopped",
            "kind": "no_events",
            "eventType": "signup",
            "windowSeconds": 3600,
        },
        extra_errors=(409,),
    ),
    ("delete", "/v1/alerts/rules/{rule_id}"): Operation(
        "admin",
        (),
        status=204,
        extra_errors=(404,),
        path={"rule_id": {"example": "alr_0123456789ab"}},
    ),
    ("get", "/v1/reports"): Operation("read", rep.ReportList),
    ("post", "/v1/reports"): Operation(
        "admin",
        rep.ReportView,
        status=201,
        body=rep.ReportSpec,
        body_example=rep.REPORT_EXAMPLE,
        extra_errors=(409,),
    ),
    ("get", "/v1/reports/{report_id}"): Operation(
        "read", rep.ReportView, extra_errors=(404,), path=_REPORT
    ),
    ("put", "/v1/reports/{report_id}"): Operation(
        "admin",
        rep.ReportView,
        body=rep.ReportSpec,
        body_example=rep.REPORT_EXAMPLE,
        extra_errors=(404,),
        path=_REPORT,
    ),
    ("delete", "/v1/reports/{report_id}"): Operation(
        "admin", (), status=204, extra_errors=(404,), path=_REPORT
    ),
    ("post", "/v1/reports/{report_id}/send"): Operation(
        "admin", rep.ReportSent, extra_errors=(404,), path=_REPORT
    ),
    ("get", "/v1/dashboards"): Operation("read", DashboardList),
    ("get", "/v1/dashboards/{name}"): Operation(
        "read", Dashboard, extra_errors=(404,), path={"name": _NAME}, etag=True
    ),
    ("put", "/v1/dashboards/{name}"): Operation(
        "read",
        Dashboard,
        body=Dashboard,
        body_example=_DASHBOARD_EXAMPLE,
        extra_errors=(409, 412),
        path={"name": _NAME},
        etag=True,
    ),
    ("delete", "/v1/dashboards/{name}"): Operation(
        "read", (), status=204, extra_errors=(404,), path={"name": _NAME}
    ),
    **{
        ("post", f"/v1/{name}"): Operation(
            "write",
            SegmentAnswer,
            body=SegmentBatch,
            body_example={"batch": [_SEGMENT_EXAMPLE], "sentAt": "2026-01-01T12:00:01Z"},
            segment=True,
        )
        for name in ("batch", "import", "b")
    },
    **{
        ("post", f"/v1/{name}"): dataclasses.replace(
            _SEGMENT_SINGLE,
            body_example={**_SEGMENT_EXAMPLE, **_SEGMENT_NEEDS[kind][1], "type": kind},
            body_also=_SEGMENT_NEEDS[kind][0],
        )
        for name, kind in (
            *((k, k) for k in ("track", "identify", "page", "screen", "group", "alias")),
            *(("t", "track"), ("i", "identify"), ("p", "page"), ("s", "screen")),
            *(("g", "group"), ("a", "alias")),
        )
    },
}

_SCHEMAS: Final = [
    ErrorBody,
    SegmentError,
    *{
        t
        for op in OPERATIONS.values()
        for t in (op.answer, op.body)
        if isinstance(t, type) and issubclass(t, msgspec.Struct)
    },
]

_ERROR_TEXT: Final = {
    400: "Invalid query parameter, path parameter or body",
    401: "Missing, unknown, revoked or expired key",
    403: "The key lacks the scope",
    404: "No such resource in the key's project",
    409: "Conflict with the stored state",
    412: "If-Match names another version",
    413: "Body over the size limit",
    415: "Body not JSON, or an unsupported Content-Encoding",
    422: "Too large to answer: the query would read more events or memory than allowed"
    " (query_too_large), or the id's identity graph is too large (graph_too_large)",
    429: "Rate limited; retry after Retry-After seconds",
    503: "Storage unavailable or the server not ready; retry after Retry-After seconds",
}

_SECURITY_SCHEMES: Final = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: Authorization: Bearer ik_…",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same API key in X-API-Key",
    },
    "segmentBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "Segment routes: the write key as the Basic user name (or password)",
    },
}


_STRING: Final = {"type": "string"}
_RETRY_AFTER: Final = {
    "description": "seconds to wait before retrying",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(path: str, op: Operation) -> list[int]:
    codes = set(op.extra_errors)
    if op.storage:
        codes.add(503)
    if op.scope != "public":
        codes.add(401)
        if op.rate_limited:
            codes.add(429)
    if op.scope in ("write", "read", "admin"):
        codes.add(403)
    if op.query or "{" in path:
        codes.add(400)
    if op.body is not None:
        codes.update((400, 413, 415))
    return sorted(codes)


def _security(op: Operation) -> list[dict[str, list[str]]]:
    if op.scope == "public":
        return [{}, {"bearer": []}, {"apiKey": []}]  # a key shows more of /v1/health
    roles: list[str] = [] if op.scope is None else [op.scope]
    found: list[dict[str, list[str]]] = [{"bearer": roles}, {"apiKey": roles}]
    if op.segment:
        found.append({"segmentBasic": roles})
    return found


def _apply(path: str, doc_op: dict[str, Any], op: Operation) -> None:
    by_name = {p["name"]: p for p in doc_op.get("parameters", [])}
    for name, keywords in op.path.items():
        by_name[name]["schema"].update(keywords)
    for q in op.query:
        by_name.setdefault(
            q.name,
            {"name": q.name, "in": "query", "required": q.required, "schema": q.schema},
        )["description"] = q.description
    if by_name:
        doc_op["parameters"] = list(by_name.values())
    if op.body is not None:
        body_schema: dict[str, Any] = _ref(op.body.__name__)
        if op.body_also:
            body_schema = {"allOf": [body_schema], **op.body_also}
        media: dict[str, Any] = {"schema": body_schema}
        if op.body_example is not None:
            media["example"] = op.body_example
        doc_op["requestBody"] = {"required": op.body_required, "content": {JSON: media}}
    ok: dict[str, Any] = {"description": "Success"}
    if isinstance(op.answer, tuple):
        if op.answer:
            ok["content"] = {media: {"schema": _STRING} for media in op.answer}
    else:
        ok["content"] = {JSON: {"schema": _ref(op.answer.__name__)}}
    responses: dict[str, Any] = {str(op.status): ok}
    error = "SegmentError" if op.segment else "ErrorBody"
    for code in _errors(path, op):
        responses[str(code)] = {
            "description": _ERROR_TEXT[code],
            "content": {JSON: {"schema": _ref(error)}},
        }
        if code in (429, 503):  # (the probes' 503 is an answer, replaced below)
            responses[str(code)]["headers"] = {"Retry-After": _RETRY_AFTER}
    if op.etag:
        ok["headers"] = {"ETag": {"description": "the saved version", "schema": _STRING}}
    if op.scope == "public" and "503" in responses:  # answered as JSON status, not an error
        responses["503"] = {"description": _ERROR_TEXT[503], "content": ok["content"]}
    doc_op["responses"] = responses
    doc_op["security"] = _security(op)
    if op.scope in ("write", "read", "admin"):
        doc_op["x-required-scope"] = op.scope
        note = f"Needs a key with the `{op.scope}` scope (an admin key has every scope)."
    elif op.scope is None:
        note = "Needs a key of any scope."
    else:
        note = "Needs no key."
    if op.segment:
        note += " The write key may also come as Basic auth or as `writeKey` in the body."
    doc_op["description"] = (doc_op.get("description", "") + "\n\n" + note).strip()


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The document for ``app``; a route not in ``OPERATIONS`` keeps Litestar's bare entry
    (tests/test_openapi.py fails on it, the server does not)."""
    schema = copy.deepcopy(app.openapi_schema.to_schema())
    _, components = msgspec.json.schema_components(
        _SCHEMAS, ref_template="#/components/schemas/{name}"
    )
    schema.setdefault("components", {})["schemas"] = components
    for path, item in schema["paths"].items():
        for method, doc_op in item.items():
            if method not in ("get", "put", "post", "delete", "patch"):
                continue
            op = OPERATIONS.get((method, path))
            if op is not None:
                _apply(path, doc_op, op)
    schema["components"]["securitySchemes"] = _SECURITY_SCHEMES
    schema["security"] = [{"bearer": []}, {"apiKey": []}]
    return schema


def document_bytes(app: Litestar) -> bytes:
    """``openapi_document(app)`` as JSON, built once per app."""
    state = app_state(app)
    if state.openapi_json is None:
        state.openapi_json = msgspec.json.encode(openapi_document(app))
    return state.openapi_json


class DocumentPlugin(JsonRenderPlugin):
    """``/schema`` serves the same document as ``/openapi.json``, not Litestar's own."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return document_bytes(request.app)
