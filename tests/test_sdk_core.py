"""The sans-I/O core at byte level: request bytes, answer classification, the
delivery flow's steps and the network state machine. No sockets: this is the
part that both the thread worker and the asyncio task drive."""

from __future__ import annotations

import datetime as dt
import email.utils
import gzip
from collections.abc import Generator

import msgspec
import pytest

from innkt_analytics.sdk._config import BackendConfig
from innkt_analytics.sdk._transport import (
    DeliveryCore,
    HealthStatus,
    NetworkState,
    Outcome,
    RetryPolicy,
    Send,
    SendResult,
    Sleep,
    Step,
    TransportCore,
    Verdict,
    assemble_body,
    delivery_flow,
)
from innkt_analytics.shared._exceptions import ConnectionStateError
from innkt_analytics.shared._protocol import Event, encode_batch

SENT_AT = dt.datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=dt.UTC)


def events(n: int, start: int = 0) -> list[Event]:
    return [
        Event(
            event_id=f"e{i}",
            event_type="click",
            timestamp=dt.datetime(2026, 11, 27, 11, 59, tzinfo=dt.UTC),
            properties={"i": i},
        )
        for i in range(start, start + n)
    ]


def chunk(evs: list[Event]) -> bytes:
    return b",".join(msgspec.json.encode(e) for e in evs)


def test_assembled_body_is_byte_identical_to_encode_batch() -> None:
    evs = events(5)
    parts = [chunk(evs[:2]), chunk(evs[2:])]
    assert assemble_body(parts, SENT_AT) == encode_batch(evs, SENT_AT)


def test_batch_request_gzips_and_authenticates() -> None:
    core = TransportCore("http://h:1/", "ik_key", compression=True, compression_level=1)
    body = encode_batch(events(3), SENT_AT)
    url, headers, content = core.batch_request(body)
    assert url == "http://h:1/v1/events/batch"
    assert headers["Authorization"] == "Bearer ik_key"
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(content) == body
    # Deterministic bytes: no timestamp in the gzip header.
    assert core.batch_request(body)[2] == content
    plain = TransportCore("http://h:1", "k", compression=False)
    assert plain.batch_request(body)[2] == body
    assert "Content-Encoding" not in plain.batch_request(body)[1]


def classify(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> SendResult:
    return TransportCore("http://h", "k").classify(status, headers or {}, body, 0.01)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (400, Outcome.SPLIT),
        (401, Outcome.HALT),
        (403, Outcome.HALT),
        (404, Outcome.HALT),
        (301, Outcome.HALT),
        (405, Outcome.DROP),
        (415, Outcome.DROP),
        (422, Outcome.DROP),
        (408, Outcome.RETRY),
        (413, Outcome.SPLIT),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (504, Outcome.RETRY),
    ],
)
def test_classification(status: int, outcome: Outcome) -> None:
    result = classify(status, b'{"error":"e","message":"m"}')
    assert result.outcome is outcome
    assert result.status == status


def test_classify_reads_the_ingest_answer() -> None:
    body = b'{"accepted":2,"duplicates":1,"rejected":[{"index":1,"eventId":"x","error":"bad"}]}'
    result = classify(200, body)
    assert (result.accepted, result.duplicates) == (2, 1)
    assert [(r.index, r.event_id, r.error) for r in result.rejected] == [(1, "x", "bad")]
    assert classify(200, b"not json").outcome is Outcome.DELIVERED


def test_an_all_invalid_batch_is_rejected_not_split() -> None:
    body = (
        b'{"error":"invalid_batch","message":"m",'
        b'"rejected":[{"index":0,"eventId":"a","error":"e"}]}'
    )
    result = classify(400, body)
    assert result.outcome is Outcome.REJECTED
    assert result.rejected[0].event_id == "a"


def test_retry_after_from_header_or_body() -> None:
    assert classify(503, b"", {"retry-after": "4"}).retry_after == 4.0
    date = email.utils.format_datetime(
        dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120), usegmt=True
    )
    assert 100 < (classify(429, b"", {"retry-after": date}).retry_after or 0) <= 120
    body = b'{"error":"rate_limited","message":"m","retryAfter":2.5}'
    assert classify(429, body).retry_after == 2.5


def test_network_errors_are_retried() -> None:
    assert TransportCore.network_error(TimeoutError(), 1.0).reason == "timeout"
    result = TransportCore.network_error(ConnectionResetError("reset"), 0.1)
    assert (result.outcome, result.reason, result.status) == (Outcome.RETRY, "network", None)


