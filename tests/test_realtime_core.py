"""The sans-I/O real-time session, driven with a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from innkt_analytics.sdk._realtime_session import Action, Failure, RealTimeConfig, RealTimeSession
from innkt_analytics.shared._exceptions import ConfigError, ConnectionStateError
from innkt_analytics.shared._protocol import ClientConfig, Envelope, ProtocolError
from innkt_analytics.shared._realtime_codec import (
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    ConnectionState,
    Prepared,
    StateMachine,
    decode_envelope,
    encode_envelope,
    make_envelope,
    reconnect_delays,
)

URL = "ws://127.0.0.1:1/v1/realtime"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def config(**overrides: Any) -> RealTimeConfig:
    options: dict[str, Any] = {
        "websocket_url": URL,
        "api_key": "ik_test",
        "reconnect_interval": 1.0,
        "max_reconnect_attempts": 3,
        "max_reconnect_delay": 4.0,
        "heartbeat_interval": 10.0,
        "connection_timeout": 5.0,
    }
    options.update(overrides)
    return RealTimeConfig(**options)


def opened(cfg: RealTimeConfig | None = None, now: float = 100.0) -> RealTimeSession:
    session = RealTimeSession(cfg or config(), jitter=lambda: 1.0)
    session.connect_started(now)
    session.connection_opened(now)
    return session


def frames(session: RealTimeSession) -> list[dict[str, Any]]:
    return [json.loads(f) for f in session.data_to_send()]


def server_message(type: str, payload: Any = None, seq: int | None = None, id: str = "") -> str:
    env = make_envelope(type, payload, id=id or None)
    env.seq = seq
    return encode_envelope(env)


# -- envelope codec ---------------------------------------------------------------------


@given(
    type=st.sampled_from(["event", "pong", "x" * 64]),
    payload=json_values,
    seq=st.integers(0, 2**40),
)
def test_prepared_with_seq_is_the_envelope_with_that_seq(type: str, payload: Any, seq: int) -> None:
    env = make_envelope(type, payload)
    text = Prepared.of(env).with_seq(seq)
    decoded = decode_envelope(text, 1 << 20)
    assert decoded == Envelope(
        type=type, id=env.id, timestamp=env.timestamp, payload=payload, seq=seq
    )


def test_prepared_ignores_the_envelopes_own_seq() -> None:
    env = make_envelope("ping", {"a": 1})
    env.seq = 99
    assert json.loads(Prepared.of(env).with_seq(3))["seq"] == 3


@given(payload=json_values)
def test_prepared_from_payload_json_matches_a_full_encode(payload: Any) -> None:
    raw = msgspec.json.encode(payload)
    prepared = Prepared.from_payload_json("event", "id1", "2026-01-01T00:00:00.000+00:00", raw)
    assert json.loads(prepared.with_seq(7)) == {
        "type": "event",
        "id": "id1",
        "timestamp": "2026-01-01T00:00:00.000+00:00",
        "payload": payload,
        "seq": 7,
    }


def test_decode_envelope_limits_and_errors() -> None:
    ok = decode_envelope('{"type":"ping","id":"a"}', 100)
    assert (ok.type, ok.id, ok.payload, ok.seq) == ("ping", "a", None, None)
    with pytest.raises(ProtocolError) as big:
        decode_envelope('{"type":"ping","payload":"' + "x" * 200 + '"}', 100)
    assert (big.value.status, big.value.code) == (413, "message_too_large")
    # the limit counts UTF-8 bytes, not characters
    with pytest.raises(ProtocolError):
        decode_envelope('{"type":"' + "é" * 40 + '"}', 60)
    for bad in (
        "not json",
        "[]",
        '{"id":"no type"}',
        '{"type":""}',
        '{"type":"a","seq":"x"}',
        b"\xff",
    ):
        with pytest.raises(ProtocolError) as exc:
            decode_envelope(bad, 1000)
        assert (exc.value.status, exc.value.code) == (400, "invalid_message")


# -- state machines ---------------------------------------------------------------------


@pytest.mark.parametrize("table", [CLIENT_TRANSITIONS, SERVER_TRANSITIONS])
def test_every_transition_outside_the_table_raises(table: Any) -> None:
    for start, end in itertools.product(table, ConnectionState):
        machine = StateMachine(table, start)
        if end in table[start]:
            assert machine.to(end) is start
            assert machine.state is end
        else:
            with pytest.raises(ConnectionStateError, match=f"{start.value} -> {end.value}"):
                machine.to(end)
            assert machine.state is start


def test_session_refuses_illegal_lifecycle_calls() -> None:
    session = RealTimeSession(config())
    with pytest.raises(ConnectionStateError):
        session.connection_opened(0.0)  # never started connecting
    session.connect_started(0.0)
    with pytest.raises(ConnectionStateError):
        session.connect_started(0.0)  # already connecting
    session.connection_opened(0.0)
    session.close_started()
    with pytest.raises(ConnectionStateError):
        session.close_started()  # already closing


# -- backoff ----------------------------------------------------------------------------


@given(
    base=st.floats(0, 100),
    cap=st.floats(0, 1000),
    attempts=st.integers(0, 40),
    jitter=st.floats(0, 0.999),
)
def test_reconnect_delays_are_bounded_exponential_with_equal_jitter(
    base: float, cap: float, attempts: int, jitter: float
) -> None:
    delays = list(reconnect_delays(base, cap, attempts, jitter=lambda: jitter))
    assert len(delays) == attempts
    for n, delay in enumerate(delays):
        ceiling = min(cap, base * 2**n)
        assert ceiling / 2 - 1e-9 <= delay <= ceiling + 1e-9


def test_reconnect_delays_envelopes() -> None:
    assert list(reconnect_delays(1, 5, 5, jitter=lambda: 1.0)) == [1, 2, 4, 5, 5]
    assert list(reconnect_delays(1, 5, 4, jitter=lambda: 0.0)) == [0.5, 1, 2, 2.5]
    with pytest.raises(ValueError, match=">= 0"):
        list(reconnect_delays(-1, 5, 1))


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("websocket_url", "http://example.com/v1/realtime"),
        ("websocket_url", "ws:///nohost"),
        ("websocket_url", "ws://h/v1/realtime?key=ik_secret"),
        ("api_key", ""),
        ("api_key", "ik_a,b"),
        ("reconnect_interval", -1),
        ("max_reconnect_attempts", 1.5),
        ("max_reconnect_attempts", True),
        ("heartbeat_interval", 0),
        ("connection_timeout", float("nan")),
        ("enable_compression", "yes"),
        ("max_queued_messages", -1),
        ("streams", "event"),
        ("streams", {"event", "nope"}),
        ("event_types", "login"),
        ("event_types", {""}),
    ],
)
def test_config_errors_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        config(**{field: value})
    assert exc.value.field == field


def test_config_defaults_are_the_seeds() -> None:
    cfg = RealTimeConfig(websocket_url=URL, api_key="ik_x", streams=["event"])  # type: ignore[arg-type]
    assert (cfg.reconnect_interval, cfg.max_reconnect_attempts) == (5.0, 5)
    assert (cfg.heartbeat_interval, cfg.connection_timeout, cfg.enable_compression) == (
        30.0,
        10.0,
        True,
    )
    assert cfg.streams == frozenset({"event"})
    with pytest.raises(ConfigError) as exc:
        cfg.replace(nope=1)
    assert exc.value.field == "nope"


# -- the session ------------------------------------------------------------------------


def test_open_subscribes_syncs_then_flushes_the_queue_in_order() -> None:
    session = RealTimeSession(config(event_types={"login"}), jitter=lambda: 1.0)
    assert session.send(make_envelope("custom", {"n": 1}), 0.0)
    assert session.send(make_envelope("custom", {"n": 2}), 0.0)
    assert session.data_to_send() == []  # nothing goes out while disconnected
    session.connect_started(1.0)
    session.connection_opened(1.0)
    out = frames(session)
    assert [f["type"] for f in out] == ["subscribe", "sync_request", "custom", "custom"]
    assert out[0]["payload"] == {"streams": ["analytics_update"], "eventTypes": ["login"]}
    assert [f["payload"]["n"] for f in out[2:]] == [1, 2]
    assert session.stats(1.0).queued == 0
    assert session.send(make_envelope("custom"), 2.0)
    assert [f["type"] for f in frames(session)] == ["custom"]


def test_queue_is_bounded_and_counts_drops() -> None:
    session = RealTimeSession(config(max_queued_messages=2))
    results = [session.send(make_envelope("m", i), 0.0) for i in range(5)]
    assert results == [True, True, False, False, False]
    stats = session.stats(0.0)
    assert (stats.queued, stats.dropped_outgoing) == (2, 3)


def test_subscribing_to_events_while_open_sends_a_new_subscription() -> None:
    session = opened()
    session.data_to_send()
    session.subscribe_streams({"event"}, 101.0)
    (sub,) = frames(session)
    assert sub["type"] == "subscribe"
    assert sub["payload"]["streams"] == ["analytics_update", "event"]
    session.subscribe_streams({"event"}, 102.0)
    assert session.data_to_send() == []  # no change, nothing sent


def test_heartbeat_pings_and_measures_rtt() -> None:
    session = opened(now=100.0)
    session.data_to_send()
    assert session.next_deadline() == 110.0
    assert session.tick(109.9) is Action.NONE
    assert session.data_to_send() == []
    assert session.tick(110.0) is Action.NONE
    (ping,) = frames(session)
    assert ping["type"] == "ping"
    session.receive(server_message("pong", {}, seq=1, id=ping["id"]), 110.25)
    stats = session.stats(110.25)
    assert stats.latency_p50_ms == pytest.approx(250.0)
    assert stats.latency_p95_ms == pytest.approx(250.0)
    # an unknown pong id is not a sample
    session.receive(server_message("pong", {}, seq=2, id="other"), 111.0)
    assert session.stats(111.0).latency_p50_ms == pytest.approx(250.0)


def test_half_open_is_declared_exactly_after_heartbeat_plus_timeout_of_silence() -> None:
    session = opened(now=100.0)  # heartbeat 10, timeout 5
    session.receive(server_message("analytics_update", {}, seq=1), 104.0)
    assert session.tick(114.0) is Action.NONE  # pings go out, but 10 s of silence is fine
    assert session.next_deadline() == 119.0  # last message 104 + 10 + 5
    assert session.tick(118.999) is Action.NONE
    assert session.tick(119.0) is Action.ABORT
    delay = session.connection_failed(119.0, Failure("heartbeat"))
    assert delay is not None
    assert session.state is ConnectionState.RECONNECTING
    assert session.stats(119.0).half_open_detections == 1


def test_reconnects_with_backoff_until_attempts_run_out() -> None:
    session = RealTimeSession(config(), jitter=lambda: 1.0)  # 3 attempts, base 1, cap 4
    session.connect_started(0.0)
    delays = []
    for _ in range(3):
        delays.append(session.connection_failed(0.0, Failure("network", reason="refused")))
        assert session.state is ConnectionState.RECONNECTING
        session.connect_started(0.0)
    assert delays == [1.0, 2.0, 4.0]
    assert session.connection_failed(0.0, Failure("timeout")) is None
    assert session.state is ConnectionState.FAILED
    assert session.stats(0.0).failed_attempts == 3
    assert session.stats(0.0).last_error == "timeout"
    # connect() again starts a fresh streak
    session.connect_started(1.0)
    assert session.connection_failed(1.0, Failure("network")) == 1.0


@pytest.mark.parametrize(
    "failure",
    [Failure("refused", status=401), Failure("refused", status=403), Failure("closed", code=1008)],
)
def test_fatal_failures_do_not_retry(failure: Failure) -> None:
    session = RealTimeSession(config())
    session.connect_started(0.0)
    assert session.connection_failed(0.0, failure) is None
    assert session.state is ConnectionState.FAILED
    assert session.stats(0.0).failed_attempts == 0


def test_a_healthy_connection_resets_the_backoff() -> None:
    session = RealTimeSession(config(), jitter=lambda: 1.0)
    session.connect_started(0.0)
    assert session.connection_failed(0.0, Failure("network")) == 1.0
    session.connect_started(1.0)
    session.connection_opened(1.0)
    assert session.connection_failed(2.0, Failure("closed", code=1006)) == 2.0  # not healthy yet
    session.connect_started(3.0)
    session.connection_opened(3.0)
    session.receive(server_message("sync_response", {"config": {"version": 4}}, seq=1), 3.1)
    assert session.stats(3.1).failed_attempts == 0
    assert session.connection_failed(4.0, Failure("closed", code=1012)) == 1.0
    assert session.stats(4.0).reconnect_count == 1


def test_seq_gaps_dropped_notices_and_bad_frames_are_counted() -> None:
    session = opened()
    session.receive(server_message("event", {}, seq=1), 100.0)
    session.receive(server_message("event", {}, seq=2), 100.0)
    session.receive(server_message("dropped", {"dropped": 7}, seq=3), 100.0)
    session.receive(server_message("event", {}, seq=5), 100.0)
    assert session.receive("garbage", 100.0) == []
    stats = session.stats(100.0)
    assert (stats.seq_gaps, stats.last_seq, stats.dropped_by_server) == (1, 5, 7)
    assert stats.messages_in == 5
    assert stats.last_error is not None
    assert "bad message" in stats.last_error


def test_sync_response_remembers_the_config_version_for_the_next_sync() -> None:
    session = opened()
    config_payload = msgspec.to_builtins(ClientConfig(version=6))
    session.receive(server_message("sync_response", {"config": config_payload}, seq=1), 100.0)
    session.connection_failed(101.0, Failure("closed", code=1012))
    session.connect_started(102.0)
    session.connection_opened(102.0)
    sync = next(f for f in frames(session) if f["type"] == "sync_request")
    assert sync["payload"] == {"configVersion": 6}


def test_close_during_each_state() -> None:
    for setup in ("idle", "connecting", "open", "reconnecting", "failed"):
        session = RealTimeSession(config(max_reconnect_attempts=1))
        if setup != "idle":
            session.connect_started(0.0)
        if setup == "open":
            session.connection_opened(0.0)
        if setup in ("reconnecting", "failed"):
            session.connection_failed(0.0, Failure("network"))
        if setup == "failed":
            session.connect_started(0.0)
            session.connection_failed(0.0, Failure("network"))
            assert session.state is ConnectionState.FAILED
        session.close_started()
        # the connection's end after a close request never schedules a reconnect
        if session.state is ConnectionState.CLOSING:
            assert session.connection_failed(1.0, Failure("closed", code=1000)) is None
        assert session.state is ConnectionState.CLOSED, setup
        assert not session.send(make_envelope("x"), 1.0)


def test_rates_are_per_second_over_the_window() -> None:
    session = opened(now=100.0)
    for i in range(20):
        session.receive(server_message("event", {}, seq=i + 1), 100.0 + i * 0.5)
    stats = session.stats(109.9)
    assert stats.messages_in == 20
    assert stats.messages_in_per_second == pytest.approx(2.0)
    assert stats.messages_out_per_second == pytest.approx(0.2)  # subscribe + sync_request
