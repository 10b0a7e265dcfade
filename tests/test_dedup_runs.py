"""Dedup runs: ``contains_any`` answers exactly "is this (hi, lo) digest in a run",
including where high halves repeat (written with few distinct values here, so the
search's walk over equal high halves is exercised) and needles in any order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from innkt_analytics.server.storage._dedup_runs import Run, contains_any, write_run

digest = st.tuples(st.integers(0, 6), st.integers(0, 6))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(digest, max_size=12), min_size=1, max_size=3),
    st.lists(digest, min_size=1, max_size=20),
)
def test_contains_any_is_set_membership(
    tmp_path_factory: pytest.TempPathFactory,
    runs: list[list[tuple[int, int]]],
    needles: list[tuple[int, int]],
) -> None:
    directory = tmp_path_factory.mktemp("runs")
    opened = []
    for k, entries in enumerate(runs):
        path = str(directory / f"run-{k}.bin")
        hi = np.array([h for h, _ in entries], dtype=np.uint64)
        lo = np.array([lo for _, lo in entries], dtype=np.uint64)
        write_run(path, hi, lo)
        opened.append(Run(path))
    try:
        hi = np.array([h for h, _ in needles], dtype=np.uint64)
        lo = np.array([lo for _, lo in needles], dtype=np.uint64)
        stored = {pair for entries in runs for pair in entries}
        assert contains_any(opened, hi, lo).tolist() == [pair in stored for pair in needles]
    finally:
        for run in opened:
            run.close()
