"""innkt-analytics: offline-first analytics.

The public API is re-exported here; implementation modules are private.
"""

from innkt_analytics._exceptions import (
    ConfigError,
    ConnectionStateError,
    DecryptionError,
    InnktError,
    IntegrityError,
    NetworkError,
    ServerError,
    StorageError,
    StorageFullError,
    TransportError,
)
from innkt_analytics._protocol import (
    Batch,
    ClientConfig,
    Envelope,
    ErrorBody,
    Event,
    IngestResponse,
    Rejection,
)
from innkt_analytics._version import __version__

__all__ = [
    "Batch",
    "ClientConfig",
    "ConfigError",
    "ConnectionStateError",
    "DecryptionError",
    "Envelope",
    "ErrorBody",
    "Event",
    "IngestResponse",
    "InnktError",
    "IntegrityError",
    "NetworkError",
    "Rejection",
    "ServerError",
    "StorageError",
    "StorageFullError",
    "TransportError",
    "__version__",
]
