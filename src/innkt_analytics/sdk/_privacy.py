"""Privacy controls of the SDK: opt-out, consent categories, and data minimisation.

Two parts:

* ``PrivacyFilter`` is sans-I/O: given a ``PrivacyConfig`` and the current
  ``ConsentState`` it turns an ``Event`` into the event that may be stored, or
  into ``None`` with a reason. It removes deny-listed properties, replaces
  listed fields with salted SHA-256 digests, truncates IP addresses and drops
  device identifiers — before anything is written to the disk queue.
* ``ConsentStore`` persists the user's choices (opted out, granted
  categories) in a small JSON file beside the queue, written atomically, so an
  opt-out survives restarts.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from innkt_analytics.shared._exceptions import ConfigError, StorageError
from innkt_analytics.shared._protocol import Event

__all__ = [
    "DEFAULT_CATEGORY",
    "ConsentState",
    "ConsentStore",
    "PrivacyConfig",
    "PrivacyFilter",
    "anonymize_ip",
    "hash_value",
]

#: the category of an event that declares none
DEFAULT_CATEGORY: Final = "analytics"
#: keys of ``deviceInfo``/``context.device`` that identify a device or a person
DEVICE_ID_KEYS: Final = frozenset(
    {
        "deviceId",
        "device_id",
        "advertisingId",
        "advertising_id",
        "idfa",
        "idfv",
        "adId",
        "androidId",
        "android_id",
        "imei",
        "serial",
        "macAddress",
        "mac",
    }
)
#: keys holding an IP address, in ``context`` and ``deviceInfo``
IP_KEYS: Final = frozenset({"ip", "ipAddress", "ip_address"})


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """What the SDK removes or hashes before an event is queued.

    Raises ``ConfigError`` naming the field when a value is invalid.
    """

    #: property names removed from ``properties`` (top level)
    deny_properties: frozenset[str] = frozenset()
    #: property names whose values are replaced by ``hash_value(hash_salt, value)``:
    #: ``"sha256:" + sha256(salt + b"\0" + JSON(value)).hexdigest()``
    hash_properties: frozenset[str] = frozenset()
    #: hash ``userId`` too (joins across events still work, the raw id never leaves)
    hash_user_id: bool = False
    #: the salt of every hash; keep it secret and stable, or hashes stop matching
    hash_salt: str = ""
    #: zero the host part of IPv4 (/24) and IPv6 (/48) addresses
    anonymize_ip: bool = True
    #: drop device and advertising identifiers from deviceInfo and context.device
    drop_device_ids: bool = False
    #: consent categories granted before the user chose; None grants all
    default_consent: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if (self.hash_properties or self.hash_user_id) and len(self.hash_salt) < 16:
            raise ConfigError("hash_salt", "at least 16 characters are needed to hash fields")
        overlap = self.deny_properties & self.hash_properties
        if overlap:
            raise ConfigError("hash_properties", f"{sorted(overlap)} are also in deny_properties")


class ConsentState(msgspec.Struct, kw_only=True):
    """The user's choices. ``granted`` None means "not chosen": the config's default applies."""

    opted_out: bool = False
    granted: list[str] | None = None


def hash_value(salt: str, value: Any) -> str:
    """``sha256:<hex>`` of the salt and the value's JSON: stable, one-way without the salt."""
    digest = hashlib.sha256(salt.encode() + b"\x00" + msgspec.json.encode(value))
    return "sha256:" + digest.hexdigest()


def anonymize_ip(value: str) -> str:
    """Zero the last octet of an IPv4 address and all but the first 48 bits of IPv6.

    Anything that is not an IP address is returned unchanged.
    """
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return value
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


class PrivacyFilter:
    """Applies a ``PrivacyConfig`` and a ``ConsentState`` to events. No I/O."""

    def __init__(self, config: PrivacyConfig, consent: ConsentState | None = None) -> None:
        self.config = config
        self.consent = consent or ConsentState()

    @property
    def opted_out(self) -> bool:
        return self.consent.opted_out

    def granted(self) -> frozenset[str] | None:
        """The granted categories; None means every category."""
        if self.consent.granted is not None:
            return frozenset(self.consent.granted)
        return self.config.default_consent

    def allows(self, categories: list[str] | None) -> bool:
        """True when the user consented to every category the event declares."""
        if self.consent.opted_out:
            return False
        granted = self.granted()
        if granted is None:
            return True
        return all(c in granted for c in (categories or [DEFAULT_CATEGORY]))

    def apply(self, event: Event) -> tuple[Event | None, str]:
        """The event as it may be stored, or ``(None, reason)`` when it may not be."""
        if self.consent.opted_out:
            return None, "opted_out"
        if not self.allows(event.consent):
            return None, "no_consent"
        cfg = self.config
        changes: dict[str, Any] = {}
        if (cfg.deny_properties or cfg.hash_properties) and event.properties:
            props = {
                k: (hash_value(cfg.hash_salt, v) if k in cfg.hash_properties else v)
                for k, v in event.properties.items()
                if k not in cfg.deny_properties
            }
            changes["properties"] = props
        if cfg.hash_user_id and event.user_id is not None:
            # Keep it within the 128-character id limit: 'sha256:' + 64 hex.
            changes["user_id"] = hash_value(cfg.hash_salt, event.user_id)
            previous = event.properties.get("previousId")
            if (
                event.event_type == "alias"
                and isinstance(previous, str)
                and previous != event.anonymous_id
            ):
                # an alias's previous user id must hash like the userId it once was
                props = changes.get("properties", dict(event.properties))
                props["previousId"] = hash_value(cfg.hash_salt, previous)
                changes["properties"] = props
        if cfg.anonymize_ip or cfg.drop_device_ids:
            if event.context:
                changes["context"] = self._scrub(event.context, nested_device=True)
            if event.device_info:
                changes["device_info"] = self._scrub(event.device_info, nested_device=False)
        if not changes:
            return event, ""
        return msgspec.structs.replace(event, **changes), ""

    def _scrub(self, obj: dict[str, Any], *, nested_device: bool) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if cfg.drop_device_ids and key in DEVICE_ID_KEYS:
                continue
            if cfg.anonymize_ip and key in IP_KEYS and isinstance(value, str):
                out[key] = anonymize_ip(value)
            elif nested_device and key == "device" and isinstance(value, dict):
                out[key] = self._scrub(value, nested_device=False)
            else:
                out[key] = value
        return out


@dataclass
class ConsentStore:
    """The consent state in a JSON file, replaced atomically on every change."""

    path: Path
    _decoder: msgspec.json.Decoder[ConsentState] = field(
        default_factory=lambda: msgspec.json.Decoder(ConsentState), repr=False
    )

    def load(self) -> ConsentState:
        """The stored state; a missing file is the default state.

        Raises ``StorageError`` for an unreadable or corrupt file: an opt-out must
        never be silently forgotten.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return ConsentState()
        except OSError as exc:
            raise StorageError(f"cannot read consent file {self.path}: {exc}") from exc
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise StorageError(f"corrupt consent file {self.path}: {exc}") from exc

    def save(self, state: ConsentState) -> None:
        """Write the state durably (temp file, fsync, rename). Raises ``StorageError``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".consent-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(msgspec.json.encode(state))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(f"cannot write consent file {self.path}: {exc}") from exc
