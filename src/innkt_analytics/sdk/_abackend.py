"""``AsyncAnalyticsBackendService``: the asyncio flavour of the backend service.

It shares everything but the sender with the sync service (``ServiceBase``):
``track``/``send_event`` are the same non-blocking calls, the same committer
thread writes the same queue, and the same ``delivery_flow`` and
``DeliveryCore`` decide what to send, retry and drop. Only the sender differs:
an asyncio task that awaits an ``AsyncTransport`` and runs the (short, local)
SQLite calls in a worker thread so that the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from innkt_analytics.sdk._config import BackendConfig
from innkt_analytics.sdk._queue import QueuedChunk
from innkt_analytics.sdk._service import DropCallback, ServiceBase, abandoned_transports
from innkt_analytics.sdk._transport import (
    AsyncHttpTransport,
    AsyncTransport,
    HealthStatus,
    Send,
    ServiceState,
    TransportCore,
    Verdict,
)
from innkt_analytics.shared._exceptions import ConnectionStateError, StorageError

__all__ = ["AsyncAnalyticsBackendService"]

log = logging.getLogger("innkt_analytics")
T = TypeVar("T")


class AsyncAnalyticsBackendService(ServiceBase):
    """The asyncio service: ``await initialize(config)`` inside a running loop, then
    ``track`` from anywhere, ``await flush()``, ``await shutdown()``.
    """

    def __init__(
        self,
        *,
        transport: AsyncTransport | None = None,
        on_drop: DropCallback | None = None,
    ) -> None:
        super().__init__(on_drop=on_drop)
        self._custom_transport = transport
        self._transport: AsyncTransport | None = transport
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._interrupt_flag: asyncio.Event | None = None
        self._transport_dirty = False

    async def initialize(self, config: BackendConfig) -> None:
        """Open the queue, start the committer thread and the sender task.

        Raises ``ConfigError``, ``StorageError`` or ``ConnectionStateError`` (see the
        sync ``initialize``).
        """
        self._loop = asyncio.get_running_loop()
        self._start_common(config)
        self._start_sender()

    def _start_sender(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a forked child outside a loop: the next awaited call starts it
        self._loop = loop
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._interrupt_flag = asyncio.Event()
        if self._transport is None:
            self._transport = self._custom_transport or AsyncHttpTransport(
                TransportCore.from_config(self.config), self.config.timeout
            )
        self._task = loop.create_task(self._sender_main(), name="innkt-analytics-sender")

    def _ensure_sender(self) -> None:
        self._ensure_started()
        if self._task is None and self._lifecycle is ServiceState.RUNNING:
            self._start_sender()

    def _call_in_loop(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(fn)

    def _wake_sender(self) -> None:
        wake = self._wake
        if wake is not None:
            self._call_in_loop(wake.set)

    def _interrupt_sender(self) -> None:
        flag = self._interrupt_flag
        if flag is not None:
            self._call_in_loop(flag.set)

    def _transport_changed(self) -> None:
        self._transport_dirty = True

    @staticmethod
    async def _io(fn: Callable[..., T], *args: Any) -> T:
        # Queue calls are short but touch the disk: keep them off the event loop.
        return await asyncio.to_thread(fn, *args)

    # -- the sender task -----------------------------------------------------------------

    async def _sender_main(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._sender_step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never die silently; the queue keeps the events
                log.exception("innkt-analytics async sender failed")
                with self._lock:
                    if self._core is not None:
                        self._core.last_error = f"sender: {exc}"
                await asyncio.sleep(0.5)

    async def _sender_step(self) -> None:
        core, queue, wake = self._core, self._queue, self._wake
        if core is None or queue is None or wake is None:
            return
        if self._transport_dirty and self._custom_transport is None:
            self._transport_dirty = False
            old, self._transport = (
                self._transport,
                AsyncHttpTransport(TransportCore.from_config(self.config), self.config.timeout),
            )
            if old is not None:
                await old.aclose()
        transport = self._transport
        if transport is None:
            return
        flush_seq, flush, config_due, maintenance, probe = self._plan(core)
        if config_due:
            self._apply_fetched(await transport.fetch_config())
        if maintenance:
            await self._io(self._maintain, queue)
        if probe:
            health = await transport.check_health()
            with self._lock:
                core.on_probe(health, time.monotonic())
        events, send = self._send_due(core, queue, flush)
        if send:
            chunks = await self._io(self._claim, queue)
            if chunks:
                await self._deliver(transport, chunks)
                return  # look again at once: more may be due
        wait = self._round_over(core, flush_seq, flush, events)
        self._signal_progress()  # a flush may be done
        if wake.is_set() or self._stopping.is_set():
            wake.clear()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), wait)
        wake.clear()

    def _signal_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()

    async def _deliver(self, transport: AsyncTransport, chunks: Sequence[QueuedChunk]) -> None:
        rowids = [c.rowid for c in chunks]
        flow = self._flow([c.payload for c in chunks], sum(c.count for c in chunks))
        interrupt = self._interrupt_flag
        if interrupt is not None:
            interrupt.clear()
        verdict: Verdict | None = None
        try:
            step = next(flow)
            while True:
                if isinstance(step, Send):
                    result = await transport.send_batch(step.body)
                    self._record(result)
                    step = flow.send(result)
                elif await self._interrupted(step.seconds):
                    flow.close()
                    break
                else:
                    step = flow.send(None)
        except StopIteration as stop:
            verdict = stop.value
        await self._io(self._finish_delivery, verdict, rowids)
        self._signal_progress()

    async def _interrupted(self, seconds: float) -> bool:
        flag = self._interrupt_flag
        if flag is None:
            await asyncio.sleep(seconds)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flag.wait(), seconds)
        return self._stopping.is_set() or (flag is not None and flag.is_set())

    # -- the caller's side ------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - the seed API
        """Commit everything tracked before this call, then wait up to ``timeout``
        seconds for the server to acknowledge it. Same contract as the sync ``flush``.
        """
        if self._lifecycle is not ServiceState.RUNNING:
            return self._lifecycle is ServiceState.CLOSED and not self._ring
        self._ensure_sender()
        budget = self.config.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        # The commit is local disk work: do it in a thread, but do it before returning.
        watermark = await self._io(self.commit)
        queue, progress = self._queue, self._progress
        if queue is None or progress is None:
            return False
        # A process killed mid-send left its claims: release them now, and re-read the
        # depth (see the sync flush).
        with contextlib.suppress(StorageError):  # pending_through reports a broken queue
            await self._io(self._maintain, queue)
        self._flush_requested += 1
        ticket = self._flush_requested
        self._wake_sender()
        while True:
            try:
                if not await self._io(queue.pending_through, watermark):
                    return True
            except StorageError:
                return False
            if self._flush_done >= ticket:
                return not await self._io(queue.pending_through, watermark)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), min(remaining, 0.05))

    async def check_backend_health(self) -> HealthStatus:
        """Probe ``GET /v1/health`` now. Never raises for transport problems; raises
        ``ConnectionStateError`` before ``initialize``."""
        self._ensure_sender()
        transport = self._transport
        if transport is None:
            raise ConnectionStateError("the service is not initialized")
        return await transport.check_health()

    async def shutdown(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - seed API
        """Flush with a deadline, stop the sender task and the committer, close the
        queue. Returns what ``flush`` returned. Idempotent.
        """
        needless = self._shutdown_needless()
        if needless is not None:
            return needless
        budget = self.config.shutdown_timeout if timeout is None else timeout
        ok = await self.flush(budget)
        with self._lock:
            self._open = False
            self._lifecycle = ServiceState.CLOSED
        self._stopping.set()
        self._commit_wake.set()
        self._interrupt_sender()
        self._wake_sender()
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), 1.0)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._io(self._close_local)
        if self._transport is not None:
            with contextlib.suppress(Exception):
                await self._transport.aclose()
        return ok and not self._ring

    def _close_local(self) -> None:
        # Committer stopped, last handed-over events committed, queue closed: no loss.
        if self._committer is not None:
            self._committer.join(2.0)
        with contextlib.suppress(StorageError):
            self.commit()
        if self._queue is not None:
            with contextlib.suppress(StorageError):
                self._queue.close()
        self._unregister()

    def _atexit(self) -> None:
        # The event loop is gone at interpreter exit: no network, but whatever was
        # handed over is committed to the durable queue and sent by the next run.
        if self._lifecycle is ServiceState.RUNNING:
            with self._lock:
                self._open = False
                self._lifecycle = ServiceState.CLOSED
            self._stopping.set()
            self._commit_wake.set()
            self._close_local()

    def _forget_parent_io(self) -> None:
        if self._transport is not None and self._custom_transport is None:
            # The parent's sockets: kept referenced, never closed or used here.
            abandoned_transports.append(self._transport)
            self._transport = None
        self._task = None
        self._loop = None
        self._wake = self._progress = self._interrupt_flag = None
        self._committer = None
        self._flush_requested = self._flush_done = 0
