"""Rate limits shared by every server instance: the token bucket lives in Redis.

Configured with ``INNKT_RATE_LIMIT_STORE=redis://host:port/db``. The bucket
arithmetic is the same as ``TokenBucket``'s, run atomically inside Redis by a
Lua script that reads Redis's own clock, so instances with skewed clocks still
share one bucket per API key.

When Redis cannot be reached the limiter does not fail requests: it falls back
to the per-instance buckets (each instance then allows the configured rate on
its own) and tries Redis again after ``recheck`` seconds. ``/v1/health`` shows
which mode is in force and why.

``redis`` is an optional dependency, imported only when a store is configured.
"""

from __future__ import annotations

import enum
import logging
import math
from typing import TYPE_CHECKING, Any, Final

from innkt_analytics.server._ratelimit import RateLimiter
from innkt_analytics.shared._exceptions import ConfigError

if TYPE_CHECKING:
    from litestar import Litestar

    from innkt_analytics.server._state import ServerState

__all__ = ["RedisRateLimiter", "SharedLimitState", "use_shared_rate_limits"]

log = logging.getLogger("innkt_analytics.server.ratelimit")

# KEYS[1] bucket; ARGV rate (tokens/s), burst, cost. Returns the wait in
# seconds as a string (Lua numbers would be truncated to integers).
_BUCKET_LUA: Final = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = burst
  updated = now
end
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class SharedLimitState(enum.Enum):
    """Where the buckets are: not yet tried, in Redis, or per instance after a failure."""

    UNKNOWN = "unknown"
    SHARED = "shared"
    LOCAL = "local"


class RedisRateLimiter(RateLimiter):
    """Token buckets per API key in Redis, shared by all instances.

    ``check`` (inherited, synchronous) is the per-instance fallback; the server
    calls ``acquire`` for HTTP requests and WebSocket handshakes alike.
    """

    def __init__(
        self,
        url: str,
        rate: float,
        burst: int,
        *,
        prefix: str = "innkt:ratelimit:",
        timeout: float = 0.25,
        recheck: float = 1.0,
    ) -> None:
        super().__init__(rate, burst)
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("rate_limit_store", f"expected a redis:// URL, not {url!r}")
        self.url = url
        self.prefix = prefix
        self._timeout = timeout
        self._recheck = recheck
        self._client: Any = None
        self._script: Any = None
        self.state = SharedLimitState.UNKNOWN
        self.reason: str | None = None
        self._retry_at = 0.0
        self.fallbacks = 0  # decisions taken locally because Redis was unreachable

    def _connect(self) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No client-side retries: a request must not wait on a dead Redis; the
        # fallback answers and Redis is tried again after ``recheck``.
        self._client = redis.asyncio.Redis.from_url(
            self.url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._script = self._client.register_script(_BUCKET_LUA)

    async def acquire(self, key: str, now: float, cost: float = 1.0) -> float:
        """0.0 when allowed, else the Retry-After in seconds (at least 1). Never raises
        for Redis trouble: it limits per instance instead.
        """
        if self.rate <= 0:
            return 0.0
        if self.state is SharedLimitState.LOCAL and now < self._retry_at:
            self.fallbacks += 1
            return self.check(key, now, cost)
        from redis.exceptions import RedisError

        try:
            if self._client is None:
                self._connect()
            raw = await self._script(
                keys=[self.prefix + key], args=[self.rate, self.burst, min(cost, self.burst)]
            )
            wait = float(raw)
        except (RedisError, OSError, TimeoutError, ValueError) as exc:
            if self.state is not SharedLimitState.LOCAL:
                log.warning("rate limits fall back to per-instance: Redis failed: %s", exc)
            self.state = SharedLimitState.LOCAL
            self.reason = f"{type(exc).__name__}: {exc}"
            self._retry_at = now + self._recheck
            self.fallbacks += 1
            return self.check(key, now, cost)
        if self.state is SharedLimitState.LOCAL:
            log.warning("rate limits are shared again through Redis")
        self.state = SharedLimitState.SHARED
        self.reason = None
        return 0.0 if wait <= 0.0 else float(max(1, math.ceil(wait)))

    async def health(self) -> dict[str, Any]:
        """The ``rateLimit`` section of ``/v1/health``."""
        return {
            "store": "redis",
            "state": self.state.value,
            "reason": self.reason,
            "fallbacks": self.fallbacks,
        }

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def use_shared_rate_limits(state: ServerState, app: Litestar) -> None:
    """Swap in the Redis limiter when ``settings.rate_limit_store`` is set.

    Raises ``ConfigError`` for a store that is not a redis URL.
    """
    settings = state.settings
    if not settings.rate_limit_store:
        return
    limiter = RedisRateLimiter(
        settings.rate_limit_store, settings.rate_limit_per_second, settings.rate_limit_burst
    )
    state.limiter = limiter
    state.health_sections["rateLimit"] = limiter.health
    app.on_shutdown.append(limiter.aclose)
