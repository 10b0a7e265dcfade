"""The fault proxy itself, against the real server: each fault does what it says."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import httpx
import pytest

from innkt_analytics.shared._protocol import Event, encode_batch
from tests._proxy import Fault, FaultProxy
from tests._server import ServerProcess


@pytest.fixture
def server(shared_server: ServerProcess) -> ServerProcess:
    return shared_server


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[FaultProxy]:
    with FaultProxy(server.port) as p:
        yield p


def _has(server: ServerProcess, event_id: str) -> int:
    return server.event_ids().count(event_id)


def _body(event_id: str) -> bytes:
    event = Event(event_id=event_id, event_type="t", timestamp=dt.datetime.now(dt.UTC))
    return encode_batch([event])


def _post(proxy: FaultProxy, server: ServerProcess, event_id: str, timeout: float = 5) -> int:
    headers = {**server.headers("write"), "Content-Type": "application/json"}
    response = httpx.post(
        proxy.url + "/v1/events/batch", content=_body(event_id), headers=headers, timeout=timeout
    )
    return response.status_code


def test_pass_forwards_requests_and_answers(proxy: FaultProxy, server: ServerProcess) -> None:
    assert _post(proxy, server, "proxy-p1") == 200
    assert httpx.get(proxy.url + "/v1/health").json()["status"] == "ok"
    assert _has(server, "proxy-p1") == 1
    assert [s.path for s in proxy.seen] == ["/v1/events/batch", "/v1/health"]
    assert proxy.statuses() == [200]


def test_respond_injects_a_status_without_forwarding(
    proxy: FaultProxy, server: ServerProcess
) -> None:
    proxy.respond(503, {"Retry-After": "7"}, b'{"error":"x","message":"y"}')
    headers = {**server.headers("write"), "Content-Type": "application/json"}
    r = httpx.post(proxy.url + "/v1/events/batch", content=_body("proxy-r1"), headers=headers)
    assert (r.status_code, r.headers["retry-after"]) == (503, "7")
    assert _has(server, "proxy-r1") == 0
    assert _post(proxy, server, "proxy-r2") == 200  # the rule was for one request only
    assert _has(server, "proxy-r2") == 1


def test_reset_drops_the_connection_before_the_server_sees_it(
    proxy: FaultProxy, server: ServerProcess
) -> None:
    proxy.reset_next()
    with pytest.raises(httpx.TransportError):
        _post(proxy, server, "proxy-x1")
    assert _has(server, "proxy-x1") == 0
    assert proxy.seen[0].fault is Fault.RESET


def test_lose_response_stores_on_the_server_but_the_client_sees_a_reset(
    proxy: FaultProxy, server: ServerProcess
) -> None:
    proxy.lose_next_response()
    with pytest.raises(httpx.TransportError):
        _post(proxy, server, "proxy-l1")
    assert _has(server, "proxy-l1") == 1


def test_blackhole_never_answers(proxy: FaultProxy, server: ServerProcess) -> None:
    proxy.set_mode(Fault.BLACKHOLE, match="/v1/events")
    with pytest.raises(httpx.ReadTimeout):
        _post(proxy, server, "proxy-b1", timeout=0.3)
    # Other paths are not matched by the rule.
    assert httpx.get(proxy.url + "/v1/health", timeout=5).status_code == 200
    assert _has(server, "proxy-b1") == 0


def test_delay_holds_the_request_at_least_that_long(
    proxy: FaultProxy, server: ServerProcess
) -> None:
    proxy.set_mode(Fault.DELAY, delay=0.3)
    before = dt.datetime.now()
    assert _post(proxy, server, "proxy-d1") == 200
    assert (dt.datetime.now() - before).total_seconds() >= 0.3
    assert _has(server, "proxy-d1") == 1
