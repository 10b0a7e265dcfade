"""Hypothesis-generated malformed requests against the real server: 4xx, never 5xx.

Bodies, content types, encodings and keys are all drawn at random, around valid
requests as well as far from them. Keys belong to a project of their own, so a
config the fuzzer happens to PUT cannot disturb other tests.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests._server import ServerProcess


@dataclass
class Target:
    client: httpx.Client
    keys: dict[str, str]


@pytest.fixture(scope="module")
def target(shared_server: ServerProcess) -> Iterator[Target]:
    project = "fuzz-" + uuid.uuid4().hex[:8]
    scopes = ("write", "admin", "read")
    with ThreadPoolExecutor(len(scopes)) as pool:  # each is a CLI process: start them together
        made = pool.map(lambda s: shared_server.create_key(s, project), scopes)
        keys = dict(zip(scopes, made, strict=True))
    with httpx.Client(base_url=shared_server.url, timeout=30) as client:
        yield Target(client, keys)


# -- strategies ------------------------------------------------------------------------

# Header values h11 will send: visible latin-1 with inner spaces, no controls.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=["Cc"]),
    max_size=40,
).map(str.strip)

# Fixed offsets up to the RFC 3339 extremes (+-23:59); cheaper to draw than zoneinfo.
offsets = st.just(dt.UTC) | st.integers(-1439, 1439).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m))
)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=5,
)
timestamps = st.one_of(
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat()),
    st.sampled_from(
        ["2026-11-27T00:00:00Z", "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"]
    ),
    st.text(max_size=30),
    json_leaf,
)


def keyed(value: Any) -> Any:
    return st.dictionaries(st.text(max_size=8), value, max_size=3)


ident = st.text(min_size=1, max_size=20)
VALID_FIELDS: dict[str, Any] = {
    "eventId": ident,
    "eventType": ident,
    "timestamp": st.datetimes(timezones=offsets).map(lambda d: d.isoformat()),
    "sessionId": ident,
    "userId": ident,
    "anonymousId": ident,
    "properties": keyed(json_leaf | st.lists(json_leaf, max_size=2)),
    "deviceInfo": keyed(json_leaf),
    "context": keyed(json_leaf),
    "consent": st.lists(ident, max_size=3),
}
INVALID_FIELD = st.one_of(json_value, st.text(min_size=129, max_size=200), timestamps)


@st.composite
def almost_events(draw: st.DrawFn) -> Any:
    """An event that is mostly valid: each field may be missing or wrong, rarely all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_value)  # not an object at all
    fields: dict[str, Any] = {}
    for name, valid in VALID_FIELDS.items():
        required = name in ("eventId", "eventType", "timestamp")
        if draw(st.integers(0, 19)) < (19 if required else 8):
            fields[name] = draw(valid if draw(st.integers(0, 19)) < 18 else INVALID_FIELD)
    return fields


