"""How analytics records look at rest, free of I/O: the sans-I/O core of persistence.

``AtRestCodec`` encodes the data blob of a record (zstandard, AES-256-GCM);
``RecordCodec`` turns ``StoredRecord`` values into SQLite rows and back, and rows
into export bytes. The persistence service only moves these rows in and out of SQLite.

One blob is laid out as::

    byte 0        flags: 0x01 zstd, 0x02 zstd with a trained dictionary, 0x04 AES-256-GCM
    bytes 1..2    dictionary id (uint16, big endian), only with flag 0x02
    12 bytes      GCM nonce, only with flag 0x04
    rest          payload: the plaintext, compressed if flagged, then encrypted if flagged

The header travels as additional authenticated data together with a caller-given
``aad`` (the record id), so a flipped flag, a swapped dictionary id or a blob moved
to another record fails authentication instead of decoding to garbage.

Analytics records are small (a few hundred bytes of JSON). Plain zstd saves about a
quarter on such inputs and costs ~5 µs per call, while a dictionary trained on the
store's own records saves ~75 % at ~2 µs (see ``docs/persistence.md``); without a
dictionary only blobs of at least ``min_plain_size`` bytes are compressed, and a
compressed form is kept only when it is smaller.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import os
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec

from innkt_analytics.sdk._lazy import OptionalModule
from innkt_analytics.shared._exceptions import (
    ConfigError,
    DecryptionError,
    IntegrityError,
    InvalidRecordError,
)

if TYPE_CHECKING:
    import zstandard
    from cryptography import exceptions as _crypto_exc
    from cryptography.hazmat.primitives.ciphers import aead as _aead
else:
    # Optional extras (issue 16): imported when compression or encryption is first used.
    zstandard = OptionalModule(
        "zstandard",
        extra="zstd",
        feature="zstd compression (on by default; enable_compression=False turns it off)",
        field="enable_compression",
    )
    _aead = OptionalModule(
        "cryptography.hazmat.primitives.ciphers.aead",
        extra="encryption",
        feature="AES-256-GCM encryption",
        field="encryption_key",
    )
    _crypto_exc = OptionalModule(
        "cryptography.exceptions",
        extra="encryption",
        feature="AES-256-GCM encryption",
        field="encryption_key",
    )

__all__ = [
    "COLUMNS",
    "EPOCH",
    "INSERT_SQL",
    "KEY_SIZE",
    "ROW_OVERHEAD",
    "SCHEMA",
    "SCHEMA_VERSION",
    "AtRestCodec",
    "ExportFormat",
    "InvalidRecordError",
    "RecordCodec",
    "Row",
    "StoredRecord",
    "coerce_record",
    "from_micros",
    "key_check_blob",
    "key_id",
    "parse_key",
    "select_sql",
    "to_micros",
    "train_dictionary",
    "verify_key_check",
]

KEY_SIZE: Final = 32
FLAG_ZSTD: Final = 0x01
FLAG_DICT: Final = 0x02
FLAG_AESGCM: Final = 0x04
_KNOWN_FLAGS: Final = FLAG_ZSTD | FLAG_DICT | FLAG_AESGCM
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
_MAX_DICT_ID: Final = 0xFFFF
_KEY_CHECK_PLAINTEXT: Final = b"innkt-analytics at-rest key check v1"
_KEY_CHECK_AAD: Final = b"innkt-analytics:key-check"
# A decompressed blob larger than this is treated as corrupt rather than allocated.
_MAX_PLAINTEXT: Final = 256 * 1024 * 1024


def parse_key(text: str, *, field: str = "INNKT_ENCRYPTION_KEY") -> bytes:
    """Decode a 32-byte key written as 64 hex digits or as base64 (standard or URL-safe).

    Raises ConfigError naming ``field`` when the text is not such a key.
    """
    text = text.strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass  # 64 characters of base64 is not a 32-byte key either; reported below
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(text.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue
        if len(key) == KEY_SIZE:
            return key
    raise ConfigError(field, f"must be {KEY_SIZE} bytes written as 64 hex digits or as base64")


def key_id(key: bytes) -> str:
    """A short public fingerprint of a key, to tell which key a store or backup needs."""
    return hmac.new(key, b"innkt-analytics:key-id", hashlib.sha256).hexdigest()[:16]


def key_check_blob(key: bytes) -> bytes:
    """An encrypted known value that proves, later, whether a key is the store's key."""
    nonce = os.urandom(_NONCE_SIZE)
    return nonce + _aead.AESGCM(key).encrypt(nonce, _KEY_CHECK_PLAINTEXT, _KEY_CHECK_AAD)


