"""Scheduled reports: insight queries run daily or weekly and sent by webhook and e-mail.

A report (``ReportSpec``) is a name, 1 to 10 insights queries (the bodies of
``/v1/insights/*`` without ``dateFrom``/``dateTo``/``timezone``, which the schedule
sets), a schedule — ``daily`` or ``weekly`` on a weekday, at an hour of a time zone —
and targets: a webhook URL (the results as JSON) and/or e-mail addresses (a
multipart/alternative message, ``_reports_render``/``_reports_mail``).

The schedule is pure (``scheduled_at``, ``previous_run``, ``next_run``): wall-clock
times through ``zoneinfo``, so a daily 09:00 stays 09:00 across DST; an hour that a
spring-forward gap skips is sent at the same instant one hour later on the wall clock,
and an hour a fall-back repeats is sent once, at its first occurrence.

Sending once per period with several instances: each report's status is one key-value
document; an instance *claims* a period by a compare-and-set of that document
(``KVStore.put_if``) from what it read to "sent up to this period". Only the winner
runs the queries and delivers, so a period is sent at most once, by one instance
(an instance killed mid-delivery leaves that period unsent: at-most-once).
A failed delivery is retried ``INNKT_REPORT_ATTEMPTS`` times with backoff; the
status shows ``lastRun``, ``lastError`` and each target's outcome.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import hmac
import logging
import secrets
import time
import zoneinfo
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Literal

import httpx
import msgspec
from litestar import Litestar, Request, Response, delete, get, post, put

from innkt_analytics.server._alerts import cancel_tasks, run_every
from innkt_analytics.server._ingest import read_json_body
from innkt_analytics.server._kv import KVStore, kv_of
from innkt_analytics.server._reports_mail import MailError, build_message, send_message
from innkt_analytics.server._reports_render import Section, render_html, render_text
from innkt_analytics.server._settings import ServerSettings
from innkt_analytics.server._state import JSON, ApiError, ServerState, authenticate, state_of
from innkt_analytics.server.insights import QueryError, QueryTooLarge, parse_query
from innkt_analytics.server.insights._model import Query
from innkt_analytics.server.insights._persons_map import PersonsMap, persons_for
from innkt_analytics.server.storage import Storage
from innkt_analytics.shared._exceptions import ConfigError, StorageError
from innkt_analytics.shared._retry import backoff
from innkt_analytics.shared._version import __version__

__all__ = [
    "REPORT_EXAMPLE",
    "REPORT_HANDLERS",
    "Report",
    "ReportService",
    "ReportSpec",
    "ReportStatus",
    "install_reports",
    "next_run",
    "previous_run",
    "run_insight",
    "scheduled_at",
    "validate_report",
]

log = logging.getLogger("innkt_analytics.server.reports")
#: the persons a project's query counts with (``insights._persons_map.persons_for``)
PersonsOf = Callable[[str, Query], Awaitable[PersonsMap | None]]

NAMESPACE: Final = "reports"
STATUS_NAMESPACE: Final = "report_status"
MAX_REPORTS_PER_PROJECT: Final = 50
#: seconds ``run_insight`` gives a query by default (alerts' series): a day
NO_LIMIT: Final = 86_400.0
BACKOFF_CAP: Final = 3600.0
#: seconds one webhook POST may take
WEBHOOK_TIMEOUT: Final = 30.0
WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_SET_BY_SCHEDULE: Final = ("dateFrom", "dateTo", "timezone")
#: a report body, for the OpenAPI document
REPORT_EXAMPLE: Final = {
    "name": "Daily signups",
    "queries": [{"kind": "trends", "query": {"series": [{"event": "signup"}], "interval": "hour"}}],
    "hour": 9,
    "timezone": "Europe/Paris",
    "webhookUrl": "http://127.0.0.1:9/report",
}

Kind = Literal["trends", "funnels", "retention", "paths", "lifecycle", "stickiness"]
Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_Email = Annotated[
    str, msgspec.Meta(min_length=3, max_length=254, pattern=r"^[^@\s<>,]+@[^@\s<>,]+$")
]


class ReportQuery(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """One insight of a report: the body of ``POST /v1/insights/{kind}`` minus its dates."""

    kind: Kind
    query: dict[str, Any]
    title: Annotated[str, msgspec.Meta(max_length=200)] = ""


class ReportSpec(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """A report as written: what to run, when, and where to send it."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    queries: Annotated[list[ReportQuery], msgspec.Meta(min_length=1, max_length=10)]
    frequency: Literal["daily", "weekly"] = "daily"
    #: weekly reports only
    weekday: Weekday | None = None
    hour: Annotated[int, msgspec.Meta(ge=0, le=23)] = 9
    timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "UTC"
    #: complete days each run covers, ending at the run day's midnight (default: 1
    #: for daily, 7 for weekly reports)
    lookback_days: Annotated[int, msgspec.Meta(ge=1, le=366)] | None = None
    webhook_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    webhook_secret: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    emails: Annotated[list[_Email], msgspec.Meta(max_length=20)] = []
    enabled: bool = True


