"""Time-ordered event ids: UUIDv7 (RFC 9562) as canonical strings.

The id is the server's idempotency key, so it must be unique across processes
and across ``fork()``: the generator is seeded from ``os.urandom`` and reseeded
in every forked child, otherwise a parent and its child would produce the same
sequence and the server would discard the child's events as duplicates.
"""

from __future__ import annotations

import os
import random
import time

__all__ = ["uuid7"]

_rng = random.Random(os.urandom(32))
# (millisecond, "tttttttt-tttt-7") of the last call: most calls share a millisecond.
_prefix: tuple[int, str] = (-1, "")


def _reseed() -> None:
    _rng.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


def uuid7(timestamp: float | None = None) -> str:
    """A UUIDv7 string whose 48-bit prefix is ``timestamp`` (seconds) in milliseconds.

    Raises ``ValueError`` when the timestamp is negative or beyond year 10889.
    """
    global _prefix  # a cache of an immutable tuple, replaced atomically
    ms = int((time.time() if timestamp is None else timestamp) * 1000)
    cached_ms, prefix = _prefix
    if ms != cached_ms:
        if not 0 <= ms < 1 << 48:
            raise ValueError(f"timestamp {timestamp!r} out of the UUIDv7 range")
        t = f"{ms:012x}"
        prefix = f"{t[:8]}-{t[8:]}-7"
        _prefix = (ms, prefix)
    # 12 bits of rand_a, then the variant (0b10) and 62 bits of rand_b.
    r = _rng.getrandbits(74)
    return f"{prefix}{r >> 62:03x}-{((r >> 48) & 0x3FFF) | 0x8000:04x}-{r & 0xFFFFFFFFFFFF:012x}"