def test_health_and_config_parsing() -> None:
    ok = TransportCore.parse_health(200, b'{"status":"ok","version":"1.2"}', 0.004)
    assert ok == HealthStatus(True, "ok", 4.0, "1.2")
    bad = TransportCore.parse_health(503, b'{"status":"degraded"}', 0.001)
    assert (bad.healthy, bad.status) == (False, "degraded")
    assert TransportCore.parse_config(200, b'{"batchSize":7,"version":3}') is not None
    assert TransportCore.parse_config(200, b'{"batchSize":0}') is None
    assert TransportCore.parse_config(401, b"{}") is None


# -- the delivery flow -------------------------------------------------------------------

POLICY = RetryPolicy(attempts=3, base=1.0, cap=8.0, max_retry_after=30.0, jitter=lambda: 1.0)


def ok(n: int) -> SendResult:
    return SendResult(Outcome.DELIVERED, 200, "ok", accepted=n)


def retry(retry_after: float | None = None, status: int | None = 503) -> SendResult:
    return SendResult(Outcome.RETRY, status, f"http_{status}", retry_after=retry_after)


def drive(
    flow: Generator[Step, SendResult | None, Verdict], answers: list[SendResult]
) -> tuple[list[Step], Verdict]:
    steps: list[Step] = []
    answers = list(answers)
    try:
        step = next(flow)
        while True:
            steps.append(step)
            step = flow.send(answers.pop(0) if isinstance(step, Send) else None)
    except StopIteration as stop:
        assert not answers, "the flow ended before using every answer"
        return steps, stop.value


def flow_for(
    evs: list[Event], policy: RetryPolicy = POLICY
) -> Generator[Step, SendResult | None, Verdict]:
    return delivery_flow([chunk(evs)], len(evs), policy, lambda: SENT_AT)


def test_flow_sends_the_exact_body_and_settles() -> None:
    evs = events(3)
    steps, verdict = drive(flow_for(evs), [ok(3)])
    assert steps == [Send(encode_batch(evs, SENT_AT), 3)]
    assert (verdict.settled, verdict.accepted, verdict.dropped) == (True, 3, [])


def test_flow_backs_off_and_honours_retry_after_as_a_clamped_floor() -> None:
    steps, verdict = drive(
        flow_for(events(2)), [retry(), retry(retry_after=5.0), retry(retry_after=999), ok(2)]
    )
    sleeps = [s.seconds for s in steps if isinstance(s, Sleep)]
    # Envelope 1, 2, 4 (jitter=1); the floor 5 lifts the second; 999 is clamped to 30.
    assert sleeps == [1.0, 5.0, 30.0]
    assert verdict.settled


def test_flow_gives_up_after_the_attempts_and_keeps_the_events() -> None:
    answers = [retry(retry_after=2.0)] * 4
    steps, verdict = drive(flow_for(events(2)), answers)
    assert sum(isinstance(s, Send) for s in steps) == 4  # 1 + 3 retries
    assert not verdict.settled
    assert verdict.last is not None
    assert verdict.last.retry_after == 2.0


def test_flow_does_not_retry_other_4xx() -> None:
    evs = events(2)
    drop = SendResult(Outcome.DROP, 422, "http_422", error="nope")
    steps, verdict = drive(flow_for(evs), [drop])
    assert len(steps) == 1
    assert verdict.settled
    assert [(d.event_id, d.reason) for d in verdict.dropped] == [
        ("e0", "http_422"),
        ("e1", "http_422"),
    ]
    halt = SendResult(Outcome.HALT, 401, "http_401")
    steps, verdict = drive(flow_for(evs), [halt])
    assert (len(steps), verdict.settled, verdict.last) == (1, False, halt)


def test_flow_splits_on_413_down_to_single_events() -> None:
    evs = events(5)
    too_big = SendResult(Outcome.SPLIT, 413, "http_413", error="too large")
    # 5 -> 413; halves 2 and 3: the 2 go through, the 3 -> 413 -> 1 ok and 2 -> 413 -> 1 ok, 1 413.
    answers = [too_big, ok(2), too_big, ok(1), too_big, ok(1), too_big]
    steps, verdict = drive(flow_for(evs), answers)
    bodies = [s.body for s in steps if isinstance(s, Send)]
    assert bodies[1] == encode_batch(evs[:2], SENT_AT)
    assert bodies[2] == encode_batch(evs[2:], SENT_AT)
    assert bodies[3] == encode_batch(evs[2:3], SENT_AT)
    assert verdict.settled
    assert verdict.accepted == 4
    assert [(d.event_id, d.reason) for d in verdict.dropped] == [("e4", "too_large")]


