"""Threshold alerts: rules per project, a pure evaluator, webhooks and real-time notices.

Three kinds of rule:

* ``event_rate``: more than ``threshold`` events of ``eventType`` within ``windowSeconds``
  (60 by default: "more than N per minute");
* ``ingest_lag``: the mean ingest lag (received minus corrected event time) of the
  events received within ``windowSeconds`` is above ``threshold`` seconds;
* ``no_events``: no event (of ``eventType`` when given) received for ``windowSeconds``;
* ``anomaly``: each hour, every event type of the project (only ``eventType`` when
  given) and each of the rule's ``series`` (insights trends series) is compared with
  its seasonal baseline (``_anomaly``); values out of range are sent as ``anomaly``
  notices (no "resolved"), with the expected range.

``AlertEngine`` is sans-I/O: the ingest observer feeds it what was stored, and
``evaluate(now)`` returns only *transitions* (ok → firing, firing → ok), so an
alert fires once while its condition stays true and resolves once on recovery.
``AlertService`` is the thin front-end: it loads rules from the key-value store,
runs the engine every ``interval`` seconds, POSTs each transition to the rule's
webhook (retrying with backoff) and publishes it as a real-time ``alert`` message.

The engine counts what *this process* ingested; run a single evaluating
instance (``INNKT_ALERT_INTERVAL=0`` disables it elsewhere) behind a load balancer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import hmac
import logging
import os
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import httpx
import msgspec
from litestar import Litestar, Request, Response, delete, get, post

from innkt_analytics.server._anomaly import (
    HOURS_PER_WEEK,
    Anomaly,
    DetectorConfig,
    HourlySeries,
    detect,
)
from innkt_analytics.server._ingest import read_json_body
from innkt_analytics.server._kv import KVStore, kv_of
from innkt_analytics.server._state import (
    JSON,
    ApiError,
    ServerState,
    authenticate,
    required,
    state_of,
)
from innkt_analytics.server.insights._model import (
    MAX_SERIES,
    QueryError,
    QueryTooLarge,
    Series,
    TrendsQuery,
)
from innkt_analytics.server.insights._model import validate as validate_query
from innkt_analytics.server.insights._persons_map import persons_for
from innkt_analytics.server.storage import EventFilter, Storage
from innkt_analytics.shared._exceptions import ConfigError, StorageError
from innkt_analytics.shared._protocol import ClientConfig, ValidEvent
from innkt_analytics.shared._retry import backoff

if TYPE_CHECKING:
    from innkt_analytics.server._reports import PersonsOf
from innkt_analytics.shared._version import __version__

__all__ = [
    "ALERT_HANDLERS",
    "AlertEngine",
    "AlertNotice",
    "AlertRule",
    "AlertService",
    "AlertSettings",
    "AlertStatus",
    "install_alerts",
    "validate_rule",
]

log = logging.getLogger("innkt_analytics.server.alerts")

NAMESPACE: Final = "alerts"
MAX_RULES_PER_PROJECT: Final = 100
MAX_WINDOW: Final = 3600.0  # event_rate / ingest_lag keep per-second buckets this far back
MAX_SILENCE: Final = 7 * 86400.0
RECENT_NOTICES: Final = 100

RuleKind = Literal["event_rate", "ingest_lag", "no_events", "anomaly"]
#: anomaly rules: event types watched per project at most (the most frequent)
MAX_ANOMALY_TYPES: Final = 50


class AlertRule(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """One rule as stored and as the API shows it (``webhookSecret`` is never shown)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    kind: RuleKind
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    threshold: float = 0.0
    window_seconds: float = 60.0
    webhook_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    webhook_secret: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    #: anomaly rules: insights trends series to watch as well (hourly, UTC)
    series: Annotated[list[Series], msgspec.Meta(max_length=MAX_SERIES)] | None = None
    id: str = ""
    project: str = ""
    created_at: int = 0


