"""Two server processes on different ports sharing one PostgreSQL database and one
Redis: what one instance stores the other serves, an event sent to both is
stored once, and a key's rate limit is one budget for the whole cluster.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from tests._server import ServerProcess
from tests.conftest import ServerFactory
from tests.test_postgres_server import events, post

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def pair(
    server_factory: ServerFactory, db: str, env: dict[str, str] | None = None
) -> tuple[ServerProcess, ServerProcess]:
    """Two instances on one database; the second uses the keys the first created."""
    a = server_factory(db=db, env=env)
    b = server_factory(db=db, env=env)
    assert a.port != b.port
    b.keys = dict(a.keys)  # the database already had keys when B started
    return a, b


def get(server: ServerProcess, path: str, **params: Any) -> Any:
    r = httpx.get(server.url + path, headers=server.headers("read"), params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_ingest_on_one_instance_query_on_the_other(
    pg_database: str, redis_url: str, server_factory: ServerFactory
) -> None:
    a, b = pair(server_factory, pg_database, {"INNKT_RATE_LIMIT_STORE": redis_url})
    assert post(a, events("x0", "x1")).json()["accepted"] == 2
    assert post(b, events("x2")).json()["accepted"] == 1
    for server in (a, b):
        listed = get(server, "/v1/events")
        assert [e["eventId"] for e in listed["events"]] == ["x0", "x1", "x2"]
        assert get(server, "/v1/stats", bucket="day")["total"] == 3


def test_an_event_sent_to_both_instances_is_stored_once(
    pg_database: str, redis_url: str, server_factory: ServerFactory
) -> None:
    a, b = pair(
        server_factory,
        pg_database,
        {"INNKT_RATE_LIMIT_STORE": redis_url, "INNKT_RATE_LIMIT_PER_SECOND": "0"},
    )
    ids = [f"dup{i}" for i in range(200)]
    # Each batch overlaps its neighbours and goes to both instances at once,
    # the way an SDK retries through a load balancer after a timeout.
    batches = [events(*ids[start : start + 50]) for start in range(0, 200, 25)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda job: post(*job).json(), [(s, b_) for b_ in batches for s in (a, b)])
        )
    assert sum(x["accepted"] for x in answers) == 200
    sent = sum(len(batch["events"]) for batch in batches) * 2
    assert sum(x["accepted"] + x["duplicates"] for x in answers) == sent
    assert sorted(a.event_ids()) == sorted(ids)
    assert a.count_events() == 200


def test_the_rate_limit_is_one_budget_across_instances(
    pg_database: str, redis_url: str, server_factory: ServerFactory
) -> None:
    a, b = pair(
        server_factory,
        pg_database,
        {
            "INNKT_RATE_LIMIT_STORE": redis_url,
            "INNKT_RATE_LIMIT_PER_SECOND": "0.01",
            "INNKT_RATE_LIMIT_BURST": "4",
        },
    )
    codes = [post(server, events(f"r{i}")).status_code for i, server in enumerate([a, b, a, b])]
    assert codes == [200, 200, 200, 200]
    for server in (a, b):  # per instance each would still have 2 left
        r = post(server, events("r-over"))
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
    # another key has its own budget
    other = a.create_key("write")
    r = httpx.post(
        b.url + "/v1/events/batch",
        headers={"Authorization": f"Bearer {other}"},
        json=events("r-other"),
    )
    assert r.status_code == 200


def _handshake(server: ServerProcess, key: str) -> int:
    """Open a real-time connection with ``key``: 101 when admitted, else the refusal."""
    url = server.url.replace("http://", "ws://") + "/v1/realtime"
    try:
        with ws_connect(
            url,
            additional_headers={"Authorization": f"Bearer {key}"},
            subprotocols=[Subprotocol("innkt.v1")],
            open_timeout=10,
        ):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def test_websocket_handshakes_and_requests_draw_from_one_budget(
    pg_database: str, redis_url: str, server_factory: ServerFactory
) -> None:
    a, b = pair(
        server_factory,
        pg_database,
        {
            "INNKT_RATE_LIMIT_STORE": redis_url,
            "INNKT_RATE_LIMIT_PER_SECOND": "0.01",
            "INNKT_RATE_LIMIT_BURST": "4",
        },
    )
    key = a.write_key
    assert post(a, events("w0")).status_code == 200
    assert _handshake(b, key) == 101
    assert post(b, events("w1")).status_code == 200
    assert _handshake(a, key) == 101
    # Four tokens of one cluster-wide bucket are gone, whichever way they were spent:
    # per instance each would still have two.
    assert _handshake(b, key) == 429
    assert _handshake(a, key) == 429
    assert post(a, events("w-over")).status_code == 429
    assert post(b, events("w-over")).status_code == 429


def test_keys_and_config_are_shared(
    pg_database: str, redis_url: str, server_factory: ServerFactory
) -> None:
    a, b = pair(server_factory, pg_database, {"INNKT_RATE_LIMIT_STORE": redis_url})
    key = a.create_key("write", project="shop")  # the CLI, against the shared database
    r = httpx.post(
        b.url + "/v1/events/batch", headers={"Authorization": f"Bearer {key}"}, json=events("k1")
    )
    assert r.json()["accepted"] == 1
    assert b.event_ids("shop") == ["k1"]
    put = httpx.put(
        a.url + "/v1/config",
        headers=a.headers("admin"),
        json={"samplingRate": 0.5, "batchSize": 20},
    )
    assert put.status_code == 200, put.text
    config = get(b, "/v1/config")
    assert (config["samplingRate"], config["batchSize"], config["version"]) == (0.5, 20, 1)


def test_one_instance_dies_and_the_other_carries_on(
    pg_database: str, redis_url: str, server_factory: ServerFactory
) -> None:
    a, b = pair(server_factory, pg_database, {"INNKT_RATE_LIMIT_STORE": redis_url})
    assert post(a, events("before")).status_code == 200
    a.kill()
    assert post(b, events("while-a-is-down")).json()["accepted"] == 1
    a.start()
    listed = get(a, "/v1/events")
    assert [e["eventId"] for e in listed["events"]] == ["before", "while-a-is-down"]