def test_flow_reports_rejections() -> None:
    body = b'{"accepted":1,"duplicates":0,"rejected":[{"index":1,"eventId":"e1","error":"bad"}]}'
    partial = TransportCore("http://h", "k").classify(200, {}, body, 0.0)
    _, verdict = drive(flow_for(events(2)), [partial])
    assert verdict.settled
    assert [(d.event_id, d.reason, d.detail) for d in verdict.dropped] == [
        ("e1", "rejected", "bad")
    ]


# -- the network state machine -----------------------------------------------------------


def core(**options: object) -> DeliveryCore:
    config = BackendConfig(
        base_url="http://h",
        api_key="k",
        retry_delay=1.0,
        max_retry_delay=8.0,
        **options,  # type: ignore[arg-type]
    )
    return DeliveryCore(config, now=100.0, jitter=lambda: 1.0)


def test_send_is_due_on_batch_size_bytes_interval_or_flush() -> None:
    c = core(batch_size=10, sync_interval=30.0, max_request_bytes=64 * 1024)
    assert not c.send_due(101.0, 0, 0, flush=True)
    assert not c.send_due(101.0, 9, 100, flush=False)
    assert c.send_due(101.0, 10, 100, flush=False)
    assert c.send_due(101.0, 1, 64 * 1024, flush=False)
    assert c.send_due(131.0, 1, 100, flush=False)
    assert c.send_due(101.0, 1, 100, flush=True)


def test_failures_go_offline_and_probes_back_off_until_healthy() -> None:
    c = core(offline_after_failures=2)
    failed = Verdict(settled=False, last=retry())
    c.settle(failed, 100.0)
    assert c.state is NetworkState.ONLINE
    c.settle(failed, 100.0)
    assert c.state is NetworkState.OFFLINE
    assert not c.send_due(200.0, 100, 0, flush=True)
    assert c.next_probe == 101.0
    assert not c.probe_due(100.5, flush=False)
    assert c.probe_due(100.5, flush=True)  # a flush probes at once
    down = HealthStatus(False, "unreachable", 1.0)
    c.on_probe(down, 101.0)
    assert c.next_probe == 103.0  # backoff 1, 2, 4 ...
    c.on_probe(down, 103.0)
    assert c.next_probe == 107.0
    c.on_probe(HealthStatus(True, "ok", 1.0), 107.0)
    assert c.state is NetworkState.ONLINE
    assert c.consecutive_failures == 0


def test_retry_after_holds_sending_and_probing() -> None:
    c = core()
    c.settle(Verdict(settled=False, last=retry(retry_after=20.0)), 100.0)
    assert c.state is NetworkState.OFFLINE
    assert c.next_probe == 120.0
    c.on_probe(HealthStatus(True, "ok", 1.0), 120.0)
    assert not c.send_due(119.0, 100, 0, flush=True)
    assert c.send_due(120.0, 100, 0, flush=True)


def test_auth_failure_halts_and_illegal_transitions_raise() -> None:
    c = core()
    c.settle(Verdict(settled=False, last=SendResult(Outcome.HALT, 401, "http_401")), 100.0)
    assert c.state is NetworkState.HALTED
    with pytest.raises(ConnectionStateError):
        c.transition(NetworkState.OFFLINE)
    c.transition(NetworkState.PAUSED)
    with pytest.raises(ConnectionStateError):
        c.transition(NetworkState.HALTED)
    c.transition(NetworkState.ONLINE)
    assert c.state is NetworkState.ONLINE


def test_status_counters_and_percentiles() -> None:
    c = core()
    for ms in range(1, 101):
        c.record(SendResult(Outcome.DELIVERED, 200, "ok", latency=ms / 1000))
    c.record(SendResult(Outcome.RETRY, None, "timeout", latency=5.0))
    c.settle(Verdict(accepted=7, duplicates=2), 100.0)
    status = c.snapshot((3, 300), 4, None, 9)
    assert (status.sent, status.accepted, status.duplicates) == (9, 7, 2)
    assert status.failed == {"timeout": 1}
    assert status.latency_p50_ms == pytest.approx(50.0)
    assert status.latency_p95_ms == pytest.approx(95.0)
    assert (status.queue_events, status.queue_bytes, status.buffered_events) == (3, 300, 4)
    assert status.config_version == 9
