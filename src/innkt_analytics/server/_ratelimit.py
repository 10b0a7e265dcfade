"""Token-bucket rate limiting, sans-I/O: callers pass the clock in.

Every admission decision (an HTTP request, a WebSocket handshake) goes through
``acquire``: this per-instance limiter answers it at once, the Redis one
(``_ratelimit_redis``) from the bucket all instances share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RateLimiter", "TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; returns 0.0 on success, else seconds until it would succeed."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


class RateLimiter:
    """One bucket per key id. ``rate`` 0 disables limiting."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, TokenBucket] = {}

    async def acquire(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens of ``key``'s bucket: 0.0 when allowed, else the
        Retry-After in seconds (at least 1). The one call the server makes."""
        return self.check(key, now, cost)

    def check(self, key: str, now: float, cost: float = 1.0) -> float:
        """0.0 when allowed, else the Retry-After in seconds (rounded up, at least 1)."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
        wait = bucket.take(now, min(cost, self.burst))
        return 0.0 if wait == 0.0 else float(max(1, math.ceil(wait)))
