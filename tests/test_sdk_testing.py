"""The public testing helpers: what an app's own tests would do with them."""

from __future__ import annotations

from innkt_analytics.sdk._queue import Dropped
from innkt_analytics.shared._protocol import ClientConfig, Limits
from innkt_analytics.testing import CapturingTransport, capturing_service


def test_capturing_service_records_events_like_the_server() -> None:
    transport = CapturingTransport()
    service = capturing_service(transport, batch_size=10)
    try:
        for i in range(25):
            assert service.track("checkout", {"i": i}, user_id="u1")
        assert service.flush(5)
        assert [e.properties["i"] for e in transport.events] == list(range(25))
        assert {e.event_type for e in transport.events} == {"checkout"}
        assert len(transport.bodies) >= 3  # batch_size bounds each body
        assert len(set(transport.event_ids)) == 25
    finally:
        assert service.shutdown(5)


def test_fail_next_exercises_retries_and_offline() -> None:
    transport = CapturingTransport()
    service = capturing_service(transport, retry_attempts=1)
    try:
        transport.fail_next(2, 0)  # two network errors: the round fails, the service goes offline
        transport.healthy = False
        service.track("x")
        assert not service.flush(1)
        assert service.get_status().state == "offline"
        transport.healthy = True
        assert service.flush(5)
        assert len(transport.events) == 1
        assert service.get_status().failed == {"network": 2}
    finally:
        service.shutdown(5)


def test_capturing_transport_validates_with_the_server_rules() -> None:
    drops: list[Dropped] = []
    transport = CapturingTransport(limits=Limits(max_event_bytes=400))
    service = capturing_service(transport)
    service.on_drop = drops.extend
    try:
        service.track("x", {"pad": "y" * 600})  # fine for the SDK, too big for these limits
        service.track("x", {"i": 1})
        assert service.flush(5)
        assert [e.properties for e in transport.events] == [{"i": 1}]
        assert [d.reason for d in drops] == ["rejected"]
    finally:
        service.shutdown(5)


def test_remote_config_from_the_transport() -> None:
    transport = CapturingTransport(remote_config=ClientConfig(batch_size=4, version=2))
    service = capturing_service(transport, config_refresh_interval=0.05)
    try:
        service.track("warm-up")
        assert service.flush(5)
        assert service.get_status().config_version == 2
        assert service.config.batch_size == 4
    finally:
        service.shutdown(5)
