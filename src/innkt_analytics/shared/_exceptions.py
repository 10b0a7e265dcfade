"""One exception tree for the whole package.

    InnktError
    ├── ConfigError                 an invalid configuration value (names the field)
    ├── InvalidRecordError (ValueError)  a local record that cannot be stored
    ├── ProtocolError (ValueError)  a body that is not valid protocol (see _protocol)
    ├── ApiError                    the server's answer to a bad request (server._state)
    ├── TransportError              the backend could not be reached or answered badly
    │   ├── ServerError             the server answered with an error status
    │   └── NetworkError            connect/read/timeout (the transports return these as SendResult)
    ├── StorageError                local or server storage failed
    │   ├── StorageFullError        the disk or the configured limit is full
    │   └── IntegrityError          a backup or a store failed its integrity check
    │       └── DecryptionError     wrong or missing encryption key
    └── ConnectionStateError        an illegal state transition of a connection

Third-party exceptions are converted at the edge where they are caught; the
SDK never raises transport problems into the host application from ``track``.
Whether an ``OSError`` or a SQLite error means a full disk is decided in one
place, ``is_disk_full``.
"""

from __future__ import annotations

import errno
import sqlite3

__all__ = [
    "ConfigError",
    "ConnectionStateError",
    "DecryptionError",
    "InnktError",
    "IntegrityError",
    "InvalidRecordError",
    "NetworkError",
    "ServerError",
    "StorageError",
    "StorageFullError",
    "TransportError",
    "is_disk_full",
]


class InnktError(Exception):
    """Base of every exception this package raises on purpose."""


class ConfigError(InnktError, ValueError):
    """An invalid configuration value; ``field`` names the offending option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidRecordError(InnktError, ValueError):
    """A record that cannot be stored: empty id or type, naive timestamp, data not a dict."""


class TransportError(InnktError):
    """The backend could not be reached, or answered with an error."""


class ServerError(TransportError):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.retry_after = retry_after


class NetworkError(TransportError):
    """Connecting, reading or writing failed, or timed out."""


class StorageError(InnktError):
    """Local or server storage failed."""


class StorageFullError(StorageError):
    """The disk, or a configured storage limit, is full."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an ``OSError`` or a ``sqlite3.Error``) says the disk is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        # The primary code (extended codes carry it in the low byte); SQLite's message,
        # "database or disk is full", for an error raised without one.
        code = getattr(exc, "sqlite_errorcode", None) or 0
        return code & 0xFF == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


class IntegrityError(StorageError):
    """Data or a backup failed its integrity check."""


class DecryptionError(IntegrityError):
    """Encrypted data could not be decrypted: wrong or missing key."""


class ConnectionStateError(InnktError, RuntimeError):
    """An illegal transition of a connection's state machine."""
