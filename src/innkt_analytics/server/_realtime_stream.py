"""The ``event`` stream of one project: a shared log read by per-connection cursors.

The dispatcher appends each stored batch once (``EventLog.append``: O(1) in the
number of subscribers, apart from waking the writers that sit idle). Each
connection's writer reads from its cursor: whatever accumulated since its last
frame goes out as one ``event`` message, so a busy stream costs frames per
subscriber per *writer turn*, not per batch. The log is bounded; a reader whose
cursor fell behind its start has lost those events and says so in a
``dropped`` notice.

``SendBudget`` caps what the event stream may cost an instance (frames and
bytes per second, debt-based token buckets): writers over budget sleep, their
batches merge, and when they fall behind the log they lose the oldest. That is
how ingestion keeps priority over fan-out — the stream degrades, the ingest
path does not. Nothing here does I/O; times are passed in.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Final, Protocol

__all__ = ["Entry", "EventLog", "Reader", "SendBudget"]

#: an event frame merges pending batches up to this size (one batch may be larger)
MERGE_BYTES: Final = 64 * 1024


class Entry:
    """One stored batch: its events' raw JSON, their types, and where it sits."""

    __slots__ = ("_frame", "_text", "first_event", "head", "index", "raws", "size", "types")

    def __init__(
        self, index: int, first_event: int, raws: list[bytes], types: list[str], head: str
    ) -> None:
        self.index = index
        #: ``{"type":"event","id":…,"timestamp":…`` of this batch's own message
        self.head = head
        #: events appended before this entry (a running count, for loss accounting)
        self.first_event = first_event
        self.raws = raws
        self.types = types
        self.size = sum(len(r) for r in raws) + len(raws)
        self._text: str | None = None
        self._frame: str | None = None

    @property
    def text(self) -> str:
        """The events as the inside of a JSON array, built once and shared by all readers."""
        if self._text is None:
            self._text = b",".join(self.raws).decode()
        return self._text

    @property
    def frame(self) -> str:
        """The whole message of this batch alone, minus ``,"seq":N}``: shared by readers."""
        if self._frame is None:
            self._frame = f'{self.head},"payload":{{"events":[{self.text}]}}'
        return self._frame

    def select(self, types: frozenset[str] | None) -> tuple[str, int]:
        """(JSON array inside, event count) of the events whose type is in ``types``."""
        if types is None:
            return self.text, len(self.raws)
        chosen = [r for r, t in zip(self.raws, self.types, strict=True) if t in types]
        return b",".join(chosen).decode(), len(chosen)


class Reader(Protocol):
    """What the log needs of a connection: its position, and a way to wake it."""

    cursor: int
    cursor_events: int

    def on_append(self) -> None:
        """A batch was appended while the reader was idle; it may read it right away."""


class EventLog:
    """The last ``max_entries`` batches (at most ``max_bytes``) of one project."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: collections.deque[Entry] = collections.deque()
        self.end = 0  # index of the next entry
        self.events = 0  # events ever appended
        self.size = 0
        self.idle: set[Reader] = set()

    @property
    def start(self) -> int:
        return self.entries[0].index if self.entries else self.end

    def attach(self, reader: Reader) -> None:
        """Start ``reader`` at the end: it gets what is appended from now on."""
        reader.cursor = self.end
        reader.cursor_events = self.events

    def append(self, raws: list[bytes], types: list[str], head: str) -> None:
        """Add a batch; ``head`` starts its message (see ``Entry.head``)."""
        if not raws:
            return
        entry = Entry(self.end, self.events, raws, types, head)
        self.entries.append(entry)
        self.end += 1
        self.events += len(raws)
        self.size += entry.size
        # Keep at least the newest entry, however large: a reader can always progress.
        while len(self.entries) > 1 and (
            len(self.entries) > self.max_entries or self.size > self.max_bytes
        ):
            self.size -= self.entries.popleft().size
        if self.idle:
            idle, self.idle = self.idle, set()
            for reader in idle:
                reader.on_append()

    def pending(self, reader: Reader) -> bool:
        return reader.cursor < self.end

    def pending_bytes(self, reader: Reader, limit: int = MERGE_BYTES) -> int:
        total = 0
        for entry in self._from(reader.cursor):
            total += entry.size
            if total >= limit:
                break
        return total

    def _from(self, cursor: int) -> Iterable[Entry]:
        first = max(cursor, self.start) - self.start
        for i in range(first, len(self.entries)):
            yield self.entries[i]

    def only_newest(self, reader: Reader) -> Entry | None:
        """The newest entry, if it is all ``reader`` has to read and nothing was lost."""
        if reader.cursor != self.end - 1 or not self.entries:
            return None
        return self.entries[-1]

    def advance(self, reader: Reader, entry: Entry) -> None:
        """Move ``reader`` past ``entry`` (which it has sent or had no use for)."""
        reader.cursor = entry.index + 1
        reader.cursor_events = entry.first_event + len(entry.raws)

    def read(self, reader: Reader, limit: int = MERGE_BYTES) -> tuple[int, list[Entry]]:
        """Advance ``reader``: (events it lost to eviction, entries to send now).

        Entries are taken up to ``limit`` bytes (always at least one).
        """
        lost = 0
        if reader.cursor < self.start:
            first = self.entries[0]
            lost = first.first_event - reader.cursor_events
            reader.cursor, reader.cursor_events = first.index, first.first_event
        taken: list[Entry] = []
        size = 0
        for entry in self._from(reader.cursor):
            if taken and size + entry.size > limit:
                break
            taken.append(entry)
            size += entry.size
        if taken:
            self.advance(reader, taken[-1])
        return lost, taken


class _Bucket:
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def refill(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return self.tokens

    def take(self, now: float, cost: float) -> float:
        # Debt-based: the cost is always taken; a negative balance is the wait.
        self.tokens = self.refill(now) - cost
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class SendBudget:
    """Frames and bytes per second the event stream may use on this instance."""

    def __init__(
        self,
        frames_per_second: float,
        bytes_per_second: float,
        now: float,
        *,
        burst_frames: float | None = None,
    ) -> None:
        # The burst lets a lone event reach that many subscribers at once; the rates
        # bound what a busy stream costs. Bytes get one second of burst.
        burst = frames_per_second if burst_frames is None else burst_frames
        self._frames = _Bucket(frames_per_second, burst, now)
        self._bytes = _Bucket(bytes_per_second, bytes_per_second, now)
        self.waited = 0.0

    def take_frame(self, now: float) -> float:
        """Charge one frame; returns how long to wait before building it."""
        wait = self._frames.take(now, 1)
        self.waited += wait
        return wait

    def try_take(self, now: float, size: int) -> bool:
        """Charge one frame of ``size`` bytes if that needs no wait; else charge nothing."""
        if self._frames.refill(now) < 1 or self._bytes.refill(now) < size:
            return False
        self._frames.tokens -= 1
        self._bytes.tokens -= size
        return True

    def take_bytes(self, now: float, size: int) -> float:
        """Charge a built frame's bytes; returns how long to wait before sending it."""
        wait = self._bytes.take(now, size)
        self.waited += wait
        return wait
