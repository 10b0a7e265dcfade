"""The insights query language: JSON bodies as msgspec Structs, camelCase on the wire.

``parse_query(kind, body)`` decodes and validates a request body and raises
``QueryError`` whose ``field`` is the path of the offending value (for example
``steps[2].filters[0].op``), so the HTTP layer can answer 400 naming it. Every
bound that keeps a query's cost predictable lives here: funnel steps, series,
periods, path depth, and the number of buckets a range may span per interval.

Times: ``dateFrom``/``dateTo`` are ISO 8601 (a date, or a date-time); one without an
offset is read in the query's ``timezone`` (IANA name), which also decides where days,
weeks (ISO weeks, from Monday) and months begin. The range is half-open
``[dateFrom, dateTo)`` on the events' corrected timestamps.

Actors: ``countBy`` is ``"person"`` (the default: the ids the identity graph joins
count as one actor) or ``"id"`` (each user id, or anonymous id, on its own); a funnel
may also count ``"session"``s, and takes ``"user"``, its former default, as
``"person"``.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterator
from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "INTERVALS",
    "MATHS",
    "MAX_BUCKETS",
    "OPERATORS",
    "Breakdown",
    "DroppedPage",
    "EventSpec",
    "FunnelQuery",
    "FunnelResult",
    "FunnelStep",
    "FunnelStepResult",
    "LifecycleQuery",
    "LifecycleResult",
    "PathEdge",
    "PathsQuery",
    "PathsResult",
    "PropertyFilter",
    "Query",
    "QueryError",
    "QueryTooLarge",
    "RetentionCohort",
    "RetentionQuery",
    "RetentionResult",
    "Series",
    "SeriesResult",
    "StickinessQuery",
    "StickinessResult",
    "TrendsQuery",
    "TrendsResult",
    "counts_persons",
    "parse_query",
    "property_keys",
]

OPERATORS: Final = frozenset(
    {"eq", "neq", "in", "contains", "gt", "gte", "lt", "lte", "is_set", "is_not_set"}
)
_NEEDS_NO_VALUE: Final = frozenset({"is_set", "is_not_set"})
_NUMERIC_OPS: Final = frozenset({"gt", "gte", "lt", "lte"})
#: what a series counts; the numeric ones need ``mathProperty``
MATHS: Final = frozenset(
    {"total", "unique_users", "unique_sessions", "sum", "avg", "min", "max"}
    | {"median", "p90", "p95", "p99"}
)
NUMERIC_MATHS: Final = MATHS - {"total", "unique_users", "unique_sessions"}
INTERVALS: Final = ("minute", "hour", "day", "week", "month")
#: a trends or lifecycle range may span at most this many buckets of its interval
MAX_BUCKETS: Final = 1500
MAX_SERIES: Final = 10
MAX_IN_VALUES: Final = 500
MAX_FILTERS: Final = 30
MAX_RETENTION_PERIODS: Final = 60
MAX_PATH_STEPS: Final = 5
#: funnels, retention and paths: the longest range, and the longest conversion window
MAX_RANGE: Final = dt.timedelta(days=3700)
MAX_WINDOW_SECONDS: Final = 366 * 86400
_APPROX_BUCKET: Final = {
    "minute": dt.timedelta(minutes=1),
    "hour": dt.timedelta(hours=1),
    "day": dt.timedelta(days=1),
    "week": dt.timedelta(days=7),
    "month": dt.timedelta(days=28),  # the shortest month: the bound is never too loose
}
# A property key is a top-level key; '"' and '\' are refused so a key always makes a
# plain quoted JSON path, never a path expression.
_KEY_RE: Final = re.compile(r'^[^"\\\x00-\x1f]{1,200}$')

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Scalar = str | bool | int | float


class QueryError(ValueError):
    """A query that cannot run: ``field`` is the path of the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class QueryTooLarge(Exception):
    """A query that would read more events or use more memory than allowed (HTTP 422)."""


