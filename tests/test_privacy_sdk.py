"""Privacy in the SDK against the real server: opt-out across restarts, consent
categories, hashed and deny-listed fields that never reach the disk or the server."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

from innkt_analytics.sdk._backend import AnalyticsBackendService
from innkt_analytics.sdk._privacy import PrivacyConfig, hash_value
from innkt_analytics.shared._protocol import Event
from tests._proxy import fast_config, queued, stored
from tests._server import ServerProcess

SALT = "tests-salt-0123456789"
SECRET = "alice.secret@example.com"


def start(
    made: list[AnalyticsBackendService], server: ServerProcess, queue: Path, **options: Any
) -> AnalyticsBackendService:
    service = AnalyticsBackendService(fast_config(server.url, server.write_key, queue, **options))
    made.append(service)
    return service


def _sid() -> str:
    return "s-" + uuid.uuid4().hex


def test_opted_out_sends_nothing_even_after_restart(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    queue = tmp_path / "q.sqlite3"
    sid = _sid()
    first = start(services, shared_server, queue, sync_interval=3600, batch_size=1000)
    for i in range(5):
        first.track("before", {"i": i}, session_id=sid)
    first.commit()  # on disk, not yet sent
    assert queued(queue) == 5
    assert first.opt_out() == 5  # the queue is purged
    assert queued(queue) == 0
    assert not first.track("while_out", {"i": 100}, session_id=sid)
    assert first.get_status().dropped.get("opted_out") == 6
    first.shutdown(5)

    second = start(services, shared_server, queue)  # a restart of the app
    assert second.get_consent().opted_out
    for i in range(10):
        assert not second.track("after_restart", {"i": 200 + i}, session_id=sid)
    assert second.flush(10)
    assert stored(shared_server.db_path, sid) == []

    second.opt_in()
    assert second.track("back", {"i": 300}, session_id=sid)
    assert second.flush(10)
    assert stored(shared_server.db_path, sid) == [300]


def test_hashed_and_denied_fields_never_reach_disk_or_server(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    queue = tmp_path / "q.sqlite3"
    privacy = PrivacyConfig(
        hash_properties=frozenset({"email"}),
        deny_properties=frozenset({"card"}),
        hash_user_id=True,
        hash_salt=SALT,
        anonymize_ip=True,
    )
    sid = _sid()
    service = start(services, shared_server, queue, privacy=privacy, sync_interval=3600)
    service.track("signup", {"i": 1, "email": SECRET, "card": "4111-1111"}, session_id=sid,
                  user_id=SECRET)  # fmt: skip
    service.send_event(
        Event(
            event_id=str(uuid.uuid4()),
            event_type="visit",
            timestamp=dt.datetime.now(dt.UTC),
            session_id=sid,
            properties={"i": 2, "email": SECRET},
            context={"ip": "203.0.113.77"},
        )
    )
    service.commit()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert SECRET.encode() not in on_disk
    assert b"4111-1111" not in on_disk
    assert b"203.0.113.77" not in on_disk
    assert service.flush(10)
    assert stored(shared_server.db_path, sid) == [1, 2]
    server_bytes = b"".join(
        Path(p).read_bytes()
        for p in (shared_server.db_path, shared_server.db_path + "-wal")
        if Path(p).exists()
    )
    assert SECRET.encode() not in server_bytes
    assert b"4111-1111" not in server_bytes
    assert hash_value(SALT, SECRET).encode() in server_bytes  # joins still work
    assert b"203.0.113.0" in server_bytes


def test_consent_categories_gate_events(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    sid = _sid()
    service = start(
        services,
        shared_server,
        tmp_path / "q.sqlite3",
        privacy=PrivacyConfig(default_consent=frozenset({"analytics"})),
    )

    def event(i: int, consent: list[str] | None) -> Event:
        return Event(
            event_id=str(uuid.uuid4()),
            event_type="perf" if consent else "click",
            timestamp=dt.datetime.now(dt.UTC),
            session_id=sid,
            properties={"i": i},
            consent=consent,
        )

    service.send_event(event(1, None))  # "analytics" by default: granted
    service.send_event(event(2, ["performance"]))  # not granted: dropped
    assert service.flush(10)
    service.set_consent("performance", True)
    service.send_event(event(3, ["performance"]))
    service.set_consent("analytics", False)
    service.send_event(event(4, None))
    assert service.flush(10)
    assert stored(shared_server.db_path, sid) == [1, 3]
    assert service.get_status().dropped.get("no_consent") == 2
    assert sorted(service.get_consent().granted or []) == ["performance"]
