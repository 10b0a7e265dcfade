"""AnalyticsBackendService against the real server: delivery, status, health,
rejections, overflow, dynamic configuration, lifecycle."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from innkt_analytics.sdk._backend import AnalyticsBackendService, ServiceState
from innkt_analytics.sdk._config import OverflowPolicy
from innkt_analytics.sdk._queue import Dropped
from innkt_analytics.shared._exceptions import ConfigError, ConnectionStateError
from innkt_analytics.shared._protocol import Event
from tests._proxy import fast_config, queued, stored, wait_for
from tests._server import ServerProcess


def start(
    made: list[AnalyticsBackendService],
    server: ServerProcess | None,
    tmp_path: Path,
    *,
    key: str | None = None,
    url: str | None = None,
    on_drop: Any = None,
    **options: Any,
) -> AnalyticsBackendService:
    url = url or (server.url if server else "")
    key = key or (server.write_key if server else "")
    config = fast_config(url, key, tmp_path / "q.sqlite3", **options)
    service = AnalyticsBackendService(config, on_drop=on_drop)
    made.append(service)
    return service


def session() -> str:
    return "s-" + uuid.uuid4().hex


def test_tracked_events_arrive_exactly_once(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    service = start(services, shared_server, tmp_path, batch_size=100)
    sid = session()
    for i in range(1000):
        assert service.track("page_view", {"i": i}, session_id=sid, user_id="u1")
    assert service.flush(30)
    assert stored(shared_server.db_path, sid) == list(range(1000))
    status = service.get_status()
    assert (status.sent, status.accepted, status.queue_events) == (1000, 1000, 0)
    assert status.requests >= 10  # batch_size bounds each request
    assert status.latency_p50_ms is not None
    assert status.latency_p95_ms is not None
    assert status.latency_p50_ms <= status.latency_p95_ms
    assert status.online
    assert status.dropped == {}


def test_send_event_and_send_events(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    import datetime as dt

    service = start(services, shared_server, tmp_path)
    sid = session()
    now = dt.datetime.now(dt.UTC)
    made = [
        Event(event_id=uuid.uuid4().hex, event_type="login", timestamp=now, session_id=sid,
              properties={"i": i})
        for i in range(5)
    ]  # fmt: skip
    assert service.send_event(made[0])
    assert service.send_events(made[1:]) == 4
    assert service.send_event(made[0])  # the same event again: the server deduplicates
    assert service.flush(30)
    assert stored(shared_server.db_path, sid) == [0, 1, 2, 3, 4]
    assert service.get_status().duplicates == 1


def test_flush_batches_are_gzipped_on_the_wire(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    from tests._proxy import FaultProxy

    with FaultProxy(shared_server.port) as proxy:
        service = start(services, shared_server, tmp_path, url=proxy.url)
        service.track("x", {"i": 0}, session_id=session())
        assert service.flush(30)
        seen = proxy.requests("/v1/events/batch")
        assert seen
        assert seen[0].headers["content-encoding"] == "gzip"
        assert seen[0].headers["authorization"] == f"Bearer {shared_server.write_key}"


def test_server_rejections_are_reported_and_not_retried(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    import datetime as dt

    reported: list[Dropped] = []
    service = start(services, shared_server, tmp_path, on_drop=reported.extend)
    sid = session()
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(80):  # deeper than the server's nesting limit, fine for the SDK
        node["n"] = {}
        node = node["n"]
    now = dt.datetime.now(dt.UTC)
    bad = Event(event_id="deep-" + sid, event_type="x", timestamp=now, session_id=sid,
                properties=deep)  # fmt: skip
    good = Event(event_id="good-" + sid, event_type="x", timestamp=now, session_id=sid,
                 properties={"i": 1})  # fmt: skip
    service.send_events([bad, good])
    assert service.flush(30)
    assert stored(shared_server.db_path, sid) == [1]
    assert [(d.event_id, d.reason) for d in reported] == [("deep-" + sid, "rejected")]
    # A batch of only invalid events (the server answers 400 with the list).
    service.send_event(Event(event_id="deep2-" + sid, event_type="x", timestamp=now,
                             session_id=sid, properties=deep))  # fmt: skip
    assert service.flush(30)
    status = service.get_status()
    assert status.dropped == {"rejected": 2}
    assert status.queue_events == 0
    assert [d.event_id for d in reported] == ["deep-" + sid, "deep2-" + sid]


def test_local_validation_drops_are_counted(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    reported: list[Dropped] = []
    service = start(services, shared_server, tmp_path, on_drop=reported.extend,
                    max_event_bytes=2048)  # fmt: skip
    assert service.track("", {"i": 0})  # handed over; found invalid by the worker
    assert service.track("x", {"blob": "y" * 4096})
    assert service.track("x", {"o": object()})
    assert service.track(["not", "a", "name"])  # type: ignore[arg-type]
    assert not service.send_event({"eventType": "x"})  # type: ignore[arg-type]
    assert service.flush(10)
    assert service.get_status().dropped == {"invalid": 4, "too_large": 1}
    assert len(reported) == 4  # the non-Event never had an id to report


def test_overflow_is_counted_drop_oldest(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    service = start(services, shared_server, tmp_path, max_queue_events=100, batch_size=10)
    service.set_online(False)
    sid = session()
    for i in range(150):
        service.track("x", {"i": i}, session_id=sid)
    assert not service.flush(5)  # paused: kept on disk
    status = service.get_status()
    assert status.state == "paused"
    # Whole chunks are evicted, so a commit boundary inside the loop may cost a few
    # more than 50; every one of them is counted.
    evicted = status.dropped["queue_evicted"]
    assert evicted >= 50
    assert status.queue_events == 150 - evicted
    assert queued(tmp_path / "q.sqlite3") == 150 - evicted
    service.set_online(True)
    assert service.flush(30)
    assert stored(shared_server.db_path, sid) == list(range(evicted, 150))


def test_overflow_is_counted_drop_newest(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    service = start(
        services, shared_server, tmp_path, max_queue_events=100,
        overflow_policy=OverflowPolicy.DROP_NEWEST,
    )  # fmt: skip
    service.set_online(False)
    sid = session()
    for i in range(130):
        service.track("x", {"i": i}, session_id=sid)
    service.flush(1)
    assert service.get_status().dropped == {"queue_full": 30}
    service.set_online(True)
    assert service.flush(30)
    assert stored(shared_server.db_path, sid) == list(range(100))


def test_flush_leaves_everything_on_disk_when_it_cannot_deliver(
    tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    # Nothing listens on this port: every attempt fails fast.
    service = start(
        services, None, tmp_path, url="http://127.0.0.1:9", key="ik_x", retry_attempts=1
    )
    for i in range(500):
        service.track("x", {"i": i})
    assert not service.flush(5)
    assert queued(tmp_path / "q.sqlite3") == 500
    status = service.get_status()
    assert status.state == "offline"
    assert status.failed.get("network", 0) >= 2
    assert status.oldest_event_age is not None
    health = service.check_backend_health()
    assert not health.healthy
    assert health.status == "unreachable"


def test_health(shared_server: ServerProcess, tmp_path: Path,
                services: list[AnalyticsBackendService]) -> None:  # fmt: skip
    service = start(services, shared_server, tmp_path)
    health = service.check_backend_health()
    assert health.healthy
    assert health.status == "ok"
    assert health.latency_ms > 0
    admin = start(services, shared_server, tmp_path / "admin", key=shared_server.admin_key)
    assert admin.check_backend_health().version


def test_bad_key_halts_without_retrying_then_a_new_key_resumes(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    from tests._proxy import FaultProxy

    with FaultProxy(shared_server.port) as proxy:
        service = start(services, shared_server, tmp_path, url=proxy.url, key="ik_wrong")
        sid = session()
        for i in range(20):
            service.track("x", {"i": i}, session_id=sid)
        assert not service.flush(10)
        assert service.get_status().state == "halted"
        assert proxy.statuses("/v1/events") == [401]  # one request, no retry
        assert service.update_config(api_key=shared_server.write_key).api_key
        assert service.flush(30)
        assert stored(shared_server.db_path, sid) == list(range(20))
        assert proxy.statuses("/v1/events")[-1] == 200


def test_update_config_at_runtime(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    service = start(services, shared_server, tmp_path, batch_size=50)
    assert service.update_config(batch_size=5, disabled_event_types={"debug"}).batch_size == 5
    with pytest.raises(ConfigError) as info:
        service.update_config(batch_size=0)
    assert info.value.field == "batch_size"
    with pytest.raises(ConfigError) as info:
        service.update_config(queue_path=tmp_path / "other.sqlite3")
    assert info.value.field == "queue_path"
    assert not service.track("debug")
    sid = session()
    for i in range(20):
        service.track("x", {"i": i}, session_id=sid)
    assert service.flush(30)
    status = service.get_status()
    assert status.requests >= 4  # batches of at most 5
    assert status.dropped == {"disabled_type": 1}
    assert service.config.batch_size == 5


def test_remote_config_is_picked_up_without_restart(
    server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    service = start(services, server, tmp_path, config_refresh_interval=0.1, batch_size=50)
    answer = httpx.put(
        server.url + "/v1/config",
        headers=server.headers("admin"),
        json={
            "batchSize": 3,
            "syncInterval": 0.2,
            "samplingRate": 1.0,
            "disabledEventTypes": ["debug"],
        },
    )
    assert answer.status_code == 200, answer.text
    version = answer.json()["version"]
    assert wait_for(lambda: service.get_status().config_version == version)
    assert service.config.batch_size == 3
    assert service.config.sync_interval == 0.2
    assert not service.track("debug")
    sid = session()
    for i in range(9):
        service.track("x", {"i": i}, session_id=sid)
    assert service.flush(30)
    assert stored(server.db_path, sid) == list(range(9))
    assert service.get_status().requests >= 3


def test_sampling_zero_drops_and_counts(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    from innkt_analytics.shared._protocol import ClientConfig

    service = start(services, shared_server, tmp_path)
    assert service.apply_remote_config(ClientConfig(sampling_rate=0.0, version=5))
    assert not service.apply_remote_config(ClientConfig(sampling_rate=1.0, version=4))
    assert not service.apply_remote_config(ClientConfig(version=0))  # server defaults
    assert sum(service.track("x") for _ in range(100)) == 0
    assert service.get_status().dropped == {"sampled": 100}


def test_lifecycle(tmp_path: Path, shared_server: ServerProcess) -> None:
    instance = AnalyticsBackendService.get_instance()
    assert AnalyticsBackendService.get_instance() is instance
    assert not instance.track("x")  # not initialized: dropped and counted
    assert instance.get_status().dropped == {"not_initialized": 1}
    with pytest.raises(ConnectionStateError):
        instance.set_online(True)
    service = AnalyticsBackendService(
        fast_config(shared_server.url, shared_server.write_key, tmp_path / "q.sqlite3")
    )
    with pytest.raises(ConnectionStateError):
        service.initialize(service.config)
    assert service.shutdown(5)
    assert service.shutdown(5)  # idempotent
    assert not service.track("x")
    assert service.get_status().dropped == {"closed": 1}
    assert service.get_status().state == "online"
    assert service._lifecycle is ServiceState.CLOSED


@pytest.mark.parametrize(
    ("trigger", "options", "n", "size", "sent"),
    [
        ("batch_size", {"batch_size": 10, "sync_interval": 3600}, 10, 10, 10),
        ("sync_interval", {"batch_size": 2500, "sync_interval": 0.2}, 1, 10, 1),
        # ~1.2 KB events: 40 KiB of them fill one request (~33); the rest waits.
        (
            "max_request_bytes",
            {"batch_size": 2500, "sync_interval": 3600, "max_request_bytes": 40 * 1024},
            40,
            1100,
            30,
        ),
    ],
)
def test_batches_go_out_without_flush(
    shared_server: ServerProcess,
    tmp_path: Path,
    services: list[AnalyticsBackendService],
    trigger: str,
    options: dict[str, Any],
    n: int,
    size: int,
    sent: int,
) -> None:
    service = start(services, shared_server, tmp_path, **options)
    sid = session()
    for i in range(n):
        service.track("x", {"i": i, "pad": "p" * size}, session_id=sid)
    # No flush: the trigger under test alone must send (at least) a full batch.
    assert wait_for(lambda: len(stored(shared_server.db_path, sid)) >= sent, 20), trigger
    got = stored(shared_server.db_path, sid)
    assert got == list(range(len(got)))  # oldest first
    if trigger == "max_request_bytes":
        assert len(got) < n  # one full request went; the remainder waits for its turn
