"""The uvicorn and websockets internals the hub's fast send path relies on.

``server/_ws_protocol.py`` subclasses uvicorn's sans-I/O WebSocket protocol and
frames messages beside websockets. None of that is public API, so an upgrade
must fail here, in CI, and a server that meets a drifted uvicorn anyway must
fall back to uvicorn's own protocol (plain ASGI sends) with one warning.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

from innkt_analytics.server._lifecycle import GracefulWebSocketProtocol
from innkt_analytics.server._ws_protocol import (
    CONN_ATTRIBUTES,
    CONN_METHODS,
    FALLBACK_PROTOCOL,
    INSTANCE_ATTRIBUTES,
    LATER_ATTRIBUTES,
    METHODS,
    FastSendProtocol,
    contract_problems,
    websocket_protocol,
)
from tests._server import ServerProcess
from tests.conftest import ServerFactory
from tests.test_realtime_server import (
    Client,
    event,
    fresh_project,
    health_of,
    post_events,
    ws_url,
)


def test_the_installed_uvicorn_and_websockets_meet_the_contract() -> None:
    assert contract_problems(FastSendProtocol) == []
    assert contract_problems(GracefulWebSocketProtocol) == []
    assert websocket_protocol(GracefulWebSocketProtocol) is GracefulWebSocketProtocol


def _touched(cls: type) -> tuple[set[str], set[str]]:
    """Names ``cls``'s own code reads on ``self`` and on ``self.conn``/``conn``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    on_self: set[str] = set()
    on_conn: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        target = node.value
        if isinstance(target, ast.Name) and target.id == "self":
            on_self.add(node.attr)
        elif (isinstance(target, ast.Name) and target.id == "conn") or (
            isinstance(target, ast.Attribute)
            and target.attr == "conn"
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
        ):
            on_conn.add(node.attr)
        elif isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "super":
            on_self.add(node.attr)
    # "scope" is read with getattr, so the walk above does not see it
    if 'getattr(self, "scope"' in inspect.getsource(cls):
        on_self.add("scope")
    return on_self, on_conn


@pytest.mark.parametrize("cls", [FastSendProtocol, GracefulWebSocketProtocol])
def test_the_contract_lists_everything_the_subclasses_touch(cls: type) -> None:
    # A new use of uvicorn's or websockets' internals must be added to the contract,
    # or the check would pass while the fast path depends on something unchecked.
    on_self, on_conn = _touched(cls)
    own = {name for name in vars(FastSendProtocol) if name not in METHODS} | {
        name for name in vars(cls) if name not in METHODS
    }
    checked = set(INSTANCE_ATTRIBUTES) | set(LATER_ATTRIBUTES) | set(METHODS)
    assert on_self - own - checked == set()
    overridden = {name for name in vars(cls) if callable(vars(cls)[name])}
    assert overridden - {"send_text_now"} <= set(METHODS)
    assert on_conn <= set(CONN_ATTRIBUTES) | set(CONN_METHODS)


class _Drifted(GracefulWebSocketProtocol):
    """What a uvicorn release that renamed ``close_sent`` would look like to us."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.close_sent


class _Reframed(GracefulWebSocketProtocol):
    """What a uvicorn release that made ``writable`` something else would look like."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writable = asyncio.Lock()  # type: ignore[assignment]


def test_a_drifted_protocol_fails_the_contract() -> None:
    assert any("close_sent" in p for p in contract_problems(_Drifted))
    assert any("writable" in p for p in contract_problems(_Reframed))


def test_start_up_falls_back_to_uvicorns_protocol_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="innkt_analytics.server"):
        assert websocket_protocol(_Drifted) == FALLBACK_PROTOCOL
        assert websocket_protocol(_Drifted) == FALLBACK_PROTOCOL
    warnings = [r for r in caplog.records if "close_sent" in r.getMessage()]
    assert len(warnings) == 1


# A uvicorn release that renamed handle_connect's parameter: harmless to uvicorn
# (it passes the request positionally), but outside what the fast path was tested with.
_SITECUSTOMIZE = """
import uvicorn.protocols.websockets.websockets_sansio_impl as impl

_handle_connect = impl.WebSocketsSansIOProtocol.handle_connect


def handle_connect(self, request):
    _handle_connect(self, request)


impl.WebSocketsSansIOProtocol.handle_connect = handle_connect
"""


def test_a_server_meeting_a_drifted_uvicorn_serves_realtime_through_asgi(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    drift = tmp_path / "drift"
    drift.mkdir()
    (drift / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    server: ServerProcess = server_factory(env={"PYTHONPATH": str(drift)})
    keys = fresh_project(server, "write", "read")

    async def main() -> list[dict[str, Any]]:
        client = await Client.open(ws_url(server), keys["read"])
        await client.subscribe(["event"])
        sent = [event("login"), event("buy")]
        post_events(server, sent, key=keys["write"])
        got = await client.events(len(sent))
        await client.close()
        assert got == sent
        return got

    asyncio.run(main())
    assert health_of(server)["realtime"]["framesSentDirect"] == 0
    log = server.log.read_text()
    assert log.count("differ from the versions tested") == 1, log