def validate_rule(rule: AlertRule) -> AlertRule:
    """Check the fields that depend on ``kind``; returns the rule.

    Raises ``ConfigError`` naming the offending field.
    """
    if rule.kind == "event_rate" and rule.event_type is None:
        raise ConfigError("eventType", "an event_rate rule needs an eventType")
    if rule.threshold < 0 or rule.threshold != rule.threshold:
        raise ConfigError("threshold", "must be a number >= 0")
    if rule.kind == "ingest_lag" and rule.threshold <= 0:
        raise ConfigError("threshold", "the lag threshold is in seconds and must be > 0")
    limit = MAX_SILENCE if rule.kind == "no_events" else MAX_WINDOW
    if not 1 <= rule.window_seconds <= limit:
        raise ConfigError("windowSeconds", f"must be within 1..{limit:g} for {rule.kind}")
    if rule.series is not None and rule.kind != "anomaly":
        raise ConfigError("series", "only anomaly rules watch series")
    for i, series in enumerate(rule.series or []):
        try:
            validate_query(_hourly(series, 0, 1))
        except QueryError as exc:
            raise ConfigError(f"series[{i}].{exc.field.split('.', 1)[-1]}", exc.message) from None
    if rule.webhook_url is not None:
        url = urllib.parse.urlsplit(rule.webhook_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError("webhookUrl", "must be an http:// or https:// URL")
    return rule


def _hourly(series: Series, first_hour: int, hours: int) -> TrendsQuery:
    """A trends query of one series per hour (UTC) over ``hours`` from epoch hour ``first_hour``."""

    def iso(hour: int) -> str:
        return dt.datetime.fromtimestamp(hour * 3600, dt.UTC).isoformat()

    return TrendsQuery(
        date_from=iso(first_hour), date_to=iso(first_hour + hours), series=[series], interval="hour"
    )


class AlertStatus(enum.Enum):
    """A rule's state; the only legal moves are OK → FIRING and FIRING → OK."""

    OK = "ok"
    FIRING = "firing"


@dataclasses.dataclass(frozen=True, slots=True)
class AlertNotice:
    """A transition of one rule: what the webhook and the real-time message carry."""

    rule: AlertRule
    status: AlertStatus
    value: float
    at: float  # epoch seconds

    def payload(self) -> dict[str, Any]:
        rule = self.rule
        body: dict[str, Any] = {
            "ruleId": rule.id,
            "name": rule.name,
            "project": rule.project,
            "kind": rule.kind,
            # A transition: "firing", or "resolved" when the rule went back to ok.
            "status": "firing" if self.status is AlertStatus.FIRING else "resolved",
            "value": round(self.value, 3),
            "threshold": rule.threshold,
            "windowSeconds": rule.window_seconds,
            "at": dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat(timespec="milliseconds"),
        }
        if rule.event_type is not None:
            body["eventType"] = rule.event_type
        return body


class _Window:
    """Per-second buckets of a sliding window: count, lag sum; oldest dropped first."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: collections.deque[list[float]] = collections.deque()

    def add(self, second: int, count: int, lag_sum: float) -> None:
        if self.buckets and self.buckets[-1][0] == second:
            self.buckets[-1][1] += count
            self.buckets[-1][2] += lag_sum
        else:
            self.buckets.append([second, count, lag_sum])

    def trim(self, oldest: float) -> None:
        while self.buckets and self.buckets[0][0] < oldest:
            self.buckets.popleft()

    def totals(self, since: float) -> tuple[int, float]:
        """Sums over the buckets that overlap (since, now]: errs towards counting."""
        count, lag = 0, 0.0
        for second, n, lag_sum in reversed(self.buckets):
            if second + 1 <= since:
                break
            count += int(n)
            lag += lag_sum
        return count, lag


@dataclasses.dataclass(slots=True)
class _RuleState:
    status: AlertStatus = AlertStatus.OK
    value: float = 0.0
    since: float = 0.0  # when it entered the status


class AlertEngine:
    """Sans-I/O evaluator: ``observe`` what was ingested, ``evaluate`` to get transitions."""

    def __init__(self, started: float) -> None:
        self.started = started
        self._rules: dict[str, AlertRule] = {}
        self._states: dict[str, _RuleState] = {}
        self._totals: dict[str, _Window] = {}
        self._by_type: dict[tuple[str, str], _Window] = {}
        self._last_seen: dict[tuple[str, str | None], float] = {}
        self._watched: set[tuple[str, str]] = set()

    @property
    def rules(self) -> list[AlertRule]:
        return list(self._rules.values())

    def state(self, rule_id: str) -> _RuleState | None:
        return self._states.get(rule_id)

    def set_rules(self, rules: list[AlertRule]) -> None:
        """Replace the rule set; states of rules that remain are kept."""
        self._rules = {r.id: r for r in rules}
        self._states = {rid: s for rid, s in self._states.items() if rid in self._rules}
        self._watched = {(r.project, r.event_type) for r in rules if r.event_type is not None}
        self._by_type = {k: w for k, w in self._by_type.items() if k in self._watched}

    def observe(self, project: str, events: list[tuple[str, float]], now: float) -> None:
        """Record events received at ``now``: (eventType, ingest lag in seconds) each."""
        self.observe_batch(project, [t for t, _ in events], [lag for _, lag in events], now)

    def observe_batch(self, project: str, types: list[str], lags: list[float], now: float) -> None:
        """``observe`` with the types and the lags in two lists (the ingest path)."""
        if not types:
            return
        second = int(now)
        total = self._totals.get(project)
        if total is None:
            total = self._totals[project] = _Window()
        total.add(second, len(types), sum(lags))
        self._last_seen[(project, None)] = now
        if not self._watched:
            return  # no rule looks at event types: nothing per event to do
        for event_type, lag in zip(types, lags, strict=True):
            key = (project, event_type)
            if key in self._watched:
                window = self._by_type.get(key)
                if window is None:
                    window = self._by_type[key] = _Window()
                window.add(second, 1, lag)
                self._last_seen[key] = now

    def _value(self, rule: AlertRule, now: float) -> tuple[bool, float]:
        since = now - rule.window_seconds
        if rule.kind == "no_events":
            seen = self._last_seen.get((rule.project, rule.event_type))
            # Before anything was seen, count silence from when we started
            # watching: a restart must not fire every no_events rule at once.
            last = seen if seen is not None else max(self.started, rule.created_at / 1000)
            quiet = now - last
            return quiet >= rule.window_seconds, quiet
        if rule.kind == "event_rate":
            window = self._by_type.get((rule.project, rule.event_type or ""))
            count = window.totals(since)[0] if window else 0
            return count > rule.threshold, float(count)
        window = self._totals.get(rule.project)
        count, lag_sum = window.totals(since) if window else (0, 0.0)
        mean = lag_sum / count if count else 0.0
        return count > 0 and mean > rule.threshold, mean

    def evaluate(self, now: float) -> list[AlertNotice]:
        """Transitions since the last call, in rule order; also drops expired buckets."""
        for window in (*self._totals.values(), *self._by_type.values()):
            window.trim(now - MAX_WINDOW - 1)
        notices: list[AlertNotice] = []
        for rule in self._rules.values():
            if rule.kind == "anomaly":
                continue  # evaluated hourly by AlertService.evaluate_anomalies
            breached, value = self._value(rule, now)
            state = self._states.setdefault(rule.id, _RuleState(since=now))
            state.value = value
            target = AlertStatus.FIRING if breached else AlertStatus.OK
            if target is not state.status:
                state.status, state.since = target, now
                notices.append(AlertNotice(rule=rule, status=target, value=value, at=now))
        return notices


@dataclasses.dataclass(frozen=True, slots=True)
class AlertSettings:
    """Alerting knobs. Environment: ``INNKT_ALERT_INTERVAL`` etc.; 0 interval disables."""

    #: seconds between evaluations (0 turns the evaluator off in this process)
    interval: float = 10.0
    #: seconds one webhook POST may take
    webhook_timeout: float = 5.0
    #: attempts per notice (the first plus retries on network errors, 408, 429, 5xx)
    webhook_attempts: int = 4
    #: first retry delay; doubles up to ``webhook_backoff_cap``
    webhook_backoff: float = 1.0
    webhook_backoff_cap: float = 30.0
    #: anomaly rules: seconds after an hour ends before it is evaluated (late events)
    anomaly_grace: float = 300.0

    def __post_init__(self) -> None:
        if self.interval < 0:
            raise ConfigError("INNKT_ALERT_INTERVAL", "must be >= 0")
        if self.webhook_timeout <= 0:
            raise ConfigError("INNKT_ALERT_WEBHOOK_TIMEOUT", "must be > 0")
        if self.webhook_attempts < 1:
            raise ConfigError("INNKT_ALERT_WEBHOOK_ATTEMPTS", "must be >= 1")
        if self.webhook_backoff < 0 or self.webhook_backoff_cap < 0:
            raise ConfigError("INNKT_ALERT_WEBHOOK_BACKOFF", "must be >= 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AlertSettings:
        """Read ``INNKT_ALERT_*``; raises ``ConfigError`` naming a variable that does not parse."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = "INNKT_ALERT_" + f.name.upper()
            raw = env.get(name)
            if raw is None:
                continue
            try:
                values[f.name] = int(raw) if isinstance(f.default, int) else float(raw)
            except ValueError:
                raise ConfigError(name, f"cannot parse {raw!r}") from None
        return cls(**values)


def _since_first(key: str, first_hour: int, values: list[float]) -> HourlySeries:
    """The series from its first non-zero hour: the hours before a series existed (a new
    project, a new event type) are no history of zeros."""
    start = next((i for i, v in enumerate(values) if v), len(values) - 1)
    return HourlySeries(key, first_hour + start, values[start:])


def anomaly_payload(rule: AlertRule, anomaly: Anomaly, now: float) -> dict[str, Any]:
    """What an anomaly's webhook and real-time message carry."""
    b = anomaly.baseline
    body: dict[str, Any] = {
        "ruleId": rule.id,
        "name": rule.name,
        "project": rule.project,
        "kind": "anomaly",
        "status": "firing",
        "series": anomaly.key,
        "direction": anomaly.direction,
        "hour": dt.datetime.fromtimestamp(anomaly.hour * 3600, dt.UTC).isoformat(),
        "value": anomaly.value,
        "expected": round(b.expected, 3),
        "expectedLow": round(b.low, 3),
        "expectedHigh": round(b.high, 3),
        "baseline": b.method,
        "score": round(anomaly.score, 2),
        "threshold": rule.threshold,
        "windowSeconds": 3600.0,
        "at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds"),
    }
    if anomaly.key.startswith("event:"):
        body["eventType"] = anomaly.key[len("event:") :]
    return body


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


