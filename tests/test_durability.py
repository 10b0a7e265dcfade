"""Crash safety: SIGKILL the server while clients post; every acknowledged batch survives."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import httpx

from tests._server import ServerProcess
from tests.conftest import ServerFactory

BATCH = 50


@dataclass
class Outcomes:
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: list[list[str]] = field(default_factory=list)
    unacked: list[list[str]] = field(default_factory=list)

    def add(self, ids: list[str], ok: bool) -> None:
        with self.lock:
            (self.acked if ok else self.unacked).append(ids)


def sender(server: ServerProcess, name: str, out: Outcomes, stop: threading.Event) -> None:
    """Post batches until the server dies (or ``stop``); record which were acknowledged."""
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as client:
        n = 0
        while not stop.is_set():
            ids = [f"{name}-b{n}-{i}" for i in range(BATCH)]
            events = [
                {"eventId": i, "eventType": "crash", "timestamp": "2026-11-27T00:00:00Z"}
                for i in ids
            ]
            try:
                r = client.post("/v1/events/batch", json={"events": events})
            except httpx.TransportError:
                out.add(ids, ok=False)
                return
            ok = r.status_code == 200 and r.json()["accepted"] == BATCH
            out.add(ids, ok=ok)
            if not ok:
                return
            n += 1


def crash_while_posting(server: ServerProcess, round_name: str, senders: int = 4) -> Outcomes:
    out = Outcomes()
    stop = threading.Event()
    threads = [
        threading.Thread(target=sender, args=(server, f"{round_name}-t{t}", out, stop))
        for t in range(senders)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(out.acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL mid-stream: requests are in flight in every thread
    stop.set()
    for t in threads:
        t.join(60)
    assert len(out.acked) >= 40, "the senders never got going"
    return out


def check_exactly_once(server: ServerProcess, out: Outcomes) -> collections.Counter[str]:
    counts = collections.Counter(server.event_ids())
    assert not [i for i, n in counts.items() if n > 1], "an event is stored twice"
    for ids in out.acked:
        missing = [i for i in ids if counts[i] != 1]
        assert not missing, f"acknowledged events lost in the crash: {missing[:5]}"
    for ids in out.unacked:
        present = sum(counts[i] for i in ids)
        # A batch is one transaction: it is all there or not at all.
        assert present in (0, len(ids)), f"a batch was half stored ({present}/{len(ids)})"
    return counts


def test_acknowledged_batches_survive_sigkill(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_RATE_LIMIT_PER_SECOND": "0"})
    every = Outcomes()
    for round_name in ("r1", "r2"):
        out = crash_while_posting(server, round_name)
        server.start()  # same database, same port
        check_exactly_once(server, out)
        every.acked += out.acked
        every.unacked += out.unacked
    counts = check_exactly_once(server, every)

    # The clients retry what was never acknowledged: duplicates are recognised,
    # so in the end every batch is stored exactly once.
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as client:
        for ids in every.unacked:
            events = [
                {"eventId": i, "eventType": "crash", "timestamp": "2026-11-27T00:00:00Z"}
                for i in ids
            ]
            r = client.post("/v1/events/batch", json={"events": events})
            answer = r.json()
            assert answer["accepted"] + answer["duplicates"] == len(ids)
            assert answer["duplicates"] == sum(counts[i] for i in ids)
    final = collections.Counter(server.event_ids())
    all_ids = [i for ids in every.acked + every.unacked for i in ids]
    assert sorted(final) == sorted(all_ids)
    assert set(final.values()) == {1}
    health = httpx.get(server.url + "/v1/health", headers=server.headers("read")).json()
    assert health["storage"]["events"] == len(all_ids)
