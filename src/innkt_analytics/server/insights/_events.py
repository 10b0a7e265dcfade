"""What insights read: one event record, its Arrow form, and the calendar of buckets.

Both the reference implementation and the DuckDB engine read the same records, and
both label buckets with ``bucket_labels``; each computes which bucket an event falls
in on its own (Python's ``zoneinfo`` against DuckDB's ICU), which the tests compare.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from innkt_analytics.server.storage import EventRow
from innkt_analytics.shared._protocol import EPOCH

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "InsightEvent",
    "arrow_schema",
    "bucket_labels",
    "local",
    "shift",
    "to_arrow",
    "truncate",
]


@dataclass(frozen=True, slots=True)
class InsightEvent:
    """One stored event as insights see it; ``timestamp`` is the corrected time in ms.

    The actor of per-user queries is ``person`` when set (the reference sets it from
    an id -> person mapping), else ``user_id``, or ``anonymous_id`` when there is none.
    """

    project: str
    event_id: str
    event_type: str
    timestamp: int
    user_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    person: str | None = None

    @property
    def actor(self) -> str | None:
        if self.person is not None:
            return self.person
        return self.user_id if self.user_id is not None else self.anonymous_id

    @classmethod
    def from_row(cls, project: str, row: EventRow) -> InsightEvent:
        """From a stored row: properties, context and deviceInfo come from its payload."""
        payload: dict[str, Any] = msgspec.json.decode(row.payload)
        return cls(
            project=project,
            event_id=row.event_id,
            event_type=row.event_type,
            timestamp=row.corrected,
            user_id=row.user_id,
            anonymous_id=row.anonymous_id,
            session_id=row.session_id,
            properties=payload.get("properties") or {},
            context=payload.get("context") or {},
            device=payload.get("deviceInfo") or {},
        )


def arrow_schema() -> pa.Schema:
    """The columns of the engine's input (pyarrow is imported on first use: the server
    starts ~0.3 s faster without pyarrow and DuckDB until the first insights query)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("seq", pa.int64()),  # position in the log: which of two duplicates is kept
            ("project", pa.string()),
            ("event_id", pa.string()),
            ("event_type", pa.string()),
            ("ts", pa.int64()),
            ("actor", pa.string()),
            ("session_id", pa.string()),
            # JSON text: DuckDB reads the values with its JSON functions
            ("properties", pa.string()),
            ("context", pa.string()),
            ("device", pa.string()),
        ]
    )


def to_arrow(events: Iterable[InsightEvent]) -> pa.Table:
    """The records as an Arrow table of ``arrow_schema()`` (the engine's input)."""
    import pyarrow as pa

    schema = arrow_schema()
    enc = msgspec.json.Encoder()
    cols: dict[str, list[Any]] = {name: [] for name in schema.names}
    for i, e in enumerate(events):
        cols["seq"].append(i)
        cols["project"].append(e.project)
        cols["event_id"].append(e.event_id)
        cols["event_type"].append(e.event_type)
        cols["ts"].append(e.timestamp)
        cols["actor"].append(e.actor)
        cols["session_id"].append(e.session_id)
        cols["properties"].append(enc.encode(e.properties).decode())
        cols["context"].append(enc.encode(e.context).decode())
        cols["device"].append(enc.encode(e.device).decode())
    return pa.table(cols, schema=schema)


def local(ms: int, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """Epoch ms as a naive wall-clock time in ``zone``."""
    return (EPOCH + dt.timedelta(milliseconds=ms)).astimezone(zone).replace(tzinfo=None)


def truncate(t: dt.datetime, interval: str) -> dt.datetime:
    """The start of the bucket holding wall-clock time ``t`` (weeks start on Monday)."""
    if interval == "minute":
        return t.replace(second=0, microsecond=0)
    if interval == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "day":
        return day
    if interval == "week":
        return day - dt.timedelta(days=day.weekday())
    return day.replace(day=1)


def shift(t: dt.datetime, interval: str, n: int) -> dt.datetime:
    """The bucket start ``n`` buckets after ``t`` (wall-clock arithmetic)."""
    if interval == "month":
        months = t.year * 12 + t.month - 1 + n
        return t.replace(year=months // 12, month=months % 12 + 1)
    step = {"minute": dt.timedelta(minutes=1), "hour": dt.timedelta(hours=1)}.get(
        interval, dt.timedelta(days=7 if interval == "week" else 1)
    )
    return t + step * n


def bucket_labels(start: int, end: int, interval: str, zone: zoneinfo.ZoneInfo) -> list[str]:
    """Every bucket of ``[start, end)``: from the one holding ``start`` to the one holding
    ``end - 1 ms``, as wall-clock ISO 8601 without offset.

    Wall-clock buckets mean a DST gap gives an empty hour and a repeated hour is one
    bucket holding both.
    """
    first = truncate(local(start, zone), interval)
    last = truncate(local(end - 1, zone), interval)
    out = []
    t = first
    while t <= last:
        out.append(label(t))
        t = shift(t, interval, 1)
    return out


def label(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds")
