"""Live aggregates of one project for ``analytics_update``, over sliding windows.

Fed with every accepted event of the project — the ones this instance stored
and, through the fan-out channel, the ones the other instances stored — so
every instance computes the same figures without querying storage each second.
Windows are on server time (when the event was stored), which is what "live"
means for an offline-first SDK whose events may arrive hours after they
happened; how late they arrive is the ``ingestLag`` figure.

The windows live in memory: after a restart they fill up again over five
minutes. Durable figures come from ``GET /v1/stats``.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["ProjectWindow"]

WINDOW: Final = 300  # seconds: active sessions and top event types
MINUTE: Final = 60  # seconds: events per minute and ingest lag
TOP: Final = 10
#: sessions remembered per project; past it the oldest are forgotten first, so
#: ``activeSessions`` is a lower bound for a project with more live sessions
MAX_SESSIONS: Final = 200_000
LAG_SAMPLES: Final = 2048


class _Second:
    __slots__ = ("by_type", "count", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.count = 0
        self.by_type: dict[str, int] = {}


def _percentile(ordered: list[int], q: float) -> int | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class ProjectWindow:
    """Counts per second for five minutes, session last-seen times, recent ingest lags."""

    def __init__(self) -> None:
        self._seconds: collections.deque[_Second] = collections.deque()
        self._sessions: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._lags: collections.deque[tuple[int, int]] = collections.deque(maxlen=LAG_SAMPLES)
        self.total = 0

    def add(
        self,
        now: float,
        types: Sequence[str],
        sessions: Sequence[str | None],
        lags_ms: Sequence[int],
    ) -> None:
        """Count a batch of events stored at ``now`` (epoch seconds)."""
        second = int(now)
        if self._seconds and self._seconds[-1].second == second:
            bucket = self._seconds[-1]
        else:
            bucket = _Second(second)
            self._seconds.append(bucket)
            self._expire(second)
        bucket.count += len(types)
        self.total += len(types)
        by_type = bucket.by_type
        # Counted per distinct value: a batch has a few types and sessions, many times.
        for t, n in collections.Counter(types).items():
            by_type[t] = by_type.get(t, 0) + n
        seen = self._sessions
        for s in dict.fromkeys(sessions):
            if s is not None:
                seen[s] = second
                seen.move_to_end(s)
        while len(seen) > MAX_SESSIONS:
            seen.popitem(last=False)
        # A sample of the lags is enough for a median: keep at most 64 per batch.
        step = max(1, len(lags_ms) // 64)
        for lag in lags_ms[::step]:
            self._lags.append((second, lag))

    def _expire(self, second: int) -> None:
        while self._seconds and self._seconds[0].second <= second - WINDOW:
            self._seconds.popleft()
        seen = self._sessions
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > second - WINDOW:
                break
            seen.popitem(last=False)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The ``analytics_update`` payload figures at ``now`` (epoch seconds)."""
        second = int(now)
        self._expire(second)
        per_minute = 0
        window_total = 0
        by_type: dict[str, int] = {}
        for bucket in self._seconds:
            window_total += bucket.count
            if bucket.second > second - MINUTE:
                per_minute += bucket.count
            for t, n in bucket.by_type.items():
                by_type[t] = by_type.get(t, 0) + n
        top = sorted(by_type.items(), key=lambda item: (-item[1], item[0]))[:TOP]
        lags = sorted(lag for s, lag in self._lags if s > second - MINUTE)
        return {
            "eventsPerMinute": per_minute,
            "eventsLast5Minutes": window_total,
            "activeSessions": len(self._sessions),
            "topEventTypes": [{"eventType": t, "count": n} for t, n in top],
            "ingestLagMs": {
                "p50": _percentile(lags, 0.5),
                "p95": _percentile(lags, 0.95),
                "max": lags[-1] if lags else None,
            },
            "windowSeconds": WINDOW,
        }
