"""Talking to the server: a sans-I/O core and two thin HTTP front-ends.

``TransportCore`` builds requests and classifies answers without touching a
socket: what is delivered, what to retry, what to drop, what is fatal. The
sync ``HttpTransport`` and the asyncio ``AsyncHttpTransport`` only move bytes
(over ``_http``'s h11 clients) and convert ``OSError`` at the edge; both return
the same ``SendResult``.

A transport has one job, ``send_batch(body) -> SendResult``; the health probe
and the remote-config fetch ride on the same connection pool and credentials,
so they live on the transport too (``check_health``, ``fetch_config``).

Classification (``Outcome``):

    2xx            DELIVERED   ack; per-event rejections are reported, not retried
    400 + rejected REJECTED    every event invalid: report them, never retry
    400 otherwise  SPLIT       a body problem: halving isolates the culprit
    413            SPLIT       over a size limit: halve the batch
    408 429 5xx    RETRY       with backoff; Retry-After is a floor
    network error  RETRY       connect/read/write errors and timeouts
    401 403 404    HALT        a configuration problem: stop sending, keep the events
    3xx            HALT        the base URL points at something else
    other 4xx      DROP        the server will never take these bytes
"""

from __future__ import annotations

import datetime as dt
import enum
import gzip
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import msgspec

from innkt_analytics.sdk._config import BackendConfig
from innkt_analytics.sdk._http import AsyncHttpClient, SyncHttpClient
from innkt_analytics.sdk._queue import Dropped, event_ids_of, split_chunk
from innkt_analytics.sdk._tls import client_ssl_context, tls_failure
from innkt_analytics.shared._exceptions import ConnectionStateError
from innkt_analytics.shared._protocol import ClientConfig, ErrorBody, IngestResponse, Rejection
from innkt_analytics.shared._retry import backoff, parse_retry_after, with_floor
from innkt_analytics.shared._version import __version__

__all__ = [
    "AsyncHttpTransport",
    "AsyncTransport",
    "DeliveryCore",
    "Dropped",
    "HealthStatus",
    "HttpTransport",
    "NetworkState",
    "Outcome",
    "RetryPolicy",
    "Send",
    "SendResult",
    "ServiceState",
    "ServiceStatus",
    "Sleep",
    "Transport",
    "TransportCore",
    "Verdict",
    "assemble_body",
    "delivery_flow",
    "percentile",
]

BATCH_PATH: Final = "/v1/events/batch"
HEALTH_PATH: Final = "/v1/health"
CONFIG_PATH: Final = "/v1/config"

_encode: Final = msgspec.json.encode
_ingest_decoder: Final = msgspec.json.Decoder(IngestResponse)
_error_decoder: Final = msgspec.json.Decoder(ErrorBody)
_config_decoder: Final = msgspec.json.Decoder(ClientConfig)
_health_decoder: Final = msgspec.json.Decoder(dict[str, object])


def assemble_body(parts: Sequence[bytes], sent_at: dt.datetime) -> bytes:
    """A batch body from queued chunks (comma-joined event JSON) and ``sentAt``.

    Byte for byte what ``encode_batch(events, sent_at)`` produces for the same
    events: the queue stores exactly the bytes that go over the wire.
    """
    return b'{"events":[' + b",".join(parts) + b'],"sentAt":' + _encode(sent_at) + b"}"


class Outcome(enum.Enum):
    """What the sender does with a batch after one request; see the module docstring."""

    DELIVERED = "delivered"
    REJECTED = "rejected"
    SPLIT = "split"
    RETRY = "retry"
    HALT = "halt"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class SendResult:
    """The classified answer to one ``send_batch``."""

    outcome: Outcome
    #: HTTP status, None when no answer arrived
    status: int | None
    #: counter key: ``network``, ``timeout``, ``http_503``, ...
    reason: str
    accepted: int = 0
    duplicates: int = 0
    rejected: tuple[Rejection, ...] = ()
    #: seconds from ``Retry-After`` (or the error body's ``retryAfter``)
    retry_after: float | None = None
    #: seconds from the start of the request to the end of the answer
    latency: float = 0.0
    error: str = ""


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """Result of ``GET /v1/health``: ``healthy`` only for a 200 ``{"status": "ok"}``."""

    healthy: bool
    #: ``ok``, the server's other status word, ``http_<code>`` or ``unreachable``
    status: str
    latency_ms: float
    #: the server version (the server tells it only to read/admin keys)
    version: str | None = None
    error: str | None = None


