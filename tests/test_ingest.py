"""Ingest API against the real server: acceptance, duplicates, partial batches, times."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import threading
import uuid
from typing import Any

import httpx

from tests._server import ServerProcess


def uid() -> str:
    return uuid.uuid4().hex


def event(event_id: str, session: str, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "eventType": "click",
        "timestamp": "2026-11-27T11:00:00.250Z",
        "sessionId": session,
        **extra,
    }


def stored(server: ServerProcess, session: str) -> list[dict[str, Any]]:
    """Every stored event of a session, through the real query API."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"sessionId": session, "limit": "1000"}
        if cursor:
            params["cursor"] = cursor
        r = httpx.get(server.url + "/v1/events", params=params, headers=server.headers("read"))
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["events"]
        cursor = page["nextCursor"]
        if cursor is None:
            return out


def iso(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_single_event(shared_server: ServerProcess) -> None:
    session = uid()
    ev = event(uid(), session, properties={"path": "/home", "n": 3}, userId="u1")
    r = httpx.post(shared_server.url + "/v1/events", json=ev, headers=shared_server.headers())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    (got,) = stored(shared_server, session)
    # The client's event comes back unchanged, plus the server's fields.
    assert {k: got[k] for k in ev} == ev


def test_single_event_replayed_is_a_duplicate(shared_server: ServerProcess) -> None:
    session = uid()
    ev = event(uid(), session)
    url, headers = shared_server.url + "/v1/events", shared_server.headers()
    assert httpx.post(url, json=ev, headers=headers).json()["accepted"] == 1
    again = httpx.post(url, json=ev, headers=headers)
    assert again.status_code == 200
    assert again.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert len(stored(shared_server, session)) == 1


def test_batch(shared_server: ServerProcess) -> None:
    session = uid()
    events = [event(f"{session}-{i}", session) for i in range(20)]
    r = httpx.post(
        shared_server.url + "/v1/events/batch",
        json={"events": events},
        headers=shared_server.headers(),
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 20, "duplicates": 0, "rejected": []}
    assert [e["eventId"] for e in stored(shared_server, session)] == [e["eventId"] for e in events]


def test_partial_acceptance(shared_server: ServerProcess) -> None:
    session = uid()
    good = [event(f"{session}-{i}", session) for i in range(3)]
    body = {
        "events": [
            good[0],
            {"eventId": "bad-1", "timestamp": "2026-11-27T11:00:00Z"},  # no eventType
            good[1],
            "not an event",
            event("bad-2", session, timestamp="last tuesday"),
            good[2],
        ]
    }
    r = httpx.post(
        shared_server.url + "/v1/events/batch", json=body, headers=shared_server.headers()
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["accepted"], answer["duplicates"]) == (3, 0)
    assert [(x["index"], x["eventId"]) for x in answer["rejected"]] == [
        (1, "bad-1"),
        (3, None),
        (4, "bad-2"),
    ]
    assert all(x["error"] for x in answer["rejected"])
    assert sorted(e["eventId"] for e in stored(shared_server, session)) == sorted(
        e["eventId"] for e in good
    )


def test_batch_with_only_invalid_events_is_400_with_the_rejections(
    shared_server: ServerProcess,
) -> None:
    r = httpx.post(
        shared_server.url + "/v1/events/batch",
        json={"events": [{"eventId": "x"}, 7]},
        headers=shared_server.headers(),
    )
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid_batch"
    assert [x["index"] for x in body["rejected"]] == [0, 1]


def test_empty_batch(shared_server: ServerProcess) -> None:
    r = httpx.post(
        shared_server.url + "/v1/events/batch", json={"events": []}, headers=shared_server.headers()
    )
    assert r.status_code == 200
    assert r.json() == {"accepted": 0, "duplicates": 0, "rejected": []}


def test_replayed_batch_and_duplicates_within_a_batch(shared_server: ServerProcess) -> None:
    session = uid()
    a, b = event(f"{session}-a", session), event(f"{session}-b", session)
    url, headers = shared_server.url + "/v1/events/batch", shared_server.headers()
    first = httpx.post(url, json={"events": [a, b, a, a]}, headers=headers)
    assert first.json() == {"accepted": 2, "duplicates": 2, "rejected": []}
    replay = httpx.post(url, json={"events": [b, a]}, headers=headers)
    assert replay.json() == {"accepted": 0, "duplicates": 2, "rejected": []}
    # The same id through the single-event endpoint is a duplicate too.
    single = httpx.post(shared_server.url + "/v1/events", json=a, headers=headers)
    assert single.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert sorted(e["eventId"] for e in stored(shared_server, session)) == [
        f"{session}-a",
        f"{session}-b",
    ]


def test_duplicate_keeps_the_first_version(shared_server: ServerProcess) -> None:
    session = uid()
    eid = uid()
    url, headers = shared_server.url + "/v1/events", shared_server.headers()
    httpx.post(url, json=event(eid, session, properties={"v": 1}), headers=headers)
    r = httpx.post(url, json=event(eid, session, properties={"v": 2}), headers=headers)
    assert r.json()["duplicates"] == 1
    (got,) = stored(shared_server, session)
    assert got["properties"] == {"v": 1}


def test_concurrent_replays_store_each_event_once(shared_server: ServerProcess) -> None:
    session = uid()
    events = [event(f"{session}-{i}", session) for i in range(50)]
    body = json.dumps({"events": events}).encode()
    threads = 8
    barrier = threading.Barrier(threads)
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def post() -> None:
        with httpx.Client(base_url=shared_server.url, headers=shared_server.headers()) as c:
            barrier.wait()
            r = c.post(
                "/v1/events/batch", content=body, headers={"content-type": "application/json"}
            )
            with lock:
                answers.append(r.json())

    workers = [threading.Thread(target=post) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(answers) == threads
    assert sum(a["accepted"] for a in answers) == 50
    assert sum(a["duplicates"] for a in answers) == 50 * (threads - 1)
    ids = [e["eventId"] for e in stored(shared_server, session)]
    assert sorted(ids) == sorted(e["eventId"] for e in events)


def test_gzip_body(shared_server: ServerProcess) -> None:
    session = uid()
    events = [event(f"{session}-{i}", session, properties={"pad": "x" * 200}) for i in range(30)]
    data = gzip.compress(json.dumps({"events": events}).encode())
    r = httpx.post(
        shared_server.url + "/v1/events/batch",
        content=data,
        headers={
            **shared_server.headers(),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 30
    single = gzip.compress(json.dumps(event(f"{session}-single", session)).encode())
    r = httpx.post(
        shared_server.url + "/v1/events",
        content=single,
        headers={
            **shared_server.headers(),
            "Content-Type": "application/json; charset=utf-8",
            "Content-Encoding": "GZIP",
        },
    )
    assert r.status_code == 200, r.text
    assert len(stored(shared_server, session)) == 31


def test_server_times_and_clock_skew_correction(shared_server: ServerProcess) -> None:
    session = uid()
    # The client's clock is four years fast; it sent the batch 90.5 s after the event.
    client_event = "2030-05-01T10:00:00.000Z"
    client_sent = "2030-05-01T10:01:30.500Z"
    before = dt.datetime.now(dt.UTC)
    r = httpx.post(
        shared_server.url + "/v1/events/batch",
        json={"events": [event(uid(), session, timestamp=client_event)], "sentAt": client_sent},
        headers=shared_server.headers(),
    )
    after = dt.datetime.now(dt.UTC)
    assert r.status_code == 200
    (got,) = stored(shared_server, session)
    received = iso(got["receivedAt"])
    assert before - dt.timedelta(milliseconds=1) <= received <= after
    assert iso(got["timestamp"]) == iso(client_event)
    assert iso(got["sentAt"]) == iso(client_sent)
    assert iso(got["correctedTimestamp"]) == received - dt.timedelta(seconds=90.5)
    # More than 24 h ahead of the server's clock: flagged, and still stored.
    assert got["future"] is True


def test_single_event_has_no_sent_at_and_is_not_corrected(shared_server: ServerProcess) -> None:
    session = uid()
    httpx.post(
        shared_server.url + "/v1/events",
        json=event(uid(), session, timestamp="2026-11-27T09:00:00.125+02:00"),
        headers=shared_server.headers(),
    )
    (got,) = stored(shared_server, session)
    assert got["sentAt"] is None
    assert iso(got["correctedTimestamp"]) == iso("2026-11-27T07:00:00.125Z")
    assert got["future"] is False


def test_future_flag_boundary(shared_server: ServerProcess) -> None:
    session = uid()
    now = dt.datetime.now(dt.UTC)
    near = event(f"{session}-near", session, timestamp=(now + dt.timedelta(hours=23)).isoformat())
    far = event(f"{session}-far", session, timestamp=(now + dt.timedelta(hours=25)).isoformat())
    past = event(f"{session}-past", session, timestamp=(now - dt.timedelta(days=30)).isoformat())
    r = httpx.post(
        shared_server.url + "/v1/events/batch",
        json={"events": [near, far, past]},
        headers=shared_server.headers(),
    )
    assert r.json()["accepted"] == 3
    flags = {e["eventId"].rsplit("-", 1)[1]: e["future"] for e in stored(shared_server, session)}
    assert flags == {"near": False, "far": True, "past": False}


def test_unicode_and_odd_but_valid_values_round_trip(shared_server: ServerProcess) -> None:
    session = uid()
    ev = event(
        uid(),
        session,
        eventType="ünïcödé 🎉",
        properties={"nul": "a\u0000b", "emoji": "🙂", "big": 2**62, "neg": -1.5e-300},
        consent=["analytics"],
    )
    r = httpx.post(shared_server.url + "/v1/events", json=ev, headers=shared_server.headers())
    assert r.status_code == 200, r.text
    (got,) = stored(shared_server, session)
    assert {k: got[k] for k in ev} == ev