class _S(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    pass


class PropertyFilter(_S, kw_only=True):
    """``{key, op, value, source}``: source is ``properties``, ``context`` or ``device``."""

    key: str
    op: str
    value: Scalar | list[Scalar] | None = None
    source: Literal["properties", "context", "device"] = "properties"


class EventSpec(_S, kw_only=True):
    """Which events: ``event`` is an event type (null: any event), with filters."""

    event: Name | None = None
    filters: list[PropertyFilter] = []


class Breakdown(_S, kw_only=True):
    """Split by a property's value: the ``limit`` most frequent values, the rest ``$other``."""

    property: str
    source: Literal["properties", "context", "device"] = "properties"
    limit: Annotated[int, msgspec.Meta(ge=1, le=50)] = 10


class _Ranged(_S, kw_only=True):
    date_from: str
    date_to: str
    timezone: str = "UTC"
    #: filters every event of the query must pass, on top of each step's or series'
    filters: list[PropertyFilter] = []
    #: who an actor is: a person of the identity graph, or each raw id
    count_by: Literal["person", "id"] = "person"

    def range_ms(self) -> tuple[int, int]:
        """``[from, to)`` as epoch milliseconds (validated by ``parse_query``)."""
        zone = zoneinfo.ZoneInfo(self.timezone)
        return _parse_time(self.date_from, zone), _parse_time(self.date_to, zone)


class Series(EventSpec, kw_only=True):
    math: str = "total"
    math_property: str | None = None
    math_source: Literal["properties", "context", "device"] = "properties"


class TrendsQuery(_Ranged, kw_only=True):
    series: list[Series]
    interval: Literal["minute", "hour", "day", "week", "month"] = "day"
    breakdown: Breakdown | None = None
    #: also compute every series over the equally long period just before the range
    compare: bool = False


class FunnelStep(EventSpec, kw_only=True):
    pass


class DroppedPage(_S, kw_only=True):
    """Which dropped actors to list: those who reached step ``step - 1`` (1-based) and
    not ``step``, by id, the ``limit`` after ``after``."""

    step: Annotated[int, msgspec.Meta(ge=2, le=10)]
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    after: str | None = None


class FunnelQuery(_Ranged, kw_only=True):
    steps: list[FunnelStep]
    window_seconds: Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW_SECONDS)] = 14 * 86400
    count_by: Literal["person", "id", "session", "user"] = "person"  # type: ignore[assignment]  # funnels add sessions
    breakdown: Breakdown | None = None
    dropped: DroppedPage | None = None


class RetentionQuery(_Ranged, kw_only=True):
    target: EventSpec = msgspec.field(default_factory=EventSpec)
    returning: EventSpec = msgspec.field(default_factory=EventSpec)
    period: Literal["day", "week", "month"] = "day"
    periods: Annotated[int, msgspec.Meta(ge=1, le=MAX_RETENTION_PERIODS)] = 8


class PathsQuery(_Ranged, kw_only=True):
    start: EventSpec
    direction: Literal["next", "previous"] = "next"
    steps: Annotated[int, msgspec.Meta(ge=1, le=MAX_PATH_STEPS)] = 3


class LifecycleQuery(_Ranged, kw_only=True):
    event: EventSpec = msgspec.field(default_factory=EventSpec)
    interval: Literal["hour", "day", "week", "month"] = "day"


class StickinessQuery(_Ranged, kw_only=True):
    event: EventSpec = msgspec.field(default_factory=EventSpec)
    interval: Literal["hour", "day", "week", "month"] = "day"


Query = TrendsQuery | FunnelQuery | RetentionQuery | PathsQuery | LifecycleQuery | StickinessQuery


# -- results ---------------------------------------------------------------------------


class _R(msgspec.Struct, rename="camel", kw_only=True):
    pass


Number = int | float | None


class SeriesResult(_R, kw_only=True):
    index: int
    breakdown_value: str | None = None
    values: list[Number]


class TrendsResult(_R, kw_only=True):
    #: each bucket's local start, ISO 8601 without offset, in the query's timezone
    buckets: list[str]
    series: list[SeriesResult]
    previous_buckets: list[str] | None = None
    previous: list[SeriesResult] | None = None


class FunnelStepResult(_R, kw_only=True):
    count: int
    conversion_rate: float
    step_conversion_rate: float
    dropped_off: int
    median_seconds: float | None
    p90_seconds: float | None


class FunnelBreakdownResult(_R, kw_only=True):
    breakdown_value: str | None
    steps: list[FunnelStepResult]


class FunnelResult(_R, kw_only=True):
    steps: list[FunnelStepResult]
    breakdown: list[FunnelBreakdownResult] | None = None
    #: the page of dropped actors' ids asked for with ``dropped``, in id order
    dropped: list[str] | None = None
    #: ``after`` for the next page; null on the last
    dropped_next: str | None = None


