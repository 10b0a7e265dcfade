"""The Litestar application: routes, error rendering, health, OpenAPI, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, head
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.types import ControllerRouterHandler

from innkt_analytics.server._auth import KeyCache
from innkt_analytics.server._backups import BackupScheduler, sqlite_path
from innkt_analytics.server._export import export_events
from innkt_analytics.server._ingest import ingest_batch, ingest_event
from innkt_analytics.server._keys_api import create_key, list_keys, revoke_key, rotate_key_route
from innkt_analytics.server._openapi import DocumentPlugin, document_bytes
from innkt_analytics.server._privacy import delete_user, export_user, list_audit
from innkt_analytics.server._query import get_config, list_events, put_config, stats
from innkt_analytics.server._ratelimit import RateLimiter
from innkt_analytics.server._ratelimit_redis import use_shared_rate_limits
from innkt_analytics.server._settings import ServerSettings, storage_for
from innkt_analytics.server._state import (
    JSON,
    ApiError,
    ServerState,
    error_response,
    presented_key,
    state_of,
)
from innkt_analytics.server.insights._cache import data_changed
from innkt_analytics.server.insights._routes import insights
from innkt_analytics.server.storage import Storage, StorageStatus
from innkt_analytics.shared._exceptions import StorageError
from innkt_analytics.shared._protocol import ProtocolError
from innkt_analytics.shared._version import __version__

__all__ = ["create_app"]

log = logging.getLogger("innkt_analytics.server")


@get("/v1/health", summary="Liveness; details with a read or admin key", tags=["health"])
async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    """``{"status": "ok"}`` for anyone; 503 with the reason when storage is unusable."""
    state = state_of(request)
    storage = await state.storage.health()
    ok = storage.status is StorageStatus.OK
    body: dict[str, Any] = {"status": "ok" if ok else "degraded"}
    if not ok:
        body["storage"] = {"status": storage.status.value, "reason": storage.reason}
    presented = presented_key(request)
    record = await state.keys.lookup(presented) if presented else None
    if record is not None:  # any valid key may know the version (SDK health checks)
        body["version"] = state.version
    if record is not None and record.scopes & {"read", "admin"}:
        body.update(
            uptimeSeconds=round(time.monotonic() - state.started, 3),
            storage={
                "backend": storage.backend,
                "status": storage.status.value,
                "reason": storage.reason,
                "sizeBytes": storage.size_bytes,
                "events": storage.events,
                **storage.extra,
            },
            ingestRatePerSecond=round(state.ingest_meter.rate(), 3),
        )
        for name, section in state.health_sections.items():
            body[name] = await section()
    headers = {} if ok else {"Retry-After": str(round(state.settings.unavailable_retry_after))}
    return Response(
        msgspec.json.encode(body),
        status_code=200 if ok else 503,
        media_type=JSON,
        headers=headers,
    )


@head("/v1/health", include_in_schema=False)
async def health_head(request: Request[Any, Any, Any]) -> Response[None]:
    """For load balancers that probe with HEAD: 200, or 503 when storage is unusable."""
    state = state_of(request)
    ok = (await state.storage.health()).status is StorageStatus.OK
    return Response(None, status_code=200 if ok else 503)


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(document_bytes(request.app), media_type=JSON)


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[bytes]:
    return error_response(exc.status, exc.code, exc.message, exc.retry_after, exc.rejected)


def _protocol_error(_: Request[Any, Any, Any], exc: ProtocolError) -> Response[bytes]:
    # The sans-I/O core says which 4xx a body deserves; handlers let it through.
    return error_response(exc.status, exc.code, exc.message)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    code = {
        400: "bad_request",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
    }.get(exc.status_code, "http_error")
    if isinstance(exc, ValidationException):
        code = "invalid_parameter"
    return error_response(exc.status_code, code, str(exc.detail))


def _storage_error(request: Request[Any, Any, Any], exc: StorageError) -> Response[bytes]:
    retry = state_of(request).settings.unavailable_retry_after
    return error_response(503, "storage_unavailable", str(exc), retry)


def _internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


async def enforce_retention(state: ServerState) -> dict[str, int]:
    """Delete each project's events older than its retention; returns deleted per project.

    A project's ``retentionDays`` config wins; 0 there means the server default
    (``INNKT_RETENTION_DAYS``); 0 both places keeps events forever.
    """
    storage = state.storage
    now_ms = time.time_ns() // 1_000_000
    deleted: dict[str, int] = {}
    projects = sorted({k.project for k in await storage.list_keys()})
    for project in projects:
        config = await storage.get_config(project)
        days = (config.retention_days if config else 0) or state.settings.retention_days
        if days > 0:
            deleted[project] = await storage.delete_events_before(
                project, now_ms - days * 86_400_000
            )
            if deleted[project]:
                data_changed(state, project)
    state.retention_last = {"ranAt": time.time(), "deleted": deleted}
    return deleted


async def _retention_loop(state: ServerState) -> None:
    while True:
        try:
            await enforce_retention(state)
        except StorageError as exc:
            log.warning("retention failed: %s", exc)
        await asyncio.sleep(state.settings.retention_interval)


async def _key_use_loop(state: ServerState) -> None:
    while True:
        await asyncio.sleep(state.settings.key_use_interval)
        try:
            await state.keys.flush_use()
        except StorageError as exc:
            log.warning("recording API key use failed: %s", exc)


def _retention_health(state: ServerState) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def section() -> dict[str, Any]:
        return {
            "defaultDays": state.settings.retention_days,
            "intervalSeconds": state.settings.retention_interval,
            "last": state.retention_last,
        }

    return section


def create_app(
    settings: ServerSettings,
    storage: Storage | None = None,
    *,
    extra_handlers: Sequence[ControllerRouterHandler] = (),
    on_state: Sequence[Callable[[ServerState, Litestar], None]] = (),
) -> Litestar:
    """Build the application. ``storage`` defaults to ``storage_for(settings)``.

    ``extra_handlers`` and ``on_state`` let subsystems (real-time hub, dashboard)
    add routes and hook into the shared state without this module knowing them.
    """
    store = storage if storage is not None else storage_for(settings)
    state = ServerState(
        settings=settings,
        storage=store,
        keys=KeyCache(store, settings.key_cache_seconds),
        limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await store.open()
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(_key_use_loop(state))]
        if settings.retention_interval > 0:
            tasks.append(asyncio.create_task(_retention_loop(state)))
        if settings.backup_interval > 0:
            tasks.append(asyncio.create_task(backups.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(StorageError):
                await state.keys.flush_use()  # the uses since the last periodic write
            await store.close()

    backups = BackupScheduler(state)
    state.health_sections["retention"] = _retention_health(state)
    if settings.backup_interval > 0:
        sqlite_path(settings)  # fail at start, not an hour later, for a PostgreSQL URL
        state.health_sections["backups"] = backups.health

    app = Litestar(
        route_handlers=[
            health,
            health_head,
            ingest_batch,
            ingest_event,
            list_events,
            stats,
            insights,
            get_config,
            put_config,
            export_events,
            create_key,
            list_keys,
            revoke_key,
            rotate_key_route,
            delete_user,
            export_user,
            list_audit,
            openapi_json,
            *extra_handlers,
        ],
        lifespan=[lifespan],
        exception_handlers={
            ApiError: _api_error,
            ProtocolError: _protocol_error,
            HTTPException: _http_error,
            StorageError: _storage_error,
            Exception: _internal_error,
        },
        # Only the JSON document: Litestar's HTML viewers load their assets from a CDN.
        openapi_config=OpenAPIConfig(
            title="innkt-analytics",
            version=__version__,
            path="/schema",
            render_plugins=[DocumentPlugin()],
        ),
        request_max_body_size=settings.max_body_bytes,
        debug=False,
    )
    app.state.innkt = state
    use_shared_rate_limits(state, app)  # INNKT_RATE_LIMIT_STORE: one bucket for all instances
    for hook in on_state:
        hook(state, app)
    return app
