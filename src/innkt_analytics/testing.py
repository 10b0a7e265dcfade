"""Helpers for testing code that uses the SDK, without a server.

``CapturingTransport`` stands in for the HTTP transport: it parses each batch
with the same protocol core the server uses (``parse_batch``), keeps the valid
events (deduplicated by ``eventId``, like the server) and answers like the
server would, so an app's tests see real batching, encoding and validation::

    from innkt_analytics.testing import CapturingTransport, capturing_service

    def test_checkout_is_tracked():
        transport = CapturingTransport()
        service = capturing_service(transport)
        checkout(service)                    # the code under test calls service.track()
        service.flush(5)
        assert [e.event_type for e in transport.events] == ["checkout"]
        service.shutdown()

``fail_next(n, status)`` makes the next ``n`` batches fail (e.g. 503) to test
an app's behaviour while the backend is down.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import msgspec

from innkt_analytics.sdk._backend import AnalyticsBackendService
from innkt_analytics.sdk._config import BackendConfig, QueueMode
from innkt_analytics.sdk._transport import HealthStatus, SendResult, TransportCore
from innkt_analytics.shared._protocol import (
    ClientConfig,
    ErrorBody,
    Event,
    IngestResponse,
    Limits,
    ProtocolError,
    parse_batch,
)

__all__ = ["AsyncCapturingTransport", "CapturingTransport", "capturing_service"]

_encoder = msgspec.json.Encoder()


class CapturingTransport:
    """An in-process ``Transport`` that records what the SDK sends. Thread-safe."""

    def __init__(
        self, *, limits: Limits | None = None, remote_config: ClientConfig | None = None
    ) -> None:
        self.limits = limits or Limits()
        self.remote_config = remote_config
        #: every accepted event, in arrival order, without duplicates
        self.events: list[Event] = []
        #: every request body received (uncompressed JSON), failed ones included
        self.bodies: list[bytes] = []
        self.healthy = True
        self._seen: set[str] = set()
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._core = TransportCore("http://capturing.invalid", "test", compression=False)

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """Answer the next ``n`` batches with ``status`` (0 means a network error)."""
        with self._lock:
            self._failures.extend([status] * n)

    @property
    def event_ids(self) -> list[str]:
        with self._lock:
            return [e.event_id for e in self.events]

    def send_batch(self, body: bytes) -> SendResult:
        """Parse and store the batch; never raises."""
        with self._lock:
            self.bodies.append(body)
            if self._failures:
                status = self._failures.pop(0)
                if status == 0:
                    return self._core.network_error(ConnectionError("injected failure"), 0.0)
                error = ErrorBody(error="injected", message=f"injected {status}")
                return self._core.classify(status, {}, _encoder.encode(error), 0.0)
            try:
                parsed = parse_batch(body, self.limits, dt.datetime.now(dt.UTC))
            except ProtocolError as exc:
                error = ErrorBody(error=exc.code, message=exc.message)
                return self._core.classify(exc.status, {}, _encoder.encode(error), 0.0)
            if parsed.rejected and not parsed.valid:
                error = ErrorBody(error="invalid_batch", message="", rejected=parsed.rejected)
                return self._core.classify(400, {}, _encoder.encode(error), 0.0)
            accepted = 0
            for valid in parsed.valid:
                if valid.event.event_id not in self._seen:
                    self._seen.add(valid.event.event_id)
                    self.events.append(valid.event)
                    accepted += 1
            answer = IngestResponse(
                accepted=accepted,
                duplicates=len(parsed.valid) - accepted,
                rejected=parsed.rejected,
            )
            return self._core.classify(200, {}, _encoder.encode(answer), 0.0)

    def check_health(self) -> HealthStatus:
        if self.healthy:
            return HealthStatus(True, "ok", 0.0, "testing")
        return HealthStatus(False, "unreachable", 0.0, error="marked unhealthy")

    def fetch_config(self) -> ClientConfig | None:
        return self.remote_config

    def close(self) -> None:
        pass


class AsyncCapturingTransport:
    """The asyncio flavour of ``CapturingTransport`` (same state, awaited methods)."""

    def __init__(self, inner: CapturingTransport | None = None) -> None:
        self.inner = inner or CapturingTransport()

    @property
    def events(self) -> list[Event]:
        return self.inner.events

    async def send_batch(self, body: bytes) -> SendResult:
        return self.inner.send_batch(body)

    async def check_health(self) -> HealthStatus:
        return self.inner.check_health()

    async def fetch_config(self) -> ClientConfig | None:
        return self.inner.fetch_config()

    async def aclose(self) -> None:
        pass


def capturing_service(
    transport: CapturingTransport | None = None, **options: Any
) -> AnalyticsBackendService:
    """A started service that sends to ``transport`` (a new ``CapturingTransport`` by
    default), with a memory queue and short intervals; ``options`` override any
    ``BackendConfig`` field. Raises ``ConfigError`` for a bad option.
    """
    settings: dict[str, Any] = {
        "base_url": "http://capturing.invalid",
        "api_key": "test",
        "queue_mode": QueueMode.MEMORY,
        "sync_interval": 0.05,
        "commit_interval": 0.01,
        "retry_delay": 0.01,
        "max_retry_delay": 0.05,
        "config_refresh_interval": 0,
        "atexit_timeout": 0.5,
    }
    settings.update(options)
    return AnalyticsBackendService(
        BackendConfig(**settings), transport=transport or CapturingTransport()
    )
