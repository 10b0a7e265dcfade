"""innkt-analytics: offline-first analytics.

The SDK's three services (``AnalyticsBackendService``, ``RealTimeSyncService``,
``AnalyticsDataPersistenceService``), their asyncio flavours, configuration
value objects, the wire protocol Structs and the exception tree. The server
lives in ``innkt_analytics.server``; test helpers in ``innkt_analytics.testing``.
Implementation modules are private (``_name``); everything public is here.

Names are imported on first use (PEP 562 ``__getattr__``): ``import
innkt_analytics`` costs a few milliseconds, and an app that only tracks events
never imports asyncio's services, WebSockets or the persistence layer.
"""

from __future__ import annotations

import importlib
import typing

from innkt_analytics.shared._exceptions import (
    ConfigError,
    ConnectionStateError,
    DecryptionError,
    InnktError,
    IntegrityError,
    InvalidRecordError,
    NetworkError,
    ServerError,
    StorageError,
    StorageFullError,
    TransportError,
)
from innkt_analytics.shared._version import __version__

if typing.TYPE_CHECKING:
    from innkt_analytics.sdk._abackend import AsyncAnalyticsBackendService
    from innkt_analytics.sdk._backend import AnalyticsBackendService, DropCallback
    from innkt_analytics.sdk._bus import EventBus, Subscription, default_bus
    from innkt_analytics.sdk._config import BackendConfig, OverflowPolicy, QueueMode
    from innkt_analytics.sdk._persistence import (
        AnalyticsDataPersistenceService,
        CleanupResult,
        PersistenceConfig,
        PersistenceState,
        StorageInfo,
        StoredRecord,
        StoreResult,
    )
    from innkt_analytics.sdk._privacy import ConsentState, PrivacyConfig
    from innkt_analytics.sdk._queue import Dropped
    from innkt_analytics.sdk._realtime import AsyncRealTimeSyncService, RealTimeSyncService
    from innkt_analytics.sdk._realtime_session import ConnectionStats, RealTimeConfig
    from innkt_analytics.sdk._transport import (
        AsyncTransport,
        HealthStatus,
        NetworkState,
        Outcome,
        SendResult,
        ServiceState,
        ServiceStatus,
        Transport,
    )
    from innkt_analytics.shared._backup import BackupManifest
    from innkt_analytics.shared._protocol import (
        Batch,
        ClientConfig,
        Envelope,
        ErrorBody,
        Event,
        IngestResponse,
        Rejection,
    )
    from innkt_analytics.shared._realtime_codec import ConnectionState

#: where each lazily imported public name lives
_LAZY: dict[str, str] = {
    "AnalyticsBackendService": "innkt_analytics.sdk._backend",
    "AnalyticsDataPersistenceService": "innkt_analytics.sdk._persistence",
    "AsyncAnalyticsBackendService": "innkt_analytics.sdk._abackend",
    "AsyncRealTimeSyncService": "innkt_analytics.sdk._realtime",
    "AsyncTransport": "innkt_analytics.sdk._transport",
    "BackendConfig": "innkt_analytics.sdk._config",
    "BackupManifest": "innkt_analytics.shared._backup",
    "Batch": "innkt_analytics.shared._protocol",
    "CleanupResult": "innkt_analytics.sdk._persistence",
    "ClientConfig": "innkt_analytics.shared._protocol",
    "ConnectionState": "innkt_analytics.shared._realtime_codec",
    "ConnectionStats": "innkt_analytics.sdk._realtime_session",
    "ConsentState": "innkt_analytics.sdk._privacy",
    "DropCallback": "innkt_analytics.sdk._backend",
    "Dropped": "innkt_analytics.sdk._queue",
    "Envelope": "innkt_analytics.shared._protocol",
    "ErrorBody": "innkt_analytics.shared._protocol",
    "Event": "innkt_analytics.shared._protocol",
    "EventBus": "innkt_analytics.sdk._bus",
    "HealthStatus": "innkt_analytics.sdk._transport",
    "IngestResponse": "innkt_analytics.shared._protocol",
    "NetworkState": "innkt_analytics.sdk._transport",
    "Outcome": "innkt_analytics.sdk._transport",
    "OverflowPolicy": "innkt_analytics.sdk._config",
    "PersistenceConfig": "innkt_analytics.sdk._persistence",
    "PersistenceState": "innkt_analytics.sdk._persistence",
    "PrivacyConfig": "innkt_analytics.sdk._privacy",
    "QueueMode": "innkt_analytics.sdk._config",
    "RealTimeConfig": "innkt_analytics.sdk._realtime_session",
    "RealTimeSyncService": "innkt_analytics.sdk._realtime",
    "Rejection": "innkt_analytics.shared._protocol",
    "SendResult": "innkt_analytics.sdk._transport",
    "ServiceState": "innkt_analytics.sdk._transport",
    "ServiceStatus": "innkt_analytics.sdk._transport",
    "StorageInfo": "innkt_analytics.sdk._persistence",
    "StoreResult": "innkt_analytics.sdk._persistence",
    "StoredRecord": "innkt_analytics.sdk._persistence",
    "Subscription": "innkt_analytics.sdk._bus",
    "Transport": "innkt_analytics.sdk._transport",
    "default_bus": "innkt_analytics.sdk._bus",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'innkt_analytics' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AnalyticsBackendService",
    "AnalyticsDataPersistenceService",
    "AsyncAnalyticsBackendService",
    "AsyncRealTimeSyncService",
    "AsyncTransport",
    "BackendConfig",
    "BackupManifest",
    "Batch",
    "CleanupResult",
    "ClientConfig",
    "ConfigError",
    "ConnectionState",
    "ConnectionStateError",
    "ConnectionStats",
    "ConsentState",
    "DecryptionError",
    "DropCallback",
    "Dropped",
    "Envelope",
    "ErrorBody",
    "Event",
    "EventBus",
    "HealthStatus",
    "IngestResponse",
    "InnktError",
    "IntegrityError",
    "InvalidRecordError",
    "NetworkError",
    "NetworkState",
    "Outcome",
    "OverflowPolicy",
    "PersistenceConfig",
    "PersistenceState",
    "PrivacyConfig",
    "QueueMode",
    "RealTimeConfig",
    "RealTimeSyncService",
    "Rejection",
    "SendResult",
    "ServerError",
    "ServiceState",
    "ServiceStatus",
    "StorageError",
    "StorageFullError",
    "StorageInfo",
    "StoreResult",
    "StoredRecord",
    "Subscription",
    "Transport",
    "TransportError",
    "__version__",
    "default_bus",
]
