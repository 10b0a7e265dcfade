"""Insights query validation: a bad query is a QueryError naming the offending field.

The HTTP layer answers these with 400 and the message ``field: reason``.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import msgspec
import pytest

from innkt_analytics.server.insights import FunnelQuery, QueryError, TrendsQuery, parse_query

RANGE = {"dateFrom": "2026-03-01", "dateTo": "2026-03-08"}


def error(kind: str, body: Any) -> QueryError:
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    with pytest.raises(QueryError) as info:
        parse_query(kind, raw)
    return info.value


def steps(n: int) -> list[dict[str, Any]]:
    return [{"event": f"e{i}"} for i in range(n)]


@pytest.mark.parametrize(
    ("kind", "body", "field", "message"),
    [
        (
            "funnels",
            RANGE | {"steps": [{}, {}, {"filters": [{"key": "a", "op": "foo", "value": 1}]}]},
            "steps[2].filters[0].op",
            "unknown operator 'foo'",
        ),
        ("funnels", RANGE | {"steps": steps(1)}, "steps", "a funnel has between 2 and 10 steps"),
        ("funnels", RANGE | {"steps": steps(11)}, "steps", "a funnel has between 2 and 10 steps"),
        (
            "funnels",
            RANGE | {"steps": steps(2), "countBy": "x"},
            "countBy",
            "invalid enum value 'x'",
        ),
        (
            "funnels",
            RANGE | {"steps": steps(2), "windowSeconds": 0},
            "windowSeconds",
            "expected `int` >= 1",
        ),
        ("funnels", RANGE | {"stepz": []}, "stepz", "unknown field"),
        (
            "funnels",
            RANGE | {"steps": steps(3), "dropped": {"step": 4}},
            "dropped.step",
            "the funnel has 3 steps",
        ),
        (
            "funnels",
            RANGE | {"steps": steps(3), "dropped": {"step": 1}},
            "dropped.step",
            "expected `int` >= 2",
        ),
        ("funnels", RANGE, "steps", "required"),
        (
            "funnels",
            RANGE | {"steps": [{}, {"event": "x", "extra": 1}]},
            "steps[1].extra",
            "unknown field",
        ),
        (
            "trends",
            RANGE | {"series": [{}], "timezone": "Mars/Olympus"},
            "timezone",
            "unknown time zone 'Mars/Olympus'",
        ),
        (
            "trends",
            {"dateFrom": "yesterday", "dateTo": "2026-03-08", "series": [{}]},
            "dateFrom",
            "not an ISO 8601 date or time: 'yesterday'",
        ),
        (
            "trends",
            RANGE | {"dateTo": "2026-03-01", "series": [{}]},
            "dateTo",
            "must be after dateFrom",
        ),
        ("trends", RANGE | {"series": []}, "series", "between 1 and 10 series"),
        ("trends", RANGE | {"series": [{}] * 11}, "series", "between 1 and 10 series"),
        (
            "trends",
            RANGE | {"series": [{}, {"math": "mode"}]},
            "series[1].math",
            "unknown math 'mode'",
        ),
        (
            "trends",
            RANGE | {"series": [{"math": "p90"}]},
            "series[0].mathProperty",
            "required by math 'p90'",
        ),
        (
            "trends",
            RANGE | {"series": [{}], "interval": "minute"},
            "dateTo",
            "a range of more than 1500 minutes",
        ),
        (
            "trends",
            RANGE | {"series": [{}], "interval": "fortnight"},
            "interval",
            "invalid enum value 'fortnight'",
        ),
        (
            "trends",
            RANGE | {"series": [{"filters": [{"key": "a", "op": "gt", "value": "3"}]}]},
            "series[0].filters[0].value",
            "operator 'gt' needs a number",
        ),
        (
            "trends",
            RANGE | {"series": [{"filters": [{"key": "a", "op": "in", "value": 3}]}]},
            "series[0].filters[0].value",
            "a list of 1 to 500 values",
        ),
        (
            "trends",
            RANGE | {"series": [{"filters": [{"key": "a", "op": "is_set", "value": 3}]}]},
            "series[0].filters[0].value",
            "operator 'is_set' takes no value",
        ),
        (
            "trends",
            RANGE | {"series": [{"filters": [{"key": 'a"b', "op": "is_set"}]}]},
            "series[0].filters[0].key",
            "a property name of 1 to 200 characters without '\"' or '\\'",
        ),
        (
            "trends",
            RANGE | {"series": [{}], "breakdown": {"property": "plan", "limit": 51}},
            "breakdown.limit",
            "expected `int` <= 50",
        ),
        ("retention", RANGE | {"periods": 61}, "periods", "expected `int` <= 60"),
        ("retention", RANGE | {"period": "hour"}, "period", "invalid enum value 'hour'"),
        ("paths", RANGE | {"start": {}, "steps": 6}, "steps", "expected `int` <= 5"),
        (
            "paths",
            {"dateFrom": "2016-01-01", "dateTo": "2026-03-01", "start": {}},
            "dateTo",
            "a range of more than 3700 days",
        ),
        (
            "lifecycle",
            RANGE | {"event": {"filters": [{"key": "k", "op": "eq"}]}},
            "event.filters[0].value",
            "operator 'eq' needs one value",
        ),
        ("lifecycle", b"[1, 2]", "", "expected `object`, got `array`"),
        ("lifecycle", b"{", "", "not a JSON query: Input data was truncated"),
    ],
)
def test_bad_query_names_the_field(kind: str, body: Any, field: str, message: str) -> None:
    exc = error(kind, body)
    assert (exc.field, exc.message) == (field, message)
    assert str(exc) == (f"{field}: {message}" if field else message)


def test_defaults_and_local_times() -> None:
    q = parse_query("funnels", msgspec.json.encode(RANGE | {"steps": steps(2)}))
    assert isinstance(q, FunnelQuery)
    assert (q.window_seconds, q.count_by, q.timezone) == (14 * 86400, "person", "UTC")
    # "user", the former default, is the same as "person"
    q = parse_query("funnels", msgspec.json.encode(RANGE | {"steps": steps(2), "countBy": "user"}))
    assert isinstance(q, FunnelQuery)
    assert q.count_by == "person"
    # a date without an offset is midnight in the query's time zone; an offset wins
    body = {"dateFrom": "2026-03-01", "dateTo": "2026-03-02T00:00:00+00:00", "series": [{}]}
    q = parse_query("trends", msgspec.json.encode(body | {"timezone": "Asia/Kolkata"}))
    assert isinstance(q, TrendsQuery)
    assert q.range_ms() == (1772303400000, 1772409600000)  # 2026-02-28T18:30Z, 03-02T00:00Z


def test_bounds_are_inclusive() -> None:
    parse_query("funnels", msgspec.json.encode(RANGE | {"steps": steps(10)}))
    parse_query("trends", msgspec.json.encode(RANGE | {"series": [{}] * 10}))
    body = {"dateFrom": "2026-03-01T00:00", "dateTo": "2026-03-02T01:00", "series": [{}]}
    parse_query("trends", msgspec.json.encode(body | {"interval": "minute"}))  # exactly 1500


def test_the_server_starts_without_duckdb_and_pyarrow() -> None:
    """They cost ~0.3 s of every server start; the first insights query imports them."""
    code = (
        "import sys, innkt_analytics.server._app; "
        "print(sorted({'duckdb', 'pyarrow'} & sys.modules.keys()))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


_RANGE = {"dateFrom": "2026-01-01", "dateTo": "2026-01-08"}
_PAGE = {"event": "page"}
_WITH_FILTER = {"event": "page", "filters": [{"key": "plan", "op": "eq", "value": "pro"}]}


@pytest.mark.parametrize(
    ("kind", "body", "reads"),
    [
        ("trends", {"series": [_PAGE]}, False),
        ("trends", {"series": [_PAGE], "breakdown": {"property": "plan"}}, True),
        ("trends", {"series": [{**_PAGE, "math": "sum", "mathProperty": "n"}]}, True),
        ("trends", {"series": [_WITH_FILTER]}, True),
        ("trends", {"series": [_PAGE], "filters": _WITH_FILTER["filters"]}, True),
        ("funnels", {"steps": [_PAGE, {"event": "buy"}]}, False),
        ("funnels", {"steps": [_PAGE, {"event": "buy"}], "breakdown": {"property": "plan"}}, True),
        ("funnels", {"steps": [_PAGE, _WITH_FILTER]}, True),
        ("retention", {"target": _PAGE}, False),
        ("retention", {"target": _PAGE, "returning": _WITH_FILTER}, True),
        ("paths", {"start": _WITH_FILTER}, True),
        ("lifecycle", {"event": _PAGE}, False),
    ],
)
def test_reads_json_finds_every_use_of_the_events_json(
    kind: str, body: dict[str, Any], reads: bool
) -> None:
    """What decides whether the hot rows are loaded with their JSON: a query that
    reads a property must say so, wherever the property is."""
    from innkt_analytics.server.insights._model import reads_json

    query = parse_query(kind, msgspec.json.encode({**_RANGE, **body}))
    assert reads_json(query) is reads
