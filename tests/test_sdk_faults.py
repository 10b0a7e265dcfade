"""Faults on the way to the real server: outages, injected 503/429 with Retry-After,
the server's own rate limit, connection resets, lost answers, blackholes and 413.
Every test ends with the same check: each tracked event is stored exactly once."""

from __future__ import annotations

import datetime as dt
import email.utils
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from innkt_analytics.sdk._backend import AnalyticsBackendService
from tests._proxy import Fault, FaultProxy, fast_config, stored, wait_for
from tests._server import ServerProcess

N = 200


@pytest.fixture
def proxy(shared_server: ServerProcess) -> Iterator[FaultProxy]:
    with FaultProxy(shared_server.port) as p:
        yield p


def start(
    made: list[AnalyticsBackendService], url: str, key: str, tmp_path: Path, **options: Any
) -> AnalyticsBackendService:
    service = AnalyticsBackendService(fast_config(url, key, tmp_path / "q.sqlite3", **options))
    made.append(service)
    return service


def track_many(service: AnalyticsBackendService, n: int = N) -> str:
    sid = "s-" + uuid.uuid4().hex
    for i in range(n):
        assert service.track("x", {"i": i}, session_id=sid)
    return sid


def test_server_down_then_up(
    server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    service = start(services, server.url, server.write_key, tmp_path, batch_size=20)
    sid = track_many(service, 100)
    assert service.flush(30)
    server.kill()
    track_more = "s-" + uuid.uuid4().hex
    for i in range(100, 300):
        service.track("x", {"i": i}, session_id=track_more)
    assert not service.flush(3)  # down: everything stays on disk
    assert service.get_status().state == "offline"
    server.start()  # same port, same database
    # Back online by itself: the health probe notices, the queue drains.
    assert wait_for(lambda: len(stored(server.db_path, track_more)) == 200, 60)
    assert service.flush(30)
    assert stored(server.db_path, sid) == list(range(100))
    assert stored(server.db_path, track_more) == list(range(100, 300))
    status = service.get_status()
    assert status.online
    assert status.failed.get("network", 0) >= 1
    assert status.dropped == {}


def test_503_with_retry_after_seconds_is_honoured(
    shared_server: ServerProcess,
    proxy: FaultProxy,
    tmp_path: Path,
    services: list[AnalyticsBackendService],
) -> None:
    proxy.respond(503, {"Retry-After": "1"}, b'{"error":"unavailable","message":"busy"}')
    service = start(services, proxy.url, shared_server.write_key, tmp_path)
    sid = track_many(service)
    assert service.flush(30)
    assert stored(shared_server.db_path, sid) == list(range(N))
    seen = proxy.requests("/v1/events/batch")
    assert proxy.statuses()[:2] == [503, 200]
    # Backoff alone would retry after at most 0.01 s: the 1 s gap is the server's floor.
    assert seen[1].at - seen[0].at >= 1.0
    assert service.get_status().failed == {"http_503": 1}


def test_429_with_retry_after_http_date_is_honoured(
    shared_server: ServerProcess,
    proxy: FaultProxy,
    tmp_path: Path,
    services: list[AnalyticsBackendService],
) -> None:
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    header = email.utils.format_datetime(when, usegmt=True)
    proxy.respond(429, {"Retry-After": header}, b'{"error":"rate_limited","message":"slow"}')
    service = start(services, proxy.url, shared_server.write_key, tmp_path)
    sid = track_many(service)
    assert service.flush(30)
    assert stored(shared_server.db_path, sid) == list(range(N))
    seen = proxy.requests("/v1/events/batch")
    assert seen[1].at - seen[0].at >= 1.0  # the date is 2..3 s ahead of the first request


def test_the_real_servers_rate_limit(
    server_factory: Any, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    server = server_factory(env={"INNKT_RATE_LIMIT_PER_SECOND": "2", "INNKT_RATE_LIMIT_BURST": "1"})
    with FaultProxy(server.port) as proxy:
        service = start(
            services, proxy.url, server.write_key, tmp_path, batch_size=10, retry_attempts=5
        )
        sid = track_many(service, 60)
        assert service.flush(60)
        assert stored(server.db_path, sid) == list(range(60))
        statuses = proxy.statuses()
        assert 429 in statuses
        seen = proxy.requests("/v1/events/batch")
        answers = [a for a in proxy.answers if a[1].startswith("/v1/events")]
        # After every 429 (Retry-After >= 1 s) the next request waited at least that long.
        for k, (at, _, status) in enumerate(answers[:-1]):
            if status == 429:
                assert seen[k + 1].at - at >= 0.9
        assert service.get_status().failed["http_429"] >= 1


def test_connection_reset_mid_request(
    shared_server: ServerProcess,
    proxy: FaultProxy,
    tmp_path: Path,
    services: list[AnalyticsBackendService],
) -> None:
    proxy.reset_next(3)
    service = start(services, proxy.url, shared_server.write_key, tmp_path, batch_size=50)
    sid = track_many(service)
    assert service.flush(30)
    assert stored(shared_server.db_path, sid) == list(range(N))
    status = service.get_status()
    assert status.failed == {"network": 3}
    assert status.duplicates == 0  # the server never saw the reset requests


def test_lost_responses_cause_no_loss_and_no_duplicate_rows(
    shared_server: ServerProcess,
    proxy: FaultProxy,
    tmp_path: Path,
    services: list[AnalyticsBackendService],
) -> None:
    proxy.lose_next_response(3)
    service = start(services, proxy.url, shared_server.write_key, tmp_path, batch_size=50)
    sid = track_many(service)
    assert service.flush(30)
    assert stored(shared_server.db_path, sid) == list(range(N))  # one row per event
    status = service.get_status()
    # The server stored the batch whose answers were lost; its resend came back as
    # duplicates, and only acknowledged answers count as sent.
    assert status.duplicates >= 50
    assert status.sent == N
    assert status.failed == {"network": 3}


def test_blackhole_times_out_goes_offline_and_recovers(
    shared_server: ServerProcess,
    proxy: FaultProxy,
    tmp_path: Path,
    services: list[AnalyticsBackendService],
) -> None:
    proxy.set_mode(Fault.BLACKHOLE)  # health probes too
    service = start(
        services, proxy.url, shared_server.write_key, tmp_path, timeout=0.3, retry_attempts=1
    )
    sid = track_many(service)
    assert not service.flush(3)
    status = service.get_status()
    assert status.state == "offline"
    assert status.failed.get("timeout", 0) >= 2
    proxy.set_mode(Fault.PASS)
    assert service.flush(30)
    assert stored(shared_server.db_path, sid) == list(range(N))


def test_slow_server_answers_after_the_timeout(
    shared_server: ServerProcess,
    proxy: FaultProxy,
    tmp_path: Path,
    services: list[AnalyticsBackendService],
) -> None:
    # Requests reach the server late, after the client gave up: stored, then resent.
    from tests._proxy import Rule

    proxy.queue(Rule(Fault.DELAY, delay=0.6, match="/v1/events"), times=2)
    service = start(services, proxy.url, shared_server.write_key, tmp_path, timeout=0.3)
    sid = track_many(service)
    assert service.flush(30)
    assert stored(shared_server.db_path, sid) == list(range(N))


def test_413_splits_the_batch(
    server_factory: Any, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    server = server_factory(env={"INNKT_MAX_BODY_BYTES": "6000"})
    # The client believes requests may be 64 KiB; the server says 413 above 6000 bytes.
    service = start(
        services, server.url, server.write_key, tmp_path,
        batch_size=100, compression=False, max_request_bytes=64 * 1024,
    )  # fmt: skip
    sid = track_many(service, 100)
    assert service.flush(30)
    assert stored(server.db_path, sid) == list(range(100))
    status = service.get_status()
    assert status.failed.get("http_413", 0) >= 1
    assert status.dropped == {}