class TransportCore:
    """Request building and answer classification shared by both transports."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        compression: bool = True,
        compression_level: int = 1,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        #: what the server's certificate is verified with (True: the system's trust store)
        self.verify = verify
        self.compression = compression
        self.compression_level = compression_level
        self.auth_headers: Final = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": f"innkt-analytics-python/{__version__}",
        }

    @classmethod
    def from_config(cls, config: BackendConfig) -> TransportCore:
        return cls(
            config.base_url,
            config.api_key,
            compression=config.compression,
            compression_level=config.compression_level,
            verify=client_ssl_context(config.ca_bundle, config.ssl_context) or True,
        )

    def batch_request(self, body: bytes) -> tuple[str, dict[str, str], bytes]:
        """(url, headers, content) of a batch request; gzips the body when configured."""
        headers = {**self.auth_headers, "Content-Type": "application/json"}
        if self.compression:
            # mtime=0: the same body always compresses to the same bytes.
            body = gzip.compress(body, compresslevel=self.compression_level, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return self.base_url + BATCH_PATH, headers, body

    def classify(
        self, status: int, headers: Mapping[str, str], content: bytes, latency: float
    ) -> SendResult:
        """Classify an HTTP answer to a batch request. Never raises."""
        retry_after = parse_retry_after(headers.get("retry-after"))
        if 200 <= status < 300:
            try:
                answer = _ingest_decoder.decode(content)
            except msgspec.DecodeError:
                # The server stores before it answers 2xx: the batch is delivered
                # even if the body is unreadable (a proxy may have rewritten it).
                return SendResult(
                    Outcome.DELIVERED, status, "ok", latency=latency, error="unreadable 2xx body"
                )
            return SendResult(
                Outcome.DELIVERED,
                status,
                "ok",
                accepted=answer.accepted,
                duplicates=answer.duplicates,
                rejected=tuple(answer.rejected),
                latency=latency,
            )
        error = self._error_body(content)
        message = error.message if error is not None else content[:200].decode("utf-8", "replace")
        if retry_after is None and error is not None and error.retry_after is not None:
            retry_after = max(0.0, error.retry_after)
        reason = f"http_{status}"
        if status == 400 and error is not None and error.rejected:
            outcome = Outcome.REJECTED
        elif status in (400, 413):
            outcome = Outcome.SPLIT
        elif status in (408, 429) or status >= 500:
            outcome = Outcome.RETRY
        elif status in (401, 403, 404) or 300 <= status < 400 or status < 200:
            outcome = Outcome.HALT
        else:
            outcome = Outcome.DROP
        return SendResult(
            outcome,
            status,
            reason,
            rejected=tuple(error.rejected or ()) if error is not None else (),
            retry_after=retry_after,
            latency=latency,
            error=message,
        )

    @staticmethod
    def _error_body(content: bytes) -> ErrorBody | None:
        try:
            return _error_decoder.decode(content)
        except msgspec.DecodeError:
            return None

    @staticmethod
    def network_error(exc: BaseException, latency: float) -> SendResult:
        """Classify an exception raised while sending (converted at the edge)."""
        reason = "timeout" if isinstance(exc, TimeoutError) else "network"
        error = tls_failure(exc) or f"{type(exc).__name__}: {exc}"
        return SendResult(Outcome.RETRY, None, reason, latency=latency, error=error)

    def health_request(self) -> tuple[str, dict[str, str]]:
        return self.base_url + HEALTH_PATH, dict(self.auth_headers)

    @staticmethod
    def parse_health(status: int, content: bytes, latency: float) -> HealthStatus:
        """Build a ``HealthStatus`` from an answer to ``GET /v1/health``. Never raises."""
        ms = latency * 1000.0
        try:
            body = _health_decoder.decode(content)
        except msgspec.DecodeError:
            body = {}
        word = body.get("status")
        version = body.get("version")
        version_text = version if isinstance(version, str) else None
        if status == 200 and word == "ok":
            return HealthStatus(True, "ok", ms, version_text)
        text = word if isinstance(word, str) else f"http_{status}"
        return HealthStatus(False, text, ms, version_text, error=f"HTTP {status}")

    @staticmethod
    def unreachable(exc: BaseException, latency: float) -> HealthStatus:
        error = tls_failure(exc) or f"{type(exc).__name__}: {exc}"
        return HealthStatus(False, "unreachable", latency * 1000.0, error=error)

    def config_request(self) -> tuple[str, dict[str, str]]:
        return self.base_url + CONFIG_PATH, dict(self.auth_headers)

    @staticmethod
    def parse_config(status: int, content: bytes) -> ClientConfig | None:
        """The ``ClientConfig`` of a 200 answer, else None. Never raises."""
        if status != 200:
            return None
        try:
            return _config_decoder.decode(content)
        except msgspec.DecodeError:
            return None


@dataclass(frozen=True, slots=True)
class Send:
    """Step of a delivery flow: send this body, then ``send()`` the ``SendResult`` back."""

    body: bytes
    events: int


@dataclass(frozen=True, slots=True)
class Sleep:
    """Step of a delivery flow: wait this long (interruptibly), then ``send(None)``."""

    seconds: float


Step = Send | Sleep


@dataclass(slots=True)
class Verdict:
    """How a delivery flow ended.

    ``settled``: every event was acknowledged or dropped, so the claimed chunks
    are deleted; otherwise they are released and sent again later (events the
    server already stored then come back as duplicates, which is harmless).
    """

    settled: bool = True
    accepted: int = 0
    duplicates: int = 0
    dropped: list[Dropped] = field(default_factory=list)
    #: the answer that ended an unsettled flow (retries exhausted, or HALT)
    last: SendResult | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of one batch: ``attempts`` after the first, backoff ``base``..``cap``."""

    attempts: int = 3
    base: float = 1.0
    cap: float = 60.0
    max_retry_after: float = 300.0
    jitter: Callable[[], float] = random.random


