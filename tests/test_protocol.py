"""Byte-level tests of the sans-I/O wire protocol: no server, no sockets."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import zlib
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from innkt_analytics.shared._protocol import (
    MAX_NESTING_DEPTH,
    Batch,
    Event,
    Limits,
    ProtocolError,
    Rejection,
    ValidEvent,
    decode_gzip_bounded,
    encode_batch,
    gzip_bytes,
    parse_batch,
    parse_event,
)

NOW = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.UTC)
LIMITS = Limits()


def raw_event(i: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": f"e{i}",
        "eventType": "click",
        "timestamp": "2026-11-27T11:00:00+00:00",
        **extra,
    }


def body(events: list[Any], **extra: Any) -> bytes:
    return json.dumps({"events": events, **extra}).encode()


def nested(depth: int) -> Any:
    """A JSON value that is ``depth`` containers deep (1 = ``[]``)."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# -- encode_batch / parse_batch round trips -----------------------------------------


def test_encode_batch_round_trips_through_parse_batch() -> None:
    sent = dt.datetime(2026, 11, 27, 11, 0, 5, tzinfo=dt.UTC)
    events = [
        Event(
            event_id="a",
            event_type="page_view",
            timestamp=dt.datetime(2026, 11, 27, 11, 0, 0, 123456, tzinfo=dt.UTC),
            session_id="s",
            user_id="u",
            properties={"path": "/x", "n": [1, 2.5, None, True]},
            consent=["analytics"],
        ),
        Event(event_id="b", event_type="click", timestamp=sent),
    ]
    data = encode_batch(events, sent)
    assert msgspec.json.decode(data, type=Batch) == Batch(events=events, sent_at=sent)

    parsed = parse_batch(data, LIMITS, NOW)
    assert parsed.rejected == []
    assert [v.event for v in parsed.valid] == events
    assert parsed.sent_at == sent
    # The raw bytes kept for storage decode to the same event.
    for valid in parsed.valid:
        assert msgspec.json.decode(valid.raw, type=Event) == valid.event


def test_encoding_is_camel_case_and_omits_defaults() -> None:
    data = encode_batch([Event(event_id="a", event_type="t", timestamp=NOW)])
    assert json.loads(data) == {
        "events": [{"eventId": "a", "eventType": "t", "timestamp": "2026-11-27T12:00:00Z"}]
    }


ids = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10)
times = st.datetimes(
    min_value=dt.datetime(1971, 1, 1),
    max_value=dt.datetime(2200, 1, 1),
    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30))]),
)
events_strategy = st.builds(
    Event,
    event_id=ids,
    event_type=ids,
    timestamp=times,
    session_id=st.none() | ids,
    user_id=st.none() | ids,
    properties=st.dictionaries(st.text(max_size=8), json_scalars, max_size=5),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(events_strategy, max_size=10), st.none() | times)
def test_any_batch_round_trips(events: list[Event], sent_at: dt.datetime | None) -> None:
    parsed = parse_batch(encode_batch(events, sent_at), LIMITS, NOW)
    assert parsed.rejected == []
    assert [v.event for v in parsed.valid] == events
    assert [v.index for v in parsed.valid] == list(range(len(events)))
    assert parsed.sent_at == sent_at


# -- per-event rejection and partial acceptance ------------------------------------


def test_bad_events_are_rejected_one_by_one_and_good_ones_kept() -> None:
    data = body(
        [
            raw_event(1),
            {"eventId": "no-type", "timestamp": "2026-11-27T11:00:00Z"},
            42,
            raw_event(3, timestamp="yesterday"),
            raw_event(4, timestamp="2026-11-27T11:00:00"),  # no time zone
            raw_event(5, eventId=""),
            raw_event(6),
        ]
    )
    parsed = parse_batch(data, LIMITS, NOW)
    assert [v.event.event_id for v in parsed.valid] == ["e1", "e6"]
    assert [(r.index, r.event_id) for r in parsed.rejected] == [
        (1, "no-type"),
        (2, None),
        (3, "e3"),
        (4, "e4"),
        (5, ""),
    ]
    assert "eventType" in parsed.rejected[0].error
    assert "timestamp" in parsed.rejected[2].error


