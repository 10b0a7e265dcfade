"""Opt-out and consent controls of the backend services (a mixin of ``ServiceBase``).

The decisions live in ``_privacy.PrivacyFilter``; this part only persists the
user's choices and applies them to the running service: the hot path of
``track`` reads one flag (``_open``), and an opt-out also empties the queue.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from innkt_analytics.sdk._privacy import DEFAULT_CATEGORY, ConsentState, ConsentStore, PrivacyFilter
from innkt_analytics.sdk._queue import EventQueue
from innkt_analytics.shared._exceptions import ConnectionStateError

__all__ = ["PrivacyControls"]


class PrivacyControls:
    # Provided by ServiceBase; declared here for the type checker.
    _privacy: PrivacyFilter | None
    _consent_store: ConsentStore | None
    _opted_out: bool
    _open: bool
    _forked: bool
    _lock: threading.RLock
    _commit_lock: threading.Lock
    _ring: collections.deque[Any]
    _queue: EventQueue | None

    def _count_drop(self, reason: str, n: int = 1) -> bool:
        raise NotImplementedError

    def _running(self) -> bool:
        raise NotImplementedError

    def _change_privacy(self, change: Callable[[], None]) -> None:
        raise NotImplementedError

    # -- privacy ---------------------------------------------------------------------

    def opt_out(self) -> int:
        """Stop collecting, also across restarts: nothing is queued or sent until
        ``opt_in()``, and what is queued is deleted. Returns how many events were
        discarded. Raises ``StorageError`` if the choice cannot be saved (then
        nothing changed) and ``ConnectionStateError`` before ``initialize``.
        """
        privacy, store = self._privacy_parts()
        with self._lock:
            state = msgspec.structs.replace(privacy.consent, opted_out=True)
            store.save(state)
            privacy.consent = state
            self._opted_out = True
            self._open = False
        with self._commit_lock:
            pending = len(self._ring)
            self._ring.clear()
        queue = self._queue
        purged = queue.purge() if queue is not None else 0
        if pending + purged:
            self._count_drop("opted_out", pending + purged)
        return pending + purged

    def opt_in(self) -> None:
        """Collect again after ``opt_out()``; saved across restarts. Raises like ``opt_out``."""
        privacy, store = self._privacy_parts()

        def change() -> None:
            with self._lock:
                state = msgspec.structs.replace(privacy.consent, opted_out=False)
                store.save(state)
                privacy.consent = state
                self._opted_out = False
                self._open = self._running() and not self._forked

        self._change_privacy(change)

    def set_consent(self, category: str, granted: bool) -> None:
        """Grant or withdraw one consent category (events declare theirs in ``consent``;
        undeclared means ``analytics``). Saved across restarts. Raises like ``opt_out``.
        """
        privacy, store = self._privacy_parts()

        def change() -> None:
            with self._lock:
                current = privacy.granted()
                base = set(current) if current is not None else set()
                if current is None and not granted:
                    # "Everything granted" minus one needs the categories made explicit.
                    base = {DEFAULT_CATEGORY}
                base = base | {category} if granted else base - {category}
                state = msgspec.structs.replace(privacy.consent, granted=sorted(base))
                store.save(state)
                privacy.consent = state

        # Consent is judged as of ``track``: what was handed over before this call is
        # committed (or dropped) under the choices in force until now.
        self._change_privacy(change)

    def get_consent(self) -> ConsentState:
        """The saved choices: ``opted_out`` and the granted categories (None: not chosen)."""
        privacy, _ = self._privacy_parts()
        return msgspec.structs.replace(privacy.consent)

    def _privacy_parts(self) -> tuple[PrivacyFilter, ConsentStore]:
        if self._privacy is None or self._consent_store is None:
            raise ConnectionStateError("the service is not initialized")
        return self._privacy, self._consent_store
