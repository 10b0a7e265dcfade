"""The SDK's identify/alias/reset against the real server: one person across ids."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from innkt_analytics.sdk._abackend import AsyncAnalyticsBackendService
from innkt_analytics.sdk._backend import AnalyticsBackendService
from innkt_analytics.shared._exceptions import ConfigError
from tests._proxy import fast_config
from tests._server import ServerProcess


def _person(server: ServerProcess, some_id: str) -> dict[str, object]:
    r = httpx.get(server.url + f"/v1/persons/{some_id}", headers=server.headers("read"))
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_anonymous_then_identify_is_one_person_and_reset_starts_another(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    queue = tmp_path / "q.sqlite3"
    config = fast_config(shared_server.url, shared_server.write_key, queue)
    service = AnalyticsBackendService(config)
    services.append(service)
    anon = service.anonymous_id
    assert anon is not None
    assert service.user_id is None
    user = "u-" + uuid.uuid4().hex
    assert service.track("page_view")
    assert service.identify(user, {"plan": "pro"})
    assert service.track("purchase")
    assert service.flush(30)
    person = _person(shared_server, anon)
    assert person["ids"] == sorted([anon, user])
    assert person["traits"] == {"plan": "pro"}
    assert service.shutdown(10)

    # the same device after a restart: the same anonymous id, still signed in
    again = AnalyticsBackendService(config)
    services.append(again)
    assert (again.anonymous_id, again.user_id) == (anon, user)

    # sign-out: a new anonymous id, its events a person of their own
    fresh = again.reset()
    assert fresh != anon
    assert (again.anonymous_id, again.user_id) == (fresh, None)
    assert again.track("page_view")
    assert again.flush(30)
    assert _person(shared_server, fresh)["ids"] == [fresh]
    assert _person(shared_server, user)["ids"] == sorted([anon, user])

    # an explicit alias merges even two user ids
    other = "u-" + uuid.uuid4().hex
    assert again.alias(other, previous_id=user)
    assert again.user_id == other
    assert again.flush(30)
    # (the alias carries this device's current anonymous id, which joins too)
    assert _person(shared_server, anon)["ids"] == sorted([anon, fresh, user, other])
    with pytest.raises(ConfigError):
        again.identify("")


def test_the_asyncio_service_identifies_too(shared_server: ServerProcess, tmp_path: Path) -> None:
    user = "u-" + uuid.uuid4().hex

    async def main() -> tuple[str | None, str]:
        service = AsyncAnalyticsBackendService()
        await service.initialize(
            fast_config(shared_server.url, shared_server.write_key, tmp_path / "q.sqlite3")
        )
        anon = service.anonymous_id
        assert service.track("page_view")
        assert service.identify(user)
        fresh = service.reset()
        assert service.track("page_view")
        assert await service.flush(30)
        assert await service.shutdown(5)
        return anon, fresh

    anon, fresh = asyncio.run(main())
    assert anon is not None
    assert _person(shared_server, user)["ids"] == sorted([anon, user])
    assert _person(shared_server, fresh)["ids"] == [fresh]


def test_hashed_user_ids_hash_an_alias_previous_user_id_too() -> None:
    import datetime as dt

    from innkt_analytics.sdk._privacy import PrivacyConfig, PrivacyFilter, hash_value
    from innkt_analytics.shared._protocol import Event

    salt = "a salt of sixteen chars"
    privacy = PrivacyFilter(PrivacyConfig(hash_user_id=True, hash_salt=salt))

    def alias(previous: str) -> Event:
        event = Event(
            event_id="e",
            event_type="alias",
            timestamp=dt.datetime.now(dt.UTC),
            user_id="u-new",
            anonymous_id="anon",
            properties={"previousId": previous},
        )
        kept, _ = privacy.apply(event)
        assert kept is not None
        assert kept.user_id == hash_value(salt, "u-new")
        return kept

    assert alias("u-old").properties == {"previousId": hash_value(salt, "u-old")}
    assert alias("anon").properties == {"previousId": "anon"}  # the device's own anonymous id


def test_a_corrupt_identity_file_is_replaced_not_fatal(tmp_path: Path) -> None:
    from innkt_analytics.sdk._identity import IdentityStore

    path = tmp_path / "q.sqlite3.identity.json"
    store = IdentityStore(path)
    first = store.load()
    assert store.load() == first  # kept
    path.write_bytes(b'{"anonymousId": ')  # a torn write from another tool
    fresh = store.load()
    assert fresh.anonymous_id != first.anonymous_id
    assert IdentityStore(path).load() == fresh