def test_oversized_event_is_rejected_with_its_id() -> None:
    limits = Limits(max_event_bytes=200)
    small = raw_event(1)
    big = raw_event(2, properties={"x": "y" * 300})
    parsed = parse_batch(body([small, big]), limits, NOW)
    assert [v.event.event_id for v in parsed.valid] == ["e1"]
    (rejection,) = parsed.rejected
    assert rejection.index == 1
    assert rejection.event_id == "e2"
    assert "over the limit of 200" in rejection.error


def test_event_exactly_at_the_size_limit_is_accepted() -> None:
    event = raw_event(1, properties={"x": ""})
    size = len(json.dumps(event, separators=(",", ":")))
    event["properties"]["x"] = "y" * (300 - size)
    data = b'{"events":[' + json.dumps(event, separators=(",", ":")).encode() + b"]}"
    assert len(json.dumps(event, separators=(",", ":"))) == 300
    assert len(parse_batch(data, Limits(max_event_bytes=300), NOW).valid) == 1
    assert len(parse_batch(data, Limits(max_event_bytes=299), NOW).rejected) == 1


def test_nesting_depth_limit_is_exact() -> None:
    # The event object itself is level 1, "properties" level 2, so the deepest value
    # under properties can be MAX_NESTING_DEPTH - 2 containers deep.
    ok = raw_event(1, properties={"a": nested(MAX_NESTING_DEPTH - 2)})
    too_deep = raw_event(2, properties={"a": nested(MAX_NESTING_DEPTH - 1)})
    parsed = parse_batch(body([ok, too_deep]), LIMITS, NOW)
    assert [v.event.event_id for v in parsed.valid] == ["e1"]
    assert parsed.rejected[0].index == 1
    assert "nesting" in parsed.rejected[0].error


def test_very_deep_events_are_rejected_not_crashing() -> None:
    def deep(n: int) -> bytes:
        return b'{"events":[{"eventId":"x","properties":' + b"[" * n + b"]" * n + b"}]}"

    parsed = parse_batch(deep(500), LIMITS, NOW)
    assert parsed.valid == []
    assert "nesting" in parsed.rejected[0].error
    # Deeper than the decoder's own recursion limit: the whole body is refused.
    with pytest.raises(ProtocolError) as err:
        parse_batch(deep(50_000), LIMITS, NOW)
    assert (err.value.status, err.value.code) == (400, "too_deep")


def test_invalid_utf8_is_rejected_even_in_unknown_fields() -> None:
    # Regression: unknown fields are skipped by the typed decoder, so invalid UTF-8
    # there used to be stored and then broke every query that returned the event.
    good = json.dumps(raw_event(1)).encode()
    in_unknown = json.dumps(raw_event(2, junk="X")).encode().replace(b'"X"', b'"\xff"')
    in_id = json.dumps(raw_event(3)).encode().replace(b'"e3"', b'"\xfe"')
    data = b'{"events":[' + b",".join([good, in_unknown, in_id]) + b"]}"
    parsed = parse_batch(data, LIMITS, NOW)
    assert [v.event.event_id for v in parsed.valid] == ["e1"]
    assert [r.index for r in parsed.rejected] == [1, 2]
    with pytest.raises(ProtocolError) as err:
        parse_event(in_unknown, LIMITS, NOW)
    assert err.value.status == 400


def test_timestamps_outside_the_utc_range_are_rejected() -> None:
    # Regression: valid RFC 3339 that is not a valid UTC datetime, or a sentAt so far
    # from the timestamp that the corrected time overflows, used to raise (HTTP 500).
    early = raw_event(1, timestamp="0001-01-01T00:00:00+23:59")
    late = raw_event(2, timestamp="9999-12-31T23:59:59-23:59")
    ancient = raw_event(3, timestamp="0002-01-01T00:00:00Z")
    parsed = parse_batch(body([early, late, ancient]), LIMITS, NOW)
    assert [r.event_id for r in parsed.rejected] == ["e1", "e2"]
    assert [v.event.event_id for v in parsed.valid] == ["e3"]

    skewed = body([ancient], sentAt="9000-01-01T00:00:00Z")
    parsed = parse_batch(skewed, LIMITS, NOW)
    assert parsed.valid == []
    assert "out of range" in parsed.rejected[0].error

    with pytest.raises(ProtocolError) as err:
        parse_batch(body([raw_event(1)], sentAt="0001-01-01T00:00:00+10:00"), LIMITS, NOW)
    assert err.value.status == 400


