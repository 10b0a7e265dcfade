"""``ServiceBase``: what the sync and the asyncio services share.

Intake (``track()`` appends a small record to an in-memory ring: no lock, no
I/O), the committer thread that encodes and commits groups to the bounded queue,
counters, configuration (including live updates from the server), status, and
fork/exit handling. The front-ends (``_backend.py``, ``_abackend.py``) differ
only in how the sender waits; the guarantees are spelled out in docs/sdk.md.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import datetime as dt
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, ClassVar, Final, Self, TypeAlias

from innkt_analytics.sdk._backend_privacy import PrivacyControls
from innkt_analytics.sdk._config import BackendConfig
from innkt_analytics.sdk._identity import DeviceIdentity, IdentityControls, IdentityStore
from innkt_analytics.sdk._privacy import ConsentStore, PrivacyFilter
from innkt_analytics.sdk._queue import (
    Dropped,
    EventQueue,
    QueuedChunk,
    SQLiteQueue,
    Tracked,
    encode_records,
    open_queue,
)
from innkt_analytics.sdk._transport import (
    DeliveryCore,
    NetworkState,
    SendResult,
    ServiceState,
    ServiceStatus,
    Step,
    Verdict,
    delivery_flow,
)
from innkt_analytics.shared._exceptions import ConfigError, ConnectionStateError, StorageError
from innkt_analytics.shared._ids import uuid7
from innkt_analytics.shared._protocol import ClientConfig, Event

__all__ = ["DropCallback", "ServiceBase", "abandoned_transports", "log"]

log = logging.getLogger("innkt_analytics")

DropCallback: TypeAlias = Callable[[Sequence[Dropped]], None]
_UTC: Final = dt.UTC
#: options that need a new transport when they change at runtime
_TRANSPORT_OPTIONS: Final = frozenset(
    {"base_url", "api_key", "timeout", "compression", "compression_level"}
    | {"ca_bundle", "ssl_context"}
)
_QUEUE_OPTIONS: Final = frozenset({"queue_mode", "queue_path", "queue_fsync"})
#: most records encoded and committed in one transaction
_COMMIT_GROUP: Final = 5000


_live: weakref.WeakSet[ServiceBase] = weakref.WeakSet()
#: Transports inherited across fork: kept referenced so that no finalizer closes
#: (and, with TLS, shuts down) a connection that belongs to the parent.
abandoned_transports: list[object] = []


def _after_fork_in_child() -> None:
    for service in list(_live):
        service._forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


class ServiceBase(PrivacyControls, IdentityControls):
    """What the sync and the asyncio service share: intake, committer, counters, config."""

    _instances: ClassVar[dict[type, ServiceBase]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        *,
        on_drop: DropCallback | None = None,
    ) -> None:
        self.on_drop = on_drop
        self._lifecycle = ServiceState.NEW
        self._early_drops: dict[str, int] = {}
        # The hot path reads only these plain attributes (no lock, no property).
        self._open = False
        self._ring: collections.deque[Tracked | Event] = collections.deque()
        self._buffer_size = 1
        self._sampling = 1.0
        self._disabled: frozenset[str] = frozenset()
        self._wake_at = 1
        self._session_id = ""
        self._forked = False
        # Privacy: while opted out, ``_open`` is False and ``_reopen`` counts the drop.
        self._opted_out = False
        self._privacy: PrivacyFilter | None = None
        self._consent_store: ConsentStore | None = None
        self._identity_store: IdentityStore | None = None
        self._device: DeviceIdentity | None = None
        self._init_locks()
        self._config: BackendConfig | None = None
        self._queue: EventQueue | None = None
        self._core: DeliveryCore | None = None
        self._watermark = 0
        self._config_version: int | None = None
        self._atexit_cb: Callable[[], None] | None = None
        self._committer: threading.Thread | None = None
        #: flush tickets: requested by callers, done once the sender can do no more
        self._flush_requested = 0
        self._flush_done = 0

    def _init_locks(self) -> None:
        #: guards the core, counters and lifecycle
        self._lock = threading.RLock()
        #: serialises ring draining (committer thread and flush callers)
        self._commit_lock = threading.Lock()
        self._commit_wake = threading.Event()
        self._stopping = threading.Event()

    # -- singleton (the seed's getInstance) --------------------------------------

    @classmethod
    def get_instance(cls) -> Self:
        """The process-wide instance of this class (created on first use, not started)."""
        with ServiceBase._instances_lock:
            instance = ServiceBase._instances.get(cls)
            if instance is None:
                instance = ServiceBase._instances[cls] = cls()
            if not isinstance(instance, cls):
                raise TypeError(f"singleton of {cls.__name__} has the wrong type")
            return instance

    # -- configuration -------------------------------------------------------------

    @property
    def config(self) -> BackendConfig:
        """The configuration in force. Raises ``ConnectionStateError`` before ``initialize``."""
        if self._config is None:
            raise ConnectionStateError("the service is not initialized")
        return self._config

    def _start_common(self, config: BackendConfig) -> None:
        if not isinstance(config, BackendConfig):
            raise ConfigError("config", f"must be a BackendConfig, got {type(config).__name__}")
        with self._lock:
            if self._lifecycle is not ServiceState.NEW:
                raise ConnectionStateError(f"initialize() on a {self._lifecycle.value} service")
            self._consent_store = ConsentStore(config.resolved_consent_path)
            queue_path = config.resolved_queue_path
            self._load_identity(queue_path.with_name(queue_path.name + ".identity.json"))
            self._privacy = PrivacyFilter(config.privacy, self._consent_store.load())
            self._opted_out = self._privacy.opted_out
            self._queue = open_queue(config)
            # A flush must also cover what a previous run (or a crash) left queued.
            self._watermark = self._queue.last_rowid()
            self._config = config
            self._core = DeliveryCore(config, time.monotonic())
            self._apply_hot(config)
            self._session_id = uuid7()
            self._lifecycle = ServiceState.RUNNING
            self._start_committer()
            _live.add(self)
            cb = self._atexit_cb = _make_atexit(self)
            atexit.register(cb)
            self._open = not self._opted_out

    def _apply_hot(self, config: BackendConfig) -> None:
        self._buffer_size = config.buffer_size
        self._sampling = config.sampling_rate
        self._disabled = config.disabled_event_types
        # Wake the committer early once a sizeable group is waiting.
        self._wake_at = max(1, min(config.buffer_size // 4, 4096))

    def update_config(self, **changes: Any) -> BackendConfig:
        """Change options at runtime, without a restart; returns the new configuration.

        Raises ``ConfigError`` for an invalid value or an option that cannot change
        while running (the queue's mode, path and fsync).
        """
        new = self.config.replace(**changes)  # validated before anything is committed

        def install() -> None:
            nonlocal new
            with self._lock:
                old = self.config
                new = old.replace(**changes)
                for name in _QUEUE_OPTIONS:
                    if getattr(new, name) != getattr(old, name):
                        raise ConfigError(name, "cannot change while the service runs")
                transport = any(k in _TRANSPORT_OPTIONS for k in changes)
                self._install_config(new, transport=transport)

        if new.privacy != self.config.privacy:
            # Events tracked before the call keep the privacy options they were tracked under.
            self._change_privacy(install)
        else:
            install()
        return new

    def apply_remote_config(self, remote: ClientConfig) -> bool:
        """Apply a server-side ``ClientConfig`` (from ``GET /v1/config`` or a real-time
        ``config_update``). Versions older than the one applied are ignored, and so is
        version 0: the server's built-in defaults, which no admin has set, must not
        override the app's own options.

        Returns whether it was applied. Raises ``ConfigError`` if it is out of range.
        """
        with self._lock:
            if self._config is None or remote.version <= 0:
                return False
            if self._config_version is not None and remote.version < self._config_version:
                return False
            self._install_config(self._config.with_client_config(remote), transport=False)
            self._config_version = remote.version
        return True

    def _install_config(self, config: BackendConfig, *, transport: bool) -> None:
        core = self._core
        queue = self._queue
        if core is None or queue is None:
            raise ConnectionStateError("the service is not initialized")
        self._config = config
        if self._privacy is not None:
            self._privacy.config = config.privacy
        core.configure(config)
        queue.set_bounds(config.max_queue_events, config.max_queue_bytes, config.overflow_policy)
        self._apply_hot(config)
        if transport:
            self._transport_changed()
            if core.state is NetworkState.HALTED:
                core.transition(NetworkState.ONLINE, time.monotonic())
        self._wake_sender()

    def _transport_changed(self) -> None:
        """The front-end rebuilds its transport before the next request."""

    # -- intake: the caller's side -------------------------------------------------

    def track(
        self,
        event_type: str,
        properties: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> bool:
        """Record an event; the id (UUIDv7), timestamp and session are filled in.

        Returns True when the event was handed to the worker, False when it was
        dropped (sampled out, disabled type, buffer full, service not running);
        every drop is counted in ``get_status().dropped``. Never blocks on the
        network, never raises for transport problems. ``properties`` is encoded
        by the worker within ``commit_interval``: do not mutate it afterwards.
        """
        device = self._device  # the ids as of this call, whatever reset() does later
        if device is not None:
            return self._hand_over(
                event_type,
                (
                    time.time(),
                    event_type,
                    properties,
                    session_id,
                    device.user_id if user_id is None else user_id,
                    device.anonymous_id,
                ),
            )
        return self._hand_over(
            event_type, (time.time(), event_type, properties, session_id, user_id)
        )

    def send_event(self, event: Event) -> bool:
        """Queue a complete ``Event`` (the seed's ``sendEvent``); same contract as ``track``."""
        candidate: object = event  # typed, but callers pass anything
        if not isinstance(candidate, Event):
            return self._count_drop("invalid")
        return self._hand_over(candidate.event_type, candidate)

    def _hand_over(self, event_type: str, record: Tracked | Event) -> bool:
        if not self._open and not self._reopen():
            return False
        try:  # not contextlib.suppress: building a context manager per event costs µs
            if event_type in self._disabled:
                return self._count_drop("disabled_type")
        except TypeError:
            pass  # unhashable, so not a type name: the worker reports it as invalid
        if self._sampling < 1.0 and random.random() >= self._sampling:
            return self._count_drop("sampled")
        ring = self._ring
        if len(ring) >= self._wake_at:
            if len(ring) >= self._buffer_size:
                return self._count_drop("buffer_full")
            if not self._commit_wake.is_set():  # set() takes a lock: only once
                self._commit_wake.set()
        ring.append(record)
        return True

    def send_events(self, events: Iterable[Event]) -> int:
        """Queue several events; returns how many were handed over (see ``send_event``)."""
        return sum(map(self.send_event, events))

    def _reopen(self) -> bool:
        """The slow path of ``track``: restart in a forked child, or count the drop."""
        if self._opted_out and self._lifecycle is ServiceState.RUNNING:
            return self._count_drop("opted_out")
        if self._forked and self._lifecycle is ServiceState.RUNNING:
            self._restart_after_fork()
            if self._open:
                return True
        self._count_drop("closed" if self._lifecycle is ServiceState.CLOSED else "not_initialized")
        return False

    def _running(self) -> bool:
        return self._lifecycle is ServiceState.RUNNING

    def _count_drop(self, reason: str, n: int = 1) -> bool:
        with self._lock:
            if self._core is not None:
                self._core.count_dropped(reason, n)
            else:
                # Before initialize there is no core: keep the count for later.
                self._early_drops[reason] = self._early_drops.get(reason, 0) + n
        return False

    # -- committer -------------------------------------------------------------------

    def _start_committer(self) -> None:
        self._committer = threading.Thread(
            target=self._committer_main, name="innkt-analytics-committer", daemon=True
        )
        self._committer.start()

    def _committer_main(self) -> None:
        while not self._stopping.is_set():
            self._commit_wake.wait(self.config.commit_interval)
            self._commit_wake.clear()
            try:
                self.commit()
            except Exception as exc:  # a worker thread must never die silently
                log.exception("innkt-analytics committer failed")
                with self._lock:
                    if self._core is not None:
                        self._core.last_error = f"committer: {exc}"

    def commit(self) -> int:
        """Commit every event handed over so far to the queue; returns the flush
        watermark (the highest queue row id written). Safe from any thread.
        """
        # Groups bound each transaction and the memory of one encoded group. Only what
        # was handed over before the call counts (other threads may keep tracking), and
        # the lock is taken at least once: a group the committer already popped must be
        # committed before the watermark is read.
        remaining = len(self._ring)
        while True:
            watermark = self._commit_group(_COMMIT_GROUP)
            remaining -= _COMMIT_GROUP
            if remaining <= 0:
                return watermark

    def _commit_group(self, limit: int) -> int:
        with self._commit_lock:
            dropped, wake = self._commit_locked(limit)
        self._after_commit(dropped, wake)
        return self._watermark

    def _commit_locked(self, limit: int) -> tuple[list[Dropped], bool]:
        """Commit up to ``limit`` of the oldest handed-over records; the caller holds
        ``_commit_lock``. Returns the drops to report and whether to wake the sender."""
        ring = self._ring
        n = min(len(ring), limit)
        if not n:
            return [], False
        pending = [ring.popleft() for _ in range(n)]
        config = self.config
        privacy = self._privacy
        items, dropped = encode_records(
            pending,
            self._session_id,
            config.max_event_bytes,
            None if privacy is None else privacy.apply,
        )
        queue = self._queue
        if queue is None:
            return dropped, False
        try:
            result = queue.put(
                items,
                time.time(),
                chunk_events=config.batch_size,
                chunk_bytes=config.max_request_bytes - 64,
            )
        except StorageError as exc:
            dropped.extend(Dropped(eid, "storage_error", str(exc)) for eid, _ in items)
            with self._lock:
                if self._core is not None:
                    self._core.last_error = str(exc)
        else:
            dropped.extend(Dropped(e, "queue_full", "queue is full") for e in result.refused)
            dropped.extend(
                Dropped(e, "queue_evicted", "evicted to make room") for e in result.evicted
            )
            if result.last_rowid:
                self._watermark = result.last_rowid
        events, nbytes = queue.depth()
        return dropped, events >= config.batch_size or nbytes >= config.max_request_bytes

    def _after_commit(self, dropped: list[Dropped], wake: bool) -> None:
        if dropped:  # outside the commit lock: the app's callback may call flush()
            self._report(dropped)
        if wake:
            self._wake_sender()

    def _change_privacy(self, change: Callable[[], None]) -> None:
        """Run ``change`` (new consent or privacy options) once every event handed over
        before this call is committed under the choices in force when it was tracked.

        The filter runs in the committer, up to ``commit_interval`` after ``track``:
        without this, an event tracked without consent would be sent if consent were
        granted before the committer ran. The committer cannot run meanwhile (the commit
        lock is held), so the change takes effect exactly between the events counted
        here and any handed over later.
        """
        dropped: list[Dropped] = []
        wake = False
        try:
            with self._commit_lock:
                remaining = len(self._ring)
                while remaining > 0:  # a broken queue is counted as storage_error, not raised
                    more, woke = self._commit_locked(min(remaining, _COMMIT_GROUP))
                    dropped += more
                    wake = wake or woke
                    remaining -= _COMMIT_GROUP
                change()
        finally:
            self._after_commit(dropped, wake)

    def _report(self, dropped: Sequence[Dropped]) -> None:
        with self._lock:
            if self._core is not None:
                for item in dropped:
                    self._core.count_dropped(item.reason)
        self._notify_dropped(dropped)

    def _notify_dropped(self, dropped: Sequence[Dropped]) -> None:
        callback = self.on_drop
        if callback is None or not dropped:
            return
        try:
            callback(dropped)
        except Exception:  # the app's callback must not kill the worker
            log.exception("innkt-analytics on_drop callback failed")

    # -- sender helpers shared by both front-ends -------------------------------------
    # Every decision of a sender round lives here; a front-end only does the I/O
    # (sync calls, or awaits and worker threads) and the waiting. The two had drifted
    # apart (the asyncio sender never re-read a shared queue's depth), and
    # tests/test_sdk_sender_parity.py runs one scenario through both.

    def _wake_sender(self) -> None: ...  # front-end specific: something changed

    def _flow(
        self, chunks_payloads: list[bytes], count: int
    ) -> Generator[Step, SendResult | None, Verdict]:
        core = self._core
        if core is None:
            raise ConnectionStateError("the service is not initialized")
        return delivery_flow(chunks_payloads, count, core.policy, lambda: dt.datetime.now(_UTC))

    def _plan(self, core: DeliveryCore) -> tuple[int, bool, bool, bool, bool]:
        """What the sender's next round does: (flush ticket, flush?, fetch config?,
        maintenance?, probe?)."""
        with self._lock:
            flush_seq = self._flush_requested
            flush = flush_seq > self._flush_done
            now = time.monotonic()
            return (
                flush_seq,
                flush,
                core.config_due(now),
                core.maintenance_due(now),
                core.probe_due(now, flush),
            )

    def _maintain(self, queue: EventQueue) -> None:
        """Periodic upkeep (blocking disk I/O): release the claims of dead processes and
        re-read the depth, which other processes sharing the file change."""
        queue.recover(time.time())
        if isinstance(queue, SQLiteQueue):
            queue.refresh()

    def _send_due(self, core: DeliveryCore, queue: EventQueue, flush: bool) -> tuple[int, bool]:
        """(events queued, whether to claim and send now)."""
        events, nbytes = queue.depth()
        with self._lock:
            return events, core.send_due(time.monotonic(), events, nbytes, flush)

    def _claim(self, queue: EventQueue) -> list[QueuedChunk]:
        """Claim the next request's chunks (blocking disk I/O)."""
        config = self.config
        chunks = queue.claim(config.batch_size, config.max_request_bytes - 64, time.time())
        if not chunks and isinstance(queue, SQLiteQueue):
            # The depth said events wait, yet none could be claimed: another process
            # sharing the file sent (or holds) them. Re-read the depth, or the status
            # would show them queued and the sender keep waking for them.
            queue.refresh()
        return list(chunks)

    def _round_over(self, core: DeliveryCore, flush_seq: int, flush: bool, events: int) -> float:
        """Nothing more to send this round: mark the flush done when the sender can do
        no more for it (a Retry-After hold is waited out), and return how long to wait."""
        with self._lock:
            if flush and (core.state is not NetworkState.ONLINE or events == 0):
                self._flush_done = max(self._flush_done, flush_seq)
            wait = core.next_wakeup(time.monotonic(), events)
            if flush_seq > self._flush_done:
                wait = min(wait, 0.05)
            return wait

    def _finish_delivery(self, verdict: Verdict | None, rowids: list[int]) -> None:
        """Settle a delivered request (blocking disk I/O); ``None``: it was interrupted
        mid-retry (pause or shutdown) and its events stay queued."""
        if verdict is not None:
            self._settle(verdict, rowids)
        elif self._queue is not None:
            self._queue.release(rowids)

    def _shutdown_needless(self) -> bool | None:
        """``shutdown``'s answer when there is nothing to shut down, else ``None``."""
        if self._lifecycle is ServiceState.NEW:
            return True
        if self._forked:
            # A child that never used the service: nothing of its own to flush.
            self._lifecycle = ServiceState.CLOSED
            return not self._ring
        if self._lifecycle is ServiceState.CLOSED:
            return True
        return None

    def _record(self, result: SendResult) -> None:
        with self._lock:
            if self._core is not None:
                self._core.record(result)

    def _settle(self, verdict: Verdict, rowids: list[int]) -> None:
        queue = self._queue
        if queue is None:
            return
        if verdict.settled:
            queue.remove(rowids)
        else:
            queue.release(rowids)
        with self._lock:
            if self._core is not None:
                self._core.settle(verdict, time.monotonic())
        self._notify_dropped(verdict.dropped)

    def _apply_fetched(self, remote: ClientConfig | None) -> None:
        if remote is None:
            return
        try:
            self.apply_remote_config(remote)
        except ConfigError as exc:
            log.warning("innkt-analytics: ignoring remote config: %s", exc)

    # -- status and network state -------------------------------------------------------

    def get_status(self) -> ServiceStatus:
        """A snapshot of the state, queue and counters. Never raises."""
        oldest: float | None = None
        with contextlib.suppress(IndexError):
            head = self._ring[0]
            oldest = head.timestamp.timestamp() if isinstance(head, Event) else head[0]
        with self._lock:
            core, queue = self._core, self._queue
            if core is None or queue is None:
                return ServiceStatus.empty(
                    self._lifecycle.value, len(self._ring), self._early_drops
                )
            with contextlib.suppress(StorageError):
                if self._lifecycle is not ServiceState.CLOSED:
                    created = queue.oldest_created()
                    if created is not None:
                        oldest = created if oldest is None else min(oldest, created)
            return core.snapshot(queue.depth(), len(self._ring), oldest, self._config_version)

    def set_online(self, online: bool) -> None:
        """Tell the service whether the network is usable (an app often knows first).

        ``False`` pauses sending and probing (events keep queueing); ``True``
        resumes at once. Raises ``ConnectionStateError`` before ``initialize``.
        """
        with self._lock:
            core = self._core
            if core is None:
                raise ConnectionStateError("the service is not initialized")
            core.transition(
                NetworkState.ONLINE if online else NetworkState.PAUSED, time.monotonic()
            )
        if not online:
            self._interrupt_sender()
        self._wake_sender()

    def _interrupt_sender(self) -> None:
        """Cut a retry sleep short (front-end specific)."""

    # -- fork and exit -------------------------------------------------------------------

    def _forget_parent(self) -> None:
        # Runs in a forked child, single-threaded. Nothing of the parent's I/O state
        # may be used here: its threads do not exist, its locks may be held, its
        # sqlite connection and sockets belong to the parent.
        self._init_locks()
        self._open = False
        self._forked = True
        self._ring = collections.deque()
        if isinstance(self._queue, SQLiteQueue):
            self._queue.abandon()
        self._forget_parent_io()

    def _forget_parent_io(self) -> None:
        """Front-end specific: drop (never close) inherited connections and threads."""

    def _ensure_started(self) -> None:
        """Before a caller's ``flush`` or health probe: a forked child starts its own
        queue connection, committer and sender first (both front-ends)."""
        if self._forked:
            self._restart_after_fork()

    def _restart_after_fork(self) -> None:
        with self._lock:
            if not self._forked or self._config is None:
                return
            config = self._config
            self._forked = False
            self._queue = open_queue(config)
            self._core = DeliveryCore(config, time.monotonic())
            self._watermark = self._queue.last_rowid()
            self._session_id = uuid7()
            self._start_committer()
            self._start_sender()
            self._open = not self._opted_out

    def _start_sender(self) -> None:
        """Front-end specific, like ``_atexit`` (a bounded shutdown at interpreter exit)."""

    def _atexit(self) -> None: ...

    def _unregister(self) -> None:
        if self._atexit_cb is not None:
            atexit.unregister(self._atexit_cb)
            self._atexit_cb = None
        _live.discard(self)


def _make_atexit(service: ServiceBase) -> Callable[[], None]:
    ref = weakref.ref(service)  # the hook must not keep the service alive

    def hook() -> None:
        live = ref()
        if live is not None:
            live._atexit()

    return hook
