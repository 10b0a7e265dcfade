"""``/metrics`` after real traffic, parsed with prometheus-client's own parser.

Every number checked here is caused by a request the test made to the real
server: batches with new, repeated, invalid and suppressed events, a 404, a
rate-limited key, a WebSocket client, key lookups.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tests._server import ServerProcess
from tests.conftest import ServerFactory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def event(event_id: str | None = None, user: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "eventId": event_id or str(uuid.uuid4()),
        "eventType": "metric_test",
        "timestamp": "2026-11-27T10:00:00Z",
    }
    if user is not None:
        body["userId"] = user
    return body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of every sample in the exposition."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def busy(server_factory: ServerFactory, metrics_port: int) -> ServerProcess:
    return server_factory(
        env={
            "INNKT_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
            "INNKT_RATE_LIMIT_PER_SECOND": "0.001",
            "INNKT_RATE_LIMIT_BURST": "40",
        }
    )


def post(server: ServerProcess, events: list[dict[str, Any]], key: str) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/events/batch",
        json={"events": events},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_metrics_count_real_traffic(busy: ServerProcess, metrics_port: int) -> None:
    server, write = busy, busy.write_key
    # 3 new + 1 repeated + 1 invalid, then a batch repeating two of them
    first = [event("m1"), event("m2"), event("m3"), event("m1"), {"eventType": "no id"}]
    assert post(server, first, write).json()["accepted"] == 3
    assert post(server, [event("m1"), event("m2"), event("m4")], write).json()["accepted"] == 1
    # a deleted user's events are suppressed
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    assert httpx.delete(server.url + "/v1/users/gone", headers=admin).status_code == 200
    answer = post(server, [event(user="gone"), event(user="gone"), event(user="here")], write)
    assert answer.json()["accepted"] == 1
    # a batch with no valid event is a 400, its events rejected
    assert post(server, [{"eventType": "x"}, {"eventType": "y"}], write).status_code == 400
    assert httpx.get(server.url + "/no/such/path").status_code == 404
    # a key that exhausts its burst is limited
    flood = server.create_key("read")
    statuses = [
        httpx.get(
            server.url + "/v1/stats", headers={"Authorization": f"Bearer {flood}"}
        ).status_code
        for _ in range(45)
    ]
    assert 429 in statuses
    with connect(
        server.url.replace("http://", "ws://") + "/v1/realtime",
        additional_headers={"Authorization": f"Bearer {server.read_key}"},
    ):
        # protected on the API port: no key, a write key, an admin key
        assert httpx.get(server.url + "/metrics").status_code == 401
        assert (
            httpx.get(server.url + "/metrics", headers=server.headers("write")).status_code == 403
        )
        scraped = httpx.get(server.url + "/metrics", headers=admin)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
        private = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")  # the separate bind
        assert private.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/other").status_code == 404

    for text in (scraped.text, private.text):
        found = samples(text)
        ingest = {o: value(found, "innkt_ingest_events_total", outcome=o) for o in
                  ("accepted", "duplicate", "rejected", "suppressed")}  # fmt: skip
        assert ingest == {"accepted": 5, "duplicate": 3, "rejected": 3, "suppressed": 2}
        assert value(found, "innkt_ingest_batches_total") == 4
        assert value(found, "innkt_commit_duration_seconds_count") == 3  # the 400 never commits
        assert value(found, "innkt_commit_duration_seconds_bucket", le="+Inf") == 3
        assert value(found, "innkt_commit_duration_seconds_sum") > 0
        assert value(found, "innkt_commit_queue_depth") == 0
        batch = {"route": "/v1/events/batch", "method": "POST"}
        assert value(found, "innkt_http_requests_total", **batch, status="200") == 3
        assert value(found, "innkt_http_requests_total", **batch, status="400") == 1
        unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
        assert value(found, "innkt_http_requests_total", **unmatched) == 1
        assert (
            value(found, "innkt_http_requests_total", route="/metrics", method="GET", status="401")
            == 1
        )
        assert (
            value(found, "innkt_http_requests_total", route="/metrics", method="GET", status="403")
            == 1
        )
        limited = statuses.count(429)
        assert value(found, "innkt_rate_limit_decisions_total", decision="limited") == limited
        assert value(found, "innkt_rate_limit_decisions_total", decision="allowed") >= 45 - limited
        assert value(found, "innkt_websocket_connections") == 1
        assert value(found, "innkt_websocket_dropped_messages_total") == 0
        hits = value(found, "innkt_key_cache_lookups_total", result="hit")
        misses = value(found, "innkt_key_cache_lookups_total", result="miss")
        assert hits > 0
        assert misses > 0
        assert value(found, "innkt_storage_up", backend="sqlite") == 1
        assert value(found, "innkt_storage_size_bytes") > 0
        assert value(found, "innkt_storage_events") == 5
        assert value(found, "innkt_ready") == 1
        assert value(found, "process_resident_memory_bytes") > 0


def test_a_bad_metrics_address_is_refused_at_start(tmp_path: Any) -> None:
    server = ServerProcess(
        tmp_path / "bad.db", log_dir=tmp_path / "logs", env={"INNKT_METRICS_ADDRESS": "nowhere"}
    )
    with pytest.raises(RuntimeError, match="metrics_address") as refused:
        server.start(timeout=60)
    assert "created" not in str(refused.value)  # refused before any key was made
    assert "Traceback" not in str(refused.value)


def test_the_sample_alerting_rules_use_only_metrics_the_server_exports(
    server: ServerProcess,
) -> None:
    import pathlib
    import re

    import yaml

    rules = yaml.safe_load(
        (pathlib.Path(__file__).parent.parent / "docs" / "prometheus-alerts.yml").read_text()
    )
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(exprs) >= 8
    used = {name for expr in exprs for name in re.findall(r"\binnkt_\w+", expr)}
    scraped = httpx.get(server.url + "/metrics", headers=server.headers("admin")).text
    exported = {sample.name for family in text_string_to_metric_families(scraped)
                for sample in family.samples}  # fmt: skip
    assert used <= exported, used - exported