async def run_every(
    seconds: float, tick: Callable[[], Awaitable[object]], what: str, logger: logging.Logger
) -> None:
    """Call ``tick`` every ``seconds`` for ever; a failed call is logged, not fatal."""
    while True:
        try:
            await tick()
        except StorageError as exc:
            logger.warning("%s skipped: %s", what, exc)
        except Exception:
            logger.exception("%s failed", what)
        await asyncio.sleep(seconds)


async def cancel_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks (None: none) and wait until each has ended."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task


#: (project, message type, payload) — how a notice reaches the real-time hub
Publisher = Callable[[str, str, dict[str, Any]], None]

_rule_decoder: Final = msgspec.json.Decoder(AlertRule)
_encoder: Final = msgspec.json.Encoder()


class AlertService:
    """The I/O front-end of ``AlertEngine``: an ingest observer plus a periodic task."""

    def __init__(
        self,
        kv: KVStore,
        settings: AlertSettings,
        storage: Storage | None = None,
        persons: PersonsOf | None = None,
    ) -> None:
        self.kv = kv
        self.settings = settings
        #: where anomaly rules read their series (None: anomaly rules are not evaluated)
        self.storage = storage
        #: the persons an insights series counts with, as the API does (None: ids)
        self.persons = persons
        self.detector = DetectorConfig()
        self.anomaly_hour: int | None = None  # the last epoch hour evaluated
        self.anomaly_last: dict[tuple[str, str], int] = {}  # (rule, series) -> hour alerted
        self.anomaly_counts = {"raised": 0, "suppressed": 0, "cooling": 0}
        self.engine = AlertEngine(started=time.time())
        self.publishers: list[Publisher] = []
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_NOTICES)
        self.deliveries: dict[str, int] = {"delivered": 0, "failed": 0}
        self.last_delivery: dict[str, dict[str, Any]] = {}
        self.last_evaluation: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    # -- IngestObserver --------------------------------------------------------------

    def on_events(self, project: str, events: list[ValidEvent]) -> None:
        now = time.time()
        self.engine.observe_batch(
            project,
            [v.event.event_type for v in events],
            [now - v.corrected_ms / 1000 for v in events],
            now,
        )

    def on_config(self, project: str, config: ClientConfig) -> None:
        return None

    # -- rules ---------------------------------------------------------------------

    async def load_rules(self) -> list[AlertRule]:
        """All stored rules of all projects. Raises ``StorageError``."""
        rules = []
        for key, value in await self.kv.items(NAMESPACE):
            try:
                rules.append(_rule_decoder.decode(value))
            except msgspec.DecodeError:
                log.warning("skipping unreadable alert rule %s", key)
        return rules

    async def project_rules(self, project: str) -> list[AlertRule]:
        return [_rule_decoder.decode(v) for _, v in await self.kv.items(NAMESPACE, project + "/")]

    async def create_rule(self, project: str, rule: AlertRule) -> AlertRule:
        """Store a new rule with a fresh id. Raises ``ApiError`` 409 past the per-project cap."""
        if len(await self.kv.items(NAMESPACE, project + "/")) >= MAX_RULES_PER_PROJECT:
            raise ApiError(409, "too_many_rules", f"at most {MAX_RULES_PER_PROJECT} rules")
        stored = msgspec.structs.replace(
            rule,
            id="alr_" + secrets.token_hex(6),
            project=project,
            created_at=time.time_ns() // 1_000_000,
        )
        await self.kv.put(NAMESPACE, f"{project}/{stored.id}", _encoder.encode(stored))
        await self.refresh()
        return stored

    async def delete_rule(self, project: str, rule_id: str) -> bool:
        deleted = await self.kv.delete(NAMESPACE, f"{project}/{rule_id}")
        if deleted:
            await self.refresh()
        return deleted

    async def refresh(self) -> None:
        """Reload rules (others may have changed them through a shared database)."""
        self.engine.set_rules(await self.load_rules())

    # -- the loop ------------------------------------------------------------------

    async def tick(self, now: float | None = None) -> list[AlertNotice]:
        """One evaluation: reload rules, evaluate, dispatch every transition."""
        await self.refresh()
        notices = self.engine.evaluate(time.time() if now is None else now)
        self.last_evaluation = time.time()
        for notice in notices:
            self.dispatch(notice)
        await self.evaluate_anomalies(time.time() if now is None else now)
        return notices

    async def evaluate_anomalies(self, now: float) -> list[dict[str, Any]]:
        """Once per hour (``anomaly_grace`` after it ends): run the detector over each
        anomaly rule's series and send what it finds. Returns the notices sent."""
        hour = int((now - self.settings.anomaly_grace) // 3600) - 1
        rules = [r for r in self.engine.rules if r.kind == "anomaly"]
        if self.storage is None or not rules or hour == self.anomaly_hour:
            return []
        self.anomaly_hour = hour
        sent = []
        for rule in rules:
            series = await self._anomaly_series(rule, hour)
            last = {k: h for (rid, k), h in self.anomaly_last.items() if rid == rule.id}
            found = detect(series, self.detector, last)
            self.anomaly_counts["suppressed"] += found.suppressed
            self.anomaly_counts["cooling"] += found.cooling
            for anomaly in found.anomalies:
                self.anomaly_last[(rule.id, anomaly.key)] = anomaly.hour
                payload = anomaly_payload(rule, anomaly, now)
                self.dispatch_payload(rule, payload)
                sent.append(payload)
        self.anomaly_counts["raised"] += len(sent)
        return sent

    async def _anomaly_series(self, rule: AlertRule, hour: int) -> list[HourlySeries]:
        """The rule's hourly series up to ``hour``: per event type, then per trends series."""
        storage = self.storage
        if storage is None:
            return []
        first = hour - self.detector.weeks * HOURS_PER_WEEK
        since, until = first * 3_600_000, (hour + 1) * 3_600_000
        if rule.event_type is not None:
            types = [rule.event_type]
        else:
            totals = await storage.stats(
                rule.project, EventFilter(since=since, until=until), 3_600_000, uniques=False
            )
            ranked = sorted(totals.by_event_type.items(), key=lambda kv: (-kv[1], kv[0]))
            types = [t for t, _ in ranked[:MAX_ANOMALY_TYPES]]
        found = []
        for event_type in types:
            flt = EventFilter(event_type=event_type, since=since, until=until)
            values = [0.0] * (hour - first + 1)
            hourly = await storage.stats(rule.project, flt, 3_600_000, uniques=False)
            for start_ms, count in hourly.series:
                if 0 <= start_ms // 3_600_000 - first < len(values):
                    values[start_ms // 3_600_000 - first] = float(count)
            found.append(_since_first(f"event:{event_type}", first, values))
        from innkt_analytics.server._reports import run_insight  # DuckDB on first use

        for i, series in enumerate(rule.series or []):
            query = _hourly(series, first, hour - first + 1)
            try:
                persons = None if self.persons is None else await self.persons(rule.project, query)
                answer = await run_insight(storage, rule.project, query, persons)
            except QueryTooLarge as exc:
                log.warning("anomaly rule %s: series %d skipped: %s", rule.id, i, exc)
                continue
            values = [float(v or 0) for v in answer["series"][0]["values"]]
            found.append(_since_first(f"series:{i}", first, values))
        return found

    def dispatch(self, notice: AlertNotice) -> None:
        self.dispatch_payload(notice.rule, notice.payload())

    def dispatch_payload(self, rule: AlertRule, payload: dict[str, Any]) -> None:
        """Record, publish in real time, and POST to the rule's webhook (in the background)."""
        self.recent.append(payload)
        for publish in self.publishers:
            try:
                publish(rule.project, "alert", payload)
            except Exception:  # one broken publisher must not stop the others
                log.exception("publishing an alert failed")
        if rule.webhook_url:
            task = asyncio.create_task(self._deliver(rule, rule.webhook_url, payload))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _deliver(self, rule: AlertRule, url: str, payload: dict[str, Any]) -> None:
        body = _encoder.encode(payload)
        headers = {
            "Content-Type": JSON,
            "User-Agent": f"innkt-analytics/{__version__}",
            "X-Innkt-Alert-Rule": rule.id,
        }
        if rule.webhook_secret:
            digest = hmac.new(rule.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Innkt-Signature"] = "sha256=" + digest
        delays = backoff(self.settings.webhook_backoff, self.settings.webhook_backoff_cap)
        outcome: dict[str, Any] = {}
        for attempt in range(1, self.settings.webhook_attempts + 1):
            try:
                response = await self._http().post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                retry = True
            else:
                ok = 200 <= response.status_code < 300
                outcome = {"ok": ok, "status": response.status_code}
                retry = not ok and _retryable(response.status_code)
            outcome.update(attempts=attempt, at=time.time(), alertStatus=payload["status"])
            if outcome["ok"] or not retry or attempt == self.settings.webhook_attempts:
                break
            await asyncio.sleep(next(delays))
        self.last_delivery[rule.id] = outcome
        self.deliveries["delivered" if outcome["ok"] else "failed"] += 1
        if not outcome["ok"]:
            log.warning("alert webhook for rule %s failed: %s", rule.id, outcome)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.settings.webhook_timeout)
        return self._client

    async def _run(self) -> None:
        await run_every(self.settings.interval, self.tick, "alert evaluation", log)

    async def start(self) -> None:
        # Know the rules before serving, so the API and health never show an empty set.
        try:
            await self.refresh()
        except StorageError as exc:
            log.warning("alert rules not loaded at startup: %s", exc)
        if self.settings.interval > 0:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel_tasks(self._task, *self._sends)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def health(self) -> dict[str, Any]:
        rules = self.engine.rules
        firing = [
            r.id
            for r in rules
            if (s := self.engine.state(r.id)) is not None and s.status is AlertStatus.FIRING
        ]
        return {
            "enabled": self.settings.interval > 0,
            "intervalSeconds": self.settings.interval,
            "rules": len(rules),
            "firing": len(firing),
            "webhooks": dict(self.deliveries),
            "lastEvaluation": self.last_evaluation,
            "anomalies": dict(self.anomaly_counts),
        }

    def describe(self, rule: AlertRule) -> dict[str, Any]:
        """A rule for the API: stored fields, its live state, the last webhook outcome."""
        out: dict[str, Any] = msgspec.to_builtins(rule)
        out.pop("webhookSecret", None)
        out["hasWebhookSecret"] = bool(rule.webhook_secret)
        state = self.engine.state(rule.id)
        out["status"] = state.status.value if state else AlertStatus.OK.value
        out["value"] = round(state.value, 3) if state else None
        out["lastDelivery"] = self.last_delivery.get(rule.id)
        return out


# -- routes -----------------------------------------------------------------------


def service_of(request: Request[Any, Any, Any]) -> AlertService:
    return required(state_of(request).parts.alerts, "install_alerts")


def _json(body: Any, status: int = 200) -> Response[bytes]:
    return Response(_encoder.encode(body), status_code=status, media_type=JSON)


@post("/v1/alerts/rules", status_code=201, summary="Create an alert rule (admin)", tags=["alerts"])
async def create_rule(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Body: ``{"name", "kind", "eventType"?, "threshold", "windowSeconds"?, "webhookUrl"?}``."""
    state = state_of(request)
    key = await authenticate(request, "admin")
    body = await read_json_body(request, state)
    try:
        rule = validate_rule(_rule_decoder.decode(body))
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_rule", str(exc)) from None
    except ConfigError as exc:
        raise ApiError(400, "invalid_rule", str(exc)) from None
    service = service_of(request)
    stored = await service.create_rule(key.project, rule)
    return _json(service.describe(stored), 201)


@get("/v1/alerts/rules", summary="List the project's alert rules (admin)", tags=["alerts"])
async def list_rules(request: Request[Any, Any, Any]) -> Response[bytes]:
    key = await authenticate(request, "admin")
    service = service_of(request)
    rules = await service.project_rules(key.project)
    return _json({"rules": [service.describe(r) for r in rules]})


@delete(
    "/v1/alerts/rules/{rule_id:str}",
    status_code=204,
    summary="Delete an alert rule (admin)",
    tags=["alerts"],
)
async def delete_rule(request: Request[Any, Any, Any], rule_id: str) -> None:
    key = await authenticate(request, "admin")
    if not await service_of(request).delete_rule(key.project, rule_id):
        raise ApiError(404, "not_found", f"no alert rule {rule_id!r} in this project")


@get("/v1/alerts", summary="Firing alerts and recent transitions (read)", tags=["alerts"])
async def list_alerts(request: Request[Any, Any, Any]) -> Response[bytes]:
    """What the dashboard shows: rules now firing and the latest notices (no webhook URLs)."""
    key = await authenticate(request, "read")
    service = service_of(request)
    firing = []
    for rule in service.engine.rules:
        state = service.engine.state(rule.id)
        if rule.project == key.project and state and state.status is AlertStatus.FIRING:
            notice = AlertNotice(rule=rule, status=state.status, value=state.value, at=state.since)
            firing.append(notice.payload())
    recent = [p for p in service.recent if p["project"] == key.project]
    return _json({"firing": firing, "recent": recent[::-1]})


ALERT_HANDLERS: Final = (create_rule, list_rules, delete_rule, list_alerts)


def install_alerts(state: ServerState, app: Litestar) -> None:
    """``on_state`` hook: the service observes ingest and runs with the app's lifespan.

    Raises ``ConfigError`` for a bad ``INNKT_ALERT_*`` variable.
    """
    service = AlertService(
        kv_of(state), AlertSettings.from_env(), state.storage, functools.partial(persons_for, state)
    )
    state.parts.alerts = service
    state.observers.append(service)
    state.health_sections["alerts"] = service.health

    async def start() -> None:
        # Looked up at startup, when every install_* hook has run, whatever their order.
        if state.parts.hub is not None:
            service.publishers.append(state.parts.hub.publish)
        await service.start()

    app.on_startup.append(start)
    # Before the key-value store closes (shutdown hooks run in list order).
    app.on_shutdown.insert(0, service.stop)
