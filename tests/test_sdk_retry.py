"""Backoff generators, Retry-After parsing and the floor/clamp rule; UUIDv7 ids."""

from __future__ import annotations

import datetime as dt
import email.utils
import itertools
import os
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from innkt_analytics.shared._ids import uuid7
from innkt_analytics.shared._retry import backoff, parse_retry_after, with_floor


def test_backoff_upper_envelope_doubles_up_to_the_cap() -> None:
    delays = list(itertools.islice(backoff(0.5, 5.0, jitter=lambda: 1.0), 7))
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


@given(
    base=st.floats(0, 10),
    cap=st.floats(0, 100),
    jitter=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=40),
)
def test_backoff_full_jitter_stays_in_bounds(base: float, cap: float, jitter: list[float]) -> None:
    values = iter(jitter)
    delays = backoff(base, cap, jitter=lambda: next(values))
    for n, delay in enumerate(itertools.islice(delays, len(jitter))):
        assert 0 <= delay <= min(cap, base * 2**n)


def test_backoff_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="base"):
        next(backoff(-1, 1))
    with pytest.raises(ValueError, match="factor"):
        next(backoff(1, 1, factor=0.5))


def test_backoff_never_overflows() -> None:
    delays = backoff(1.0, 1e300, jitter=lambda: 1.0)
    last = list(itertools.islice(delays, 2000))[-1]
    assert last == 1e300


def test_retry_after_seconds() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None


def test_retry_after_http_date() -> None:
    now = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.UTC)
    header = email.utils.format_datetime(now + dt.timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(header, now) == 30.0
    past = email.utils.format_datetime(now - dt.timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(past, now) == 0.0
    assert parse_retry_after("Fri, 27 Nov 2026 12:00:10 -0000", now) == 10.0


def test_retry_after_is_a_floor_clamped_to_a_maximum() -> None:
    assert with_floor(0.2, None, 60) == 0.2
    assert with_floor(0.2, 5, 60) == 5
    assert with_floor(9.0, 5, 60) == 9.0
    assert with_floor(0.2, 86400, 60) == 60


def test_uuid7_layout() -> None:
    now = time.time()
    value = uuid.UUID(uuid7(now))
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert value.int >> 80 == int(now * 1000)
    with pytest.raises(ValueError, match="range"):
        uuid7(-1.0)


def test_uuid7_is_unique_and_time_ordered() -> None:
    ids = [uuid7(1_800_000_000 + i / 1000) for i in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # one millisecond apart: the prefix orders them


def test_uuid7_differs_in_a_forked_child() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, ",".join(uuid7(1.0) for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        child = set(f.read().split(","))
    parent = {uuid7(1.0) for _ in range(50)}
    assert len(child) == 50
    assert not child & parent