class RetentionCohort(_R, kw_only=True):
    start: str
    size: int
    #: actors returning in period 0, 1, …; periods that begin at or after dateTo are absent
    values: list[int]


class RetentionResult(_R, kw_only=True):
    cohorts: list[RetentionCohort]


class PathEdge(_R, kw_only=True):
    step: int
    source: str
    target: str
    count: int


class PathsResult(_R, kw_only=True):
    starts: int
    edges: list[PathEdge]


class StickinessResult(_R, kw_only=True):
    #: ``actors[k - 1]``: the actors active in exactly k of the range's buckets
    actors: list[int]


class LifecycleResult(_R, kw_only=True):
    buckets: list[str]
    new: list[int]
    returning: list[int]
    resurrecting: list[int]
    #: actors active in the previous bucket and not in this one, as negative numbers
    dormant: list[int]


# -- parsing and validation ------------------------------------------------------------

_KINDS: Final[dict[str, type[Query]]] = {
    "trends": TrendsQuery,
    "funnels": FunnelQuery,
    "retention": RetentionQuery,
    "paths": PathsQuery,
    "lifecycle": LifecycleQuery,
    "stickiness": StickinessQuery,
}
_DECODERS: Final = {k: msgspec.json.Decoder(t) for k, t in _KINDS.items()}
_AT_RE: Final = re.compile(r"^(?P<msg>.*) - at `\$\.?(?P<path>[^`]*)`$", re.S)
_NAMED_RE: Final = re.compile(
    r"^Object (?P<kind>contains unknown|missing required) field `(?P<name>[^`]*)`$"
)


def counts_persons(query: Query) -> bool:
    """Whether ``query``'s actors are persons (it needs the id -> person mapping)."""
    return query.count_by in ("person", "user")


def _parse_time(value: str, zone: zoneinfo.ZoneInfo) -> int:
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return int(parsed.timestamp() * 1000)


def _parts(value: object) -> Iterator[object]:
    """``value`` and every struct and list element inside it."""
    yield value
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            yield from _parts(getattr(value, name))
    elif isinstance(value, list):
        for v in value:
            yield from _parts(v)


def reads_json(value: object) -> bool:
    """Whether a query (or any part of one) reads the events' JSON: a property filter,
    a breakdown, a property's math. The storage's hot rows are then loaded with their
    JSON; otherwise without it (most of a hot row's bytes)."""
    return any(
        isinstance(v, PropertyFilter | Breakdown)
        or (isinstance(v, Series) and v.math_property is not None)
        for v in _parts(value)
    )


#: the series maths that read no property (a ``mathProperty`` sent with one is unread)
_COUNTS: Final = frozenset({"total", "unique_users", "unique_sessions"})


def property_keys(value: object) -> list[str]:
    """The ``properties`` keys a query (or any part of one) reads, each once, sorted:
    what a storage's property columns may answer (``_segments``)."""
    keys: set[str] = set()
    for v in _parts(value):
        if isinstance(v, PropertyFilter) and v.source == "properties":
            keys.add(v.key)
        elif isinstance(v, Breakdown) and v.source == "properties":
            keys.add(v.property)
        elif (
            isinstance(v, Series)
            and v.math not in _COUNTS
            and v.math_property is not None
            and v.math_source == "properties"
        ):
            keys.add(v.math_property)
    return sorted(keys)


def parse_query(kind: str, body: bytes) -> Query:
    """Decode and validate a query of ``kind`` (trends, funnels, retention, paths, lifecycle).

    Raises ``QueryError`` naming the offending field (``""`` for the body as a whole),
    and ``KeyError`` for an unknown kind.
    """
    decoder = _DECODERS[kind]
    try:
        query = decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _AT_RE.match(text)
        path, msg = (m["path"], m["msg"]) if m else ("", text)
        # msgspec names an unknown or missing field in the message and its object in
        # the path; the field's own path is what a client needs
        named = _NAMED_RE.match(msg)
        if named is not None:
            path = f"{path}.{named['name']}" if path else named["name"]
            msg = "unknown field" if named["kind"] == "contains unknown" else "required"
        raise QueryError(path, msg[:1].lower() + msg[1:]) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise QueryError("", f"not a JSON query: {exc}") from None
    validate(query)
    return query