# -- whole-body errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "malformed_json"),
        (b"{", 400, "malformed_json"),
        (b"\xff\xfe", 400, "malformed_json"),
        (b"[]", 400, "invalid_batch"),
        (b"{}", 400, "invalid_batch"),
        (b'{"events": {}}', 400, "invalid_batch"),
        (b'{"events": [], "sentAt": "soon"}', 400, "invalid_batch"),
        (b'{"events":' + b"[" * 100_000, 400, "too_deep"),
    ],
)
def test_unusable_bodies_raise_protocol_error(data: bytes, status: int, code: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_batch(data, LIMITS, NOW)
    assert (err.value.status, err.value.code) == (status, code)


def test_batch_event_count_limit() -> None:
    limits = Limits(max_batch_events=3)
    assert len(parse_batch(body([raw_event(i) for i in range(3)]), limits, NOW).valid) == 3
    with pytest.raises(ProtocolError) as err:
        parse_batch(body([raw_event(i) for i in range(4)]), limits, NOW)
    assert (err.value.status, err.value.code) == (413, "too_many_events")


def test_body_size_limit() -> None:
    data = body([raw_event(1)])
    assert parse_batch(data, Limits(max_body_bytes=len(data)), NOW).valid
    for parse in (parse_batch, parse_event):
        with pytest.raises(ProtocolError) as err:
            parse(data, Limits(max_body_bytes=len(data) - 1), NOW)
        assert err.value.status == 413


def test_empty_batch_is_valid() -> None:
    parsed = parse_batch(b'{"events": []}', LIMITS, NOW)
    assert (parsed.valid, parsed.rejected) == ([], [])


# -- parse_event -----------------------------------------------------------------


def test_parse_event_accepts_one_bare_event() -> None:
    valid = parse_event(json.dumps(raw_event(7)).encode(), LIMITS, NOW)
    assert isinstance(valid, ValidEvent)
    assert valid.event.event_id == "e7"
    assert valid.corrected == valid.event.timestamp  # no sentAt: nothing to correct


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"{}", 400),
        (b"[1]", 400),
        (b"not json", 400),
        (json.dumps(raw_event(1, properties={"a": nested(70)})).encode(), 400),
        (json.dumps(raw_event(1, properties={"x": "y" * 40_000})).encode(), 413),
    ],
)
def test_parse_event_errors(data: bytes, status: int) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_event(data, LIMITS, NOW)
    assert err.value.status == status


# -- clock-skew correction and the future flag -------------------------------------


def test_corrected_timestamp_is_received_minus_client_delay() -> None:
    # The client's clock is 1 hour fast: it says the event happened 10 s before sending.
    data = body([raw_event(1, timestamp="2026-11-27T12:59:50Z")], sentAt="2026-11-27T13:00:00Z")
    (valid,) = parse_batch(data, LIMITS, NOW).valid
    assert valid.corrected == NOW - dt.timedelta(seconds=10)
    assert valid.event.timestamp == dt.datetime(2026, 11, 27, 12, 59, 50, tzinfo=dt.UTC)


def test_time_zone_offsets_are_honoured() -> None:
    data = body([raw_event(1, timestamp="2026-11-27T14:00:00+02:00")])
    (valid,) = parse_batch(data, LIMITS, NOW).valid
    assert valid.corrected == NOW
    assert valid.corrected.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    ("ahead", "future"),
    [
        (dt.timedelta(hours=23), False),
        (dt.timedelta(hours=24), False),
        (dt.timedelta(hours=24, seconds=1), True),
        (dt.timedelta(days=400), True),
        (-dt.timedelta(days=400), False),
    ],
)
def test_future_flag(ahead: dt.timedelta, future: bool) -> None:
    stamp = (NOW + ahead).isoformat()
    (valid,) = parse_batch(body([raw_event(1, timestamp=stamp)]), LIMITS, NOW).valid
    assert valid.future is future


# -- gzip ------------------------------------------------------------------------


