"""Insights (issue 15): trends, funnels, retention, paths and lifecycle over stored events.

``parse_query`` validates a JSON query, ``run`` answers it with DuckDB over an Arrow
table of events (``to_arrow``), and ``run_reference`` is the pure-Python oracle the
engine is tested against; ``_reference``'s docstring is the semantics of every query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from innkt_analytics.server.insights._engine import run

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


def __getattr__(name: str) -> Any:
    # ``run`` imports DuckDB and pyarrow (~0.3 s): only when an insights query runs
    if name == "run":
        from innkt_analytics.server.insights._engine import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
