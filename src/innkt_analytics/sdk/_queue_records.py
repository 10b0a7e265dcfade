"""What goes into the SDK's queue, free of I/O: records, chunks, drop reports.

``encode_records`` turns tracked records and ``Event``s into the JSON chunks the
queue stores (byte for byte what goes over the wire), validating each event and
reporting the ones it gives up; ``split_chunk`` and ``event_ids_of`` read a chunk
back. The queues themselves are in ``_queue.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import msgspec

from innkt_analytics.shared._ids import uuid7
from innkt_analytics.shared._protocol import Event

__all__ = [
    "Dropped",
    "PutResult",
    "QueuedChunk",
    "Tracked",
    "chunk_items",
    "encode_records",
    "event_ids_of",
    "plan_room",
    "split_chunk",
]

_raw_list: Final = msgspec.json.Decoder(list[msgspec.Raw])
_id_only: Final = msgspec.json.Decoder(list[dict[str, object]])


@dataclass(frozen=True, slots=True)
class QueuedChunk:
    """A claimed row: its id (the queue's order), comma-joined event JSON and count."""

    rowid: int
    payload: bytes
    count: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """An event given up for good, with the counter reason and the details."""

    event_id: str | None
    reason: str
    detail: str


@dataclass(slots=True)
class PutResult:
    """What ``put`` did: events stored, and the ids given up to stay within bounds."""

    stored: int = 0
    #: the highest row id written (0 when nothing was): ``flush`` waits up to here
    last_rowid: int = 0
    #: new events not stored (``DROP_NEWEST``)
    refused: list[str] = field(default_factory=list)
    #: the oldest events given up to make room (``DROP_OLDEST``): queued ones deleted,
    #: or the oldest of this put when it alone is larger than the bounds
    evicted: list[str] = field(default_factory=list)


def split_chunk(payload: bytes) -> list[bytes]:
    """The JSON of each event of a chunk. Raises ``msgspec.DecodeError`` on a corrupt one."""
    return [bytes(raw) for raw in _raw_list.decode(b"[" + payload + b"]")]


def event_ids_of(payload: bytes) -> list[str]:
    """The ``eventId`` of each event of a chunk (``""`` where there is none). Never raises."""
    try:
        items = _id_only.decode(b"[" + payload + b"]")
    except msgspec.DecodeError:
        return []
    return [str(item.get("eventId", "")) for item in items]


#: (timestamp, event_type, properties, session_id, user_id[, anonymous_id]): what
#: ``track`` hands over (the anonymous id since issue #19; 5-tuples still work)
Tracked: TypeAlias = tuple[float, Any, Any, Any, Any] | tuple[float, Any, Any, Any, Any, Any]
_encoder: Final = msgspec.json.Encoder()
_UTC: Final = dt.UTC


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 128


def _optional_id(value: object) -> bool:
    return value is None or _valid_id(value)


def _problem(event: Event) -> str:
    # The Struct constructor does not validate; these are the server's rules, checked
    # here so that a bad call is reported at once instead of after a round trip.
    if not _valid_id(event.event_id):
        return "eventId must be a string of 1..128 characters"
    if not _valid_id(event.event_type):
        return "eventType must be a string of 1..128 characters"
    if not (_optional_id(event.session_id) and _optional_id(event.user_id)):
        return "sessionId/userId must be strings of 1..128 characters"
    properties: object = event.properties  # typed dict, but callers pass anything
    if not isinstance(properties, dict):
        return "properties must be a dict"
    timestamp: object = event.timestamp
    if not isinstance(timestamp, dt.datetime) or timestamp.tzinfo is None:
        return "timestamp must be a timezone-aware datetime"
    return ""


def encode_records(
    pending: Sequence[Tracked | Event],
    session: str,
    max_event_bytes: int,
    transform: Callable[[Event], tuple[Event | None, str]] | None = None,
) -> tuple[list[tuple[str, bytes]], list[Dropped]]:
    """Turn handed-over records into ``(event_id, JSON)`` queue items.

    ``track`` records get their UUIDv7 (from the tracked time) and session here,
    in the worker, so the caller pays for neither. ``transform`` (the privacy
    filter) runs on each valid event before it is encoded, so nothing it removes
    or hashes ever reaches the disk; it returns ``(None, reason)`` to drop one.
    Invalid or oversized events come back as ``Dropped`` (reasons ``invalid``,
    ``too_large``, or the transform's). Never raises.
    """
    items: list[tuple[str, bytes]] = []
    dropped: list[Dropped] = []
    encode = _encoder.encode
    fromtimestamp = dt.datetime.fromtimestamp
    for record in pending:
        if isinstance(record, tuple):
            if len(record) == 6:
                ts, event_type, properties, session_id, user_id, anonymous_id = record
            else:
                ts, event_type, properties, session_id, user_id = record
                anonymous_id = None
            if session_id is None:
                session_id = session
            if properties is None:
                properties = {}
            event = Event(
                event_id=uuid7(ts),
                event_type=event_type,
                timestamp=fromtimestamp(ts, _UTC),
                session_id=session_id,
                user_id=user_id,
                anonymous_id=anonymous_id,
                properties=properties,
            )
            # The id and time are ours: only what the caller passed needs checking. This
            # inline test is the common case of _problem() at a fraction of its cost.
            ok = (
                type(event_type) is str
                and 0 < len(event_type) <= 128
                and type(properties) is dict
                and type(session_id) is str
                and 0 < len(session_id) <= 128
                and (user_id is None or (type(user_id) is str and 0 < len(user_id) <= 128))
                and (anonymous_id is None or type(anonymous_id) is str)
            )
            problem = "" if ok else _problem(event)
        else:
            event = record
            problem = _problem(event)
        eid = event.event_id if isinstance(event.event_id, str) else None
        if not problem and transform is not None:
            kept, reason = transform(event)
            if kept is None:
                dropped.append(Dropped(eid, reason, "privacy settings"))
                continue
            event = kept
        if not problem:
            try:
                data = encode(event)
            except (TypeError, ValueError, OverflowError) as exc:
                problem = f"cannot encode: {exc}"
        if problem:
            dropped.append(Dropped(eid, "invalid", problem))
        elif len(data) > max_event_bytes:
            dropped.append(Dropped(eid, "too_large", f"{len(data)} bytes > {max_event_bytes}"))
        else:
            items.append((event.event_id, data))
    return items, dropped


def plan_room(
    sizes: Sequence[int], events: int, nbytes: int, max_events: int, max_bytes: int
) -> int:
    """How many of ``sizes`` fit into the free room, counting from the first."""
    fit_events = fit_bytes = 0
    for size in sizes:
        if fit_events + 1 > max_events - events or fit_bytes + size > max_bytes - nbytes:
            break
        fit_events += 1
        fit_bytes += size
    return fit_events


def chunk_items(
    items: Sequence[tuple[str, bytes]], chunk_events: int, chunk_bytes: int
) -> Iterator[tuple[bytes, int]]:
    start = 0
    size = 0
    for i, (_, payload) in enumerate(items):
        grown = size + len(payload) + 1
        if i > start and (i - start >= chunk_events or grown > chunk_bytes):
            yield b",".join(p for _, p in items[start:i]), i - start
            start, grown = i, len(payload) + 1
        size = grown
    if start < len(items):
        yield b",".join(p for _, p in items[start:]), len(items) - start