class Report(ReportSpec, kw_only=True):
    """A stored report: the spec and its id, project and times (epoch ms)."""

    id: str = ""
    project: str = ""
    created_at: int = 0
    updated_at: int = 0


class ReportStatus(msgspec.Struct, rename="camel", kw_only=True):
    """What the scheduler last did with a report (one key-value document per report)."""

    #: the last scheduled period claimed, as its local date and hour, and its instant (ms)
    last_period: str | None = None
    last_period_at: int = 0
    #: when the last run (scheduled or ``/send``) finished (ms), and its error, if any
    last_run: int | None = None
    last_error: str | None = None
    deliveries: list[dict[str, Any]] = []


class ReportView(Report, kw_only=True):
    """A report as the API shows it: no webhook secret; status and the next run."""

    has_webhook_secret: bool = False
    next_run: str | None = None
    status: ReportStatus | None = None


class ReportList(msgspec.Struct, kw_only=True):
    reports: list[ReportView]


class ReportSent(msgspec.Struct, rename="camel", kw_only=True):
    """The outcome of ``POST /v1/reports/{id}/send``: one attempt per target."""

    ok: bool
    date_from: str
    date_to: str
    deliveries: list[dict[str, Any]]
    error: str | None = None


def validate_report(spec: ReportSpec) -> None:
    """Check what the schema cannot. Raises ``ConfigError`` naming the offending field."""
    try:
        zone = zoneinfo.ZoneInfo(spec.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError("timezone", f"unknown time zone {spec.timezone!r}") from None
    if (spec.frequency == "weekly") != (spec.weekday is not None):
        raise ConfigError("weekday", "a weekly report needs a weekday, a daily one has none")
    if spec.webhook_url is not None:
        try:
            url = httpx.URL(spec.webhook_url)
        except (httpx.InvalidURL, ValueError):
            url = httpx.URL()
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError("webhookUrl", "must be an http:// or https:// URL")
    elif not spec.emails:
        raise ConfigError("webhookUrl", "a report needs a webhookUrl or emails")
    start = dt.date(2026, 1, 1)
    for i, item in enumerate(spec.queries):
        where = f"queries[{i}].query"
        for name in _SET_BY_SCHEDULE:
            if name in item.query:
                raise ConfigError(f"{where}.{name}", "set by the report's schedule")
        try:
            fill_query(item, start, start + dt.timedelta(days=lookback(spec)), zone)
        except QueryError as exc:
            raise ConfigError(f"{where}.{exc.field}" if exc.field else where, exc.message) from None


def lookback(spec: ReportSpec) -> int:
    return spec.lookback_days or (7 if spec.frequency == "weekly" else 1)


def fill_query(item: ReportQuery, start: dt.date, end: dt.date, zone: zoneinfo.ZoneInfo) -> Any:
    """The query of ``item`` over local days ``[start, end)``. Raises ``QueryError``."""
    body = {
        **item.query,
        "dateFrom": start.isoformat(),
        "dateTo": end.isoformat(),
        "timezone": zone.key,
    }
    return parse_query(item.kind, msgspec.json.encode(body))


# -- the schedule, pure ----------------------------------------------------------------


def scheduled_at(spec: ReportSpec, day: dt.date) -> dt.datetime | None:
    """When the report runs on local ``day`` (UTC), or None if it does not run that day.

    A wall-clock hour in a DST gap maps forward (fold 0: the offset before the change);
    a repeated hour maps to its first occurrence, so each day has one run.
    """
    if spec.frequency == "weekly" and WEEKDAYS[day.weekday()] != spec.weekday:
        return None
    local = dt.datetime.combine(day, dt.time(spec.hour), tzinfo=zoneinfo.ZoneInfo(spec.timezone))
    return local.astimezone(dt.UTC)


def _runs_around(spec: ReportSpec, now: dt.datetime) -> list[tuple[dt.date, dt.datetime]]:
    today = now.astimezone(zoneinfo.ZoneInfo(spec.timezone)).date()
    runs = []
    for offset in range(-8, 9):
        day = today + dt.timedelta(days=offset)
        at = scheduled_at(spec, day)
        if at is not None:
            runs.append((day, at))
    return runs


def previous_run(spec: ReportSpec, now: dt.datetime) -> tuple[dt.date, dt.datetime]:
    """The latest run at or before ``now`` (aware): its local day and its instant (UTC)."""
    return max((r for r in _runs_around(spec, now) if r[1] <= now), key=lambda r: r[1])


def next_run(spec: ReportSpec, now: dt.datetime) -> tuple[dt.date, dt.datetime]:
    """The first run strictly after ``now`` (aware): its local day and its instant (UTC)."""
    return min((r for r in _runs_around(spec, now) if r[1] > now), key=lambda r: r[1])


def _iso(ms: float) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


# -- the service -----------------------------------------------------------------------

_spec_decoder: Final = msgspec.json.Decoder(ReportSpec)
_report_decoder: Final = msgspec.json.Decoder(Report)
_status_decoder: Final = msgspec.json.Decoder(ReportStatus)
_encoder: Final = msgspec.json.Encoder()


def _claim(status: ReportStatus, *, at_ms: int, label: str) -> ReportStatus | None:
    """The status that claims the period at ``at_ms``; None when it is claimed already."""
    if status.last_period_at >= at_ms:
        return None
    return msgspec.structs.replace(status, last_period=label, last_period_at=at_ms)


async def run_insight(
    storage: Storage,
    project: str,
    query: Any,
    persons: PersonsMap | None = None,
    *,
    limit: float = NO_LIMIT,
    max_events: int | None = None,
) -> dict[str, Any]:
    """Answer one parsed insights query over the stored events of ``project`` as the
    ``/v1/insights`` routes answer it (JSON builtins): the same loading and engine,
    persons counted with ``persons`` (``insights._persons_map.persons_for``; None:
    every id its own person). Raises ``QueryTooLarge`` past the route's bounds,
    ``limit`` seconds or, on PostgreSQL, ``max_events`` (``_routes.MAX_EVENTS`` by
    default)."""
    # DuckDB on first use
    from innkt_analytics.server.insights._routes import MAX_EVENTS, answer_within

    try:
        answer = await answer_within(
            storage,
            query,
            project,
            limit,
            persons=persons,
            max_events=MAX_EVENTS if max_events is None else max_events,
        )
    except ApiError as exc:  # 422 query_too_large or query_timeout
        raise QueryTooLarge(str(exc)) from None
    found: dict[str, Any] = msgspec.json.decode(answer)
    return found


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


class ReportService:
    """Stores reports, runs them on schedule and on demand, delivers and records status."""

    def __init__(
        self,
        kv: KVStore,
        storage: Storage,
        settings: ServerSettings,
        persons: PersonsOf | None = None,
    ) -> None:
        self.kv = kv
        self.storage = storage
        self.settings = settings
        #: the identity graph's persons for a query (None: ids are persons), as the
        #: ``/v1/insights`` routes count them
        self.persons = persons
        self.last_tick: float | None = None
        self.sent = {"delivered": 0, "failed": 0}
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[Any]] = set()
        self._client: httpx.AsyncClient | None = None

    # -- documents -------------------------------------------------------------------

    async def get(self, project: str, report_id: str) -> Report | None:
        raw = await self.kv.get(NAMESPACE, f"{project}/{report_id}")
        return None if raw is None else _report_decoder.decode(raw)

    async def reports(self, project: str | None = None) -> list[Report]:
        """The reports of ``project`` (None: all). Raises ``StorageError``."""
        found = []
        for key, raw in await self.kv.items(NAMESPACE, "" if project is None else project + "/"):
            try:
                found.append(_report_decoder.decode(raw))
            except msgspec.DecodeError:
                log.warning("skipping unreadable report %s", key)
        return found

    async def save(
        self, project: str, spec: ReportSpec, report_id: str | None = None
    ) -> Report | None:
        """Create (no ``report_id``) or replace a report; None when ``report_id`` is unknown.

        Raises ``ApiError`` 409 past the per-project cap.
        """
        now = time.time_ns() // 1_000_000
        if report_id is None:
            if len(await self.kv.items(NAMESPACE, project + "/")) >= MAX_REPORTS_PER_PROJECT:
                raise ApiError(
                    409, "too_many_reports", f"at most {MAX_REPORTS_PER_PROJECT} reports"
                )
            report_id, created = "rpt_" + secrets.token_hex(6), now
        else:
            old = await self.get(project, report_id)
            if old is None:
                return None
            created = old.created_at
        fields = msgspec.structs.asdict(spec)
        report = Report(**fields, id=report_id, project=project, created_at=created, updated_at=now)
        await self.kv.put(NAMESPACE, f"{project}/{report_id}", _encoder.encode(report))
        return report

    async def delete(self, project: str, report_id: str) -> bool:
        await self.kv.delete(STATUS_NAMESPACE, f"{project}/{report_id}")
        return await self.kv.delete(NAMESPACE, f"{project}/{report_id}")

    async def status(self, report: Report) -> tuple[bytes | None, ReportStatus]:
        raw = await self.kv.get(STATUS_NAMESPACE, f"{report.project}/{report.id}")
        return raw, ReportStatus() if raw is None else _status_decoder.decode(raw)

    async def _update_status(
        self, report: Report, change: Callable[[ReportStatus], ReportStatus | None]
    ) -> ReportStatus | None:
        """Compare-and-set loop on the status document: ``change`` returns the new status,
        or None to leave it. Returns what was stored (None: left, or lost every race)."""
        key = f"{report.project}/{report.id}"
        for _ in range(10):
            raw, current = await self.status(report)
            new = change(current)
            if new is None:
                return None
            if await self.kv.put_if(STATUS_NAMESPACE, key, _encoder.encode(new), raw):
                return new
        return None

    def describe(self, report: Report, status: ReportStatus | None) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(report)
        out.pop("webhookSecret", None)
        out["hasWebhookSecret"] = bool(report.webhook_secret)
        out["nextRun"] = (
            next_run(report, dt.datetime.now(dt.UTC))[1].isoformat() if report.enabled else None
        )
        out["status"] = msgspec.to_builtins(status) if status is not None else None
        return out

    # -- running -----------------------------------------------------------------------

    async def run(self, report: Report, day: dt.date) -> tuple[dict[str, Any], list[Section]]:
        """Run every query over the local days before ``day``: the webhook payload and the
        sections of the message. A query that fails is reported in its section."""
        zone = zoneinfo.ZoneInfo(report.timezone)
        start = day - dt.timedelta(days=lookback(report))
        sections, results = [], []
        for item in report.queries:
            title = item.title or item.kind
            try:
                query = fill_query(item, start, day, zone)
                persons = (
                    None if self.persons is None else await self.persons(report.project, query)
                )
                answer = await run_insight(
                    self.storage,
                    report.project,
                    query,
                    persons,
                    limit=self.settings.insights_timeout,
                    max_events=self.settings.insights_max_events,
                )
                section = Section(title, item.kind, answer)
            except (QueryError, QueryTooLarge) as exc:
                section = Section(title, item.kind, None, f"{type(exc).__name__}: {exc}")
            sections.append(section)
            entry: dict[str, Any] = {"title": title, "kind": item.kind, "query": item.query}
            entry.update(result=section.result) if section.error is None else entry.update(
                error=section.error
            )
            results.append(entry)
        payload = {
            "reportId": report.id,
            "name": report.name,
            "project": report.project,
            "dateFrom": start.isoformat(),
            "dateTo": day.isoformat(),
            "timezone": report.timezone,
            "results": results,
        }
        return payload, sections

    async def _post(self, report: Report, body: bytes) -> tuple[bool, dict[str, Any]]:
        headers = {
            "Content-Type": JSON,
            "User-Agent": f"innkt-analytics/{__version__}",
            "X-Innkt-Report": report.id,
        }
        if report.webhook_secret:
            digest = hmac.new(report.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Innkt-Signature"] = "sha256=" + digest
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT)
        try:
            response = await self._client.post(
                report.webhook_url or "", content=body, headers=headers
            )
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            return True, {"error": f"{type(exc).__name__}: {exc}"}
        ok = 200 <= response.status_code < 300
        out: dict[str, Any] = {"status": response.status_code}
        if not ok:
            out["error"] = f"HTTP {response.status_code}"
        return not ok and _retryable(response.status_code), out

    async def _mail(
        self, report: Report, payload: dict[str, Any], sections: list[Section]
    ) -> tuple[bool, dict[str, Any]]:
        period = f"{payload['dateFrom']} to {payload['dateTo']} ({report.timezone})"
        queries = [q.query for q in report.queries]
        message = build_message(
            self.settings,
            report.emails,
            f"{report.name}: {period}",
            render_text(report.name, period, sections, queries),
            render_html(report.name, period, sections, queries),
        )
        try:
            await send_message(self.settings, message)
        except MailError as exc:
            return bool(self.settings.smtp_host), {"error": str(exc)}
        return False, {}

    async def deliver(
        self, report: Report, payload: dict[str, Any], sections: list[Section], attempts: int
    ) -> list[dict[str, Any]]:
        """Send to every target, each up to ``attempts`` times with backoff; the outcomes."""
        body = _encoder.encode(payload)
        targets: list[tuple[str, Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]]] = []
        if report.webhook_url:
            targets.append(("webhook", lambda: self._post(report, body)))
        if report.emails:
            targets.append(("email", lambda: self._mail(report, payload, sections)))
        outcomes = []
        for target, send in targets:
            delays = backoff(self.settings.report_backoff, BACKOFF_CAP)
            for attempt in range(1, attempts + 1):
                retry, outcome = await send()
                if "error" not in outcome or not retry or attempt == attempts:
                    break
                await asyncio.sleep(next(delays))
            outcome.update(target=target, ok="error" not in outcome, attempts=attempt)
            self.sent["delivered" if outcome["ok"] else "failed"] += 1
            outcomes.append(outcome)
        return outcomes

    async def send(self, report: Report, day: dt.date, attempts: int) -> ReportStatus | None:
        """Run and deliver for the local ``day``; records the run in the status."""
        try:
            payload, sections = await self.run(report, day)
            outcomes = await self.deliver(report, payload, sections, attempts)
        except StorageError as exc:
            payload, outcomes = {}, [{"target": "queries", "ok": False, "error": str(exc)}]
        errors = [f"{o['target']}: {o['error']}" for o in outcomes if not o["ok"]]
        if errors:
            log.warning("report %s: %s", report.id, "; ".join(errors))

        def record(status: ReportStatus) -> ReportStatus:
            return msgspec.structs.replace(
                status,
                last_run=time.time_ns() // 1_000_000,
                last_error="; ".join(errors) or None,
                deliveries=outcomes,
            )

        return await self._update_status(report, record)

    # -- the scheduler -----------------------------------------------------------------

    async def tick(self, now: dt.datetime | None = None) -> list[str]:
        """Claim and start every report due at ``now``; the ids of those this instance sends."""
        now = now or dt.datetime.now(dt.UTC)
        started = []
        for report in await self.reports():
            if not report.enabled:
                continue
            day, at = previous_run(report, now)
            at_ms = int(at.timestamp() * 1000)
            if at_ms < max(report.created_at, report.updated_at):
                continue  # due before it was written: its first run is the next one

            local = at.astimezone(zoneinfo.ZoneInfo(report.timezone))
            claim = functools.partial(_claim, at_ms=at_ms, label=f"{day.isoformat()}T{local:%H:%M}")
            if await self._update_status(report, claim) is None:
                continue  # sent already, or another instance claimed it first
            task = asyncio.create_task(self.send(report, day, self.settings.report_attempts))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
            started.append(report.id)
        self.last_tick = time.time()
        return started

    async def drain(self) -> None:
        """Wait for the deliveries under way (tests, shutdown)."""
        while self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    async def start(self) -> None:
        if self.settings.report_interval > 0:
            self._task = asyncio.create_task(
                run_every(self.settings.report_interval, self.tick, "report scheduling", log)
            )

    async def stop(self) -> None:
        await cancel_tasks(self._task, *self._sends)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def health(self) -> dict[str, Any]:
        return {
            "enabled": self.settings.report_interval > 0,
            "email": bool(self.settings.smtp_host),
            "deliveries": dict(self.sent),
            "lastCheck": self.last_tick,
        }