@st.composite
def bodies(draw: st.DrawFn, usual: str) -> bytes:
    """Usually the kind of body the route expects; sometimes any other kind."""
    kind = draw(st.sampled_from([usual] * 7 + ["batch", "event", "config", "json", "bytes"]))
    if kind == "batch":
        batch: dict[str, Any] = {"events": draw(st.lists(almost_events(), max_size=3))}
        if draw(st.booleans()):
            batch["sentAt"] = draw(VALID_FIELDS["timestamp"] if draw(st.booleans()) else timestamps)
        data = json.dumps(batch).encode()
    elif kind == "event":
        data = json.dumps(draw(almost_events())).encode()
    elif kind == "config":
        keys = ["batchSize", "syncInterval", "samplingRate", "disabledEventTypes", "version"]
        config = draw(st.dictionaries(st.sampled_from(keys), json_value, max_size=5))
        data = json.dumps(config).encode()
    elif kind == "json":
        data = json.dumps(draw(json_value)).encode()
    else:
        return bytes(draw(st.binary(max_size=300)))
    return draw(damaged(data))


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """Often the JSON as is; else with raw bytes in a string, nesting, or cut short."""
    how = draw(st.sampled_from(["none"] * 5 + ["bytes_in_string", "deep", "cut", "flip"]))
    out = bytearray(data)
    quotes = [i for i, b in enumerate(out) if b == ord('"')]
    if how == "bytes_in_string" and quotes:
        # Right after a quote is inside a string, more often a value than a key:
        # invalid UTF-8, control characters and broken escapes land where a decoder
        # must look at them.
        in_values = [i + 3 for i in range(len(out)) if out[i : i + 3] == b': "']
        at = draw(st.sampled_from(in_values * 3 + [q + 1 for q in quotes]))
        out[at:at] = draw(st.binary(min_size=1, max_size=3) | st.sampled_from([b"\\u", b"\\ud800"]))
    elif how == "deep" and quotes:
        depth = draw(st.integers(60, 3000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        value = opener * depth + b"1" + closer * depth
        at = draw(st.sampled_from(quotes))
        out[at:at] = b'"deep":' + value + b","
    elif how == "cut":
        del out[draw(st.integers(0, len(out))) :]
    elif how == "flip" and out:
        out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    return bytes(out)


ROUTES = [
    ("POST", "/v1/events/batch"),
    ("POST", "/v1/events"),
    ("PUT", "/v1/config"),
    ("GET", "/v1/events"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/config"),
    ("GET", "/v1/health"),
    ("DELETE", "/v1/events"),
    ("POST", "/v1/health"),
]
USUAL_BODY = {"/v1/events/batch": "batch", "/v1/events": "event", "/v1/config": "config"}
JSON_TYPES = ["application/json", "application/json; charset=utf-8", "application/vnd.x+json"]
OTHER_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]


@st.composite
def requests(draw: st.DrawFn, keys: dict[str, str]) -> tuple[str, str, bytes, dict[bytes, bytes]]:
    """A request that is right in every respect but one or two, so most of them get
    past authentication and content negotiation to the body parsers."""
    broken = draw(
        st.sampled_from(
            [set(), set(), set(), {"type"}, {"encoding"}, {"auth"}, {"route"}, {"type", "auth"}]
        )
    )
    if "route" in broken:
        method, path = draw(st.sampled_from(ROUTES))
    else:
        method, path = draw(st.sampled_from(ROUTES[:3] * 3 + ROUTES[:2] * 3))
    body = draw(bodies(USUAL_BODY.get(path, "json")))
    headers: dict[str, str] = {}

    if "type" in broken:
        content_type = draw(st.sampled_from(OTHER_TYPES) | header_text)
        if content_type or draw(st.booleans()):
            headers["Content-Type"] = content_type
    else:
        headers["Content-Type"] = draw(st.sampled_from(JSON_TYPES))

    if "encoding" in broken:
        encoding = draw(st.sampled_from(["gzip", "br", "deflate", "gzip, identity"]) | header_text)
        headers["Content-Encoding"] = encoding
        if encoding.lower() == "gzip":  # a gzip header over a body that is not quite gzip
            how = draw(st.sampled_from(["raw", "cut", "flip"]))
            zipped = bytearray(gzip.compress(body))
            if how == "raw":
                zipped = bytearray(body)
            elif how == "cut":
                del zipped[draw(st.integers(0, len(zipped))) :]
            else:
                zipped[draw(st.integers(0, len(zipped) - 1))] ^= draw(st.integers(1, 255))
            body = bytes(zipped)
    else:
        encoding = draw(st.sampled_from(["none", "none", "identity", "gzip", "GZIP"]))
        if encoding != "none":
            headers["Content-Encoding"] = encoding
        if encoding.lower() == "gzip":
            body = gzip.compress(body)

    if "auth" in broken:
        auth = draw(st.sampled_from(["read", "garbage", "garbage", "none"]))
        if auth == "read":
            headers["Authorization"] = f"Bearer {keys['read']}"
        elif auth == "garbage":
            headers[draw(st.sampled_from(["Authorization", "X-API-Key"]))] = draw(header_text)
    else:
        scope = {"GET": "read", "PUT": "admin"}.get(method, "write")
        scope = draw(st.sampled_from([scope, "admin"]))
        if draw(st.booleans()):
            headers["Authorization"] = f"Bearer {keys[scope]}"
        else:
            headers["X-API-Key"] = keys[scope]
    # httpx sends str header values as ASCII only; bytes go out as they are.
    return method, path, body, {k.encode(): v.encode("latin-1") for k, v in headers.items()}


def check(response: httpx.Response) -> None:
    event(f"HTTP {response.status_code}")  # see --hypothesis-show-statistics
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        error = response.json()
        assert isinstance(error["error"], str)
        assert isinstance(error["message"], str)


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_malformed_requests_are_never_server_errors(target: Target, data: st.DataObject) -> None:
    method, path, body, headers = data.draw(requests(target.keys))
    check(target.client.request(method, path, content=body, headers=headers))


query_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)
query_values = st.one_of(
    query_text,
    st.integers(-(10**30), 10**30).map(str),
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat()),
)
query_names = (
    st.sampled_from(
        ["eventType", "sessionId", "userId", "since", "until", "limit", "cursor", "bucket"]
    )
    | query_text
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(["/v1/events", "/v1/stats", "/v1/config", "/v1/health"]),
    params=st.dictionaries(query_names, query_values, max_size=5),
)
def test_random_query_parameters_are_never_server_errors(
    target: Target, path: str, params: dict[str, str]
) -> None:
    response = target.client.get(
        path, params=params, headers={"Authorization": f"Bearer {target.keys['read']}"}
    )
    check(response)
