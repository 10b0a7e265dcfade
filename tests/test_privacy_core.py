"""The SDK's privacy core at object level: consent, deny-list, hashing, anonymisation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from innkt_analytics import ConfigError, Event, StorageError
from innkt_analytics.sdk._privacy import (
    ConsentState,
    ConsentStore,
    PrivacyConfig,
    PrivacyFilter,
    anonymize_ip,
    hash_value,
)

SALT = "a-salt-of-sixteen+"


def _event(**kw: object) -> Event:
    base: dict[str, object] = {
        "event_id": "e1",
        "event_type": "purchase",
        "timestamp": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "user_id": "alice@example.com",
        "properties": {"email": "alice@example.com", "plan": "pro", "card": "4111"},
    }
    base.update(kw)
    return Event(**base)  # type: ignore[arg-type]


def test_deny_and_hash_properties() -> None:
    f = PrivacyFilter(
        PrivacyConfig(
            deny_properties=frozenset({"card"}),
            hash_properties=frozenset({"email"}),
            hash_user_id=True,
            hash_salt=SALT,
        )
    )
    out, reason = f.apply(_event())
    assert reason == ""
    assert out is not None
    assert out.properties == {"email": hash_value(SALT, "alice@example.com"), "plan": "pro"}
    assert out.user_id == hash_value(SALT, "alice@example.com")
    assert out.user_id is not None
    assert len(out.user_id) <= 128
    assert "alice" not in repr(out)


def test_hashes_are_salted_and_stable() -> None:
    assert hash_value(SALT, "x") == hash_value(SALT, "x")
    assert hash_value(SALT, "x") != hash_value(SALT + "2", "x")
    assert hash_value(SALT, 1) != hash_value(SALT, "1")


def test_hashing_needs_a_real_salt() -> None:
    with pytest.raises(ConfigError) as info:
        PrivacyConfig(hash_properties=frozenset({"email"}), hash_salt="short")
    assert info.value.field == "hash_salt"
    with pytest.raises(ConfigError):
        PrivacyConfig(
            deny_properties=frozenset({"a"}), hash_properties=frozenset({"a"}), hash_salt=SALT
        )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:abcd:1234:5678::1", "2001:db8:abcd::"),
        ("not an ip", "not an ip"),
    ],
)
def test_anonymize_ip(raw: str, expected: str) -> None:
    assert anonymize_ip(raw) == expected


def test_ip_and_device_ids_scrubbed_in_context_and_device_info() -> None:
    f = PrivacyFilter(PrivacyConfig(anonymize_ip=True, drop_device_ids=True))
    out, _ = f.apply(
        _event(
            context={"ip": "198.51.100.23", "device": {"advertisingId": "ad-1", "model": "X"}},
            device_info={"deviceId": "d-1", "os": "Android", "ipAddress": "10.1.2.3"},
        )
    )
    assert out is not None
    assert out.context == {"ip": "198.51.100.0", "device": {"model": "X"}}
    assert out.device_info == {"os": "Android", "ipAddress": "10.1.2.0"}


def test_opt_out_and_consent_categories() -> None:
    config = PrivacyConfig(default_consent=frozenset({"analytics"}))
    f = PrivacyFilter(config)
    assert f.apply(_event())[0] is not None  # no category declared: "analytics"
    assert f.apply(_event(consent=["performance"])) == (None, "no_consent")
    f.consent = ConsentState(granted=["analytics", "performance"])
    assert f.apply(_event(consent=["performance"]))[0] is not None
    f.consent = ConsentState(opted_out=True, granted=["analytics", "performance"])
    assert f.apply(_event()) == (None, "opted_out")
    # With no default, everything is granted until the user chooses.
    assert PrivacyFilter(PrivacyConfig()).allows(["anything"])


def test_consent_store_round_trip_and_corruption(tmp_path: Path) -> None:
    store = ConsentStore(tmp_path / "sub" / "consent.json")
    assert store.load() == ConsentState()
    store.save(ConsentState(opted_out=True, granted=["analytics"]))
    assert ConsentStore(store.path).load() == ConsentState(opted_out=True, granted=["analytics"])
    assert [p.name for p in store.path.parent.iterdir()] == ["consent.json"]  # no temp left
    store.path.write_text("{not json")
    with pytest.raises(StorageError):
        store.load()
