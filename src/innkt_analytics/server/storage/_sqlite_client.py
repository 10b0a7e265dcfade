"""Our end of the socket to the SQLite writer process (``_sqlite_writer.py``).

Jobs go out as frames from whichever thread submits them; answers come back one
frame per group commit. Who reads the answers depends on how the storage was
opened:

* bound to an event loop (``await SQLiteStorage.open()``, as the server does):
  the loop watches the socket and resolves the waiting futures itself: no thread
  of ours wakes up per commit, and no answer waits for the GIL to be handed over;
* otherwise (``open_sync``): a thread blocks on the socket and resolves
  thread-safe futures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import itertools
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from innkt_analytics.server.storage import _sqlite_writer as _w
from innkt_analytics.shared._exceptions import StorageError, StorageFullError

__all__ = ["WriterClient", "storage_error"]

AnyFuture = concurrent.futures.Future[Any] | asyncio.Future[Any]


def storage_error(value: tuple[str, str]) -> StorageError:
    """The exception for a ``(kind, message)`` from ``_sqlite_writer.error_of``."""
    kind, message = value
    return StorageFullError(message) if kind == "full" else StorageError(message)


def _paths() -> str:
    """Where the writer imports ``_dedup_runs`` and numpy from (it runs with ``-I -S``)."""
    dirs = [os.path.dirname(_w.__file__)]
    spec = importlib.util.find_spec("numpy")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(os.path.dirname(next(iter(spec.submodule_search_locations))))
    return os.pathsep.join(dirs)


class WriterClient:
    """Starts the writer process for ``path`` and talks to it.

    ``on_group`` is called after every group with its storage-level error (or
    None when the group committed): health reports it.
    """

    def __init__(
        self,
        path: str,
        on_group: Callable[[StorageError | None], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        parent, child = socket.socketpair()
        # Big buffers: a burst of requests never blocks the event loop on a send.
        for sock in (parent, child):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        with child:
            self.proc = subprocess.Popen(  # noqa: S603 (our interpreter, our file)
                [sys.executable, "-I", "-S", _w.__file__, str(child.fileno()), path, _paths()],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        self.loop = loop
        self._sock = parent
        self._frames = _w.FrameReader(parent)
        self._on_group = on_group
        self._futures: dict[int, AnyFuture] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._alive = True
        self._dead = threading.Event()
        self._receiver: threading.Thread | None = None
        if loop is None:
            self._receiver = threading.Thread(
                target=self._receive, name="innkt-sqlite-answers", daemon=True
            )
            self._receiver.start()
        elif self._in_loop():
            loop.add_reader(parent.fileno(), self._on_readable)
        else:
            loop.call_soon_threadsafe(loop.add_reader, parent.fileno(), self._on_readable)

    @property
    def alive(self) -> bool:
        return self._alive

    def _in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def submit(self, op: str, args: tuple[Any, ...], future: AnyFuture) -> None:
        """Send a job; ``future`` gets its value or its ``StorageError``."""
        with self._lock:
            if not self._alive:
                future.set_exception(StorageError("the storage writer process has exited"))
                return
            job_id = next(self._ids)
            self._futures[job_id] = future
            try:
                _w.send_frame(self._sock, (job_id, op, args))
            except OSError as exc:
                del self._futures[job_id]
                future.set_exception(StorageError(f"storage writer unreachable: {exc}"))

    async def call(self, op: str, args: tuple[Any, ...]) -> Any:
        """Submit from a coroutine and wait for the answer."""
        if self._in_loop():
            assert self.loop is not None
            future: asyncio.Future[Any] = self.loop.create_future()
            self.submit(op, args, future)
            return await future
        threadsafe: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.submit(op, args, threadsafe)
        return await asyncio.wrap_future(threadsafe)

    # -- answers ---------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            chunk = self._sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            for results in self._frames.feed(chunk):
                self._resolve(results)
            return
        assert self.loop is not None
        self.loop.remove_reader(self._sock.fileno())
        self._died()

    def _receive(self) -> None:
        with contextlib.suppress(OSError):
            while (frames := self._frames.read()) is not None:
                for results in frames:
                    self._resolve(results)
        self._died()

    def _died(self) -> None:
        # The process closes its end only as it exits: this wait is short.
        code = self.proc.wait()
        error = StorageError(f"the storage writer process has exited (status {code})")
        with self._lock:
            self._alive = False
            pending, self._futures = self._futures, {}
            self._sock.close()
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        if pending:
            self._on_group(error)
        self._dead.set()

    def _resolve(self, results: list[_w.Result]) -> None:
        group_error: StorageError | None = None
        with self._lock:
            futures = [self._futures.pop(job_id) for job_id, _, _ in results]
        for future, (_, status, value) in zip(futures, results, strict=True):
            if status != _w.OK:
                error = storage_error(value)
                if status == _w.GROUP_FAILED:
                    group_error = error
            if future.done():
                continue  # its request was cancelled (the client went away)
            if status == _w.OK:
                future.set_result(value)
            else:
                future.set_exception(error)
        self._on_group(group_error)

    # -- shutdown --------------------------------------------------------------------

    def close(self) -> None:
        """Let the process commit what it was sent, then wait for it to exit."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        if self._receiver is not None:
            self._receiver.join()
        elif self.loop is not None and (self._in_loop() or not self.loop.is_running()):
            # Nobody else will read the last answers: read them on this thread.
            if not self._dead.is_set():
                with contextlib.suppress(RuntimeError, ValueError, OSError):
                    self.loop.remove_reader(self._sock.fileno())
                self._receive()
        else:
            self._dead.wait()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._sock.close()
