"""``/metrics`` in the Prometheus text format, and the per-request counting.

What is exported (all names start ``innkt_``; see docs/operations.md):

* ``http_requests_total{route,method,status}`` — per response; ``route`` is the
  route's template (``/v1/keys/{key_id:str}``), ``unmatched`` for 404s, so the
  number of series stays bounded whatever paths clients try;
* ``ingest_events_total{outcome}`` (accepted, duplicate, rejected, suppressed),
  ``ingest_batches_total``, ``commit_duration_seconds`` (histogram: from handing
  a batch to storage to its durable commit), ``commit_queue_depth`` and
  ``commit_queue_lag_seconds`` (batches waiting for the writer now, and the
  oldest one's wait);
* ``websocket_connections``, ``websocket_dropped_messages_total``;
* ``rate_limit_decisions_total{decision}``, ``key_cache_lookups_total{result}``;
* ``insights_cache_lookups_total{result}`` (answers from the cache or computed) and
  ``insights_query_errors_total{error}`` (``query_timeout``, ``query_too_large``);
* ``storage_up``, ``storage_size_bytes``, ``storage_events``, and
  ``storage_detail{name}`` for each number the storage engine reports in its
  health (e.g. PostgreSQL's slow inserts);
* ``ready``, ``uptime_seconds``, ``build_info{version}`` and the process's CPU,
  memory and file descriptors (``process_*``).

Most values are read when scraped, from counters the hot paths keep as plain
integers (``_metrics.ServerMetrics``, the hub, the key cache): a scrape costs a
storage health check; a request costs one counter update.

``/metrics`` on the API port needs an admin key. ``INNKT_METRICS_ADDRESS``
(``host:port``) also serves it without a key on a separate listener, meant for
a private interface that only the monitoring system reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any, Final

from litestar import Litestar, Request, Response, get
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from innkt_analytics.server._metrics import ServerMetrics
from innkt_analytics.server._state import ServerState, authenticate, required, state_of
from innkt_analytics.server.insights._cache import insights_of
from innkt_analytics.server.storage import StorageHealth, StorageStatus

__all__ = ["METRICS_HANDLERS", "install_metrics", "render_metrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
_HEAD_LIMIT: Final = 8192


class _Collector:
    """Builds the metric families from one snapshot taken just before rendering."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.health: StorageHealth | None = None

    def collect(self) -> Iterator[Metric]:
        state, m = self.state, self.state.metrics
        yield from _requests(m)
        yield from _ingest(m)
        hub = state.parts.hub
        connections = GaugeMetricFamily(
            "innkt_websocket_connections", "Open real-time WebSocket connections"
        )
        connections.add_metric([], hub.count if hub is not None else 0)
        yield connections
        dropped = CounterMetricFamily(
            "innkt_websocket_dropped_messages",
            "Messages dropped for slow real-time clients (each client is told how many)",
        )
        dropped.add_metric([], hub.dropped if hub is not None else 0)
        yield dropped
        decisions = CounterMetricFamily(
            "innkt_rate_limit_decisions",
            "Rate-limit decisions on authenticated requests and WebSocket handshakes",
            labels=["decision"],
        )
        for decision, n in m.rate_limit.items():
            decisions.add_metric([decision], n)
        yield decisions
        lookups = CounterMetricFamily(
            "innkt_key_cache_lookups",
            "API key lookups answered by the cache (hit) or by storage (miss)",
            labels=["result"],
        )
        lookups.add_metric(["hit"], state.keys.hits)
        lookups.add_metric(["miss"], state.keys.misses)
        yield lookups
        yield from _insights(state)
        if self.health is not None:
            yield from _storage(self.health)
        uptime = GaugeMetricFamily("innkt_uptime_seconds", "Seconds since the server started")
        uptime.add_metric([], time.monotonic() - state.started)
        yield uptime
        info = GaugeMetricFamily("innkt_build_info", "The server's version", labels=["version"])
        info.add_metric([state.version], 1)
        yield info
        ready = GaugeMetricFamily(
            "innkt_ready", "1 while serving with usable storage (as /v1/health/ready)"
        )
        ready.add_metric([], 1 if self._ready() else 0)
        yield ready

    def _ready(self) -> bool:
        lifecycle = self.state.parts.lifecycle
        serving = lifecycle is None or lifecycle.phase.value == "serving"
        return serving and self.health is not None and self.health.status is StorageStatus.OK


def _requests(m: ServerMetrics) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "innkt_http_requests",
        "HTTP responses by route template, method and status",
        labels=["route", "method", "status"],
    )
    for (route, method, status), n in list(m.requests.items()):
        requests.add_metric([route, method, str(status)], n)
    yield requests


