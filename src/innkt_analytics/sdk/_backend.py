"""``AnalyticsBackendService``: the SDK's front door, with background workers.

``track()`` appends a small record to an in-memory ring (no lock, no I/O); a
committer thread encodes and commits groups to the bounded queue; a sender
thread claims chunks, drives ``delivery_flow`` over the transport and deletes
what the server acknowledged. ``flush()`` commits in the caller's thread, then
waits for delivery. Nothing here raises into the host app for transport
problems; the guarantees are spelled out in docs/sdk.md.

What the asyncio service shares with this one is ``ServiceBase`` (``_service.py``);
this module is the thread-backed sender.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence

from innkt_analytics.sdk._config import BackendConfig
from innkt_analytics.sdk._queue import (
    QueuedChunk,
)
from innkt_analytics.sdk._service import DropCallback, ServiceBase, abandoned_transports, log
from innkt_analytics.sdk._transport import (
    HealthStatus,
    HttpTransport,
    Send,
    ServiceState,
    ServiceStatus,
    Transport,
    TransportCore,
    Verdict,
)
from innkt_analytics.shared._exceptions import ConnectionStateError, StorageError

__all__ = [
    "AnalyticsBackendService",
    "DropCallback",
    "ServiceBase",
    "ServiceState",
    "ServiceStatus",
]


class AnalyticsBackendService(ServiceBase):
    """The sync service: ``track`` in any thread, delivery in a background thread.

    ``AnalyticsBackendService(config)`` starts at once; ``get_instance()`` gives
    the process-wide one, started by ``initialize(config)``. ``transport`` replaces
    the HTTP transport (see ``innkt_analytics.testing``).
    """

    def __init__(
        self,
        config: BackendConfig | None = None,
        *,
        transport: Transport | None = None,
        on_drop: DropCallback | None = None,
    ) -> None:
        super().__init__(on_drop=on_drop)
        self._custom_transport = transport
        self._transport: Transport | None = transport
        self._sender: threading.Thread | None = None
        self._sender_cond = threading.Condition(self._lock)
        self._sender_wake = False
        self._interrupt = threading.Event()
        self._transport_dirty = False
        if config is not None:
            self.initialize(config)

    def _init_locks(self) -> None:
        super()._init_locks()
        self._sender_cond = threading.Condition(self._lock)
        self._interrupt = threading.Event()

    def initialize(self, config: BackendConfig) -> None:
        """Open the queue and start the worker threads.

        Raises ``ConfigError`` for a bad config, ``StorageError`` when the queue file
        cannot be opened, ``ConnectionStateError`` when already initialized.
        """
        self._start_common(config)
        self._start_sender()

    def _start_sender(self) -> None:
        if self._transport is None:
            self._transport = self._custom_transport or HttpTransport(
                TransportCore.from_config(self.config), self.config.timeout
            )
        self._sender = threading.Thread(
            target=self._sender_main, name="innkt-analytics-sender", daemon=True
        )
        self._sender.start()

    def _wake_sender(self) -> None:
        with self._sender_cond:
            self._sender_wake = True
            self._sender_cond.notify_all()

    def _interrupt_sender(self) -> None:
        self._interrupt.set()

    def _transport_changed(self) -> None:
        self._transport_dirty = True

    # -- the sender thread ---------------------------------------------------------------

    def _sender_main(self) -> None:
        while not self._stopping.is_set():
            try:
                self._sender_step()
            except Exception as exc:  # never die silently; the queue keeps the events
                log.exception("innkt-analytics sender failed")
                with self._lock:
                    if self._core is not None:
                        self._core.last_error = f"sender: {exc}"
                self._stopping.wait(0.5)

    def _sender_step(self) -> None:
        core, queue = self._core, self._queue
        if core is None or queue is None:
            return
        if self._transport_dirty and self._custom_transport is None:
            self._transport_dirty = False
            old, self._transport = (
                self._transport,
                HttpTransport(TransportCore.from_config(self.config), self.config.timeout),
            )
            if old is not None:
                old.close()
        transport = self._transport
        if transport is None:
            return
        flush_seq, flush, config_due, maintenance, probe = self._plan(core)
        if config_due:
            self._apply_fetched(transport.fetch_config())
        if maintenance:
            self._maintain(queue)
        if probe:
            health = transport.check_health()
            with self._lock:
                core.on_probe(health, time.monotonic())
        events, send = self._send_due(core, queue, flush)
        if send:
            chunks = self._claim(queue)
            if chunks:
                self._deliver(transport, chunks)
                return  # look again at once: more may be due
        with self._sender_cond:
            wait = self._round_over(core, flush_seq, flush, events)
            self._sender_cond.notify_all()  # a flush may be done
            if self._sender_wake or self._stopping.is_set():
                self._sender_wake = False
                return
            self._sender_cond.wait(wait)
            self._sender_wake = False

    def _deliver(self, transport: Transport, chunks: Sequence[QueuedChunk]) -> None:
        rowids = [c.rowid for c in chunks]
        flow = self._flow([c.payload for c in chunks], sum(c.count for c in chunks))
        self._interrupt.clear()
        verdict: Verdict | None = None
        try:
            step = next(flow)
            while True:
                if isinstance(step, Send):
                    result = transport.send_batch(step.body)
                    self._record(result)
                    step = flow.send(result)
                elif self._interrupt.wait(step.seconds) or self._stopping.is_set():
                    flow.close()
                    break
                else:
                    step = flow.send(None)
        except StopIteration as stop:
            verdict = stop.value
        self._finish_delivery(verdict, rowids)
        with self._sender_cond:
            self._sender_cond.notify_all()

    # -- the caller's side -----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Commit everything tracked before this call to the queue (in this thread),
        then wait up to ``timeout`` seconds (default ``shutdown_timeout``) for the server
        to acknowledge it.

        Returns True when all of it was acknowledged (or dropped and counted), False
        when some is still queued on disk (offline, paused, halted, timeout). Never
        raises for transport problems.
        """
        if self._lifecycle is not ServiceState.RUNNING:
            return self._lifecycle is ServiceState.CLOSED and not self._ring
        self._ensure_started()
        deadline = time.monotonic() + (self.config.shutdown_timeout if timeout is None else timeout)
        watermark = self.commit()
        queue = self._queue
        if queue is None:
            return False
        # A process killed mid-send left its claims: release them now, or a short-lived
        # process would find nothing it may send and return before delivering them.
        # Re-read the depth too: another process sharing the file may have sent some.
        with contextlib.suppress(StorageError):  # pending_through reports a broken queue
            self._maintain(queue)
        with self._sender_cond:
            self._flush_requested += 1
            ticket = self._flush_requested
            self._sender_wake = True
            self._sender_cond.notify_all()
        while True:
            try:
                if not queue.pending_through(watermark):
                    return True
            except StorageError:
                return False
            with self._sender_cond:
                if self._flush_done >= ticket:
                    # The sender could do no more for this flush: re-check once, then give up.
                    return not queue.pending_through(watermark)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._sender_cond.wait(min(remaining, 0.05))

    def check_backend_health(self) -> HealthStatus:
        """Probe ``GET /v1/health`` now: status, latency in ms, server version. Never raises
        for transport problems; raises ``ConnectionStateError`` before ``initialize``."""
        self._ensure_started()  # a forked child probes with its own connection
        transport = self._transport
        if transport is None:
            raise ConnectionStateError("the service is not initialized")
        return transport.check_health()

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush with a deadline (default ``shutdown_timeout``), stop the workers, close
        the queue. Returns what ``flush`` returned. Idempotent; never raises for
        transport problems.
        """
        needless = self._shutdown_needless()
        if needless is not None:
            return needless
        budget = self.config.shutdown_timeout if timeout is None else timeout
        start = time.monotonic()
        ok = self.flush(budget)
        with self._lock:
            self._open = False
            self._lifecycle = ServiceState.CLOSED
        self._stopping.set()
        self._interrupt.set()
        self._commit_wake.set()
        self._wake_sender()
        grace = max(0.5, budget - (time.monotonic() - start))
        for thread in (self._committer, self._sender):
            if thread is not None and thread is not threading.current_thread():
                thread.join(grace)
        # Anything handed over while we flushed is committed, not lost.
        with contextlib.suppress(StorageError):
            self.commit()
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
        if self._queue is not None:
            with contextlib.suppress(StorageError):
                self._queue.close()
        self._unregister()
        return ok and not self._ring

    def _atexit(self) -> None:
        if self._lifecycle is ServiceState.RUNNING and self._config is not None:
            self.shutdown(self._config.atexit_timeout)

    def _forget_parent_io(self) -> None:
        if self._transport is not None and self._custom_transport is None:
            abandoned_transports.append(self._transport)
            self._transport = None
        self._sender = None
        self._committer = None
        self._flush_requested = self._flush_done = 0
