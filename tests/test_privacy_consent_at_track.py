"""Consent is judged as of ``track``/``send_event``, not when the committer runs (issue #13, 3).

The privacy filter runs in the committer, up to ``commit_interval`` after the event
was handed over. A consent granted in between must not let an event through that
was recorded without it; a consent withdrawn in between must not lose one recorded
with it. ``commit_interval`` is set to its maximum so that the committer never runs
by chance between the calls: the window of the issue (50 ms by default) is held open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path

from innkt_analytics import AsyncAnalyticsBackendService
from innkt_analytics.sdk._backend import AnalyticsBackendService
from innkt_analytics.sdk._privacy import PrivacyConfig
from innkt_analytics.shared._protocol import Event
from tests._proxy import fast_config, stored
from tests._server import ServerProcess

ANALYTICS_ONLY = PrivacyConfig(default_consent=frozenset({"analytics"}))


def _event(sid: str, i: int, consent: list[str] | None) -> Event:
    return Event(
        event_id=str(uuid.uuid4()),
        event_type="promo",
        timestamp=dt.datetime.now(dt.UTC),
        session_id=sid,
        properties={"i": i},
        consent=consent,
    )


def test_consent_granted_after_send_event_does_not_release_it(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    sid = "s-" + uuid.uuid4().hex
    service = AnalyticsBackendService(
        fast_config(
            shared_server.url,
            shared_server.write_key,
            tmp_path / "q.sqlite3",
            privacy=ANALYTICS_ONLY,
            commit_interval=60,
        )
    )
    services.append(service)
    assert service.send_event(_event(sid, 1, ["marketing"]))  # no consent: never sent
    service.set_consent("marketing", True)
    assert service.send_event(_event(sid, 2, ["marketing"]))  # consent: sent
    service.set_consent("marketing", False)
    assert service.flush(10)
    assert stored(shared_server.db_path, sid) == [2]
    assert service.get_status().dropped.get("no_consent") == 1


def test_default_category_and_runtime_privacy_options_judged_as_of_track(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    sid = "s-" + uuid.uuid4().hex
    service = AnalyticsBackendService(
        fast_config(
            shared_server.url,
            shared_server.write_key,
            tmp_path / "q.sqlite3",
            privacy=PrivacyConfig(default_consent=frozenset()),
            commit_interval=60,
        )
    )
    services.append(service)
    assert service.track("click", {"i": 1}, session_id=sid)  # "analytics", not granted
    service.update_config(privacy=ANALYTICS_ONLY)  # now granted by default
    assert service.track("click", {"i": 2}, session_id=sid)
    assert service.send_event(_event(sid, 3, ["marketing"]))  # still not granted
    service.update_config(privacy=PrivacyConfig())  # everything granted from here on
    assert service.flush(10)
    assert stored(shared_server.db_path, sid) == [2]
    assert service.get_status().dropped.get("no_consent") == 2


def test_asyncio_consent_granted_after_send_event_does_not_release_it(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    sid = "s-" + uuid.uuid4().hex

    async def main() -> int | None:
        service = AsyncAnalyticsBackendService()
        await service.initialize(
            fast_config(
                shared_server.url,
                shared_server.write_key,
                tmp_path / "q.sqlite3",
                privacy=ANALYTICS_ONLY,
                commit_interval=60,
            )
        )
        try:
            assert service.send_event(_event(sid, 1, ["marketing"]))
            service.set_consent("marketing", True)
            assert service.send_event(_event(sid, 2, ["marketing"]))
            service.set_consent("marketing", False)
            assert await service.flush(10)
            return service.get_status().dropped.get("no_consent")
        finally:
            await service.shutdown(5)

    assert asyncio.run(main()) == 1
    assert stored(shared_server.db_path, sid) == [2]
