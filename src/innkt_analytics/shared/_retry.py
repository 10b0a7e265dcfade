"""Retry policy as pure functions and generators of delays; nothing here sleeps.

``backoff()`` yields exponential delays with full jitter and a cap (the AWS
"full jitter" scheme: spreading retries uniformly over ``[0, min(cap, base·2ⁿ)]``
keeps a fleet of clients that failed together from retrying together).
``parse_retry_after()`` reads both forms of ``Retry-After``; ``with_floor()``
makes it a floor of the next delay, clamped to a maximum so that a hostile or
buggy server cannot park the client for days.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterator

__all__ = ["backoff", "parse_retry_after", "with_floor"]


def backoff(
    base: float,
    cap: float,
    *,
    factor: float = 2.0,
    jitter: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Yield delays ``jitter() * min(cap, base * factor**n)`` for n = 0, 1, 2, ... forever.

    ``jitter`` returns a number in [0, 1); pass ``lambda: 1.0`` for the upper
    envelope. Raises ``ValueError`` for a negative base or cap, or factor < 1.
    """
    if base < 0 or cap < 0:
        raise ValueError("base and cap must be >= 0")
    if factor < 1:
        raise ValueError("factor must be >= 1")
    ceiling = base
    while True:
        yield jitter() * min(cap, ceiling)
        # Stop growing once past the cap so the float never overflows to inf.
        if ceiling < cap:
            ceiling *= factor


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns None when the header is absent or unparsable; a date in the past
    gives 0.0. Never raises.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            return None
        return max(0.0, seconds)
    import email.utils  # only for an HTTP-date, which servers rarely send (~20 ms to import)

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; parsedate gives naive for "-0000".
        when = when.replace(tzinfo=dt.UTC)
    reference = dt.datetime.now(dt.UTC) if now is None else now
    return max(0.0, (when - reference).total_seconds())


def with_floor(delay: float, retry_after: float | None, maximum: float) -> float:
    """The delay to sleep: ``delay``, raised to ``retry_after`` (clamped to ``maximum``)."""
    if retry_after is None:
        return delay
    return max(delay, min(retry_after, maximum))