def _ingest(m: ServerMetrics) -> Iterator[Metric]:
    events = CounterMetricFamily(
        "innkt_ingest_events", "Ingested events by outcome", labels=["outcome"]
    )
    for outcome, n in m.ingest_events.items():
        events.add_metric([outcome], n)
    yield events
    batches = CounterMetricFamily("innkt_ingest_batches", "Ingest requests that reached storage")
    batches.add_metric([], m.ingest_batches)
    yield batches
    hist = m.commit_seconds
    commit = HistogramMetricFamily(
        "innkt_commit_duration_seconds",
        "From handing a batch to storage until it is durably committed",
    )
    commit.add_metric([], hist.cumulative(), sum_value=hist.total)
    yield commit
    depth, lag = m.commit_queue()
    queue = GaugeMetricFamily("innkt_commit_queue_depth", "Batches waiting for their commit now")
    queue.add_metric([], depth)
    yield queue
    waited = GaugeMetricFamily(
        "innkt_commit_queue_lag_seconds", "How long the oldest waiting batch has waited"
    )
    waited.add_metric([], lag)
    yield waited


def _insights(state: ServerState) -> Iterator[Metric]:
    runtime = insights_of(state)
    lookups = CounterMetricFamily(
        "innkt_insights_cache_lookups",
        "Insights answers served from the cache (hit) or computed (miss)",
        labels=["result"],
    )
    lookups.add_metric(["hit"], runtime.cache.hits)
    lookups.add_metric(["miss"], runtime.cache.misses)
    yield lookups
    errors = CounterMetricFamily(
        "innkt_insights_query_errors",
        "Insights queries refused past the time limit (query_timeout) or the event or"
        " memory bound (query_too_large)",
        labels=["error"],
    )
    for code in ("query_timeout", "query_too_large"):
        errors.add_metric([code], runtime.errors[code])
    yield errors


def _storage(health: StorageHealth) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "innkt_storage_up",
        "1 when storage is usable, 0 when full or unavailable",
        labels=["backend"],
    )
    up.add_metric([health.backend], 1 if health.status is StorageStatus.OK else 0)
    yield up
    size = GaugeMetricFamily("innkt_storage_size_bytes", "Bytes the database takes")
    size.add_metric([], health.size_bytes)
    yield size
    events = GaugeMetricFamily("innkt_storage_events", "Events stored (may be an estimate)")
    events.add_metric([], health.events)
    yield events
    detail = GaugeMetricFamily(
        "innkt_storage_detail", "Numbers the storage engine reports in its health", labels=["name"]
    )
    for name, value in _numbers(health.extra):
        detail.add_metric([name], value)
    yield detail


def _numbers(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for name, value in values.items():
        if isinstance(value, int | float):  # bools too: 0 or 1
            yield prefix + name, float(value)
        elif isinstance(value, dict):
            yield from _numbers(value, f"{prefix}{name}.")


async def render_metrics(state: ServerState) -> bytes:
    """The text exposition of this process's metrics (one storage health check)."""
    return await required(state.parts.metrics, "install_metrics").render()


class MetricsExporter:
    def __init__(self, state: ServerState) -> None:
        self.collector = _Collector(state)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        self._listener: asyncio.Server | None = None
        self._lock = asyncio.Lock()

    async def render(self) -> bytes:
        async with self._lock:  # one scrape at a time: they share the snapshot
            self.collector.health = await self.collector.state.storage.health()
            return generate_latest(self.registry)

    async def start(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._listener = await asyncio.start_server(
            self._serve, host.strip("[]") or "127.0.0.1", int(port), limit=_HEAD_LIMIT
        )

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(Exception):
                await self._listener.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.x answer: ``GET /metrics`` or 404, then close."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = head.split(b" ", 2)
            path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
            if parts[0] == b"GET" and path == b"/metrics":
                status, media, body = "200 OK", CONTENT_TYPE, await self.render()
            else:
                status, media, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {media}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


@get("/metrics", summary="Prometheus metrics (admin key)", tags=["health"])
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The Prometheus text format; needs an admin key (401/403 otherwise)."""
    state = state_of(request)
    await authenticate(request, "admin", rate_limited=False)
    return Response(await render_metrics(state), media_type=CONTENT_TYPE)


METRICS_HANDLERS: Final = (metrics,)


def install_metrics(state: ServerState, app: Litestar) -> None:
    """``create_app`` ``on_state`` hook: the exporter, and its own listener when
    ``INNKT_METRICS_ADDRESS`` is set (checked by ``ServerSettings``)."""
    exporter = MetricsExporter(state)
    state.parts.metrics = exporter
    address = state.settings.metrics_address
    if address:

        async def start() -> None:
            await exporter.start(address)

        app.on_startup.append(start)
        app.on_shutdown.append(exporter.stop)
