"""The ``/v1/realtime`` hub against a real server process, over real WebSockets.

The helpers here (``Client``, ``ws_url``, ``post_events``) are shared with the
SDK and fan-out tests.
"""

from __future__ import annotations

import asyncio
import json
import resource
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests._server import ServerProcess
from tests.conftest import ServerFactory

TIMEOUT = 20.0


def ws_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/v1/realtime"


def event(event_type: str = "login", session: str | None = "s1", pad: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {
        "eventId": str(uuid.uuid4()),
        "eventType": event_type,
        "timestamp": "2026-11-27T10:00:00+00:00",
    }
    if session is not None:
        body["sessionId"] = session
    if pad:
        body["properties"] = {"pad": secrets.token_hex(pad // 2)}
    return body


def post_events(
    server: ServerProcess, events: list[dict[str, Any]], key: str | None = None
) -> None:
    headers = {"Authorization": f"Bearer {key or server.write_key}"}
    r = httpx.post(
        server.url + "/v1/events/batch", headers=headers, json={"events": events}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(events)


def put_config(server: ServerProcess, key: str | None = None, **fields: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key or server.admin_key}"}
    r = httpx.put(server.url + "/v1/config", headers=headers, json=fields, timeout=30)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


class Client:
    """A raw WebSocket client speaking the envelope protocol, for the tests."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def open(
        cls,
        url: str,
        key: str | None,
        *,
        browser: bool = False,
        origin: str | None = None,
        **kwargs: Any,
    ) -> Client:
        headers = {} if key is None or browser else {"Authorization": f"Bearer {key}"}
        protocols = ["innkt.v1", f"bearer.{key}"] if browser and key else ["innkt.v1"]
        kwargs.setdefault("compression", None)
        ws = await connect(
            url,
            additional_headers=headers,
            subprotocols=protocols,  # type: ignore[arg-type]
            origin=origin,  # type: ignore[arg-type]
            ping_interval=None,
            open_timeout=TIMEOUT,
            **kwargs,
        )
        return cls(ws)

    async def send(self, type: str, payload: Any = None, id: str = "") -> str:
        mid = id or secrets.token_hex(4)
        await self.ws.send(json.dumps({"type": type, "id": mid, "payload": payload}))
        return mid

    async def recv(self, within: float = TIMEOUT) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), within))
        self.seen.append(message)
        return message

    async def expect(
        self,
        type: str,
        where: Callable[[dict[str, Any]], bool] = lambda _m: True,
        within: float = TIMEOUT,
    ) -> dict[str, Any]:
        """The next message of ``type`` matching ``where``, skipping others (analytics ticks)."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no {type!r} message; saw {[m['type'] for m in self.seen]}")
            message = await self.recv(remaining)
            if message["type"] == type and where(message):
                return message

    async def events(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` events of the event stream, across messages (busy hubs merge)."""
        got: list[dict[str, Any]] = []
        while len(got) < n:
            got += (await self.expect("event"))["payload"]["events"]
        assert len(got) == n, f"{len(got) - n} events more than expected"
        return got

    def events_seen(self) -> int:
        return sum(len(m["payload"]["events"]) for m in self.seen if m["type"] == "event")

    async def subscribe(
        self, streams: list[str], event_types: list[str] | None = None
    ) -> dict[str, Any]:
        mid = await self.send("subscribe", {"streams": streams, "eventTypes": event_types})
        return await self.expect("subscribed", lambda m: m["id"] == mid)

    async def close(self) -> None:
        await self.ws.close()

    async def close_code(self) -> int | None:
        """Read until the server closes; the close code it sent."""
        try:
            while True:
                await self.recv()
        except ConnectionClosed as exc:
            return None if exc.rcvd is None else exc.rcvd.code


def health_of(server: ServerProcess) -> dict[str, Any]:
    r = httpx.get(server.url + "/v1/health", headers=server.headers("read"), timeout=30)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def refusal(exc: InvalidStatus) -> tuple[int, dict[str, Any]]:
    return exc.response.status_code, json.loads(bytes(exc.response.body or b"{}"))


async def refused(url: str, key: str | None, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as exc:
        await Client.open(url, key, **kwargs)
    return refusal(exc.value)


def fresh_project(server: ServerProcess, *scopes: str) -> dict[str, str]:
    """Keys of a new project, so a test on the shared server sees only its own data."""
    project = "p" + secrets.token_hex(4)
    return {scope: server.create_key(scope, project) for scope in scopes}


# -- handshake --------------------------------------------------------------------------


def test_handshake_auth_refusals_happen_before_accept(shared_server: ServerProcess) -> None:
    url = ws_url(shared_server)
    logged = shared_server.log.stat().st_size

    async def main() -> None:
        assert await refused(url, None) == (
            401,
            {"error": "unauthorized", "message": "missing API key"},
        )
        status, body = await refused(url, "ik_not_a_key")
        assert (status, body["error"]) == (401, "unauthorized")
        status, body = await refused(url, "ik_not_a_key", browser=True)
        assert (status, body["error"]) == (401, "unauthorized")
        # a key in the URL is never read
        status, _ = await refused(f"{url}?key={shared_server.read_key}", None)
        assert status == 401

    asyncio.run(main())
    # A refusal is the hub working as designed, not a server error.
    with shared_server.log.open("rb") as out:
        out.seek(logged)
        assert b"ERROR" not in out.read()


def test_browser_subprotocol_auth_never_echoes_the_key(shared_server: ServerProcess) -> None:
    async def main() -> None:
        client = await Client.open(ws_url(shared_server), shared_server.read_key, browser=True)
        assert client.ws.subprotocol == "innkt.v1"
        response = client.ws.response
        assert response is not None
        assert shared_server.read_key not in str(response.headers)
        pong = await client.send("ping", {})
        assert (await client.expect("pong"))["id"] == pong
        await client.close()

    asyncio.run(main())


def test_origin_allow_list(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_ALLOWED_ORIGINS": "https://app.example,https://b.example"})
    url = ws_url(server)

    async def main() -> None:
        status, body = await refused(url, server.read_key, origin="https://evil.example")
        assert (status, body["error"]) == (403, "origin_forbidden")
        # the key is checked after the Origin: a bad Origin is refused even with a good key
        for origin in ("https://app.example", "https://b.example", None):
            client = await Client.open(url, server.read_key, origin=origin)
            await client.send("ping")
            await client.expect("pong")
            await client.close()
        health = await asyncio.to_thread(health_of, server)
        assert health["realtime"]["refused"] == {"origin_forbidden": 1}

    asyncio.run(main())


# -- envelope protocol ------------------------------------------------------------------


def test_request_reply_types_and_per_connection_seq(shared_server: ServerProcess) -> None:
    async def main() -> None:
        client = await Client.open(ws_url(shared_server), shared_server.read_key)
        await client.send("unsubscribe", {"streams": ["analytics_update"]})
        await client.expect("subscribed")
        ping = await client.send("ping", {"t": 1})
        health = await client.send("health_check")
        sync = await client.send("sync_request", {})
        bogus = await client.send("nonsense")
        await client.ws.send("{not json")
        pong = await client.expect("pong")
        assert pong["id"] == ping
        status = await client.expect("health_status")
        assert status["id"] == health
        assert status["payload"]["status"] == "ok"
        assert status["payload"]["connections"] >= 1
        response = await client.expect("sync_response")
        assert response["id"] == sync
        payload = response["payload"]
        assert payload["config"]["version"] >= 0
        assert payload["seq"] == response["seq"]
        assert set(payload["aggregates"]) >= {
            "eventsPerMinute",
            "activeSessions",
            "topEventTypes",
            "ingestLagMs",
        }
        error = await client.expect("error")
        assert (error["id"], error["payload"]["code"]) == (bogus, "unknown_type")
        bad = await client.expect("error")
        assert bad["payload"]["code"] == "invalid_message"
        for message in client.seen:
            assert set(message) == {"type", "id", "timestamp", "payload", "seq"}
        assert [m["seq"] for m in client.seen] == list(range(1, len(client.seen) + 1))
        await client.close()

    asyncio.run(main())


def test_oversized_message_closes_with_1009(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_REALTIME_MAX_MESSAGE_BYTES": "2000"})

    async def main() -> None:
        client = await Client.open(ws_url(server), server.read_key)
        await client.send("ping", {"fits": "x" * 1500})
        await client.expect("pong")
        await client.send("ping", {"too": "x" * 3000})
        assert await client.close_code() == 1009

    asyncio.run(main())


def test_message_rate_limit_then_policy_close(server_factory: ServerFactory) -> None:
    # 0.01 messages/s refills one token per 100 s: the limit is hit deterministically.
    server = server_factory(
        env={"INNKT_REALTIME_MESSAGE_RATE": "0.01", "INNKT_REALTIME_MESSAGE_BURST": "3"}
    )

    async def main() -> None:
        client = await Client.open(ws_url(server), server.read_key)
        ids = [await client.send("ping") for _ in range(5)]
        replies = [await client.expect("pong") for _ in range(3)]
        assert [r["id"] for r in replies] == ids[:3]
        limited = [await client.expect("error") for _ in range(2)]
        assert [e["payload"]["code"] for e in limited] == ["rate_limited", "rate_limited"]
        assert [e["id"] for e in limited] == ids[3:]
        assert limited[0]["payload"]["retryAfter"] > 0
        # a client that keeps going past the limit is closed for policy violation
        for _ in range(200):
            await client.send("ping")
        assert await client.close_code() == 1008

    asyncio.run(main())


# -- scopes -----------------------------------------------------------------------------


def test_write_keys_get_config_updates_only(shared_server: ServerProcess) -> None:
    keys = fresh_project(shared_server, "write", "read", "admin")

    async def main() -> None:
        writer = await Client.open(ws_url(shared_server), keys["write"])
        reader = await Client.open(ws_url(shared_server), keys["read"])
        sub = await writer.subscribe(["event", "analytics_update"])
        assert sub["payload"]["streams"] == ["config_update"]
        assert sub["payload"]["denied"] == ["analytics_update", "event"]
        await reader.subscribe(["event"])
        await writer.send("sync_request")
        sync = await writer.expect("sync_response")
        assert "aggregates" not in sync["payload"]
        assert sync["payload"]["config"]["version"] == 0
        post_events(shared_server, [event()], key=keys["write"])
        assert (await reader.events(1))[0]["eventType"] == "login"
        stored = put_config(shared_server, key=keys["admin"], batchSize=77)
        for client in (writer, reader):
            update = await client.expect("config_update")
            assert update["payload"]["config"] == stored
        # the write key never saw the event or an analytics tick
        assert {m["type"] for m in writer.seen} == {"subscribed", "sync_response", "config_update"}
        await writer.close()
        await reader.close()

    asyncio.run(main())


def test_revoking_a_key_closes_its_connections(server: ServerProcess) -> None:
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    created = httpx.post(
        server.url + "/v1/keys", headers=admin, json={"scopes": ["read"], "name": "dash"}
    ).json()

    async def main() -> None:
        doomed = await Client.open(ws_url(server), created["key"])
        other = await Client.open(ws_url(server), server.read_key)
        await doomed.send("ping")
        await doomed.expect("pong")
        r = await asyncio.to_thread(
            httpx.delete, f"{server.url}/v1/keys/{created['keyId']}", headers=admin
        )
        assert r.status_code == 200, r.text
        assert await doomed.close_code() == 1008
        # a connection with another key is untouched
        await other.send("ping", id="still-here")
        assert (await other.expect("pong"))["id"] == "still-here"
        await other.close()
        # New handshakes are refused once the key cache (2 s) has forgotten the key.
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            try:
                late = await Client.open(ws_url(server), created["key"])
            except InvalidStatus as exc:
                status = refusal(exc)[0]
                break
            await late.close()
            assert asyncio.get_running_loop().time() < deadline, "revoked key still accepted"
            await asyncio.sleep(0.2)
        assert status == 401

    asyncio.run(main())


# -- streams ----------------------------------------------------------------------------


def test_event_stream_filters_by_type_and_project(shared_server: ServerProcess) -> None:
    keys = fresh_project(shared_server, "write", "read")
    other = fresh_project(shared_server, "read")

    async def main() -> None:
        url = ws_url(shared_server)
        everything = await Client.open(url, keys["read"])
        purchases = await Client.open(url, keys["read"])
        silent = await Client.open(url, keys["read"])
        stranger = await Client.open(url, other["read"])
        await everything.subscribe(["event"])
        await purchases.subscribe(["event"], ["purchase"])
        await stranger.subscribe(["event"])
        batch = [event("login"), event("purchase"), event("view"), event("purchase")]
        post_events(shared_server, batch, key=keys["write"])
        post_events(shared_server, [event("login")], key=keys["write"])
        got = await everything.events(5)
        assert got[:4] == batch  # the events exactly as the client sent them, in order
        assert got[4]["eventType"] == "login"
        got = await purchases.events(2)
        assert [e["eventId"] for e in got] == [batch[1]["eventId"], batch[3]["eventId"]]
        # the login-only request produced nothing for the purchase filter, and nothing
        # reached a connection that did not subscribe or belongs to another project
        for client in (purchases, silent, stranger):
            # both requests were dispatched before this ping was answered
            await client.send("ping", id="barrier")
            await client.expect("pong")
        assert purchases.events_seen() == 2
        assert silent.events_seen() == 0
        assert stranger.events_seen() == 0
        for client in (everything, purchases, silent, stranger):
            await client.close()

    asyncio.run(main())


def test_direct_and_asgi_sends_share_one_sequence(shared_server: ServerProcess) -> None:
    # A batch reaches an idle subscriber from the dispatcher itself (framed by the hub,
    # or by websockets on a compressed connection); replies go through ASGI. Either
    # way every message of a connection carries the next seq, in order.
    keys = fresh_project(shared_server, "write", "read")

    async def main() -> None:
        url = ws_url(shared_server)
        plain = await Client.open(url, keys["read"])
        deflate = await Client.open(url, keys["read"], compression="deflate")
        buys = await Client.open(url, keys["read"])
        clients = (plain, deflate, buys)
        for client in clients:
            mid = await client.send("unsubscribe", {"streams": ["analytics_update"]})
            await client.expect("subscribed", lambda m, mid=mid: m["id"] == mid)
        await plain.subscribe(["event"])
        await deflate.subscribe(["event"])
        await buys.subscribe(["event"], ["buy"])
        before = health_of(shared_server)["realtime"]["framesSentDirect"]
        sent: list[dict[str, Any]] = []
        # frames under 126 bytes, under 64 KiB and over: each length encoding of RFC 6455
        batches = [
            [event("login", session=None)],
            [event("buy", pad=150)],
            [event("login", pad=30_000) for _ in range(3)],
        ]
        for i, batch in enumerate(batches):
            post_events(shared_server, batch, key=keys["write"])
            sent += batch
            for client in clients:
                # the batch was dispatched before the ping is read
                await client.send("ping", id=f"p{i}")
                await client.expect("pong", lambda m, i=i: m["id"] == f"p{i}")
        after = health_of(shared_server)["realtime"]["framesSentDirect"]
        # every batch went out directly: three each to plain and deflate, one to buys
        assert after - before == 7
        for client in (plain, deflate):
            got = [e for m in client.seen if m["type"] == "event" for e in m["payload"]["events"]]
            assert got == sent
        assert [m["payload"]["events"] for m in buys.seen if m["type"] == "event"] == [batches[1]]
        for client in clients:
            seqs = [m["seq"] for m in client.seen]
            assert seqs == list(range(1, len(seqs) + 1)), [m["type"] for m in client.seen]
            await client.close()

    asyncio.run(main())


def test_analytics_update_pushes_live_aggregates_at_the_project_interval(
    shared_server: ServerProcess,
) -> None:
    keys = fresh_project(shared_server, "write", "read", "admin")

    async def main() -> None:
        client = await Client.open(ws_url(shared_server), keys["read"])
        put_config(shared_server, key=keys["admin"], realtimeInterval=0.05)
        await client.expect("config_update")
        batch = [event("login", "a"), event("login", "b"), event("view", "a"), event("buy", None)]
        post_events(shared_server, batch, key=keys["write"])
        update = await client.expect(
            "analytics_update", lambda m: m["payload"]["eventsPerMinute"] == 4
        )
        payload = update["payload"]
        assert payload["activeSessions"] == 2
        assert payload["eventsLast5Minutes"] == 4
        assert payload["topEventTypes"][0] == {"eventType": "login", "count": 2}
        assert {t["eventType"] for t in payload["topEventTypes"]} == {"login", "view", "buy"}
        # the events are dated 2026-11-27T10:00Z: the lag is how late they arrived
        assert payload["ingestLagMs"]["p50"] is not None
        assert payload["ingestLagMs"]["max"] >= payload["ingestLagMs"]["p50"]
        await client.close()

    asyncio.run(main())


# -- slow consumers ---------------------------------------------------------------------


def test_a_slow_consumer_is_told_what_it_lost_and_ingest_goes_on(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        env={
            "INNKT_REALTIME_BACKLOG": "8",
            "INNKT_RATE_LIMIT_PER_SECOND": "0",
            # the socket is the bottleneck here, not the instance's send budget
            "INNKT_REALTIME_FANOUT_BYTES_PER_SECOND": "1e9",
        }
    )
    requests, per_request = 24, 20
    total = requests * per_request

    async def main() -> None:
        # A tiny receive buffer and a one-frame library queue: once this client
        # stops reading, the server's socket stays full and its writer blocks.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        slow = await Client.open(ws_url(server), server.read_key, sock=sock, max_queue=1)
        fast = await Client.open(ws_url(server), server.read_key, max_size=None)
        for client in (slow, fast):
            await client.send("unsubscribe", {"streams": ["analytics_update"]})
            await client.expect("subscribed")
            await client.subscribe(["event"])

        loop = asyncio.get_running_loop()
        # ~500 KB per request, incompressible: 12 MB in all, far beyond the socket buffers.
        bodies = [[event(pad=25_000) for _ in range(per_request)] for _ in range(requests)]
        sent_ids = [e["eventId"] for body in bodies for e in body]

        async def drain_fast() -> list[str]:
            got: list[str] = []
            while len(got) < total:
                message = await fast.recv()
                if message["type"] == "event":
                    got += [e["eventId"] for e in message["payload"]["events"]]
            return got

        fast_task = asyncio.create_task(drain_fast())
        for body in bodies:  # every request is answered while the slow client reads nothing
            await loop.run_in_executor(None, post_events, server, body)
        assert await fast_task == sent_ids  # the fast consumer got everything, in order
        assert server.count_events() == total

        # Reading back may use a normal buffer again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        received: list[str] = []
        dropped = 0
        before_gap: list[str] | None = None
        while len(received) + dropped < total:
            message = await slow.recv()
            if message["type"] == "event":
                received += [e["eventId"] for e in message["payload"]["events"]]
            elif message["type"] == "dropped":
                if before_gap is None:
                    before_gap = list(received)
                dropped += message["payload"]["dropped"]
        assert dropped > 0
        assert len(received) + dropped == total  # every loss was announced, nothing silent
        # in order, no duplicates, and the gap came where the notice said
        assert received == [i for i in sent_ids if i in set(received)]
        assert before_gap == sent_ids[: len(before_gap or [])]
        assert [m["seq"] for m in slow.seen] == list(range(1, len(slow.seen) + 1))
        assert not [m for m in fast.seen if m["type"] == "dropped"]
        health = await asyncio.to_thread(health_of, server)
        assert health["realtime"]["dropped"] == dropped
        await slow.close()
        await fast.close()

    asyncio.run(main())


def test_over_the_send_budget_batches_merge_and_losses_are_announced(
    server_factory: ServerFactory,
) -> None:
    # One frame a second for the whole instance, a log of three batches.
    server = server_factory(
        env={
            "INNKT_REALTIME_FANOUT_FRAMES_PER_SECOND": "1",
            "INNKT_REALTIME_FANOUT_BURST_FRAMES": "1",
            "INNKT_REALTIME_BACKLOG": "3",
            "INNKT_RATE_LIMIT_PER_SECOND": "0",
        }
    )
    requests = 12

    async def main() -> None:
        client = await Client.open(ws_url(server), server.read_key)
        await client.send("unsubscribe", {"streams": ["analytics_update"]})
        await client.subscribe(["event"])
        sent: list[str] = []
        for i in range(requests):
            body = [event(f"t{i}"), event(f"t{i}")]
            sent += [e["eventId"] for e in body]
            await asyncio.to_thread(post_events, server, body)
        received: list[str] = []
        dropped = 0
        while len(received) + dropped < len(sent):
            message = await client.recv()
            if message["type"] == "event":
                received += [e["eventId"] for e in message["payload"]["events"]]
            elif message["type"] == "dropped":
                dropped += message["payload"]["dropped"]
        assert len(received) + dropped == len(sent)
        assert dropped > 0
        assert received == [i for i in sent if i in set(received)]
        assert received[-2:] == sent[-2:]  # the newest batch always gets through
        frames = [m for m in client.seen if m["type"] == "event"]
        assert len(frames) < requests  # batches were merged into fewer frames
        await client.close()

    asyncio.run(main())


# -- scale ------------------------------------------------------------------------------


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.mark.slow
def test_a_thousand_concurrent_connections_all_get_the_config_update_and_the_events(
    server_factory: ServerFactory,
) -> None:
    _raise_fd_limit(4096)
    server = server_factory(env={"INNKT_RATE_LIMIT_PER_SECOND": "0"})
    n = 1000

    async def main() -> None:
        url = ws_url(server)
        clients: list[Client] = []
        for start in range(0, n, 100):
            clients += await asyncio.gather(
                *(Client.open(url, server.read_key) for _ in range(start, min(n, start + 100)))
            )
        health = await asyncio.to_thread(health_of, server)
        assert health["realtime"]["connections"] == n
        stored = put_config(server, batchSize=123)
        updates = await asyncio.gather(*(c.expect("config_update") for c in clients))
        assert all(u["payload"]["config"] == stored for u in updates)

        # The event stream: the dispatcher sends a batch directly to a few hundred
        # subscribers per turn of the event loop, then comes back for the others.
        async def subscribe(client: Client) -> None:
            mid = await client.send("unsubscribe", {"streams": ["analytics_update"]})
            await client.expect("subscribed", lambda m: m["id"] == mid)
            await client.subscribe(["event"])

        await asyncio.gather(*(subscribe(c) for c in clients))
        before = (await asyncio.to_thread(health_of, server))["realtime"]["framesSentDirect"]
        batch = [event("login"), event("view")]
        await asyncio.to_thread(post_events, server, batch)
        got = await asyncio.gather(*(c.events(2) for c in clients))
        assert all(g == batch for g in got)
        after = (await asyncio.to_thread(health_of, server))["realtime"]["framesSentDirect"]
        assert after - before == n
        for client in clients:
            seqs = [m["seq"] for m in client.seen]
            assert seqs == list(range(1, len(seqs) + 1))
        await asyncio.gather(*(c.close() for c in clients))

    asyncio.run(main())
    # the server noticed every close
    deadline = time.monotonic() + TIMEOUT
    while True:
        health = health_of(server)
        if health["realtime"]["connections"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert health["realtime"]["connections"] == 0
