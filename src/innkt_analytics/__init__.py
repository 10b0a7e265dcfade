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

from innkt_analytics._exceptions import (
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
from innkt_analytics._version import __version__

if typing.TYPE_CHECKING:
    from innkt_analytics._abackend import AsyncAnalyticsBackendService
    from innkt_analytics._backend import AnalyticsBackendService, DropCallback
    from innkt_analytics._backup import BackupManifest
    from innkt_analytics._bus import EventBus, Subscription, default_bus
    from innkt_analytics._config import BackendConfig, OverflowPolicy, QueueMode
    from innkt_analytics._persistence import (
        AnalyticsDataPersistenceService,
        CleanupResult,
        PersistenceConfig,
        PersistenceState,
        StorageInfo,
        StoredRecord,
        StoreResult,
    )
    from innkt_analytics._privacy import ConsentState, PrivacyConfig
    from innkt_analytics._protocol import (
        Batch,
        ClientConfig,
        Envelope,
        ErrorBody,
        Event,
        IngestResponse,
        Rejection,
    )
    from innkt_analytics._queue import Dropped
    from innkt_analytics._realtime import AsyncRealTimeSyncService, RealTimeSyncService
    from innkt_analytics._realtime_codec import ConnectionState
    from innkt_analytics._realtime_session import ConnectionStats, RealTimeConfig
    from innkt_analytics._transport import (
        AsyncTransport,
        HealthStatus,
        NetworkState,
        Outcome,
        SendResult,
        ServiceState,
        ServiceStatus,
        Transport,
    )

#: where each lazily imported public name lives
_LAZY: dict[str, str] = {
    "AnalyticsBackendService": "innkt_analytics._backend",
    "AnalyticsDataPersistenceService": "innkt_analytics._persistence",
    "AsyncAnalyticsBackendService": "innkt_analytics._abackend",
    "AsyncRealTimeSyncService": "innkt_analytics._realtime",
    "AsyncTransport": "innkt_analytics._transport",
    "BackendConfig": "innkt_analytics._config",
    "BackupManifest": "innkt_analytics._backup",
    "Batch": "innkt_analytics._protocol",
    "CleanupResult": "innkt_analytics._persistence",
    "ClientConfig": "innkt_analytics._protocol",
    "ConnectionState": "innkt_analytics._realtime_codec",
    "ConnectionStats": "innkt_analytics._realtime_session",
    "ConsentState": "innkt_analytics._privacy",
    "DropCallback": "innkt_analytics._backend",
    "Dropped": "innkt_analytics._queue",
    "Envelope": "innkt_analytics._protocol",
    "ErrorBody": "innkt_analytics._protocol",
    "Event": "innkt_analytics._protocol",
    "EventBus": "innkt_analytics._bus",
    "HealthStatus": "innkt_analytics._transport",
    "IngestResponse": "innkt_analytics._protocol",
    "NetworkState": "innkt_analytics._transport",
    "Outcome": "innkt_analytics._transport",
    "OverflowPolicy": "innkt_analytics._config",
    "PersistenceConfig": "innkt_analytics._persistence",
    "PersistenceState": "innkt_analytics._persistence",
    "PrivacyConfig": "innkt_analytics._privacy",
    "QueueMode": "innkt_analytics._config",
    "RealTimeConfig": "innkt_analytics._realtime_session",
    "RealTimeSyncService": "innkt_analytics._realtime",
    "Rejection": "innkt_analytics._protocol",
    "SendResult": "innkt_analytics._transport",
    "ServiceState": "innkt_analytics._transport",
    "ServiceStatus": "innkt_analytics._transport",
    "StorageInfo": "innkt_analytics._persistence",
    "StoreResult": "innkt_analytics._persistence",
    "StoredRecord": "innkt_analytics._persistence",
    "Subscription": "innkt_analytics._bus",
    "Transport": "innkt_analytics._transport",
    "default_bus": "innkt_analytics._bus",
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
