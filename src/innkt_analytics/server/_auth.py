"""API keys: generation, hashing, lookup with a short cache, scope checks.

Keys are shown once and stored only as SHA-256 hashes. A presented key is
hashed and looked up by its hash; the final comparison uses
``hmac.compare_digest`` so it takes the same time wherever the keys differ.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

from innkt_analytics.server.storage import KeyRecord, Storage

__all__ = ["SCOPES", "KeyCache", "NewKey", "generate_key", "hash_key", "new_key_record"]

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


def new_key_record(project: str, scopes: frozenset[str], name: str = "") -> NewKey:
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
    )
    return NewKey(record=record, secret=secret)


class KeyCache:
    """Looks keys up by hash, caching hits for ``ttl`` seconds."""

    def __init__(self, storage: Storage, ttl: float) -> None:
        self._storage = storage
        self._ttl = ttl
        self._cache: dict[str, tuple[float, KeyRecord]] = {}

    async def lookup(self, presented: str) -> KeyRecord | None:
        """The active key record for a presented key, or None (unknown or revoked)."""
        if not presented.startswith(KEY_PREFIX) or len(presented) > 256:
            return None
        digest = hash_key(presented)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self._ttl:
            record: KeyRecord | None = hit[1]
        else:
            record = await self._storage.find_key(digest)
            if record is not None:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (now, record)
        if record is None or record.revoked_at is not None:
            return None
        if not hmac.compare_digest(record.key_hash, digest):
            return None
        return record

    def forget(self) -> None:
        self._cache.clear()
