"""The server's life for orchestrators: liveness, readiness, graceful shutdown.

Phases (``Phase``), and what each answers::

    STARTING --startup--> SERVING --SIGTERM--> DRAINING --delay--> STOPPING
                                 \\--SIGTERM (no drain delay)-------^

* ``GET /v1/health/live``: 200 while the process's event loop answers at all;
  an orchestrator restarts the process when it does not. It never looks at
  storage: a database outage is not cured by restarting the servers.
* ``GET /v1/health/ready``: 200 only while SERVING *and* storage is usable;
  503 with the reason otherwise, so a load balancer sends traffic elsewhere.
* On SIGTERM the instance reports not ready at once, keeps serving for
  ``shutdown_drain_seconds`` (0 by default) so load balancers notice, then stops
  accepting, lets in-flight requests finish (their acknowledgements included),
  closes WebSockets with 1001 (going away) so clients reconnect to another
  instance, and stops the storage writer — all within ``shutdown_timeout``.
  A second signal during the drain delay ends the delay.
"""

from __future__ import annotations

import enum
import time
from types import FrameType
from typing import Any, Final

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get

from innkt_analytics.server._state import JSON, ServerState, required, state_of
from innkt_analytics.server._ws_protocol import FastSendProtocol
from innkt_analytics.server.storage import StorageStatus
from innkt_analytics.shared._exceptions import ConnectionStateError

__all__ = [
    "LIFECYCLE_HANDLERS",
    "GracefulServer",
    "GracefulWebSocketProtocol",
    "Lifecycle",
    "Phase",
    "install_lifecycle",
    "lifecycle_of",
]

#: RFC 6455 "going away": the endpoint is leaving; clients reconnect (elsewhere)
GOING_AWAY: Final = 1001


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPING = "stopping"


_ALLOWED: Final = {
    Phase.STARTING: {Phase.SERVING, Phase.STOPPING},
    Phase.SERVING: {Phase.DRAINING, Phase.STOPPING},
    Phase.DRAINING: {Phase.STOPPING},
    Phase.STOPPING: set[Phase](),
}


class Lifecycle:
    """The instance's phase; an illegal transition raises ``ConnectionStateError``."""

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.changed_at = time.monotonic()

    def to(self, phase: Phase) -> None:
        if phase is self.phase:
            return
        if phase not in _ALLOWED[self.phase]:
            raise ConnectionStateError(f"server phase {self.phase.value} -> {phase.value}")
        self.phase = phase
        self.changed_at = time.monotonic()

    async def started(self) -> None:
        self.to(Phase.SERVING)

    async def stopping(self) -> None:
        self.to(Phase.STOPPING)


def lifecycle_of(state: ServerState) -> Lifecycle:
    return required(state.parts.lifecycle, "install_lifecycle")


def install_lifecycle(state: ServerState, app: Litestar) -> None:
    """``create_app`` ``on_state`` hook: the phase, moved by startup and shutdown."""
    lifecycle = Lifecycle()
    state.parts.lifecycle = lifecycle
    app.on_startup.append(lifecycle.started)
    app.on_shutdown.insert(0, lifecycle.stopping)


def _json(body: dict[str, Any], status: int) -> Response[bytes]:
    return Response(msgspec.json.encode(body), status_code=status, media_type=JSON)


@get("/v1/health/live", summary="Liveness: the process answers", tags=["health"])
async def live(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Always ``200 {"status": "alive", "phase": …}`` while the event loop runs."""
    phase = lifecycle_of(state_of(request)).phase
    return _json({"status": "alive", "phase": phase.value}, 200)


@get("/v1/health/ready", summary="Readiness: send traffic here", tags=["health"])
async def ready(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 while serving with usable storage; 503 with ``status`` ``starting``,
    ``draining``, ``stopping`` or ``storage_unavailable`` (and ``reason``) otherwise."""
    state = state_of(request)
    phase = lifecycle_of(state).phase
    if phase is not Phase.SERVING:
        return _json({"status": phase.value}, 503)
    health = await state.storage.health()
    if health.status is not StorageStatus.OK:
        body = {"status": "storage_unavailable", "reason": health.reason or health.status.value}
        return _json(body, 503)
    return _json({"status": "ready"}, 200)


LIFECYCLE_HANDLERS: Final = (live, ready)


class GracefulWebSocketProtocol(FastSendProtocol):
    """Closes open WebSockets with 1001 at shutdown (uvicorn sends 1012)."""

    def shutdown(self) -> None:
        if self.handshake_complete and self.initial_response is None and not self.close_sent:
            self.stop_keepalive()
            self.queue.put_nowait({"type": "websocket.disconnect", "code": GOING_AWAY})
            self.conn.send_close(GOING_AWAY, "server shutting down")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
            return
        super().shutdown()


class GracefulServer(uvicorn.Server):
    """``uvicorn.Server`` that reports DRAINING on the first SIGTERM/SIGINT and keeps
    serving for ``drain_seconds`` before its graceful shutdown starts."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_seconds: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_seconds = drain_seconds
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.lifecycle.phase is Phase.SERVING:
            self.lifecycle.to(Phase.DRAINING)
            if self.drain_seconds > 0:
                self._drain_until = time.monotonic() + self.drain_seconds
                return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self._drain_until = None
            self.should_exit = True
        return await super().on_tick(counter)