def delivery_flow(
    parts: Sequence[bytes],
    count: int,
    policy: RetryPolicy,
    clock: Callable[[], dt.datetime],
) -> Generator[Step, SendResult | None, Verdict]:
    """Deliver chunks (``count`` events): a generator of ``Send``/``Sleep`` steps.

    The front-end performs each step and sends the result back; the flow
    retries (backoff with full jitter, ``Retry-After`` as a clamped floor),
    splits on 413, drops rejected events, and returns a ``Verdict``. The same
    flow drives the thread worker and the asyncio task.
    """
    verdict = Verdict()
    yield from _deliver(list(parts), count, policy, clock, verdict)
    return verdict


def _deliver(
    parts: list[bytes],
    count: int,
    policy: RetryPolicy,
    clock: Callable[[], dt.datetime],
    verdict: Verdict,
) -> Generator[Step, SendResult | None, bool]:
    result = yield from _attempts(parts, count, policy, clock)
    outcome = result.outcome
    if outcome is Outcome.DELIVERED:
        verdict.accepted += result.accepted
        verdict.duplicates += result.duplicates
        verdict.dropped.extend(_rejections(parts, result))
        return True
    if outcome is Outcome.REJECTED:
        verdict.dropped.extend(_rejections(parts, result))
        # The server names every invalid event; if it named fewer, drop the rest too
        # rather than resend a batch the server has refused as a whole.
        verdict.dropped.extend(
            Dropped(None, "rejected", result.error) for _ in range(count - len(result.rejected))
        )
        return True
    if outcome is Outcome.DROP:
        _drop_all(parts, result.reason, result.error, verdict)
        return True
    if outcome is Outcome.SPLIT:
        try:
            events = [event for part in parts for event in split_chunk(part)]
        except ValueError as exc:  # msgspec.DecodeError: a corrupt queue row
            _drop_all(parts, "corrupt", str(exc), verdict)
            return True
        if len(events) <= 1:
            reason = "too_large" if result.status == 413 else "bad_request"
            _drop_all(events, reason, result.error, verdict)
            return True
        mid = len(events) // 2
        if not (yield from _deliver(events[:mid], mid, policy, clock, verdict)):
            return False
        return (yield from _deliver(events[mid:], len(events) - mid, policy, clock, verdict))
    verdict.settled = False
    verdict.last = result
    return False


def _rejections(parts: Sequence[bytes], result: SendResult) -> list[Dropped]:
    # The server names the event by its index in the request, and by eventId when it
    # could read one (not for an event too deep to parse): fill the gaps from our bytes.
    ids: list[str] = []
    if any(r.event_id is None for r in result.rejected):
        ids = [eid for part in parts for eid in event_ids_of(part)]
    out = []
    for r in result.rejected:
        eid = r.event_id
        if eid is None and 0 <= r.index < len(ids):
            eid = ids[r.index] or None
        out.append(Dropped(eid, "rejected", r.error))
    return out


def _drop_all(parts: Sequence[bytes], reason: str, detail: str, verdict: Verdict) -> None:
    for part in parts:
        verdict.dropped.extend(Dropped(eid or None, reason, detail) for eid in event_ids_of(part))