# -- routes ----------------------------------------------------------------------------


def service_of(request: Request[Any, Any, Any]) -> ReportService:
    service = state_of(request).extensions.get("reports")
    if not isinstance(service, ReportService):
        raise LookupError("install_reports was not run on this app")
    return service


def _json(body: Any, status: int = 200) -> Response[bytes]:
    return Response(_encoder.encode(body), status_code=status, media_type=JSON)


async def _spec(request: Request[Any, Any, Any]) -> ReportSpec:
    body = await read_json_body(request, state_of(request))
    try:
        spec = _spec_decoder.decode(body)
        validate_report(spec)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ConfigError) as exc:
        raise ApiError(400, "invalid_report", str(exc)) from None
    return spec


async def _found(request: Request[Any, Any, Any], scope: str, report_id: str) -> Report:
    key = await authenticate(request, scope)
    report = await service_of(request).get(key.project, report_id)
    if report is None:
        raise ApiError(404, "not_found", f"no report {report_id!r} in this project")
    return report


async def _view(service: ReportService, report: Report, status: int = 200) -> Response[bytes]:
    return _json(service.describe(report, (await service.status(report))[1]), status)


@post("/v1/reports", status_code=201, summary="Create a scheduled report (admin)", tags=["reports"])
async def create_report(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Body: a ``ReportSpec`` (docs/insights.md, "Scheduled reports")."""
    key = await authenticate(request, "admin")
    service = service_of(request)
    report = await service.save(key.project, await _spec(request))
    if report is None:  # (a new report always saves)
        raise LookupError("a new report was not saved")
    return await _view(service, report, 201)


@get("/v1/reports", summary="List the project's reports (read)", tags=["reports"])
async def list_reports(request: Request[Any, Any, Any]) -> Response[bytes]:
    key = await authenticate(request, "read")
    service = service_of(request)
    reports = [
        service.describe(r, (await service.status(r))[1])
        for r in await service.reports(key.project)
    ]
    return _json({"reports": reports})


@get("/v1/reports/{report_id:str}", summary="A report and its status (read)", tags=["reports"])
async def get_report(request: Request[Any, Any, Any], report_id: str) -> Response[bytes]:
    return await _view(service_of(request), await _found(request, "read", report_id))


@put("/v1/reports/{report_id:str}", summary="Replace a report (admin)", tags=["reports"])
async def put_report(request: Request[Any, Any, Any], report_id: str) -> Response[bytes]:
    key = await authenticate(request, "admin")
    service = service_of(request)
    report = await service.save(key.project, await _spec(request), report_id)
    if report is None:
        raise ApiError(404, "not_found", f"no report {report_id!r} in this project")
    return await _view(service, report)


@delete(
    "/v1/reports/{report_id:str}",
    status_code=204,
    summary="Delete a report (admin)",
    tags=["reports"],
)
async def delete_report(request: Request[Any, Any, Any], report_id: str) -> None:
    key = await authenticate(request, "admin")
    if not await service_of(request).delete(key.project, report_id):
        raise ApiError(404, "not_found", f"no report {report_id!r} in this project")


@post(
    "/v1/reports/{report_id:str}/send",
    status_code=200,
    summary="Send a report now (admin)",
    tags=["reports"],
)
async def send_report(request: Request[Any, Any, Any], report_id: str) -> Response[bytes]:
    """Run the queries over the days before today (the report's time zone) and deliver
    once to each target, without retries; the answer says how each delivery went."""
    report = await _found(request, "admin", report_id)
    service = service_of(request)
    today = dt.datetime.now(zoneinfo.ZoneInfo(report.timezone)).date()
    status = await service.send(report, today, attempts=1)
    deliveries = status.deliveries if status else []
    return _json(
        ReportSent(
            ok=all(d["ok"] for d in deliveries),
            date_from=(today - dt.timedelta(days=lookback(report))).isoformat(),
            date_to=today.isoformat(),
            deliveries=deliveries,
            error=status.last_error if status else "the status could not be recorded",
        )
    )


REPORT_HANDLERS: Final = (
    create_report,
    list_reports,
    get_report,
    put_report,
    delete_report,
    send_report,
)


def install_reports(state: ServerState, app: Litestar) -> None:
    """``on_state`` hook (after ``install_kv``): the scheduler runs with the app's lifespan."""
    service = ReportService(
        kv_of(state), state.storage, state.settings, functools.partial(persons_for, state)
    )
    state.extensions["reports"] = service
    state.health_sections["reports"] = service.health
    app.on_startup.append(service.start)
    app.on_shutdown.insert(0, service.stop)  # before the key-value store closes
