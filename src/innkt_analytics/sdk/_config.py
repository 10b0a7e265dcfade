"""Configuration of the SDK's backend service: one typed, validated value object.

``BackendConfig`` carries the seed's options with the seed's defaults (base URL,
API key, timeout 10 s, 3 retry attempts, 1 s retry delay, batches of 50, a sync
every 30 s) plus the options of the durable queue. Every field is checked in
``__post_init__``; a bad value raises ``ConfigError`` naming the field, so a
typo fails at start-up rather than as a silent loss of events later.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import ssl
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from innkt_analytics.sdk._privacy import PrivacyConfig
from innkt_analytics.sdk._tls import check_tls_options
from innkt_analytics.shared._exceptions import ConfigError
from innkt_analytics.shared._protocol import ClientConfig

__all__ = ["BackendConfig", "OverflowPolicy", "QueueMode", "default_queue_path"]

#: The server's default body limit; a request must stay below it.
SERVER_MAX_BODY_BYTES: Final = 1024 * 1024
SERVER_MAX_BATCH_EVENTS: Final = 2500


class QueueMode(enum.Enum):
    """Where queued events wait for the server."""

    #: a SQLite (WAL) file: survives a crash or kill -9 of the host process
    DURABLE = "durable"
    #: process memory only: faster to commit, lost when the process dies
    MEMORY = "memory"


class OverflowPolicy(enum.Enum):
    """What a full queue gives up; every event given up is counted by reason."""

    #: keep what is queued, refuse the new events (reason ``queue_full``)
    DROP_NEWEST = "drop_newest"
    #: delete the oldest queued events to make room (reason ``queue_evicted``)
    DROP_OLDEST = "drop_oldest"


def default_queue_path(base_url: str, api_key: str) -> Path:
    """The queue file used when none is configured: one per (server, key), per user.

    It lives under ``$XDG_STATE_HOME`` (or ``~/.local/state``) so that a restarted
    process finds the events a crashed one left behind.
    """
    digest = hashlib.sha256(f"{base_url}\0{api_key}".encode()).hexdigest()[:16]
    root = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(root) / "innkt-analytics" / f"queue-{digest}.sqlite3"


def _check_number(
    name: str,
    value: object,
    *,
    integer: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
) -> None:
    # bool is an int subclass; True as a batch size is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(name, f"must be {kind}, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(name, f"must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value!r}")
    if exclusive_minimum is not None and value <= exclusive_minimum:
        raise ConfigError(name, f"must be > {exclusive_minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(name, f"must be <= {maximum}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    """Options of ``AnalyticsBackendService``; durations are in seconds.

    Raises ``ConfigError`` (naming the field) on any invalid value.
    """

    #: the server, e.g. ``https://analytics.example.com`` (no trailing path needed)
    base_url: str
    #: a write key of the project
    api_key: str = dataclasses.field(repr=False)
    #: per-request timeout (connect, read, write and pool)
    timeout: float = 10.0
    #: retries of one batch after its first attempt, before the service goes offline
    retry_attempts: int = 3
    #: base of the exponential backoff (full jitter) between attempts
    retry_delay: float = 1.0
    #: cap of one backoff delay, and of the offline health-probe interval
    max_retry_delay: float = 60.0
    #: a server's ``Retry-After`` is obeyed as a floor, but never beyond this
    max_retry_after: float = 300.0
    #: send as soon as this many events are queued (and never more in one request)
    batch_size: int = 50
    #: send whatever is queued at least this often
    sync_interval: float = 30.0
    #: send as soon as this many bytes are queued; no request body is larger
    max_request_bytes: int = 512 * 1024
    #: an event larger than this (JSON bytes) is dropped at once as ``too_large``
    max_event_bytes: int = 32 * 1024
    #: gzip request bodies (``Content-Encoding: gzip``)
    compression: bool = True
    #: zlib level 1..9; 1 already shrinks event JSON about 5x at a fraction of the cost of 6
    compression_level: int = 1
    #: durable SQLite queue, or memory only
    queue_mode: QueueMode = QueueMode.DURABLE
    #: the SQLite file; None uses ``default_queue_path(base_url, api_key)``
    queue_path: Path | None = None
    #: fsync every commit (``synchronous=FULL``): survives power loss, not only a crash
    queue_fsync: bool = False
    #: bounds of the queue; beyond them ``overflow_policy`` applies and is counted
    max_queue_events: int = 100_000
    max_queue_bytes: int = 64 * 1024 * 1024
    overflow_policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    #: events handed over by ``track`` but not yet committed; beyond it they are
    #: dropped as ``buffer_full`` (the caller is never blocked)
    buffer_size: int = 100_000
    #: the worker commits handed-over events to the queue at least this often
    commit_interval: float = 0.05
    #: failed delivery rounds in a row before the service goes offline and probes health
    offline_after_failures: int = 1
    #: fetch ``GET /v1/config`` on start and then this often (0 disables)
    config_refresh_interval: float = 300.0
    #: share of events kept by ``track``/``send_event`` (the server may change it)
    sampling_rate: float = 1.0
    #: event types ``track``/``send_event`` drop (the server may change them)
    disabled_event_types: frozenset[str] = frozenset()
    #: ``shutdown()``'s default deadline, and the bound of the atexit hook
    shutdown_timeout: float = 5.0
    atexit_timeout: float = 2.0
    #: consent, deny-listed and hashed properties, IP/device-id anonymisation
    privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)
    #: where opt-out and consent choices persist; None: beside the queue file
    consent_path: Path | None = None
    #: TLS: a PEM file of the CAs to trust instead of the system's (a private CA)
    ca_bundle: Path | None = None
    #: TLS: a complete client context (client certificates, pinning); wins over ca_bundle.
    #: Certificates are always verified; there is no plain-HTTP fallback.
    ssl_context: ssl.SSLContext | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._check_url()
        object.__setattr__(self, "ca_bundle", check_tls_options(self.ca_bundle, self.ssl_context))
        if not isinstance(self.api_key, str) or not self.api_key.strip():
            raise ConfigError("api_key", "must be a non-empty string")
        if any(c in self.api_key for c in "\r\n"):
            raise ConfigError("api_key", "must not contain line breaks")
        _check_number("timeout", self.timeout, exclusive_minimum=0, maximum=600)
        _check_number("retry_attempts", self.retry_attempts, integer=True, minimum=0, maximum=100)
        _check_number("retry_delay", self.retry_delay, minimum=0, maximum=3600)
        _check_number("max_retry_delay", self.max_retry_delay, exclusive_minimum=0, maximum=86400)
        if self.max_retry_delay < self.retry_delay:
            raise ConfigError("max_retry_delay", "must be >= retry_delay")
        _check_number("max_retry_after", self.max_retry_after, minimum=0, maximum=86400)
        _check_number(
            "batch_size", self.batch_size, integer=True, minimum=1, maximum=SERVER_MAX_BATCH_EVENTS
        )
        _check_number("sync_interval", self.sync_interval, exclusive_minimum=0, maximum=86400)
        _check_number("max_event_bytes", self.max_event_bytes, integer=True, minimum=64)
        _check_number(
            "max_request_bytes",
            self.max_request_bytes,
            integer=True,
            minimum=self.max_event_bytes + 1024,
            maximum=64 * SERVER_MAX_BODY_BYTES,
        )
        if not isinstance(self.compression, bool):
            raise ConfigError("compression", "must be a bool")
        _check_number(
            "compression_level", self.compression_level, integer=True, minimum=1, maximum=9
        )
        if not isinstance(self.queue_mode, QueueMode):
            raise ConfigError("queue_mode", f"must be a QueueMode, got {self.queue_mode!r}")
        path: object = self.queue_path  # a str is accepted and normalised to a Path
        if path is not None and not isinstance(path, Path):
            if not isinstance(path, str) or not path:
                raise ConfigError("queue_path", "must be a path or None")
            object.__setattr__(self, "queue_path", Path(path))
        if not isinstance(self.queue_fsync, bool):
            raise ConfigError("queue_fsync", "must be a bool")
        _check_number("max_queue_events", self.max_queue_events, integer=True, minimum=1)
        _check_number(
            "max_queue_bytes", self.max_queue_bytes, integer=True, minimum=self.max_event_bytes
        )
        if not isinstance(self.overflow_policy, OverflowPolicy):
            raise ConfigError(
                "overflow_policy", f"must be an OverflowPolicy, got {self.overflow_policy!r}"
            )
        _check_number("buffer_size", self.buffer_size, integer=True, minimum=1)
        _check_number("commit_interval", self.commit_interval, exclusive_minimum=0, maximum=60)
        _check_number(
            "offline_after_failures", self.offline_after_failures, integer=True, minimum=1
        )
        _check_number(
            "config_refresh_interval", self.config_refresh_interval, minimum=0, maximum=86400
        )
        _check_number("sampling_rate", self.sampling_rate, minimum=0, maximum=1)
        self._check_disabled_types()
        _check_number("shutdown_timeout", self.shutdown_timeout, minimum=0, maximum=3600)
        _check_number("atexit_timeout", self.atexit_timeout, minimum=0, maximum=3600)
        if not isinstance(self.privacy, PrivacyConfig):
            raise ConfigError("privacy", "must be a PrivacyConfig")

    def _check_url(self) -> None:
        if not isinstance(self.base_url, str):
            raise ConfigError("base_url", "must be a string")
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "base_url", f"must be an http(s) URL with a host, got {self.base_url!r}"
            )
        if parts.query or parts.fragment:
            raise ConfigError("base_url", "must not have a query or a fragment")
        # Normalise so that joining "/v1/..." never produces "//v1".
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    def _check_disabled_types(self) -> None:
        value: Any = self.disabled_event_types
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ConfigError("disabled_event_types", "must be a set of event type names")
        items = frozenset(value)
        if not all(isinstance(item, str) and item for item in items):
            raise ConfigError("disabled_event_types", "must hold non-empty strings")
        object.__setattr__(self, "disabled_event_types", items)

    @property
    def resolved_queue_path(self) -> Path:
        """The queue file this configuration uses in durable mode."""
        if self.queue_path is not None:
            return self.queue_path
        return default_queue_path(self.base_url, self.api_key)

    @property
    def resolved_consent_path(self) -> Path:
        """The file that keeps the user's opt-out and consent choices across restarts."""
        if self.consent_path is not None:
            return self.consent_path
        queue = self.resolved_queue_path
        return queue.with_name(queue.name + ".consent.json")

    def replace(self, **changes: Any) -> BackendConfig:
        """A copy with ``changes`` applied. Raises ``ConfigError`` (also for unknown names)."""
        names = {f.name for f in dataclasses.fields(self)}
        for name in changes:
            if name not in names:
                raise ConfigError(name, "is not a BackendConfig option")
        return dataclasses.replace(self, **changes)

    def with_client_config(self, remote: ClientConfig) -> BackendConfig:
        """Apply the server-side options of ``GET /v1/config`` (or a ``config_update``)."""
        return self.replace(
            batch_size=remote.batch_size,
            sync_interval=remote.sync_interval,
            sampling_rate=remote.sampling_rate,
            disabled_event_types=frozenset(remote.disabled_event_types),
        )

    @classmethod
    def development(cls, base_url: str, api_key: str, **overrides: Any) -> BackendConfig:
        """A preset for local work: small batches sent every second, short timeouts,
        no compression (bodies stay readable in a proxy), a memory queue unless a
        ``queue_path`` is given. Raises ``ConfigError``.
        """
        options: dict[str, Any] = {
            "timeout": 5.0,
            "retry_attempts": 2,
            "retry_delay": 0.5,
            "max_retry_delay": 10.0,
            "batch_size": 10,
            "sync_interval": 1.0,
            "compression": False,
            "queue_mode": QueueMode.DURABLE if "queue_path" in overrides else QueueMode.MEMORY,
            "config_refresh_interval": 30.0,
        }
        options.update(overrides)
        return cls(base_url=base_url, api_key=api_key, **options)

    @classmethod
    def production(cls, base_url: str, api_key: str, **overrides: Any) -> BackendConfig:
        """A preset for deployed apps: the seed's defaults, gzip, the durable queue,
        larger batches. Raises ``ConfigError``.
        """
        options: dict[str, Any] = {
            "batch_size": 100,
            "compression": True,
            "queue_mode": QueueMode.DURABLE,
        }
        options.update(overrides)
        return cls(base_url=base_url, api_key=api_key, **options)