def _attempts(
    parts: list[bytes], count: int, policy: RetryPolicy, clock: Callable[[], dt.datetime]
) -> Generator[Step, SendResult | None, SendResult]:
    delays = backoff(policy.base, policy.cap, jitter=policy.jitter)
    attempt = 0
    while True:
        # sentAt is taken per attempt: the server corrects client clock skew with it.
        result = yield Send(assemble_body(parts, clock()), count)
        if result is None:
            raise TypeError("a Send step must be answered with a SendResult")
        if result.outcome is not Outcome.RETRY or attempt >= policy.attempts:
            return result
        attempt += 1
        yield Sleep(with_floor(next(delays), result.retry_after, policy.max_retry_after))


class ServiceState(enum.Enum):
    """Lifecycle of a service: NEW -> RUNNING -> CLOSED; ``initialize`` on anything
    but NEW raises ``ConnectionStateError``."""

    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class NetworkState(enum.Enum):
    """Whether the service sends. Transitions outside ``_TRANSITIONS`` raise."""

    #: sending as batches fill up or the sync interval passes
    ONLINE = "online"
    #: delivery failed: queueing only, probing ``/v1/health`` with backoff
    OFFLINE = "offline"
    #: the app said ``set_online(False)``: queueing only, no probes
    PAUSED = "paused"
    #: the server refused the credentials or the URL (401/403/404/3xx): queueing
    #: only until ``update_config`` or ``set_online(True)``
    HALTED = "halted"


_TRANSITIONS: Final = {
    NetworkState.ONLINE: frozenset(
        {NetworkState.OFFLINE, NetworkState.PAUSED, NetworkState.HALTED}
    ),
    NetworkState.OFFLINE: frozenset(
        {NetworkState.ONLINE, NetworkState.PAUSED, NetworkState.HALTED}
    ),
    NetworkState.PAUSED: frozenset({NetworkState.ONLINE}),
    NetworkState.HALTED: frozenset({NetworkState.ONLINE, NetworkState.PAUSED}),
}

#: how often the sender re-reads the queue depth and frees claims of dead processes
MAINTENANCE_INTERVAL: Final = 30.0


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1, nearest rank) of ``values``, or None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """A snapshot for dashboards and health endpoints of the host app."""

    #: ``online``, ``offline``, ``paused`` or ``halted``; see ``NetworkState``
    state: str
    online: bool
    #: events and bytes committed to the queue and not yet acknowledged
    queue_events: int
    queue_bytes: int
    #: events handed over by ``track`` and not yet committed
    buffered_events: int
    #: seconds since the oldest waiting event was tracked or committed (None: nothing waits)
    oldest_event_age: float | None
    #: events the server acknowledged: ``sent == accepted + duplicates``
    sent: int
    accepted: int
    duplicates: int
    #: requests that did not deliver, by reason (``network``, ``timeout``, ``http_503``...)
    failed: dict[str, int]
    #: events given up, by reason (``rejected``, ``queue_full``, ``sampled``...)
    dropped: dict[str, int]
    requests: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    last_error: str | None
    #: version of the last remote ``ClientConfig`` applied (None: none yet)
    config_version: int | None

    @classmethod
    def empty(cls, state: str, buffered: int, dropped: Mapping[str, int]) -> ServiceStatus:
        """The status of a service that was never started."""
        return cls(
            state=state, online=False, queue_events=0, queue_bytes=0, buffered_events=buffered,
            oldest_event_age=None, sent=0, accepted=0, duplicates=0, failed={},
            dropped=dict(dropped), requests=0, latency_p50_ms=None, latency_p95_ms=None,
            last_error=None, config_version=None,
        )  # fmt: skip


