"""Who the device's user is: the anonymous id and the identified user id (a mixin of
``ServiceBase``).

The SDK generates an anonymous id once per device and keeps it, with the user
id given to ``identify``, in a small JSON file next to the queue
(``<queue>.identity.json``), so both survive restarts. Every ``track`` carries
the anonymous id, and the user id once there is one; ``reset()`` (sign-out)
forgets the user id and starts a new anonymous id. The server joins the ids
into one person (docs/identity.md).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from innkt_analytics.shared._exceptions import ConfigError, StorageError
from innkt_analytics.shared._ids import uuid7

__all__ = ["DeviceIdentity", "IdentityControls", "IdentityStore"]


class DeviceIdentity(msgspec.Struct, rename="camel", kw_only=True):
    anonymous_id: str
    user_id: str | None = None


def _new() -> DeviceIdentity:
    return DeviceIdentity(anonymous_id=uuid7())


@dataclass(slots=True)
class IdentityStore:
    """The identity in a JSON file, replaced atomically on every change."""

    path: Path

    def load(self) -> DeviceIdentity:
        """The stored identity; the first call on a device creates and stores one.

        Two processes starting together on a new device agree on one id: the
        file is created with a hard link, which fails if another process won.
        A corrupt file is replaced by a new identity (the app keeps working; the
        next ``identify`` links the new anonymous id). Raises ``StorageError``
        for a file that cannot be read or written.
        """
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=DeviceIdentity)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot read identity file {self.path}: {exc}") from exc
        except (msgspec.DecodeError, msgspec.ValidationError):
            fresh = _new()
            self.save(fresh)
            return fresh
        fresh = _new()
        tmp = self._write_temp(fresh)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return self.load()
        except OSError as exc:
            raise StorageError(f"cannot write identity file {self.path}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return fresh

    def save(self, identity: DeviceIdentity) -> None:
        """Write durably (temp file, fsync, rename). Raises ``StorageError``."""
        tmp = self._write_temp(identity)
        try:
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(f"cannot write identity file {self.path}: {exc}") from exc

    def _write_temp(self, identity: DeviceIdentity) -> str:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".identity-", dir=self.path.parent)
            with os.fdopen(fd, "wb") as out:
                out.write(msgspec.json.encode(identity))
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise StorageError(f"cannot write identity file {self.path}: {exc}") from exc
        return tmp


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise ConfigError(name, "must be a string of 1 to 128 characters")
    return value


class IdentityControls:
    """``identify``, ``alias``, ``reset`` and the ids ``track`` attaches."""

    # Provided by ServiceBase; declared here for the type checker.
    _lock: threading.RLock
    _identity_store: IdentityStore | None
    #: read by ``track`` without a lock: a plain attribute replaced whole
    _device: DeviceIdentity | None

    def track(
        self,
        event_type: str,
        properties: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> bool:
        raise NotImplementedError

    def _load_identity(self, path: Path) -> None:
        store = IdentityStore(path)
        self._device = store.load()
        self._identity_store = store

    @property
    def anonymous_id(self) -> str | None:
        """This device's anonymous id (None before ``initialize``)."""
        device = self._device
        return None if device is None else device.anonymous_id

    @property
    def user_id(self) -> str | None:
        """The user id of the last ``identify``/``alias`` since the last ``reset``."""
        device = self._device
        return None if device is None else device.user_id

    def _set_identity(self, identity: DeviceIdentity) -> None:
        with self._lock:
            if self._identity_store is None:
                raise StorageError("the service is not initialized")
            self._identity_store.save(identity)
            self._device = identity

    def identify(self, user_id: str, traits: dict[str, Any] | None = None) -> bool:
        """The device's user signed in as ``user_id``: remember it (later events
        carry it) and send an ``identify`` event with the anonymous id and ``traits``.

        Returns what ``track`` returns. Raises ``ConfigError`` for a bad id and
        ``StorageError`` when the identity file cannot be written.
        """
        user = _check_id("user_id", user_id)
        device = self._device
        if device is None:
            raise StorageError("the service is not initialized")
        if device.user_id != user:
            self._set_identity(DeviceIdentity(anonymous_id=device.anonymous_id, user_id=user))
        return self.track("identify", dict(traits or {}), user_id=user)

    def alias(self, new_id: str, previous_id: str | None = None) -> bool:
        """Tell the server ``previous_id`` (default: the current user id, else the
        anonymous id) and ``new_id`` are one person; later events carry ``new_id``.

        Unlike an identify, an alias merges even two signed-up users. Raises as
        ``identify`` does.
        """
        new = _check_id("new_id", new_id)
        device = self._device
        if device is None:
            raise StorageError("the service is not initialized")
        previous = previous_id if previous_id is not None else device.user_id
        previous = _check_id("previous_id", previous or device.anonymous_id)
        if device.user_id != new:
            self._set_identity(DeviceIdentity(anonymous_id=device.anonymous_id, user_id=new))
        return self.track("alias", {"previousId": previous}, user_id=new)

    def reset(self) -> str:
        """Sign-out: forget the user id and start a new anonymous id; returns it.

        Events tracked before the call keep the ids they had. Raises
        ``StorageError`` when the identity file cannot be written.
        """
        fresh = _new()
        self._set_identity(fresh)
        return fresh.anonymous_id
