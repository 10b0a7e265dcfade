"""The Segment-compatible API driven by the real RudderStack and Segment client libraries.

Python: ``rudder-sdk-python`` and ``segment-analytics-python``. Node: the SDKs in
tests/node/package.json (``@rudderstack/rudder-sdk-node``, ``@segment/analytics-node``),
installed with ``npm ci`` from the committed lock when tests/node/node_modules is missing,
and driven by tests/node/harness.mjs. Without node/npm the Node tests skip, or fail
under ``INNKT_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import gzip
import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from rudderstack.analytics import Client as RudderClient  # type: ignore[import-untyped]
from segment.analytics import Client as SegmentClient  # type: ignore[import-untyped]

from innkt_analytics.shared._protocol import MAX_NESTING_DEPTH
from tests._server import ServerProcess
from tests.conftest import REQUIRE_SERVICES

NODE_DIR = Path(__file__).parent / "node"
BACKFILL = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)


def _unique(prefix: str) -> str:
    return prefix + "-" + uuid.uuid4().hex[:12]


def _events(server: ServerProcess, user: str) -> list[dict[str, Any]]:
    r = httpx.get(
        server.url + "/v1/events",
        params={"userId": user, "limit": "1000"},
        headers=server.headers("read"),
    )
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- the Node SDKs ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def node_harness() -> Path:
    """tests/node/harness.mjs with the locked SDKs installed (``npm ci`` once if missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "node and npm are needed for the Node SDK tests"
        if REQUIRE_SERVICES:
            pytest.fail(message + " and INNKT_REQUIRE_SERVICES=1")
        pytest.skip(message)
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    # Locked so that two test runs on one checkout do not install over each other.
    with lock.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
            # --ignore-scripts: an optional native add-on of a dependency is not needed here.
            subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                check=True,
                timeout=300,
            )
    return NODE_DIR / "harness.mjs"


