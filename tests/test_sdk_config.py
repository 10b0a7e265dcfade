"""BackendConfig: the seed's defaults, validation naming the field, presets, remote config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from innkt_analytics.sdk._config import BackendConfig, OverflowPolicy, QueueMode, default_queue_path
from innkt_analytics.shared._exceptions import ConfigError
from innkt_analytics.shared._protocol import ClientConfig

URL = "http://127.0.0.1:9"


def make(**options: Any) -> BackendConfig:
    return BackendConfig(base_url=URL, api_key="ik_test", **options)


def test_defaults_are_the_seeds() -> None:
    config = make()
    assert (config.timeout, config.retry_attempts, config.retry_delay) == (10.0, 3, 1.0)
    assert (config.batch_size, config.sync_interval) == (50, 30.0)
    assert config.queue_mode is QueueMode.DURABLE
    assert config.compression is True
    assert config.overflow_policy is OverflowPolicy.DROP_OLDEST


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", 0),
        ("timeout", -1.0),
        ("timeout", float("nan")),
        ("retry_attempts", -1),
        ("retry_attempts", 1.5),
        ("retry_attempts", True),
        ("retry_delay", -0.1),
        ("batch_size", 0),
        ("batch_size", 2501),
        ("batch_size", "50"),
        ("sync_interval", 0),
        ("max_request_bytes", 1000),
        ("max_queue_events", 0),
        ("max_queue_bytes", 10),
        ("sampling_rate", 1.5),
        ("compression_level", 0),
        ("commit_interval", 0),
        ("buffer_size", 0),
        ("queue_mode", "durable"),
        ("overflow_policy", "drop_oldest"),
        ("disabled_event_types", "debug"),
        ("disabled_event_types", [""]),
        ("queue_path", 3),
    ],
)
def test_invalid_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        make(**{field: value})
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("field", "options"),
    [
        ("base_url", {"base_url": "ftp://x"}),
        ("base_url", {"base_url": "http://"}),
        ("base_url", {"base_url": "http://h/?q=1"}),
        ("api_key", {"api_key": ""}),
        ("api_key", {"api_key": "a\nb"}),
    ],
)
def test_invalid_url_and_key(field: str, options: dict[str, str]) -> None:
    settings = {"base_url": URL, "api_key": "ik_test", **options}
    with pytest.raises(ConfigError) as info:
        BackendConfig(**settings)
    assert info.value.field == field


def test_max_retry_delay_must_not_be_below_retry_delay() -> None:
    with pytest.raises(ConfigError) as info:
        make(retry_delay=5, max_retry_delay=1)
    assert info.value.field == "max_retry_delay"


def test_normalisation() -> None:
    config = make(queue_path="/tmp/q.sqlite3", disabled_event_types=["a", "b"])
    assert config.queue_path == Path("/tmp/q.sqlite3")
    assert config.disabled_event_types == frozenset({"a", "b"})
    assert BackendConfig(base_url=URL + "/", api_key="k").base_url == URL


def test_default_queue_path_is_per_server_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/state")
    one = default_queue_path(URL, "a")
    assert one.parent == Path("/state/innkt-analytics")
    assert one != default_queue_path(URL, "b")
    assert make().resolved_queue_path == default_queue_path(URL, "ik_test")


def test_replace_validates_and_rejects_unknown_options() -> None:
    config = make()
    assert config.replace(batch_size=10).batch_size == 10
    with pytest.raises(ConfigError) as info:
        config.replace(batch_size=-1)
    assert info.value.field == "batch_size"
    with pytest.raises(ConfigError) as info:
        config.replace(bacth_size=10)
    assert info.value.field == "bacth_size"


def test_presets() -> None:
    dev = BackendConfig.development(URL, "k")
    assert dev.queue_mode is QueueMode.MEMORY
    assert dev.compression is False
    assert dev.sync_interval < make().sync_interval
    assert BackendConfig.development(URL, "k", queue_path="/tmp/x").queue_mode is QueueMode.DURABLE
    prod = BackendConfig.production(URL, "k", batch_size=200)
    assert prod.queue_mode is QueueMode.DURABLE
    assert prod.compression is True
    assert prod.batch_size == 200
    with pytest.raises(ConfigError):
        BackendConfig.production(URL, "k", timeout=0)


def test_client_config_applies_the_server_side_options() -> None:
    remote = ClientConfig(
        batch_size=7, sync_interval=2.5, sampling_rate=0.5, disabled_event_types=["debug"]
    )
    config = make().with_client_config(remote)
    assert (config.batch_size, config.sync_interval, config.sampling_rate) == (7, 2.5, 0.5)
    assert config.disabled_event_types == frozenset({"debug"})
