"""API keys: generation, hashing, lookup with a short cache, scope checks.

Keys are shown once and stored only as SHA-256 hashes. A presented key is
hashed and looked up by its hash; the final comparison uses
``hmac.compare_digest`` so it takes the same time wherever the keys differ.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

from innkt_analytics.server.storage import KeyRecord, Storage

__all__ = [
    "SCOPES",
    "KeyCache",
    "KeyRefused",
    "NewKey",
    "Rotation",
    "generate_key",
    "hash_key",
    "new_key_record",
    "parse_duration",
    "rotate_key",
]

SCOPES: Final = frozenset({"write", "read", "admin"})
KEY_PREFIX: Final = "ik_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class NewKey:
    record: KeyRecord
    secret: str


def new_key_record(
    project: str, scopes: frozenset[str], name: str = "", *, expires_at: int | None = None
) -> NewKey:
    """Make a fresh key; ``secret`` must be shown to the user once and never stored."""
    unknown = scopes - SCOPES
    if unknown or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {sorted(SCOPES)}")
    secret = generate_key()
    record = KeyRecord(
        key_id="key_" + secrets.token_hex(6),
        project=project,
        name=name or "+".join(sorted(scopes)),
        scopes=scopes,
        key_hash=hash_key(secret),
        created_at=time.time_ns() // 1_000_000,
        expires_at=expires_at,
    )
    return NewKey(record=record, secret=secret)


@dataclass(frozen=True, slots=True)
class Rotation:
    """What ``rotate_key`` did: the old key as it is now, and its successor."""

    old: KeyRecord
    new: NewKey


async def rotate_key(
    storage: Storage, key_id: str, overlap_ms: int, *, project: str | None = None
) -> Rotation | None:
    """Give an active key a successor with the same project, scopes and name, and
    make the old key expire ``overlap_ms`` from now (never later than it would).

    A key that was made to expire after some lifetime gives its successor the same
    lifetime. None when there is no such active key (in ``project``, if given).
    Raises ``StorageError``.
    """
    now = time.time_ns() // 1_000_000
    old = next((k for k in await storage.list_keys(project) if k.key_id == key_id), None)
    if old is None or old.revoked_at is not None:
        return None
    if old.expires_at is not None and old.expires_at <= now:
        return None
    lifetime = None if old.expires_at is None else max(0, old.expires_at - old.created_at)
    new = new_key_record(
        old.project,
        old.scopes,
        old.name,
        expires_at=None if lifetime is None else now + lifetime,
    )
    # The successor first: if expiring the old key then fails, both keys still work.
    await storage.create_key(new.record)
    if not await storage.expire_key(key_id, now + overlap_ms):
        return None
    changed = next(k for k in await storage.list_keys(old.project) if k.key_id == key_id)
    return Rotation(old=changed, new=new)


_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` or a bare number of
    seconds. Raises ``ValueError``.
    """
    value = text.strip().lower()
    factor = _DURATION_UNITS.get(value[-1:], 0)
    number = value[:-1] if factor else value
    try:
        seconds = float(number) * (factor or 1)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 30m, 12h, 7d)") from None
    if not 0 <= seconds < 100 * 365 * 86_400:
        raise ValueError(f"duration out of range: {text!r}")
    return seconds


class KeyRefused(Exception):
    """Why a presented key is not accepted: ``code`` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class KeyCache:
    """Looks keys up by hash, caching hits for ``ttl`` seconds, and notes their use.

    Uses are kept in memory (one dict store per request) and written by
    ``flush_use()`` in one batch: the server calls it periodically and on
    shutdown, so ``last_used_at`` is exact to that period.
    """

    def __init__(self, storage: Storage, ttl: float) -> None:
        self._storage = storage
        self._ttl = ttl
        self._cache: dict[str, tuple[float, KeyRecord]] = {}
        self._used: dict[str, int] = {}
        #: lookups answered from the cache, and those that went to storage (/metrics)
        self.hits = 0
        self.misses = 0

    async def lookup(self, presented: str) -> KeyRecord | None:
        """The active key record for a presented key, or None (unknown, revoked, expired)."""
        try:
            return await self.check(presented)
        except KeyRefused:
            return None

    async def check(self, presented: str) -> KeyRecord:
        """The active key record for a presented key, its use noted.

        Raises ``KeyRefused``: ``key_expired`` for a key past its expiry (a rotated
        key whose overlap ended), ``unauthorized`` for an unknown or revoked one.
        """
        record = await self._find(presented)
        if record is None or record.revoked_at is not None:
            raise KeyRefused("unauthorized", "invalid or revoked API key")
        now_ms = time.time_ns() // 1_000_000
        expires = record.expires_at
        if expires is not None and expires <= now_ms:
            at = dt.datetime.fromtimestamp(expires / 1000, dt.UTC)
            raise KeyRefused(
                "key_expired",
                f"API key {record.key_id} expired at {at.isoformat(timespec='seconds')};"
                " use the key that replaced it",
            )
        self._used[record.key_id] = now_ms
        return record

    async def flush_use(self) -> None:
        """Write the noted uses (``last_used_at``). Raises ``StorageError``; the uses
        are kept for the next attempt then."""
        used, self._used = self._used, {}
        try:
            await self._storage.record_key_use(used)
        except BaseException:
            for key_id, at in used.items():
                self._used[key_id] = max(at, self._used.get(key_id, 0))
            raise

    async def _find(self, presented: str) -> KeyRecord | None:
        if not presented.startswith(KEY_PREFIX) or len(presented) > 256:
            return None
        digest = hash_key(presented)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self._ttl:
            self.hits += 1
            record: KeyRecord | None = hit[1]
        else:
            self.misses += 1
            record = await self._storage.find_key(digest)
            if record is not None:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (now, record)
        if record is None:
            return None
        if not hmac.compare_digest(record.key_hash, digest):
            return None
        return record

    def forget(self) -> None:
        self._cache.clear()
