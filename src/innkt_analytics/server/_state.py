"""Per-process server state shared by the route handlers, and request helpers.

Handlers reach it with ``state_of(request)``; it is the one object the app holds
(``app_state(app)``), and the subsystems ``build_app`` wires in are typed fields
of its ``parts``, not string keys of ``app.state``. Helpers here turn requests
into principals (auth, scopes, rate limits) and errors into the one JSON error body.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
from litestar import Litestar, Request, Response
from litestar.connection import ASGIConnection

from innkt_analytics.server._auth import KeyCache, KeyRefused
from innkt_analytics.server._metrics import ServerMetrics
from innkt_analytics.server._ratelimit import RateLimiter
from innkt_analytics.server._settings import ServerSettings
from innkt_analytics.server._suppress import Suppressions
from innkt_analytics.server.storage import KeyRecord, Storage
from innkt_analytics.shared._exceptions import InnktError
from innkt_analytics.shared._protocol import ClientConfig, ErrorBody, Rejection, ValidEvent
from innkt_analytics.shared._version import __version__

if TYPE_CHECKING:  # each of these imports this module
    from innkt_analytics.server._alerts import AlertService
    from innkt_analytics.server._dashboard import Asset
    from innkt_analytics.server._kv import KVStore
    from innkt_analytics.server._lifecycle import Lifecycle
    from innkt_analytics.server._metrics_export import MetricsExporter
    from innkt_analytics.server._realtime import Hub

__all__ = [
    "ApiError",
    "IngestObserver",
    "RateMeter",
    "ServerParts",
    "ServerState",
    "app_state",
    "authenticate",
    "authorize",
    "error_response",
    "required",
    "state_of",
    "take_token",
]

JSON = "application/json"

T = TypeVar("T")


class ApiError(InnktError):
    """Raised by handlers; rendered as ``ErrorBody`` with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        rejected: list[Rejection] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.rejected = rejected


def error_response(
    status: int,
    code: str,
    message: str,
    retry_after: float | None = None,
    rejected: list[Rejection] | None = None,
) -> Response[bytes]:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    body = ErrorBody(error=code, message=message, retry_after=retry_after, rejected=rejected)
    return Response(msgspec.json.encode(body), status_code=status, media_type=JSON, headers=headers)


class IngestObserver(Protocol):
    """Told about newly stored events and config changes (the real-time hub is one)."""

    def on_events(self, project: str, events: list[ValidEvent]) -> None: ...

    def on_config(self, project: str, config: ClientConfig) -> None: ...


class RateMeter:
    """Events per second over the last minute, in one-second buckets."""

    def __init__(self, window: int = 60) -> None:
        self._window = window
        self._buckets: collections.deque[list[int]] = collections.deque()

    def add(self, n: int, now: float | None = None) -> None:
        second = int(time.monotonic() if now is None else now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, n])
            while self._buckets and self._buckets[0][0] <= second - self._window:
                self._buckets.popleft()

    def rate(self, now: float | None = None) -> float:
        second = int(time.monotonic() if now is None else now)
        total = sum(n for s, n in self._buckets if s > second - self._window)
        return total / self._window


@dataclass
class ServerParts:
    """The subsystems ``build_app`` wires in, each set once by its ``install_*`` hook.

    None means this app was built without it (``create_app`` alone); ``required``
    turns that into a clear ``LookupError`` where a part is needed.
    """

    #: documents (dashboards, alert rules) in the events database
    kv: KVStore | None = None
    hub: Hub | None = None
    alerts: AlertService | None = None
    lifecycle: Lifecycle | None = None
    metrics: MetricsExporter | None = None
    #: the dashboard page's files by name
    assets: dict[str, Asset] | None = None


def required(part: T | None, name: str) -> T:
    """``part``, or ``LookupError`` naming the ``install_*`` hook that was not run."""
    if part is None:
        raise LookupError(f"{name} was not run on this app")
    return part


