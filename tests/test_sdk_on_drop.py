"""``on_drop`` as docs/sdk.md describes it: a sequence of ``Dropped`` per call, and
possibly in the caller's thread (``flush`` commits there) — an app's callback must
be ready for both."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from innkt_analytics import AnalyticsBackendService, Dropped
from tests._proxy import fast_config
from tests._server import ServerProcess


def test_on_drop_gets_a_sequence_in_the_thread_that_commits(
    shared_server: ServerProcess, tmp_path: Path, services: list[AnalyticsBackendService]
) -> None:
    calls: list[tuple[list[Dropped], int]] = []

    def on_drop(dropped: Sequence[Dropped]) -> None:
        calls.append((list(dropped), threading.get_ident()))

    service = AnalyticsBackendService(
        # The committer does not run by itself within the test: flush commits.
        fast_config(shared_server.url, shared_server.write_key, tmp_path / "q.sqlite3",
                    commit_interval=60),
        on_drop=on_drop,
    )  # fmt: skip
    services.append(service)
    assert service.track("x", {"o": object()})  # not JSON: found invalid when committed
    assert service.track("", {})  # an empty type: invalid too
    assert service.flush(10)
    assert len(calls) == 1  # one commit, one call with both
    dropped, thread = calls[0]
    assert [d.reason for d in dropped] == ["invalid", "invalid"]
    assert thread == threading.get_ident()  # flush's caller
