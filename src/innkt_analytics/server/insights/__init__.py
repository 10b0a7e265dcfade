"""Insights (issue 15): trends, funnels, retention, paths and lifecycle over stored events.

``parse_query`` validates a JSON query, ``run`` answers it with DuckDB over an Arrow
table of events (``to_arrow``), and ``run_reference`` is the pure-Python oracle the
engine is tested against; ``_reference``'s docstring is the semantics of every query.
"""

from __future__ import annotations

from innkt_analytics.server.insights._engine import run
from innkt_analytics.server.insights._events import InsightEvent, to_arrow
from innkt_analytics.server.insights._model import (
    FunnelQuery,
    FunnelResult,
    LifecycleQuery,
    LifecycleResult,
    PathsQuery,
    PathsResult,
    Query,
    QueryError,
    QueryTooLarge,
    RetentionQuery,
    RetentionResult,
    TrendsQuery,
    TrendsResult,
    parse_query,
)
from innkt_analytics.server.insights._reference import run_reference

__all__ = [
    "FunnelQuery",
    "FunnelResult",
    "InsightEvent",
    "LifecycleQuery",
    "LifecycleResult",
    "PathsQuery",
    "PathsResult",
    "Query",
    "QueryError",
    "QueryTooLarge",
    "RetentionQuery",
    "RetentionResult",
    "TrendsQuery",
    "TrendsResult",
    "parse_query",
    "run",
    "run_reference",
    "to_arrow",
]