@dataclass
class ServerState:
    settings: ServerSettings
    storage: Storage
    keys: KeyCache
    limiter: RateLimiter
    started: float = field(default_factory=time.monotonic)
    ingest_meter: RateMeter = field(default_factory=RateMeter)
    observers: list[IngestObserver] = field(default_factory=list)
    version: str = __version__
    #: extra health sections contributed by subsystems (retention, backups, realtime)
    health_sections: dict[str, Callable[[], Awaitable[Any]]] = field(default_factory=dict)
    #: the last retention run: {"ranAt": epoch seconds, "deleted": n}
    retention_last: dict[str, Any] | None = None
    #: the subsystems build_app wires in (real-time hub, alerts, dashboard, ...)
    parts: ServerParts = field(default_factory=ServerParts)
    #: subsystems not yet given a typed field in ``parts``
    extensions: dict[str, object] = field(default_factory=dict)
    #: counters for /metrics (see _metrics_export)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    #: the OpenAPI document, encoded at its first request (_openapi.document_bytes)
    openapi_json: bytes | None = None
    #: users deleted with their data: their new events are refused (_suppress)
    suppressions: Suppressions = field(init=False)

    def __post_init__(self) -> None:
        self.suppressions = Suppressions(self.storage, self.settings.key_cache_seconds)

    def notify_events(self, project: str, events: list[ValidEvent]) -> None:
        for observer in self.observers:
            observer.on_events(project, events)

    def notify_config(self, project: str, config: ClientConfig) -> None:
        for observer in self.observers:
            observer.on_config(project, config)


def app_state(app: Litestar) -> ServerState:
    """The ``ServerState`` ``create_app`` built ``app`` with."""
    state: ServerState = app.state.innkt
    return state


def state_of(connection: ASGIConnection[Any, Any, Any, Any]) -> ServerState:
    return app_state(connection.app)


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    auth = connection.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return connection.headers.get("x-api-key")


async def authenticate(
    request: Request[Any, Any, Any], scope: str | None, *, rate_limited: bool = True
) -> KeyRecord:
    """The key record for this request, which must carry ``scope`` (None: any scope).

    ``admin`` implies every scope. Raises ``ApiError`` 401, 403 or 429.
    """
    return await authorize(
        state_of(request), presented_key(request), scope, rate_limited=rate_limited
    )


async def authorize(
    state: ServerState,
    presented: str | None,
    scope: str | None,
    *,
    rate_limited: bool = True,
    missing: str = "missing API key (Authorization: Bearer <key>)",
) -> KeyRecord:
    """Check a key however it was presented (header, Basic auth, body) and take a
    rate-limit token. Raises ``ApiError`` 401 (``missing`` when there is no key),
    403 or 429.
    """
    if not presented:
        raise ApiError(401, "unauthorized", missing)
    try:
        record = await state.keys.check(presented)
    except KeyRefused as refused:
        raise ApiError(401, refused.code, refused.message) from None
    check_scope(record, scope)
    if rate_limited:
        wait = await take_token(state, record.key_id)
        if wait:
            raise ApiError(429, "rate_limited", "too many requests", retry_after=wait)
    return record


async def take_token(state: ServerState, key_id: str) -> float:
    """One admission (a request, a WebSocket handshake) of ``key_id``: 0.0 when
    allowed, else the Retry-After in seconds. Counted for /metrics."""
    # The same limiter for every door: with INNKT_RATE_LIMIT_STORE it is the Redis
    # bucket all instances share.
    wait = await state.limiter.acquire(key_id, time.monotonic())
    state.metrics.rate_limit["limited" if wait else "allowed"] += 1
    return wait


def check_scope(record: KeyRecord, scope: str | None) -> None:
    if scope is not None and scope not in record.scopes and "admin" not in record.scopes:
        raise ApiError(403, "forbidden", f"this key lacks the {scope!r} scope")
