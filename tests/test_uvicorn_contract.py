"""What of uvicorn's internals the server subclasses rely on, checked by name and signature.

``server/_connguard.py`` subclasses uvicorn's ``HttpToolsProtocol`` (connection limits) and
``server/_ws_protocol.py`` its ``WebSocketsSansIOProtocol`` (the hub's synchronous send).
Neither class is public API, so a uvicorn upgrade that renames or reshapes what they use
must fail here, by name, rather than at run time. ``tests/test_ws_protocol_contract.py``
checks the WebSocket side's attribute types and frame bytes (``contract_problems``, which
``serve`` also runs); this file pins both sides' method signatures, the HTTP side's
attributes on a real connection, and the version bounds the package declares.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import socket
import tomllib
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httptools
import pytest
import uvicorn
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from innkt_analytics.server._connguard import ConnectionLimits, guarded_protocol
from innkt_analytics.server._ws_protocol import METHODS

ROOT = Path(__file__).resolve().parent.parent

#: HttpToolsProtocol methods _connguard overrides or calls: their parameters after self
#: (name, kind, default), as uvicorn defines them and as the overrides call super()
HTTP_METHODS: dict[str, tuple[str, ...]] = {
    "connection_made": ("transport",),
    "connection_lost": ("exc",),
    "data_received": ("data",),
    "on_headers_complete": (),
    "on_message_complete": (),
    "on_response_complete": (),
    "send_400_response": ("msg",),
    "handle_websocket_upgrade": (),
    "_unset_keepalive_if_required": (),
}
#: WebSocketsSansIOProtocol methods _ws_protocol overrides or calls
WS_METHODS: dict[str, tuple[str, ...]] = {
    "handle_connect": ("event",),
    "send": ("message",),
    "shutdown": (),
    "stop_keepalive": (),
    "connection_made": ("transport",),
}


def _signature(method: Callable[..., Any]) -> tuple[str, ...]:
    """Parameter names after ``self``; a new required parameter shows up as a difference."""
    params = list(inspect.signature(method).parameters.values())[1:]
    return tuple(
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


@pytest.mark.parametrize(
    ("owner", "methods"),
    [(HttpToolsProtocol, HTTP_METHODS), (WebSocketsSansIOProtocol, WS_METHODS)],
    ids=["HttpToolsProtocol", "WebSocketsSansIOProtocol"],
)
def test_the_methods_we_override_or_call_keep_their_signatures(
    owner: type, methods: dict[str, tuple[str, ...]]
) -> None:
    found = {name: _signature(getattr(owner, name)) for name in methods if hasattr(owner, name)}
    assert found == methods, f"uvicorn {uvicorn.__version__}: {owner.__name__} changed"


def test_the_ws_table_here_is_the_one_the_server_checks() -> None:
    assert dict(METHODS) == WS_METHODS
    assert inspect.iscoroutinefunction(WebSocketsSansIOProtocol.send)


def test_a_callback_exception_still_reaches_send_400_response() -> None:
    # _connguard stops parsing an oversized head by raising in on_headers_complete:
    # httptools wraps it in HttpParserCallbackError, which uvicorn's data_received
    # answers with send_400_response (overridden to send the 431).
    assert issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError)
    source = inspect.getsource(HttpToolsProtocol.data_received)
    assert re.search(r"except httptools\.HttpParserError:.*?self\.send_400_response", source, re.S)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _exchange(protocol_class: type[HttpToolsProtocol], request: bytes) -> tuple[Any, bytes]:
    """One request over a real socket pair through ``protocol_class``; (protocol, answer)."""
    loop = asyncio.get_running_loop()
    config = uvicorn.Config(_app, log_config=None, lifespan="off")
    config.load()
    protocol = protocol_class(config, ServerState(), {}, _loop=loop)
    server_end, client_end = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, server_end)
    reader, writer = await asyncio.open_connection(sock=client_end)
    writer.write(request)
    answer = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    transport.close()
    await asyncio.sleep(0)  # let connection_lost run before the loop closes
    return protocol, answer


def test_the_http_attributes_we_read_are_there_on_a_real_connection() -> None:
    protocol, answer = asyncio.run(
        _exchange(HttpToolsProtocol, b"GET /probe HTTP/1.1\r\nhost: x\r\n\r\n")
    )
    assert answer.startswith(b"HTTP/1.1 204 ")
    assert protocol.url == b"/probe"
    assert (b"host", b"x") in protocol.headers
    assert isinstance(protocol.logger, logging.Logger)
    assert isinstance(protocol.loop, asyncio.AbstractEventLoop)
    assert isinstance(protocol.transport, asyncio.Transport)
    assert isinstance(protocol.flow, FlowControl)
    assert callable(protocol.flow.resume_reading)
    cycle = protocol.cycle
    assert (cycle.response_started, cycle.response_complete, cycle.disconnected) == (
        True,
        True,
        False,
    )
    assert isinstance(cycle.message_event, asyncio.Event)
    # uvicorn arms its keep-alive timer after a response; the guard replaces it
    assert hasattr(protocol, "timeout_keep_alive_task")


def test_the_guarded_protocol_answers_an_oversized_head_through_that_path() -> None:
    limits = ConnectionLimits(
        max_connections=10,
        idle_timeout=30,
        header_timeout=30,
        body_timeout=30,
        max_header_bytes=200,
    )
    head = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 400 + b"\r\n\r\n"
    _, answer = asyncio.run(_exchange(guarded_protocol(limits), head))
    assert answer.startswith(b"HTTP/1.1 431 ")


def _bound(name: str) -> SpecifierSet:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirement = next(
        r for r in extras["optional-dependencies"]["server"] if re.match(rf"{name}\b", r)
    )
    return SpecifierSet(re.sub(rf"^{name}(\[[^\]]*\])?", "", requirement))


def _locked(name: str) -> Version:
    lock = (ROOT / "requirements" / "test.txt").read_text()
    match = re.search(rf"^{name}==(\S+)", lock, re.M)
    assert match, f"{name} is not locked in requirements/test.txt"
    return Version(match.group(1))


@pytest.mark.parametrize(
    ("name", "installed"),
    [("uvicorn", uvicorn.__version__), ("websockets", version("websockets"))],
)
def test_the_declared_bounds_are_the_versions_tested(name: str, installed: str) -> None:
    # The server extra bounds uvicorn and websockets to the releases this suite runs on:
    # the locked (CI) version and the installed one are inside, and the upper bound is
    # the very next release line, so raising it means changing the lock and passing here.
    bound, locked = _bound(name), _locked(name)
    assert locked in bound
    assert Version(installed) in bound
    (upper,) = [s for s in bound if s.operator == "<"]
    limit = Version(upper.version)
    step = (locked.major, locked.minor + 1) if locked.major == 0 else (locked.major + 1, 0)
    assert (limit.major, limit.minor) == step, f"{name}: {bound} for locked {locked}"
