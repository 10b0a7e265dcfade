"""At-rest codec: zstd (plain and with a trained dictionary) and AES-256-GCM, byte level."""

from __future__ import annotations

import base64
import os
import threading

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from innkt_analytics import ConfigError, DecryptionError, IntegrityError
from innkt_analytics.sdk._atrest import (
    FLAG_AESGCM,
    FLAG_DICT,
    FLAG_ZSTD,
    AtRestCodec,
    key_check_blob,
    key_id,
    parse_key,
    train_dictionary,
    verify_key_check,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def sample_events(n: int) -> list[bytes]:
    return [
        msgspec.json.encode(
            {
                "eventType": ["tap", "screen_view", "purchase"][i % 3],
                "properties": {"screen": f"Screen{i % 17}", "durationMs": i * 7919 % 100_000},
                "deviceInfo": {"os": "android", "model": "Pixel 8", "appVersion": "5.2.0"},
            }
        )
        for i in range(n)
    ]


def dict_codec(**kwargs: object) -> AtRestCodec:
    trained = train_dictionary(sample_events(500))
    assert trained is not None
    codec = AtRestCodec(**kwargs)  # type: ignore[arg-type]
    codec.add_dictionary(1, trained)
    return codec


@given(payload=st.binary(max_size=4096), aad=st.binary(max_size=64))
@settings(max_examples=60, deadline=None)
@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("key", [None, KEY])
def test_round_trip_of_any_bytes(
    compress: bool, key: bytes | None, payload: bytes, aad: bytes
) -> None:
    codec = AtRestCodec(compress=compress, key=key, min_plain_size=64)
    blob = codec.encode(payload, aad)
    assert codec.decode(blob, aad) == payload
    assert bool(blob[0] & FLAG_AESGCM) == (key is not None)


def test_plain_zstd_only_for_large_blobs_and_only_when_smaller() -> None:
    codec = AtRestCodec(compress=True, min_plain_size=1024)
    small = b'{"a":"' + b"x" * 200 + b'"}'
    assert codec.encode(small)[0] == 0  # below the threshold: stored as is
    large = b'{"a":"' + b"x" * 5000 + b'"}'
    blob = codec.encode(large)
    assert blob[0] == FLAG_ZSTD
    assert len(blob) < len(large) // 10
    noise = os.urandom(5000)  # incompressible: kept raw
    assert codec.encode(noise)[0] == 0
    assert codec.decode(codec.encode(large)) == large


def test_dictionary_compresses_small_records_well() -> None:
    codec = dict_codec(compress=True)
    samples = sample_events(2000)[1000:]
    blobs = [codec.encode(s) for s in samples]
    assert all(b[0] == FLAG_ZSTD | FLAG_DICT for b in blobs)
    assert sum(map(len, blobs)) < sum(map(len, samples)) / 2
    assert [codec.decode(b) for b in blobs] == samples


def test_blob_naming_an_unknown_dictionary_is_an_integrity_error() -> None:
    blob = dict_codec(compress=True).encode(sample_events(1)[0])
    with pytest.raises(IntegrityError, match="dictionary 1"):
        AtRestCodec().decode(blob)


def test_compression_disabled_stores_plaintext() -> None:
    codec = AtRestCodec(compress=False)
    data = b"x" * 10_000
    assert codec.encode(data) == b"\x00" + data


@pytest.mark.parametrize("use_dict", [False, True])
def test_wrong_or_missing_key_is_refused_never_garbage(use_dict: bool) -> None:
    codec = dict_codec(compress=True, key=KEY) if use_dict else AtRestCodec(key=KEY)
    blob = codec.encode(sample_events(1)[0], b"rec-1")
    wrong = dict_codec(compress=True, key=OTHER_KEY) if use_dict else AtRestCodec(key=OTHER_KEY)
    with pytest.raises(DecryptionError, match="wrong encryption key"):
        wrong.decode(blob, b"rec-1")
    keyless = dict_codec(compress=True) if use_dict else AtRestCodec()
    with pytest.raises(DecryptionError, match="no encryption key"):
        keyless.decode(blob, b"rec-1")


def test_encrypted_blob_is_bound_to_its_record() -> None:
    codec = AtRestCodec(key=KEY)
    blob = codec.encode(b'{"a":1}', b"rec-1")
    with pytest.raises(DecryptionError):
        codec.decode(blob, b"rec-2")


@given(data=st.data())
@settings(max_examples=100, deadline=None)
def test_any_flipped_bit_of_an_encrypted_blob_is_detected(data: st.DataObject) -> None:
    codec = dict_codec(compress=True, key=KEY)
    blob = bytearray(codec.encode(sample_events(1)[0], b"id"))
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(IntegrityError):  # DecryptionError is an IntegrityError
        codec.decode(bytes(blob), b"id")


def test_malformed_unencrypted_blobs_raise_integrity_error() -> None:
    codec = AtRestCodec()
    with pytest.raises(IntegrityError, match="empty"):
        codec.decode(b"")
    with pytest.raises(IntegrityError, match="unknown at-rest flags"):
        codec.decode(b"\x80abc")
    with pytest.raises(IntegrityError, match="corrupt compressed"):
        codec.decode(bytes([FLAG_ZSTD]) + b"not a zstd frame")
    with pytest.raises(IntegrityError, match="malformed"):
        codec.decode(bytes([FLAG_DICT]) + b"\x00\x01abc")
    with pytest.raises(IntegrityError, match="truncated"):
        AtRestCodec(key=KEY).decode(bytes([FLAG_AESGCM]) + b"short")


def test_key_without_encrypt_reads_old_encrypted_blobs_and_writes_plaintext() -> None:
    old = AtRestCodec(key=KEY).encode(b'{"old":1}', b"a")
    reader = AtRestCodec(key=KEY, encrypt=False)
    assert not reader.encrypts
    assert reader.decode(old, b"a") == b'{"old":1}'
    assert reader.encode(b'{"new":1}', b"b")[0] & FLAG_AESGCM == 0
    with pytest.raises(ConfigError, match="encryption_key"):
        AtRestCodec(encrypt=True)


def test_key_check_and_key_id() -> None:
    check = key_check_blob(KEY)
    verify_key_check(KEY, check)
    with pytest.raises(DecryptionError, match="wrong encryption key"):
        verify_key_check(OTHER_KEY, check)
    with pytest.raises(DecryptionError, match="no encryption key"):
        verify_key_check(None, check)
    assert key_id(KEY) == key_id(KEY) != key_id(OTHER_KEY)
    assert KEY.hex() not in key_id(KEY)


@pytest.mark.parametrize(
    "text",
    [
        KEY.hex(),
        KEY.hex().upper(),
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(OTHER_KEY).decode(),
        "  " + base64.b64encode(KEY).decode() + "\n",
    ],
)
def test_parse_key_accepts_hex_and_base64(text: str) -> None:
    assert parse_key(text) in (KEY, OTHER_KEY)


@pytest.mark.parametrize(
    "text", ["", "abc", KEY.hex()[:-2], base64.b64encode(b"k" * 16).decode(), "é" * 44]
)
def test_parse_key_rejects_other_text_naming_the_field(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_key(text)
    assert info.value.field == "INNKT_ENCRYPTION_KEY"


def test_bad_codec_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="encryption_key"):
        AtRestCodec(key=b"short")
    with pytest.raises(ConfigError, match="compression_level"):
        AtRestCodec(level=0)


@pytest.mark.parametrize(
    "samples",
    [
        [b"a"] * 8,  # crashes zstd's trainer outright if it gets through
        [b"a"] * 5000,
        [b"%08d" % i for i in range(99)],
        [b"%08d" % i for i in range(1000)],  # 8 KB in all: below the 16 KiB floor
    ],
)
def test_training_refuses_too_little_data_instead_of_crashing(samples: list[bytes]) -> None:
    assert train_dictionary(samples) is None


def test_training_on_enough_samples_gives_a_usable_dictionary() -> None:
    trained = train_dictionary(sample_events(300))
    assert trained is not None
    assert 0 < len(trained) <= 16 * 1024


def test_codec_is_safe_to_share_between_threads() -> None:
    codec = dict_codec(compress=True, key=KEY)
    samples = sample_events(400)
    failures: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i, s in enumerate(samples):
                aad = b"%d-%d" % (offset, i)
                assert codec.decode(codec.encode(s, aad), aad) == s
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
