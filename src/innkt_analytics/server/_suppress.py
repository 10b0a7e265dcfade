"""Suppressed (deleted) users: their new events are rejected with reason ``suppressed``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from innkt_analytics.server.storage import Storage
from innkt_analytics.shared._protocol import ParsedBatch, Rejection

if TYPE_CHECKING:  # _state builds the one Suppressions of a server
    from innkt_analytics.server._state import ServerState

__all__ = ["SUPPRESSED", "Suppressions", "suppressions_of"]

SUPPRESSED: Final = "suppressed"


class Suppressions:
    """Per-project suppressed user ids, cached for ``ttl`` seconds.

    Another instance's deletion is seen within ``ttl``; this instance's own
    deletions are seen at once (``forget``).
    """

    def __init__(self, storage: Storage, ttl: float = 2.0) -> None:
        self._storage = storage
        self._ttl = ttl
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    async def of(self, project: str) -> frozenset[str]:
        now = time.monotonic()
        hit = self._cache.get(project)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        users = frozenset(s.user_id for s in await self._storage.suppressed_users(project))
        self._cache[project] = (now, users)
        return users

    def forget(self, project: str) -> None:
        self._cache.pop(project, None)

    async def filter(self, project: str, parsed: ParsedBatch) -> None:
        """Move events of suppressed users from ``valid`` to ``rejected``, in place."""
        suppressed = await self.of(project)
        if not suppressed:
            return
        keep = []
        for v in parsed.valid:
            # a deleted person's anonymous ids are suppressed too, and an alias must
            # not link a deleted id again (docs/identity.md)
            previous = v.event.properties.get("previousId")
            if (
                v.event.user_id in suppressed
                or v.event.anonymous_id in suppressed
                or (
                    v.event.event_type == "alias"
                    and isinstance(previous, str)
                    and previous in suppressed
                )
            ):
                parsed.rejected.append(
                    Rejection(index=v.index, event_id=v.event.event_id, error=SUPPRESSED)
                )
            else:
                keep.append(v)
        parsed.valid = keep
        parsed.rejected.sort(key=lambda r: r.index)


def suppressions_of(state: ServerState) -> Suppressions:
    return state.suppressions
