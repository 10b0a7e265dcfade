"""innkt-analytics: offline-first analytics.

The SDK's three services (``AnalyticsBackendService``, ``RealTimeSyncService``,
``AnalyticsDataPersistenceService``), their asyncio flavours, configuration
value objects, the wire protocol Structs and the exception tree. The server
lives in ``innkt_analytics.server``; test helpers in ``innkt_analytics.testing``.
Implementation modules are private (``_name``); everything public is here.
"""

from innkt_analytics._abackend import AsyncAnalyticsBackendService
from innkt_analytics._backend import AnalyticsBackendService, DropCallback
from innkt_analytics._backup import BackupManifest
from innkt_analytics._bus import EventBus, Subscription, default_bus
from innkt_analytics._config import BackendConfig, OverflowPolicy, QueueMode
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
from innkt_analytics._realtime_core import ConnectionState, ConnectionStats, RealTimeConfig
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
from innkt_analytics._version import __version__

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