def validate(query: Query) -> None:
    """The checks a schema cannot express. Raises ``QueryError``."""
    try:
        zone = zoneinfo.ZoneInfo(query.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise QueryError("timezone", f"unknown time zone {query.timezone!r}") from None
    times = []
    for name, value in (("dateFrom", query.date_from), ("dateTo", query.date_to)):
        try:
            times.append(_parse_time(value, zone))
        except (ValueError, OverflowError):
            raise QueryError(name, f"not an ISO 8601 date or time: {value!r}") from None
    start, end = times
    if isinstance(query, FunnelQuery) and query.count_by == "user":
        query.count_by = "person"  # the former name
    if end <= start:
        raise QueryError("dateTo", "must be after dateFrom")
    span = dt.timedelta(milliseconds=end - start)
    _filters("filters", query.filters)
    if isinstance(query, TrendsQuery):
        if not 1 <= len(query.series) <= MAX_SERIES:
            raise QueryError("series", f"between 1 and {MAX_SERIES} series")
        for i, series in enumerate(query.series):
            _series(f"series[{i}]", series)
        if span > _APPROX_BUCKET[query.interval] * MAX_BUCKETS:
            raise QueryError("dateTo", f"a range of more than {MAX_BUCKETS} {query.interval}s")
        if query.breakdown is not None:
            _key("breakdown.property", query.breakdown.property)
        return
    if isinstance(query, LifecycleQuery | StickinessQuery):
        if span > _APPROX_BUCKET[query.interval] * MAX_BUCKETS:
            raise QueryError("dateTo", f"a range of more than {MAX_BUCKETS} {query.interval}s")
        _filters("event.filters", query.event.filters)
        return
    if span > MAX_RANGE:
        raise QueryError("dateTo", f"a range of more than {MAX_RANGE.days} days")
    if isinstance(query, FunnelQuery):
        if not 2 <= len(query.steps) <= 10:
            raise QueryError("steps", "a funnel has between 2 and 10 steps")
        for i, step in enumerate(query.steps):
            _filters(f"steps[{i}].filters", step.filters)
        if query.breakdown is not None:
            _key("breakdown.property", query.breakdown.property)
        if query.dropped is not None and query.dropped.step > len(query.steps):
            raise QueryError("dropped.step", f"the funnel has {len(query.steps)} steps")
    elif isinstance(query, RetentionQuery):
        _filters("target.filters", query.target.filters)
        _filters("returning.filters", query.returning.filters)
    else:
        _filters("start.filters", query.start.filters)


def _series(path: str, series: Series) -> None:
    if series.math not in MATHS:
        raise QueryError(f"{path}.math", f"unknown math {series.math!r}")
    if series.math in NUMERIC_MATHS:
        if series.math_property is None:
            raise QueryError(f"{path}.mathProperty", f"required by math {series.math!r}")
        _key(f"{path}.mathProperty", series.math_property)
    _filters(f"{path}.filters", series.filters)


def _key(path: str, key: str) -> None:
    if not _KEY_RE.match(key):
        raise QueryError(path, "a property name of 1 to 200 characters without '\"' or '\\'")


def _filters(path: str, filters: list[PropertyFilter]) -> None:
    if len(filters) > MAX_FILTERS:
        raise QueryError(path, f"at most {MAX_FILTERS} filters")
    for i, f in enumerate(filters):
        here = f"{path}[{i}]"
        _key(f"{here}.key", f.key)
        if f.op not in OPERATORS:
            raise QueryError(f"{here}.op", f"unknown operator {f.op!r}")
        if f.op in _NEEDS_NO_VALUE:
            if f.value is not None:
                raise QueryError(f"{here}.value", f"operator {f.op!r} takes no value")
        elif f.op == "in":
            if not isinstance(f.value, list) or not 1 <= len(f.value) <= MAX_IN_VALUES:
                raise QueryError(f"{here}.value", f"a list of 1 to {MAX_IN_VALUES} values")
        elif f.op in _NUMERIC_OPS:
            if isinstance(f.value, bool) or not isinstance(f.value, int | float):
                raise QueryError(f"{here}.value", f"operator {f.op!r} needs a number")
        elif f.op == "contains":
            if not isinstance(f.value, str):
                raise QueryError(f"{here}.value", "operator 'contains' needs a string")
        elif f.value is None or isinstance(f.value, list):
            raise QueryError(f"{here}.value", f"operator {f.op!r} needs one value")
