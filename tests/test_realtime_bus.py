"""The in-process event bus."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from innkt_analytics.sdk._bus import EventBus, default_bus


def test_publish_reaches_topic_then_wildcard_subscribers_in_order() -> None:
    bus = EventBus()
    calls: list[tuple[str, str, Any]] = []
    bus.subscribe("*", lambda t, p: calls.append(("all", t, p)))
    bus.subscribe("a", lambda t, p: calls.append(("a1", t, p)))
    bus.subscribe("a", lambda t, p: calls.append(("a2", t, p)))
    bus.subscribe("b", lambda t, p: calls.append(("b", t, p)))
    assert bus.publish("a", 1) == 3
    assert calls == [("a1", "a", 1), ("a2", "a", 1), ("all", "a", 1)]
    calls.clear()
    assert bus.publish("c", 2) == 1
    assert calls == [("all", "c", 2)]


def test_unsubscribe_and_cancel() -> None:
    bus = EventBus()
    seen: list[Any] = []
    sub = bus.subscribe("t", lambda _t, p: seen.append(p))
    other = bus.subscribe("t", lambda _t, p: seen.append(("other", p)))
    assert bus.subscribers("t") == 2
    assert sub.cancel()
    assert not sub.cancel()
    assert not bus.unsubscribe(sub)
    bus.publish("t", 1)
    assert seen == [("other", 1)]
    assert bus.unsubscribe(other)
    assert bus.publish("t", 2) == 0
    assert bus.subscribers("t") == 0
    with pytest.raises(ValueError, match="topic"):
        bus.subscribe("", lambda _t, _p: None)


def test_a_failing_handler_is_counted_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    seen: list[int] = []

    def broken(_topic: str, _payload: Any) -> None:
        raise RuntimeError("boom")

    bus.subscribe("t", broken)
    bus.subscribe("t", lambda _t, p: seen.append(p))
    assert bus.publish("t", 5) == 2
    assert seen == [5]
    assert bus.handler_errors == 1
    assert "boom" in caplog.text


def test_a_handler_may_unsubscribe_itself_while_being_called() -> None:
    bus = EventBus()
    seen: list[int] = []
    holder: list[Any] = []

    def once(_topic: str, payload: Any) -> None:
        seen.append(payload)
        holder[0].cancel()

    holder.append(bus.subscribe("t", once))
    bus.publish("t", 1)
    bus.publish("t", 2)
    assert seen == [1]


def test_concurrent_publish_and_subscribe_lose_nothing() -> None:
    bus = EventBus()
    lock = threading.Lock()
    counts: dict[int, int] = {}
    subs = []
    for i in range(8):

        def handler(_topic: str, _payload: Any, i: int = i) -> None:
            with lock:
                counts[i] = counts.get(i, 0) + 1

        subs.append(bus.subscribe("t", handler))
    churn_stop = threading.Event()

    def churn() -> None:
        # Subscribing and cancelling other handlers while publishing must not
        # disturb the eight steady subscribers.
        while not churn_stop.is_set():
            bus.subscribe("t", lambda _t, _p: None).cancel()

    def publisher() -> None:
        for _ in range(2000):
            bus.publish("t", None)

    churner = threading.Thread(target=churn)
    churner.start()
    threads = [threading.Thread(target=publisher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    churn_stop.set()
    churner.join()
    assert counts == {i: 8000 for i in range(8)}
    assert bus.published == 8000


def test_default_bus_is_one_per_process() -> None:
    assert default_bus() is default_bus()