def verify_key_check(key: bytes | None, blob: bytes) -> None:
    """Check ``key`` against a blob from :func:`key_check_blob`.

    Raises DecryptionError when the key is missing or is not the one that made the blob.
    """
    if key is None:
        raise DecryptionError(
            "the data is encrypted but no encryption key is configured "
            "(set PersistenceConfig.encryption_key or INNKT_ENCRYPTION_KEY)"
        )
    try:
        plain = _aead.AESGCM(key).decrypt(blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], _KEY_CHECK_AAD)
    except _crypto_exc.InvalidTag:
        raise DecryptionError(
            f"wrong encryption key (key id {key_id(key)} does not match the data)"
        ) from None
    if plain != _KEY_CHECK_PLAINTEXT:  # pragma: no cover - GCM already authenticated it
        raise DecryptionError("wrong encryption key")


def train_dictionary(samples: Iterable[bytes], size: int = 16 * 1024) -> bytes | None:
    """Train a zstd dictionary on sample plaintexts; None when there is too little to learn.

    Needs at least 100 samples of 8+ bytes and 16 KiB in all: zstd's trainer aborts the
    whole process (SIGSEGV, zstandard 0.25) on a handful of tiny samples, so that
    floor is a guard, not only a quality threshold.
    """
    sample_list: list[bytes | bytearray | memoryview] = [s for s in samples if len(s) >= 8]
    total = sum(len(s) for s in sample_list)
    if len(sample_list) < 100 or total < 16 * 1024:
        return None
    try:
        return zstandard.train_dictionary(min(size, total // 8), sample_list).as_bytes()
    except zstandard.ZstdError:
        # Too uniform samples: the caller goes on without a dictionary.
        return None


class _ThreadState(threading.local):
    """Per-thread zstd contexts: zstandard compressors are not safe to share across threads."""

    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressors: dict[int, zstandard.ZstdDecompressor] = {}


class AtRestCodec:
    """Encodes and decodes stored blobs; thread-safe.

    ``key`` enables encryption of new blobs (unless ``encrypt`` is False: the key is then
    only used to read); ``compress`` enables compression of new blobs. Decoding
    understands every flag combination whatever the settings, so a store can change
    its settings over time; decoding an encrypted blob needs the key.
    """

    def __init__(
        self,
        *,
        compress: bool = True,
        key: bytes | None = None,
        encrypt: bool | None = None,
        level: int = 3,
        min_plain_size: int = 1024,
    ) -> None:
        if key is not None and len(key) != KEY_SIZE:
            raise ConfigError("encryption_key", f"must be exactly {KEY_SIZE} bytes")
        if encrypt and key is None:
            raise ConfigError("encryption_key", "encryption needs a key")
        if not 1 <= level <= 22:
            raise ConfigError("compression_level", "must be between 1 and 22")
        if compress:
            # Without the zstd extra, fail when the store opens, not at its first write.
            _ = zstandard.ZstdCompressor
        self._compress = compress
        self._aead = _aead.AESGCM(key) if key is not None else None
        # A key without ``encrypt`` only reads: a store that turned encryption off
        # still holds encrypted rows from before.
        self._encrypt = key is not None if encrypt is None else encrypt
        self._level = level
        self._min_plain_size = min_plain_size
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._active_dict: int | None = None
        self._local = _ThreadState()

    @property
    def encrypts(self) -> bool:
        """Whether new blobs are encrypted."""
        return self._encrypt

    @property
    def compresses(self) -> bool:
        """Whether new blobs are compressed (when it pays)."""
        return self._compress

    @property
    def active_dictionary(self) -> int | None:
        """Id of the dictionary new blobs are compressed with, if any."""
        return self._active_dict

    def add_dictionary(self, dict_id: int, data: bytes, *, activate: bool = True) -> None:
        """Register a trained dictionary; blobs that name its id decode with it."""
        if not 0 <= dict_id <= _MAX_DICT_ID:
            raise ValueError(f"dictionary id {dict_id} out of range")
        self._dicts[dict_id] = zstandard.ZstdCompressionDict(data)
        # Contexts bound to an id that is being re-registered must not be reused.
        self._local = _ThreadState()
        if activate:
            self._active_dict = dict_id

    def load_dictionaries(self, dicts: Mapping[int, bytes]) -> None:
        """Replace all dictionaries; the highest id becomes the active one."""
        self._dicts = {i: zstandard.ZstdCompressionDict(d) for i, d in dicts.items()}
        self._active_dict = max(self._dicts) if self._dicts else None
        self._local = _ThreadState()

    def encode(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Return the at-rest form of ``plaintext``; ``aad`` binds it to its owner (record id)."""
        return self.encode_many([plaintext], [aad])[0]

    def encode_many(self, plaintexts: list[bytes], aads: list[bytes] | None = None) -> list[bytes]:
        """``encode`` of many plaintexts at once; ``aads`` (one each) only matter when
        encrypting. Batching hoists per-call costs out of the store path's hot loop.
        """
        plain_head = b"\x00"
        pairs: list[tuple[bytes, bytes]]  # (header, payload)
        dict_id = self._active_dict
        if self._compress and dict_id is not None:
            compress = self._compressor(dict_id).compress
            head = bytes((FLAG_ZSTD | FLAG_DICT,)) + dict_id.to_bytes(2, "big")
            pairs = []
            append = pairs.append
            for p in plaintexts:
                packed = compress(p)
                append((head, packed) if len(packed) + 2 < len(p) else (plain_head, p))
        elif self._compress:
            compress = self._compressor(-1).compress
            head = bytes((FLAG_ZSTD,))
            pairs = []
            for p in plaintexts:
                packed = compress(p) if len(p) >= self._min_plain_size else p
                pairs.append((head, packed) if len(packed) < len(p) else (plain_head, p))
        else:
            pairs = [(plain_head, p) for p in plaintexts]
        if not (self._encrypt and self._aead is not None):
            return [head + payload for head, payload in pairs]
        if aads is None or len(aads) != len(pairs):
            raise ValueError("encrypting needs one aad per plaintext")
        encrypt = self._aead.encrypt
        # One getrandom call per batch instead of one per record.
        nonces = os.urandom(_NONCE_SIZE * len(pairs))
        out = []
        for n, ((head, payload), aad) in enumerate(zip(pairs, aads, strict=True)):
            head = bytes((head[0] | FLAG_AESGCM,)) + head[1:]
            nonce = nonces[n * _NONCE_SIZE : (n + 1) * _NONCE_SIZE]
            out.append(head + nonce + encrypt(nonce, payload, head + aad))
        return out

    def decode(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Return the plaintext of an at-rest blob.

        Raises DecryptionError for an encrypted blob without the right key (or one that
        was tampered with), IntegrityError for a blob that is not valid at-rest data.
        """
        if not blob:
            raise IntegrityError("empty at-rest blob")
        flags = blob[0]
        if flags & ~_KNOWN_FLAGS:
            raise IntegrityError(f"unknown at-rest flags 0x{flags:02x}")
        pos = 1
        dict_id = -1
        if flags & FLAG_DICT:
            if not flags & FLAG_ZSTD or len(blob) < 3:
                raise IntegrityError("malformed at-rest header")
            dict_id = int.from_bytes(blob[1:3], "big")
            pos = 3
        payload = blob[pos:]
        if flags & FLAG_AESGCM:
            if self._aead is None:
                raise DecryptionError("record is encrypted but no encryption key is configured")
            if len(payload) < _NONCE_SIZE + _TAG_SIZE:
                raise IntegrityError("truncated encrypted blob")
            try:
                payload = self._aead.decrypt(
                    payload[:_NONCE_SIZE], payload[_NONCE_SIZE:], blob[:pos] + aad
                )
            except _crypto_exc.InvalidTag:
                raise DecryptionError(
                    "record failed authentication: wrong encryption key or tampered data"
                ) from None
        if flags & FLAG_ZSTD:
            if dict_id >= 0 and dict_id not in self._dicts:
                raise IntegrityError(f"blob needs compression dictionary {dict_id}, not loaded")
            try:
                return self._decompressor(dict_id).decompress(
                    payload, max_output_size=_MAX_PLAINTEXT
                )
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"corrupt compressed blob: {exc}") from None
        return bytes(payload)

    def _compressor(self, dict_id: int) -> zstandard.ZstdCompressor:
        comp = self._local.compressors.get(dict_id)
        if comp is None:
            if dict_id >= 0:
                # Dictionary id and checksum are redundant with our header and the GCM tag.
                comp = zstandard.ZstdCompressor(
                    level=self._level,
                    dict_data=self._dicts[dict_id],
                    write_dict_id=False,
                    write_checksum=False,
                )
            else:
                comp = zstandard.ZstdCompressor(level=self._level)
            self._local.compressors[dict_id] = comp
        return comp

    def _decompressor(self, dict_id: int) -> zstandard.ZstdDecompressor:
        dec = self._local.decompressors.get(dict_id)
        if dec is None:
            dec = (
                zstandard.ZstdDecompressor(dict_data=self._dicts[dict_id])
                if dict_id >= 0
                else zstandard.ZstdDecompressor()
            )
            self._local.decompressors[dict_id] = dec
        return dec


# -- records at rest -------------------------------------------------------------------------
#
# How one analytics record becomes a SQLite row and back, and how rows become export
# bytes: pure functions over the blob codec above, driven by the persistence service.

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
ExportFormat = Literal["json", "ndjson", "csv"]
# (id, type, timestamp in µs since the epoch UTC, session id, logical size, blob)
Row = tuple[str, str, int, str | None, int, bytes]
# A record's logical size adds this to its blob, id, type and session id: an allowance
# for the rowid, integer columns and index entries, so the limit tracks the file.
ROW_OVERHEAD: Final = 40
EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US: Final = dt.timedelta(microseconds=1)
_DICT_MIN_SAMPLES: Final = 1000
_DICT_MAX_ATTEMPTS: Final = 3
_CSV_HEADER: Final = b"id,type,timestamp,sessionId,data\r\n"


class StoredRecord(msgspec.Struct, rename="camel", kw_only=True, frozen=True):
    """One stored analytics record: ``{id, type, data, timestamp, sessionId}`` as in the seed.

    ``timestamp`` must be timezone-aware; it is stored in UTC with microsecond precision.
    """

    id: Id
    type: Id
    data: dict[str, Any]
    timestamp: dt.datetime
    session_id: Id | None = None


class _ExportRow(msgspec.Struct, rename="camel", kw_only=True):
    # Same fields and order as StoredRecord, but the data JSON is spliced in as stored.
    id: str
    type: str
    data: msgspec.Raw
    timestamp: dt.datetime
    session_id: str | None = None


def to_micros(ts: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (ts - EPOCH) // _US


def from_micros(us: int) -> dt.datetime:
    """The UTC datetime ``us`` microseconds after the epoch."""
    return EPOCH + dt.timedelta(microseconds=us)


def coerce_record(record: StoredRecord | Mapping[str, Any]) -> StoredRecord:
    """A StoredRecord as is, or one converted from a seed-shaped mapping (camelCase keys).

    Raises InvalidRecordError for a mapping that does not fit.
    """
    if isinstance(record, StoredRecord):
        return record
    try:
        return msgspec.convert(dict(record), StoredRecord)
    except msgspec.ValidationError as exc:
        raise InvalidRecordError(f"invalid record: {exc}") from None


def _csv_cell(value: str) -> bytes:
    raw = value.encode()
    if b'"' in raw or b"," in raw or b"\n" in raw or b"\r" in raw:
        return b'"' + raw.replace(b'"', b'""') + b'"'
    return raw


class RecordCodec:
    """Records to rows and back, rows to export bytes, and when to train a dictionary.

    ``blobs`` encodes the data column; this class adds the JSON, the timestamp and size
    columns and the checks a record must pass. Thread-safe for concurrent decoding; the
    dictionary sampling (``observe``) must be called by one writer at a time.
    """

    def __init__(self, blobs: AtRestCodec) -> None:
        self.blobs = blobs
        self._encode_json = msgspec.json.Encoder().encode
        self._decode_json = msgspec.json.Decoder(dict[str, Any]).decode
        self._samples: list[bytes] = []
        self._attempts = 0

    def to_rows(self, records: list[StoredRecord]) -> list[Row]:
        """Rows ready for INSERT. Raises InvalidRecordError for a record that cannot be stored."""
        encode_json = self._encode_json
        plaintexts: list[bytes] = []
        append = plaintexts.append
        for r in records:  # the hot loop of store_batch: kept flat on purpose
            rid, rtype, ts = r.id, r.type, r.timestamp
            if not (isinstance(rid, str) and rid and isinstance(rtype, str) and rtype):
                raise InvalidRecordError(f"record id and type must be non-empty strings: {rid!r}")
            if not isinstance(ts, dt.datetime) or ts.utcoffset() is None:
                raise InvalidRecordError(f"record {rid!r}: timestamp must be timezone-aware")
            if not isinstance(r.data, dict):
                raise InvalidRecordError(f"record {rid!r}: data must be a dict")
            try:
                append(encode_json(r.data))
            except (TypeError, ValueError) as exc:  # msgspec.EncodeError is a ValueError
                raise InvalidRecordError(f"record {rid!r}: data is not JSON: {exc}") from None
        aads = [r.id.encode() for r in records] if self.blobs.encrypts else None
        blobs = self.blobs.encode_many(plaintexts, aads)
        return [
            (
                r.id,
                r.type,
                (r.timestamp - EPOCH) // _US,
                r.session_id,
                len(blob) + len(r.id) + len(r.type) + len(r.session_id or "") + ROW_OVERHEAD,
                blob,
            )
            for r, blob in zip(records, blobs, strict=True)
        ]

    def from_row(self, rid: str, rtype: str, ts: int, sid: str | None, blob: bytes) -> StoredRecord:
        """The record of a row. Raises DecryptionError or IntegrityError for a bad blob."""
        try:
            data = self._decode_json(self.blobs.decode(blob, rid.encode()))
        except msgspec.DecodeError as exc:
            raise IntegrityError(f"record {rid!r} holds invalid JSON: {exc}") from None
        return StoredRecord(
            id=rid, type=rtype, data=data, timestamp=from_micros(ts), session_id=sid
        )

    def observe(self, records: list[StoredRecord]) -> bytes | None:
        """Collect samples while compression has no dictionary; return one once trained.

        The caller persists the returned dictionary and then registers it with
        ``blobs.add_dictionary`` (after its commit, so no blob names an unsaved one).
        """
        if (
            not self.blobs.compresses
            or self.blobs.active_dictionary is not None
            or self._attempts >= _DICT_MAX_ATTEMPTS
        ):
            return None
        need = _DICT_MIN_SAMPLES * 4**self._attempts  # more samples after each failure
        self._samples.extend(
            self._encode_json(r.data) for r in records[: need - len(self._samples)]
        )
        if len(self._samples) < need:
            return None
        self._attempts += 1
        samples, self._samples = self._samples, []
        return train_dictionary(samples)

    @staticmethod
    def export_head(fmt: ExportFormat) -> bytes:
        """Bytes an export starts with."""
        return {"json": b"[", "csv": _CSV_HEADER}.get(fmt, b"")

    @staticmethod
    def export_tail(fmt: ExportFormat) -> bytes:
        """Bytes an export ends with."""
        return b"]" if fmt == "json" else b""

    def export_chunk(
        self, fmt: ExportFormat, rows: list[tuple[str, str, int, str | None, bytes]], first: bool
    ) -> bytes:
        """Export bytes of (id, type, ts, session_id, blob) rows; ``first`` for the first chunk.

        Raises DecryptionError or IntegrityError for a bad blob.
        """
        decode = self.blobs.decode
        if fmt == "csv":
            # RFC 4180 by hand, on bytes: the data JSON goes out without a decode/encode
            # round trip, which made the csv module the bottleneck of CSV exports.
            lines = []
            for rid, rtype, ts, sid, blob in rows:
                data = decode(blob, rid.encode()).replace(b'"', b'""')
                iso = from_micros(ts).isoformat().replace("+00:00", "Z")
                cells = (_csv_cell(rid), _csv_cell(rtype), iso.encode(), _csv_cell(sid or ""))
                lines.append(b",".join(cells) + b',"' + data + b'"\r\n')
            return b"".join(lines)
        encode = msgspec.json.encode
        parts = [
            encode(
                _ExportRow(
                    id=rid,
                    type=rtype,
                    data=msgspec.Raw(decode(blob, rid.encode())),
                    timestamp=from_micros(ts),
                    session_id=sid,
                )
            )
            for rid, rtype, ts, sid, blob in rows
        ]
        if fmt == "json":
            return (b"" if first else b",") + b",".join(parts)
        return b"\n".join(parts) + b"\n"


# -- the table -------------------------------------------------------------------------------

SCHEMA_VERSION: Final = 1
SCHEMA: Final = f"""
CREATE TABLE records (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    ts INTEGER NOT NULL,
    session_id TEXT,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX records_ts ON records (ts);
CREATE INDEX records_session ON records (session_id, ts) WHERE session_id IS NOT NULL;
CREATE TABLE stats (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    records INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    evicted INTEGER NOT NULL,
    expired INTEGER NOT NULL
);
INSERT INTO stats VALUES (1, 0, 0, 0, 0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE zstd_dicts (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
PRAGMA user_version = {SCHEMA_VERSION};
"""
INSERT_SQL: Final = (
    "INSERT INTO records (id, type, ts, session_id, size, data) VALUES (?,?,?,?,?,?)"
)
COLUMNS: Final = "id, type, ts, session_id, data"


def _micros_arg(ts: dt.datetime, name: str) -> int:
    if ts.utcoffset() is None:
        raise ConfigError(name, "must be a timezone-aware datetime")
    return to_micros(ts)


def select_sql(
    rtype: str | None,
    session_id: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    order: str,
) -> tuple[str, list[Any]]:
    """The SELECT of (id, type, ts, session_id, data) rows matching the filters, in time
    order, and its parameters. Raises ConfigError for a naive datetime or a bad order.
    """
    if order not in ("asc", "desc"):
        raise ConfigError("order", "must be 'asc' or 'desc'")
    where: list[str] = []
    params: list[Any] = []
    for clause, value in (
        ("type = ?", rtype),
        ("session_id = ?", session_id),
        ("ts >= ?", None if since is None else _micros_arg(since, "since")),
        ("ts < ?", None if until is None else _micros_arg(until, "until")),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql = f"SELECT {COLUMNS} FROM records"
    if where:
        sql += " WHERE " + " AND ".join(where)
    direction = "DESC" if order == "desc" else "ASC"
    return sql + f" ORDER BY ts {direction}, seq {direction}", params
