"""Dedup runs: sorted files of the 128-bit digests of compacted events' ids.

The hot log's unique index on ``(project, event_id)`` deduplicates the events that
are still in it. When the compactor moves events to Parquet segments, their digests
go into a *run*: an immutable file holding ``n`` digests sorted by their high half::

    b"IKDRUN01"   magic (8 bytes)
    n             uint64, little-endian
    hi[n]         uint64 LE, ascending
    lo[n]         uint64 LE, in the order of hi

The writer process checks every incoming event against the runs with
``numpy.searchsorted`` (a batch of 500 against 10M digests in well under a
millisecond): a random-id B-tree of every id ever stored would instead dirty a page
per insert, which is what made ingest slow down as the database grew. Runs are
merged in the background into fewer, larger ones (``merge``), so a lookup touches
a handful of files.

The digest is BLAKE2b-128 of ``project NUL event_id`` (UTF-8). Two distinct ids
are taken for one only if their 128-bit digests collide: at 10^12 events the
chance is below 10^-14.

Standard library and numpy only: the writer process (started with ``python -I``)
imports this file by path, not through the package.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["Run", "digests", "merge", "write_run"]

MAGIC: Final = b"IKDRUN01"
_HEADER: Final = 16
U64 = npt.NDArray[np.uint64]


def digests(keys: Iterable[tuple[str, str]]) -> tuple[U64, U64]:
    """The (hi, lo) digest halves of ``(project, event_id)`` pairs, in order."""
    blake = hashlib.blake2b
    raw = b"".join(
        blake(f"{project}\0{event_id}".encode(), digest_size=16).digest()
        for project, event_id in keys
    )
    both = np.frombuffer(raw, dtype="<u8").reshape(-1, 2)
    return both[:, 0].astype(np.uint64), both[:, 1].astype(np.uint64)


def write_run(path: str, hi: U64, lo: U64) -> int:
    """Write a run of the digests (any order) durably at ``path``; returns its size."""
    order = np.argsort(hi, kind="stable")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + len(hi).to_bytes(8, "little"))
        f.write(hi[order].astype("<u8").tobytes())
        f.write(lo[order].astype("<u8").tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))
    return os.path.getsize(path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Run:
    """A run file, memory-mapped (page cache, not heap)."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER:
                raise ValueError(f"{path}: not a dedup run (too short)")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if self._map[:8] != MAGIC:
            raise ValueError(f"{path}: not a dedup run (bad magic)")
        n = int.from_bytes(self._map[8:16], "little")
        if size != _HEADER + 16 * n:
            raise ValueError(f"{path}: truncated dedup run ({size} bytes for {n} digests)")
        self.n = n
        self.hi: U64 = np.frombuffer(self._map, dtype="<u8", count=n, offset=_HEADER)
        self.lo: U64 = np.frombuffer(self._map, dtype="<u8", count=n, offset=_HEADER + 8 * n)

    def contains(self, hi: U64, lo: U64) -> npt.NDArray[np.bool_]:
        """For each digest, whether this run holds it (faster with ``hi`` sorted)."""
        if self.n == 0 or len(hi) == 0:
            return np.zeros(len(hi), dtype=bool)
        left = np.searchsorted(self.hi, hi, side="left")
        # one search: where the high half is there at all, its entries start at ``left``
        maybe = np.nonzero(self.hi[np.minimum(left, self.n - 1)] == hi)[0]
        found = np.zeros(len(hi), dtype=bool)
        for i in maybe:  # only where the high half matched: rare
            j = int(left[i])
            while j < self.n and self.hi[j] == hi[i]:
                if self.lo[j] == lo[i]:
                    found[i] = True
                    break
                j += 1
        return found

    def close(self) -> None:
        # Arrays made over the map keep it alive until they are collected.
        self.hi = self.lo = np.zeros(0, dtype=np.uint64)
        with contextlib.suppress(BufferError):
            self._map.close()


def contains_any(runs: Sequence[Run], hi: U64, lo: U64) -> npt.NDArray[np.bool_]:
    """For each digest, whether any of the runs holds it."""
    # Sorted, the searches walk each run's array in one direction: fewer cache misses.
    order = np.argsort(hi, kind="stable")
    hi_sorted, lo_sorted = hi[order], lo[order]
    found_sorted = np.zeros(len(hi), dtype=bool)
    for run in runs:
        found_sorted |= run.contains(hi_sorted, lo_sorted)
    found = np.zeros(len(hi), dtype=bool)
    found[order] = found_sorted
    return found


def merge(runs: Sequence[Run], path: str) -> tuple[int, int]:
    """Write one run holding every digest of ``runs``; returns (entries, bytes)."""
    hi = np.concatenate([r.hi for r in runs]) if runs else np.zeros(0, dtype=np.uint64)
    lo = np.concatenate([r.lo for r in runs]) if runs else np.zeros(0, dtype=np.uint64)
    return len(hi), write_run(path, hi, lo)
