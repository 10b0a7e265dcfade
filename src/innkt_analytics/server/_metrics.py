"""The server's own counters, kept as plain numbers on the hot paths.

Ingest counts once per batch (never per event), requests once per response;
nothing here takes a lock or imports the exporter. ``_metrics_export`` turns
these numbers, and what the subsystems already count (the hub, the key cache,
storage health), into the Prometheus text format when ``/metrics`` is scraped.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import time
from typing import Final

__all__ = ["COMMIT_BUCKETS", "OUTCOMES", "Histogram", "ServerMetrics"]

#: ingest outcomes, per event: stored, already stored, invalid, of a deleted user
OUTCOMES: Final = ("accepted", "duplicate", "rejected", "suppressed")

#: commit latency bucket bounds (seconds): group commit takes ~1-50 ms when healthy
COMMIT_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """Cumulative-bucket histogram without locks (one event loop writes it)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class ServerMetrics:
    """Counters updated by the request, ingest and auth paths of one server process."""

    def __init__(self) -> None:
        #: (route template, method, status) -> responses
        self.requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.ingest_events = dict.fromkeys(OUTCOMES, 0)
        self.ingest_batches = 0
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        #: rate-limit decisions on authenticated requests
        self.rate_limit = {"allowed": 0, "limited": 0}
        # commits waiting for storage: id -> start (monotonic); depth and lag at scrape
        self._commits: dict[int, float] = {}
        self._ids = itertools.count()

    def request(self, route: str, method: str, status: int) -> None:
        self.requests[(route, method, status)] += 1

    def commit_started(self) -> int:
        token = next(self._ids)
        self._commits[token] = time.monotonic()
        return token

    def commit_done(self, token: int) -> None:
        started = self._commits.pop(token, None)
        if started is not None:
            self.commit_seconds.observe(time.monotonic() - started)

    def ingested(self, *, accepted: int, duplicate: int, rejected: int, suppressed: int) -> None:
        counts = self.ingest_events
        counts["accepted"] += accepted
        counts["duplicate"] += duplicate
        counts["rejected"] += rejected
        counts["suppressed"] += suppressed
        self.ingest_batches += 1

    def commit_queue(self) -> tuple[int, float]:
        """Batches waiting for their commit now, and how long the oldest has waited."""
        starts = list(self._commits.values())
        if not starts:
            return 0, 0.0
        return len(starts), max(0.0, time.monotonic() - min(starts))
