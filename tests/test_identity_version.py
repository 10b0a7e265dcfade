"""The identity graph version rises when persons may change, and only then.

Insights key their persons cache and cached answers on it; a server that restarts
forgets what the store holds, so every batch of a known user reaches the store
again and must not raise it (issue 19).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from innkt_analytics.server._identity import Link
from innkt_analytics.server._identity_store import IdentityStore, IdInfo, make_identity
from tests._server import ServerProcess
from tests.conftest import ServerFactory

P = "proj"


def _user(at: int) -> IdInfo:
    return IdInfo(True, at, at)


def _anon(at: int) -> IdInfo:
    return IdInfo(False, at, at)


def _with_store(url: str, body: Callable[[IdentityStore], Awaitable[None]]) -> None:
    async def run() -> None:
        store = make_identity(url)
        await store.open()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(run())


def test_a_known_user_after_a_restart_leaves_the_version_alone(storage_url: str) -> None:
    identify = Link("anon-1", "u-1", False, 1_000)

    async def first_instance(store: IdentityStore) -> None:
        assert await store.version(P) == 0
        await store.record(P, [identify], {"anon-1": _anon(1_000), "u-1": _user(1_000)})
        assert await store.version(P) == 1

    async def after_restart(store: IdentityStore) -> None:
        # what a restarted server sends for the same user: its memory is empty
        await store.record(P, [identify], {"anon-1": _anon(2_000), "u-1": _user(2_000)})
        await store.record(P, [], {"u-1": _user(3_000)})
        await store.record(P, [identify, identify], {"u-1": _user(4_000)})
        # the same link seen later than stored: still the earliest one counts
        await store.record(P, [Link("anon-1", "u-1", False, 5_000)], {"u-1": _user(5_000)})
        assert await store.version(P) == 1
        # ids seen without a userId: no change either
        await store.record(P, [], {"anon-9": _anon(5_000)})
        assert await store.version(P) == 1
        # a new link: persons change
        await store.record(P, [Link("anon-2", "u-1", False, 6_000)], {"u-1": _user(6_000)})
        assert await store.version(P) == 2
        # the same link seen earlier than stored (rule 2 takes the earliest plain link)
        await store.record(P, [Link("anon-2", "u-1", False, 500)], {})
        assert await store.version(P) == 3
        # an id first sent as a userId, and one sent alone before, then as a userId
        await store.record(P, [], {"u-2": _user(7_000)})
        assert await store.version(P) == 4
        await store.record(P, [], {"anon-9": _user(8_000)})
        assert await store.version(P) == 5
        await store.record(P, [], {"anon-9": _user(9_000), "u-2": _user(9_000)})
        assert await store.version(P) == 5
        # an alias of two known users is a new link
        await store.record(P, [Link("u-1", "u-2", True, 9_500)], {})
        assert await store.version(P) == 6
        # another project's version is its own
        assert await store.version("other") == 0
        await store.forget(P, ["anon-2"])
        assert await store.version(P) == 7
        version, links, users = await store.graph(P)
        assert version == 7
        assert {(k.a, k.b) for k in links} == {("anon-1", "u-1"), ("u-1", "u-2")}
        assert users == {"u-1"}

    _with_store(storage_url, first_instance)
    _with_store(storage_url, after_restart)


def test_concurrent_batches_are_judged_each_by_its_own_project(storage_url: str) -> None:
    # on SQLite these share one group commit: one project's change must not be
    # another's, nor one batch's known user hide another batch's new link
    async def body(store: IdentityStore) -> None:
        await store.record("a", [], {"u": _user(1)})
        await store.record("b", [], {"u": _user(1)})
        assert (await store.version("a"), await store.version("b")) == (1, 1)
        await asyncio.gather(
            store.record("a", [], {"u": _user(2)}),
            store.record("b", [Link("x", "u", False, 2)], {"u": _user(2)}),
            store.record("a", [], {"u": _user(3)}),
        )
        assert (await store.version("a"), await store.version("b")) == (1, 2)

    _with_store(storage_url, body)


# -- through the servers: another instance's cached answers ---------------------------


def _send(server: ServerProcess, **ids: str) -> None:
    event = {"eventId": uuid.uuid4().hex, "eventType": "buy", "timestamp": "2026-03-02T10:00:00Z"}
    r = httpx.post(
        server.url + "/v1/events/batch", json={"events": [event | ids]}, headers=server.headers()
    )
    assert r.status_code == 200, r.text


def _users(server: ServerProcess) -> tuple[str, Any]:
    r = httpx.post(
        server.url + "/v1/insights/trends",
        json={
            "dateFrom": "2026-03-02",
            "dateTo": "2026-03-03",
            "series": [{"event": "buy", "math": "unique_users"}],
        },
        headers=server.headers("read"),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.headers["X-Innkt-Cache"], r.json()["series"][0]["values"]


@pytest.mark.postgres
def test_a_known_user_through_another_instance_keeps_cached_answers(
    pg_database: str, server_factory: ServerFactory
) -> None:
    # A keeps answers long enough that only the graph version can turn a hit into a miss
    a = server_factory(db=pg_database, env={"INNKT_INSIGHTS_CACHE_TTL_POSTGRES": "600"})
    b = server_factory(db=pg_database)
    b.keys = dict(a.keys)  # the database already had keys when B started
    _send(a, anonymousId="anon-1", userId="u-1")
    assert _users(a) == ("miss", [1])
    assert _users(a) == ("hit", [1])
    # B has never seen u-1 (as after a restart): it writes what the store already holds
    _send(b, anonymousId="anon-1", userId="u-1")
    _send(b, userId="u-1")
    assert _users(a) == ("hit", [1])
    # a new link through B: persons may change, A's answer is recomputed
    _send(b, anonymousId="anon-2", userId="u-1")
    assert _users(a)[0] == "miss"