def _run_node(
    harness: Path,
    tmp_path: Path,
    sdk: str,
    server: ServerProcess,
    calls: list[tuple[str, dict[str, Any]]],
    *,
    write_key: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    spec = {
        "sdk": sdk,
        "host": server.url,
        "writeKey": write_key or server.write_key,
        "options": {"flushInterval": 50, **options},
        "calls": calls,
    }
    spec_path, result_path = tmp_path / f"{sdk}-spec.json", tmp_path / f"{sdk}-result.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [shutil.which("node") or "node", str(harness), str(spec_path), str(result_path)],
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def _headers(result: dict[str, Any]) -> list[dict[str, str]]:
    return [{k.lower(): str(v) for k, v in r["headers"].items()} for r in result["requests"]]


def test_rudder_node_default_gzip_form_urlencoded_batches_are_stored(
    shared_server: ServerProcess, node_harness: Path, tmp_path: Path
) -> None:
    """@rudderstack/rudder-sdk-node as its README sets it up: gzip on, axios' default type."""
    user = _unique("rnode")
    calls: list[tuple[str, dict[str, Any]]] = [
        ("track", {"userId": user, "event": "Order Completed", "properties": {"total": 42.5}}),
        ("identify", {"userId": user, "traits": {"plan": "pro", "seats": 3}}),
        ("page", {"userId": user, "name": "Pricing", "properties": {"path": "/pricing"}}),
        ("screen", {"userId": user, "name": "Home"}),
        ("group", {"userId": user, "groupId": "g-1", "traits": {"name": "Acme"}}),
        ("alias", {"userId": user, "previousId": "anon-" + user}),
    ]
    result = _run_node(node_harness, tmp_path, "rudder", shared_server, calls)
    assert result["errors"] == []
    sent = _headers(result)
    # The shape that was answered 415 before: gzipped JSON labelled as a form.
    assert {h["content-type"] for h in sent} == {"application/x-www-form-urlencoded"}
    assert {h["content-encoding"] for h in sent} == {"gzip"}
    by_type = {e["eventType"]: e for e in _events(shared_server, user)}
    assert sorted(by_type) == ["Order Completed", "alias", "group", "identify", "page", "screen"]
    assert by_type["screen"]["properties"] == {"name": "Home"}
    assert by_type["Order Completed"]["properties"] == {"total": 42.5}
    assert by_type["identify"]["properties"] == {"plan": "pro", "seats": 3}
    assert "traits" not in by_type["identify"]["context"]
    assert by_type["page"]["properties"] == {"path": "/pricing", "name": "Pricing"}
    assert by_type["group"]["properties"] == {"name": "Acme", "groupId": "g-1"}
    assert by_type["alias"]["properties"] == {"previousId": "anon-" + user}
    assert by_type["identify"]["context"]["library"]["name"] == "analytics-node"


def test_rudder_node_wrong_key_is_told_401(
    shared_server: ServerProcess, node_harness: Path, tmp_path: Path
) -> None:
    user = _unique("rnode-key")
    result = _run_node(
        node_harness,
        tmp_path,
        "rudder",
        shared_server,
        [("track", {"userId": user, "event": "E"})],
        write_key="ik_not_a_key",
    )
    assert [e["status"] for e in result["errors"]] == [401]
    assert _events(shared_server, user) == []


def test_rudder_node_explicit_timestamp_is_kept_and_call_time_is_corrected(
    shared_server: ServerProcess, node_harness: Path, tmp_path: Path
) -> None:
    """rudder-server's rule: an explicit ``timestamp`` as sent, else the corrected call time."""
    user = _unique("rnode-time")
    before = dt.datetime.now(dt.UTC)
    calls: list[tuple[str, dict[str, Any]]] = [
        (
            "track",
            {"userId": user, "event": "Backfilled", "timestamp": {"$date": BACKFILL.isoformat()}},
        ),
        ("track", {"userId": user, "event": "Now"}),
    ]
    # gzip off (plain JSON) so that this checks the time rule alone.
    result = _run_node(node_harness, tmp_path, "rudder", shared_server, calls, gzip=False)
    assert result["errors"] == []
    assert {h["content-type"] for h in _headers(result)} == {"application/json"}
    by_type = {e["eventType"]: e for e in _events(shared_server, user)}
    backfilled = by_type["Backfilled"]
    assert _time(backfilled["timestamp"]) == BACKFILL
    assert _time(backfilled["correctedTimestamp"]) == BACKFILL
    # No explicit time: originalTimestamp (the call) corrected by sentAt, so between
    # the start of the test and the arrival.
    now = by_type["Now"]
    assert before - dt.timedelta(seconds=1) <= _time(now["correctedTimestamp"])
    assert _time(now["correctedTimestamp"]) <= _time(now["receivedAt"])


def test_segment_node_calls_of_every_type_arrive(
    shared_server: ServerProcess, node_harness: Path, tmp_path: Path
) -> None:
    """@segment/analytics-node: JSON, Basic auth and writeKey in the body, sentAt per batch."""
    user = _unique("snode")
    calls: list[tuple[str, dict[str, Any]]] = [
        ("track", {"userId": user, "event": "Order Completed", "properties": {"total": 42.5}}),
        ("identify", {"userId": user, "traits": {"plan": "pro", "seats": 3}}),
        ("page", {"userId": user, "name": "Pricing", "properties": {"path": "/pricing"}}),
        ("screen", {"userId": user, "name": "Home"}),
        ("group", {"userId": user, "groupId": "g-1", "traits": {"name": "Acme"}}),
        ("alias", {"userId": user, "previousId": "anon-" + user}),
        (
            "track",
            {"userId": user, "event": "Backfilled", "timestamp": {"$date": BACKFILL.isoformat()}},
        ),
    ]
    result = _run_node(node_harness, tmp_path, "segment", shared_server, calls, flushAt=20)
    assert result["errors"] == []
    assert {h["content-type"] for h in _headers(result)} == {"application/json"}
    by_type = {e["eventType"]: e for e in _events(shared_server, user)}
    assert sorted(by_type) == [
        "Backfilled", "Order Completed", "alias", "group", "identify", "page", "screen"
    ]  # fmt: skip
    assert by_type["identify"]["properties"] == {"plan": "pro", "seats": 3}
    assert by_type["page"]["properties"] == {"path": "/pricing", "name": "Pricing"}
    assert by_type["screen"]["properties"] == {"name": "Home"}
    # Segment's SDKs send only timestamp: it is the device time, corrected by sentAt
    # (the clocks here agree, so the backfilled time survives within the send delay).
    stored = _time(by_type["Backfilled"]["correctedTimestamp"])
    assert abs(stored - BACKFILL) < dt.timedelta(seconds=30)


# -- the Python SDKs -------------------------------------------------------------------


class _Errors:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        with self._lock:
            self.errors.append(f"{error!r} ({len(batch)} messages)")


def test_identify_from_rudder_python_stores_like_segment_python(
    shared_server: ServerProcess,
) -> None:
    """rudder-sdk-python puts an identify's traits only under context.traits."""
    traits = {"email": "ada@example.com", "plan": "pro"}
    stored: dict[str, dict[str, Any]] = {}
    for name, client_class in (("rudder", RudderClient), ("segment", SegmentClient)):
        user = _unique("py-" + name)
        errors = _Errors()
        client = client_class(
            write_key=shared_server.write_key,
            host=shared_server.url,
            on_error=errors,
            upload_interval=0.05,
        )
        try:
            client.identify(user, dict(traits), context={"locale": "de-DE"})
            client.flush()
        finally:
            client.shutdown()
        assert errors.errors == []
        (stored[name],) = _events(shared_server, user)
    for event in stored.values():
        assert event["eventType"] == "identify"
        assert event["properties"] == traits
        assert event["context"]["locale"] == "de-DE"
        assert "traits" not in event["context"]


# -- the protections hold for every body the Segment routes accept ---------------------


def _form_headers(server: ServerProcess) -> dict[str, str]:
    # What @rudderstack/rudder-sdk-node sends by default (see the first test).
    return {
        "Authorization": "Basic " + base64.b64encode(f"{server.write_key}:".encode()).decode(),
        "Content-Type": "application/x-www-form-urlencoded",
        "Content-Encoding": "gzip",
    }


def test_form_urlencoded_gzip_bodies_keep_size_bomb_and_depth_limits(
    server_factory: Any,
) -> None:
    server = server_factory(env={"INNKT_MAX_BODY_BYTES": "65536"})
    url = server.url + "/v1/batch"
    headers = _form_headers(server)
    # A bomb: 64 MiB of zeros in a ~64 KiB gzip body is cut at the 64 KiB limit.
    bomb_body = gzip.compress(b'{"batch":["' + b"0" * (64 << 20) + b'"]}')
    bomb = httpx.post(url, content=bomb_body, headers=headers)
    # Over the limit before gunzip (random bytes do not compress).
    oversize = httpx.post(
        url,
        content=uuid.uuid4().bytes * 8192,
        headers=headers,
    )
    truncated = httpx.post(
        url,
        content=gzip.compress(b'{"batch": []}')[:-6],
        headers=headers,
    )

    def nested(depth: int) -> bytes:
        properties = b'{"a":' * depth + b'"x"' + b"}" * depth
        return b'{"batch":[{"type":"track","event":"E","userId":"u","properties":%s}]}' % (
            properties
        )

    # Over our nesting limit, and over the JSON decoder's own recursion limit.
    too_deep = httpx.post(
        url, content=gzip.compress(nested(MAX_NESTING_DEPTH + 1)), headers=headers
    )
    far_too_deep = httpx.post(url, content=gzip.compress(nested(10_000)), headers=headers)
    answers = {
        "bomb": bomb,
        "oversize": oversize,
        "truncated": truncated,
        "too_deep": too_deep,
        "far_too_deep": far_too_deep,
    }
    # Each a 4xx with a JSON error body in both dialects (Segment's "code", our "error").
    statuses = {name: (r.status_code, r.json()["code"]) for name, r in answers.items()}
    assert all(r.json()["success"] is False for r in answers.values())
    assert statuses == {
        "bomb": (413, "payload_too_large"),
        "oversize": (413, "payload_too_large"),
        "truncated": (400, "bad_gzip"),
        "too_deep": (400, "invalid_batch"),
        "far_too_deep": (400, "invalid_batch"),
    }
    assert server.count_events() == 0
