"""The live dashboard: the page at ``/``, its static assets, and saved dashboards.

The page (``static/``) is plain HTML, CSS and JavaScript modules shipped in the
package; nothing is fetched from elsewhere at run time, and a strict
Content-Security-Policy says so. It signs in with a read key (kept in
``sessionStorage``), reads the REST API with the key in ``Authorization`` and
follows ``/v1/realtime`` with the ``bearer.<key>`` subprotocol.

Dashboards (which panels, in which order, how wide) are saved per project:

* ``GET /v1/dashboards`` (read): every saved dashboard of the key's project;
* ``GET /v1/dashboards/{name}`` (read);
* ``PUT /v1/dashboards/{name}`` (read or admin): create or replace; an
  ``If-Match: "<version>"`` header makes it fail with 412 when someone else
  saved in between;
* ``DELETE /v1/dashboards/{name}`` (read or admin).

An ``insight`` panel carries an ``InsightSpec``: the body of an insights query (without
its dates) and a relative range; it is validated as that query when saved.

A read key may save layouts on purpose: the people who look at dashboards are
the ones who arrange them, and a layout discloses nothing a read key cannot
already read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Litestar, Request, Response, delete, get, put

from innkt_analytics.server._ingest import read_json_body
from innkt_analytics.server._kv import kv_of
from innkt_analytics.server._state import (
    JSON,
    ApiError,
    ServerState,
    authenticate,
    required,
    state_of,
)

__all__ = [
    "DASHBOARD_HANDLERS",
    "INSIGHT_RANGES",
    "PANEL_KINDS",
    "Dashboard",
    "InsightSpec",
    "Panel",
    "insight_range",
    "install_dashboard",
]

NAMESPACE: Final = "dashboards"
MAX_DASHBOARDS_PER_PROJECT: Final = 50
STATIC_DIR: Final = Path(__file__).parent / "static"
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

PanelKind = Literal[
    "events_per_minute",
    "active_sessions",
    "top_event_types",
    "event_stream",
    "ingest_health",
    "stats_range",
    "alerts",
    "insight",
]
PANEL_KINDS: Final = PanelKind.__args__  # type: ignore[attr-defined]

OptionValue = str | int | float | bool | None
InsightKind = Literal["trends", "funnels", "retention", "paths", "lifecycle", "stickiness"]
#: an insight panel's range, relative to when it is shown: (unit, how many)
INSIGHT_RANGES: Final[dict[str, tuple[str, int]]] = {
    "24h": ("hour", 24),
    "7d": ("day", 7),
    "14d": ("day", 14),
    "30d": ("day", 30),
    "90d": ("day", 90),
}
InsightRange = Literal["24h", "7d", "14d", "30d", "90d"]


class InsightSpec(msgspec.Struct, rename="camel", kw_only=True):
    """What an ``insight`` panel asks: a query of ``kind`` over the last ``range``.

    ``query`` is the body of ``POST /v1/insights/{kind}`` without ``dateFrom`` and
    ``dateTo``: the page fills them in from ``range`` each time it runs the query
    (whole hours for 24h, whole days of the query's ``timezone`` otherwise).
    """

    kind: InsightKind
    range: InsightRange = "30d"
    query: dict[str, Any] = {}


class Panel(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """One panel: what it shows, its title, how many of the two grid columns it spans."""

    kind: PanelKind
    title: Annotated[str, msgspec.Meta(max_length=100)] = ""
    width: Literal[1, 2] = 1
    options: Annotated[
        dict[Annotated[str, msgspec.Meta(max_length=64)], OptionValue],
        msgspec.Meta(max_length=20),
    ] = {}
    #: only on ``insight`` panels, which need it
    insight: InsightSpec | None = None


class Dashboard(msgspec.Struct, rename="camel", kw_only=True):
    """A saved dashboard; ``name``, ``version`` and ``updatedAt`` are set by the server."""

    title: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    panels: Annotated[list[Panel], msgspec.Meta(max_length=24)]
    name: str = ""
    version: int = 0
    updated_at: str | None = None


_decoder: Final = msgspec.json.Decoder(Dashboard)
_encoder: Final = msgspec.json.Encoder()


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(_encoder.encode(body), status_code=status, media_type=JSON, headers=headers)


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ApiError(
            400,
            "invalid_parameter",
            "name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def insight_range(spec: InsightSpec, now: dt.datetime) -> tuple[str, str]:
    """``dateFrom`` and ``dateTo`` of ``spec`` shown at ``now`` (a wall-clock time),
    as the page computes them: ending with the hour or the day under way."""
    unit, count = INSIGHT_RANGES[spec.range]
    if unit == "hour":
        end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
        start = end - dt.timedelta(hours=count)
        return start.strftime("%Y-%m-%dT%H:%M:%S"), end.strftime("%Y-%m-%dT%H:%M:%S")
    end_day = now.date() + dt.timedelta(days=1)
    return (end_day - dt.timedelta(days=count)).isoformat(), end_day.isoformat()


def _check_panels(panels: list[Panel]) -> None:
    """An ``insight`` panel has a valid query; other panels have none. Raises 400."""
    from innkt_analytics.server.insights._model import QueryError, parse_query

    for i, panel in enumerate(panels):
        where = f"panels[{i}].insight"
        if panel.kind != "insight":
            if panel.insight is not None:
                raise ApiError(400, "invalid_dashboard", f"{where}: only on insight panels")
            continue
        spec = panel.insight
        if spec is None:
            raise ApiError(400, "invalid_dashboard", f"{where}: an insight panel needs one")
        if "dateFrom" in spec.query or "dateTo" in spec.query:
            raise ApiError(
                400, "invalid_dashboard", f"{where}.query: the range sets dateFrom and dateTo"
            )
        date_from, date_to = insight_range(spec, dt.datetime.now(dt.UTC))
        body = _encoder.encode({**spec.query, "dateFrom": date_from, "dateTo": date_to})
        try:
            parse_query(spec.kind, body)
        except QueryError as exc:
            # the dates come from the range, so a range too long for the interval is its fault
            field = (
                f"{where}.range"
                if exc.field in ("dateFrom", "dateTo")
                else f"{where}.query" + (f".{exc.field}" if exc.field else "")
            )
            raise ApiError(400, "invalid_dashboard", f"{field}: {exc.message}") from None


def _key(project: str, name: str) -> str:
    return f"{project}/{name}"


def _etag(dashboard: Dashboard) -> str:
    return f'"{dashboard.version}"'


async def _load(request: Request[Any, Any, Any], project: str, name: str) -> Dashboard | None:
    value = await kv_of(state_of(request)).get(NAMESPACE, _key(project, name))
    return None if value is None else _decoder.decode(value)


@get("/v1/dashboards", summary="The project's saved dashboards (read)", tags=["dashboards"])
async def list_dashboards(request: Request[Any, Any, Any]) -> Response[bytes]:
    key = await authenticate(request, "read")
    kv = kv_of(state_of(request))
    items = await kv.items(NAMESPACE, key.project + "/")
    return _json({"dashboards": [_decoder.decode(v) for _, v in items]})


@get("/v1/dashboards/{name:str}", summary="One saved dashboard (read)", tags=["dashboards"])
async def get_dashboard(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    key = await authenticate(request, "read")
    found = await _load(request, key.project, _check_name(name))
    if found is None:
        raise ApiError(404, "not_found", f"no dashboard {name!r} in this project")
    return _json(found, headers={"ETag": _etag(found)})


@put("/v1/dashboards/{name:str}", summary="Save a dashboard (read or admin)", tags=["dashboards"])
async def put_dashboard(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    """Create or replace; ``If-Match: "<version>"`` turns a lost update into a 412."""
    state = state_of(request)
    key = await authenticate(request, "read")
    _check_name(name)
    body = await read_json_body(request, state)
    try:
        dashboard = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_dashboard", str(exc)) from None
    _check_panels(dashboard.panels)
    kv = kv_of(state)
    old = await _load(request, key.project, name)
    expected = request.headers.get("if-match")
    if expected is not None and expected.strip() != "*":
        current = _etag(old) if old is not None else None
        if expected.strip() != current:
            raise ApiError(
                412, "version_conflict", f"the dashboard is now at version {current or 'none'}"
            )
    if old is None:
        count = len(await kv.items(NAMESPACE, key.project + "/"))
        if count >= MAX_DASHBOARDS_PER_PROJECT:
            raise ApiError(409, "too_many_dashboards", f"at most {MAX_DASHBOARDS_PER_PROJECT}")
    stored = msgspec.structs.replace(
        dashboard,
        name=name,
        version=(old.version if old else 0) + 1,
        updated_at=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    )
    await kv.put(NAMESPACE, _key(key.project, name), _encoder.encode(stored))
    return _json(stored, headers={"ETag": _etag(stored)})


@delete(
    "/v1/dashboards/{name:str}",
    status_code=204,
    summary="Delete a dashboard (read or admin)",
    tags=["dashboards"],
)
async def delete_dashboard(request: Request[Any, Any, Any], name: str) -> None:
    key = await authenticate(request, "read")
    kv = kv_of(state_of(request))
    if not await kv.delete(NAMESPACE, _key(key.project, _check_name(name))):
        raise ApiError(404, "not_found", f"no dashboard {name!r} in this project")


# -- the page and its assets ----------------------------------------------------------

_TYPES: Final = {
    # Litestar appends "; charset=utf-8" to text/* types itself.
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

#: The page loads only its own files; the only connections are back to this server.
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Asset:
    """A file of the page, with its validator."""

    body: bytes
    media_type: str
    etag: str


def _load_assets(directory: Path) -> dict[str, Asset]:
    # A fixed table read once: a request can only name one of these files,
    # so no path from a URL ever reaches the file system.
    assets = {}
    for path in sorted(directory.iterdir()):
        media = _TYPES.get(path.suffix)
        if path.is_file() and media is not None:
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            assets[path.name] = Asset(body, media, etag)
    return assets


def _serve(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    assets = required(state_of(request).parts.assets, "install_dashboard")
    asset = assets.get(name)
    if asset is None:
        raise ApiError(404, "not_found", f"no asset {name!r}")
    headers = {**_PAGE_HEADERS, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@get("/", include_in_schema=False)
async def index(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _serve(request, "index.html")


@get("/static/{name:str}", include_in_schema=False)
async def static_asset(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    return _serve(request, name)


DASHBOARD_HANDLERS: Final = (
    list_dashboards,
    get_dashboard,
    put_dashboard,
    delete_dashboard,
    index,
    static_asset,
)


def install_dashboard(state: ServerState, app: Litestar) -> None:
    """``on_state`` hook: load the page's assets (dashboards live in ``install_kv``'s store)."""
    state.parts.assets = _load_assets(STATIC_DIR)
    kv_of(state)  # fail at build time, not at the first request, without the store