def test_gzip_round_trip() -> None:
    data = encode_batch([Event(event_id="a", event_type="t", timestamp=NOW)])
    assert decode_gzip_bounded(gzip_bytes(data), 1000) == data
    assert decode_gzip_bounded(gzip.compress(data), len(data)) == data


def test_gzip_limit_is_exact() -> None:
    data = gzip.compress(b"x" * 1000)
    assert len(decode_gzip_bounded(data, 1000)) == 1000
    with pytest.raises(ProtocolError) as err:
        decode_gzip_bounded(data, 999)
    assert (err.value.status, err.value.code) == (413, "payload_too_large")


def test_gzip_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 20_000_000, compresslevel=9)
    assert len(bomb) < 40_000
    with pytest.raises(ProtocolError) as err:
        decode_gzip_bounded(bomb, 1024 * 1024)
    assert err.value.status == 413


def test_gzip_members_are_concatenated_under_one_budget() -> None:
    data = gzip.compress(b"abc") + gzip.compress(b"def") + b"\0\0\0"
    assert decode_gzip_bounded(data, 6) == b"abcdef"
    with pytest.raises(ProtocolError) as err:
        decode_gzip_bounded(data, 5)
    assert err.value.status == 413


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not gzip at all",
        b"\x1f\x8b\x08garbage",
        gzip.compress(b"hello world" * 100, mtime=0)[:-10],  # truncated (mtime=0: one test id)
        gzip.compress(b"abc", mtime=0) + b"trailing garbage",
        zlib.compress(b"zlib, not gzip"),
    ],
)
def test_corrupt_gzip_is_400(data: bytes) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_gzip_bounded(data, 1 << 20)
    assert (err.value.status, err.value.code) == (400, "bad_gzip")


def test_rejection_and_response_wire_names() -> None:
    rejection = Rejection(index=2, event_id="x", error="bad")
    assert json.loads(msgspec.json.encode(rejection)) == {
        "index": 2,
        "eventId": "x",
        "error": "bad",
    }


def test_nul_in_any_id_is_rejected_per_event() -> None:
    import datetime as _dt

    from innkt_analytics.shared._protocol import Limits, parse_batch

    good = b'{"eventId":"ok","eventType":"t","timestamp":"2026-01-01T00:00:00Z"}'
    bad = b'{"eventId":"a\\u0000b","eventType":"t","timestamp":"2026-01-01T00:00:00Z"}'
    bad_user = (
        b'{"eventId":"c","eventType":"t","userId":"u\\u0000","timestamp":"2026-01-01T00:00:00Z"}'
    )
    body = b'{"events":[' + good + b"," + bad + b"," + bad_user + b"]}"
    parsed = parse_batch(body, Limits(), _dt.datetime.now(_dt.UTC))
    assert [v.event.event_id for v in parsed.valid] == ["ok"]
    assert [(r.index, r.error) for r in parsed.rejected] == [
        (1, "ids must not contain U+0000"),
        (2, "ids must not contain U+0000"),
    ]


def test_nul_is_refused_in_ids_but_kept_in_properties() -> None:
    # json.dumps spells U+0000 as the escape \u0000, the only way JSON can.
    events = [
        raw_event(1, sessionId="s\u0000"),
        raw_event(2, eventType="t\u0000"),
        raw_event(3, properties={"text": "a\u0000b"}),
        raw_event(4, userId="u", anonymousId="\u0000"),
    ]
    parsed = parse_batch(body(events), LIMITS, NOW)
    assert [r.index for r in parsed.rejected] == [0, 1, 3]
    assert all("U+0000" in r.error for r in parsed.rejected)
    (kept,) = parsed.valid
    assert kept.event.properties == {"text": "a\u0000b"}


def test_non_ascii_events_are_accepted() -> None:
    ev = raw_event(1, eventType="ünïcödé", properties={"emoji": "🙂"})
    data = b'{"events":[' + json.dumps(ev, ensure_ascii=False).encode() + b"]}"
    (valid,) = parse_batch(data, LIMITS, NOW).valid
    assert valid.event.event_type == "ünïcödé"
    assert valid.raw.decode() == json.dumps(ev, ensure_ascii=False)
