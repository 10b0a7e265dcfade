"""An in-process event bus: services publish on topics, others subscribe.

The real-time service publishes every incoming message on the topic
``realtime.<type>`` (``realtime.config_update``, ``realtime.analytics_update``...),
so another part of the application can react without holding a reference to
the service. Handlers run synchronously in the publisher's thread, in the order
they subscribed; a handler that raises is logged and counted and never stops
the others or the publisher.

Thread-safe: subscribing and publishing may happen from any thread. Publishing
works on a snapshot of the subscribers (copy-on-write), so a handler may
subscribe or unsubscribe while it is being called.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Final

__all__ = ["EventBus", "Handler", "Subscription", "default_bus"]

log = logging.getLogger("innkt_analytics.bus")

Handler = Callable[[str, Any], None]
#: the topic that receives everything published, whatever its topic
ALL: Final = "*"


class Subscription:
    """What ``subscribe`` returns; ``cancel()`` (or ``bus.unsubscribe``) ends it."""

    __slots__ = ("_bus", "handler", "topic")

    def __init__(self, bus: EventBus, topic: str, handler: Handler) -> None:
        self._bus = bus
        self.topic = topic
        self.handler = handler

    def cancel(self) -> bool:
        """Unsubscribe; False when it was already cancelled."""
        return self._bus.unsubscribe(self)


class EventBus:
    """Topic-based publish/subscribe within one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, tuple[Subscription, ...]] = {}
        self.handler_errors = 0
        self.published = 0

    def subscribe(self, topic: str, handler: Handler) -> Subscription:
        """Call ``handler(topic, payload)`` for each publish on ``topic`` (``"*"``: all).

        Raises ``ValueError`` for an empty topic.
        """
        if not topic:
            raise ValueError("topic must be a non-empty string")
        sub = Subscription(self, topic, handler)
        with self._lock:
            self._subs[topic] = (*self._subs.get(topic, ()), sub)
        return sub

    def unsubscribe(self, subscription: Subscription) -> bool:
        """Remove one subscription; False when it was not subscribed."""
        with self._lock:
            current = self._subs.get(subscription.topic, ())
            if subscription not in current:
                return False
            rest = tuple(s for s in current if s is not subscription)
            if rest:
                self._subs[subscription.topic] = rest
            else:
                del self._subs[subscription.topic]
            return True

    def publish(self, topic: str, payload: Any) -> int:
        """Deliver ``payload`` to the topic's handlers, then to ``"*"`` handlers.

        Returns how many handlers were called. Never raises because of a handler.
        """
        with self._lock:
            targets = self._subs.get(topic, ()) + (self._subs.get(ALL, ()) if topic != ALL else ())
            self.published += 1
        for sub in targets:
            try:
                sub.handler(topic, payload)
            except Exception:
                # A subscriber's bug must not break the publisher (the WebSocket reader).
                with self._lock:
                    self.handler_errors += 1
                log.exception("event bus handler for %r failed", topic)
        return len(targets)

    def subscribers(self, topic: str) -> int:
        with self._lock:
            return len(self._subs.get(topic, ()))


_default_lock = threading.Lock()
_default: list[EventBus] = []


def default_bus() -> EventBus:
    """The process-wide bus services use unless given their own."""
    with _default_lock:
        if not _default:
            _default.append(EventBus())
        return _default[0]