class DeliveryCore:
    """The sender's decisions, free of I/O: network state, timers and counters.

    Both the thread worker and the asyncio task ask it what is due
    (``send_due``, ``probe_due``, ``config_due``, ``next_wakeup``) and report
    back (``record``, ``settle``, ``on_probe``). ``now`` is ``time.monotonic()``.
    Not thread-safe on its own: the service calls it under its lock or from its
    single sender.
    """

    def __init__(
        self, config: BackendConfig, now: float, jitter: Callable[[], float] = random.random
    ) -> None:
        self._jitter = jitter
        self.state = NetworkState.ONLINE
        self.configure(config)
        self.consecutive_failures = 0
        #: no request before this (a server's Retry-After)
        self.hold_until = 0.0
        self.last_send = now
        self.next_probe = 0.0
        self._probe_delays: Iterator[float] = iter(())
        self.next_config = now if config.config_refresh_interval > 0 else float("inf")
        self.next_maintenance = now
        self.requests = 0
        self.accepted = 0
        self.duplicates = 0
        self.failed: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.latencies: deque[float] = deque(maxlen=1024)
        self.last_error: str | None = None

    def configure(self, config: BackendConfig) -> None:
        self.config = config
        self.policy = RetryPolicy(
            attempts=config.retry_attempts,
            base=config.retry_delay,
            cap=config.max_retry_delay,
            max_retry_after=config.max_retry_after,
            jitter=self._jitter,
        )
        if config.config_refresh_interval <= 0:
            self.next_config = float("inf")

    def transition(self, new: NetworkState, now: float = 0.0) -> None:
        """Move to ``new`` (same state: no-op). Raises ``ConnectionStateError`` if illegal."""
        if new is self.state:
            return
        if new not in _TRANSITIONS[self.state]:
            raise ConnectionStateError(f"network state {self.state.value} -> {new.value}")
        self.state = new
        if new is NetworkState.OFFLINE:
            config = self.config
            self._probe_delays = backoff(
                config.retry_delay, config.max_retry_delay, jitter=self._jitter
            )
            self.next_probe = max(now + next(self._probe_delays), self.hold_until)
        elif new is NetworkState.ONLINE:
            self.consecutive_failures = 0

    def record(self, result: SendResult) -> None:
        """Count one request's answer."""
        self.requests += 1
        if result.status is not None:
            self.latencies.append(result.latency)
        if result.outcome is not Outcome.DELIVERED:
            self.failed[result.reason] = self.failed.get(result.reason, 0) + 1
            self.last_error = result.error or result.reason

    def count_dropped(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def settle(self, verdict: Verdict, now: float) -> None:
        """Account for a finished delivery flow and move the state on."""
        self.accepted += verdict.accepted
        self.duplicates += verdict.duplicates
        for item in verdict.dropped:
            self.count_dropped(item.reason)
        self.last_send = now
        if verdict.settled:
            self.consecutive_failures = 0
            return
        last = verdict.last
        if last is not None and last.retry_after is not None:
            self.hold_until = now + min(last.retry_after, self.config.max_retry_after)
        if self.state is not NetworkState.ONLINE:
            return  # paused (or halted) while the flow ran: keep what the app said
        if last is not None and last.outcome is Outcome.HALT:
            self.transition(NetworkState.HALTED, now)
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.config.offline_after_failures:
            self.transition(NetworkState.OFFLINE, now)

    def on_probe(self, health: HealthStatus, now: float) -> None:
        """Account for a ``/v1/health`` probe made while offline."""
        if self.state is not NetworkState.OFFLINE:
            return
        if health.healthy:
            self.transition(NetworkState.ONLINE, now)
        else:
            self.last_error = health.error or health.status
            self.next_probe = max(now + next(self._probe_delays), self.hold_until)

    def send_due(self, now: float, events: int, nbytes: int, flush: bool) -> bool:
        """Whether to claim and send a batch now."""
        if self.state is not NetworkState.ONLINE or events <= 0 or now < self.hold_until:
            return False
        config = self.config
        return (
            flush
            or events >= config.batch_size
            or nbytes >= config.max_request_bytes
            or now - self.last_send >= config.sync_interval
        )

    def probe_due(self, now: float, flush: bool) -> bool:
        """Whether to probe health now (a flush does not wait for the probe backoff)."""
        return self.state is NetworkState.OFFLINE and (
            now >= self.next_probe or (flush and now >= self.hold_until)
        )

    def config_due(self, now: float) -> bool:
        if now < self.next_config:
            return False
        self.next_config = now + self.config.config_refresh_interval
        return True

    def maintenance_due(self, now: float) -> bool:
        if now < self.next_maintenance:
            return False
        self.next_maintenance = now + MAINTENANCE_INTERVAL
        return True

    def snapshot(
        self,
        depth: tuple[int, int],
        buffered: int,
        oldest: float | None,
        config_version: int | None,
    ) -> ServiceStatus:
        """The counters as a ``ServiceStatus``; ``oldest`` is a ``time.time()`` value."""
        latencies = list(self.latencies)
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        return ServiceStatus(
            state=self.state.value,
            online=self.state is NetworkState.ONLINE,
            queue_events=depth[0],
            queue_bytes=depth[1],
            buffered_events=buffered,
            oldest_event_age=None if oldest is None else max(0.0, time.time() - oldest),
            sent=self.accepted + self.duplicates,
            accepted=self.accepted,
            duplicates=self.duplicates,
            failed=dict(self.failed),
            dropped=dict(self.dropped),
            requests=self.requests,
            latency_p50_ms=None if p50 is None else p50 * 1000.0,
            latency_p95_ms=None if p95 is None else p95 * 1000.0,
            last_error=self.last_error,
            config_version=config_version,
        )

    def next_wakeup(self, now: float, events: int) -> float:
        """Seconds until something is due (capped: other processes may share the queue)."""
        due = min(self.next_config, self.next_maintenance, now + self.config.sync_interval)
        if self.state is NetworkState.OFFLINE:
            due = min(due, self.next_probe)
        elif self.state is NetworkState.ONLINE and events > 0:
            due = min(due, max(self.hold_until, self.last_send + self.config.sync_interval))
        return max(0.0, due - now)


class Transport(Protocol):
    """What the sync service needs from a transport (``testing`` has a capturing one)."""

    def send_batch(self, body: bytes) -> SendResult:
        """Send one batch body (uncompressed JSON); never raises for network problems."""
        ...

    def check_health(self) -> HealthStatus: ...

    def fetch_config(self) -> ClientConfig | None: ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """The asyncio flavour of ``Transport``."""

    async def send_batch(self, body: bytes) -> SendResult: ...

    async def check_health(self) -> HealthStatus: ...

    async def fetch_config(self) -> ClientConfig | None: ...

    async def aclose(self) -> None: ...


def _context(core: TransportCore) -> ssl.SSLContext | None:
    return core.verify if isinstance(core.verify, ssl.SSLContext) else None


class HttpTransport:
    """``Transport`` over ``_http.SyncHttpClient`` (HTTP/1.1, keep-alive)."""

    def __init__(self, core: TransportCore, timeout: float) -> None:
        self.core = core
        self._client = SyncHttpClient(core.base_url, timeout, _context(core))

    def send_batch(self, body: bytes) -> SendResult:
        _, headers, content = self.core.batch_request(body)
        start = time.perf_counter()
        try:
            response = self._client.request("POST", BATCH_PATH, headers, content)
        except OSError as exc:
            return self.core.network_error(exc, time.perf_counter() - start)
        return self.core.classify(
            response.status, response.headers, response.content, time.perf_counter() - start
        )

    def check_health(self) -> HealthStatus:
        _, headers = self.core.health_request()
        start = time.perf_counter()
        try:
            response = self._client.request("GET", HEALTH_PATH, headers)
        except OSError as exc:
            return self.core.unreachable(exc, time.perf_counter() - start)
        return self.core.parse_health(
            response.status, response.content, time.perf_counter() - start
        )

    def fetch_config(self) -> ClientConfig | None:
        _, headers = self.core.config_request()
        try:
            response = self._client.request("GET", CONFIG_PATH, headers)
        except OSError:
            return None
        return self.core.parse_config(response.status, response.content)

    def close(self) -> None:
        self._client.close()


class AsyncHttpTransport:
    """``AsyncTransport`` over ``_http.AsyncHttpClient``."""

    def __init__(self, core: TransportCore, timeout: float) -> None:
        self.core = core
        self._client = AsyncHttpClient(core.base_url, timeout, _context(core))

    async def send_batch(self, body: bytes) -> SendResult:
        _, headers, content = self.core.batch_request(body)
        start = time.perf_counter()
        try:
            response = await self._client.request("POST", BATCH_PATH, headers, content)
        except OSError as exc:
            return self.core.network_error(exc, time.perf_counter() - start)
        return self.core.classify(
            response.status, response.headers, response.content, time.perf_counter() - start
        )

    async def check_health(self) -> HealthStatus:
        _, headers = self.core.health_request()
        start = time.perf_counter()
        try:
            response = await self._client.request("GET", HEALTH_PATH, headers)
        except OSError as exc:
            return self.core.unreachable(exc, time.perf_counter() - start)
        return self.core.parse_health(
            response.status, response.content, time.perf_counter() - start
        )

    async def fetch_config(self) -> ClientConfig | None:
        _, headers = self.core.config_request()
        try:
            response = await self._client.request("GET", CONFIG_PATH, headers)
        except OSError:
            return None
        return self.core.parse_config(response.status, response.content)

    async def aclose(self) -> None:
        await self._client.aclose()
