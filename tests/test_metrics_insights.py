"""Insights in ``/metrics``: cache hits and misses, queries refused at their bounds.

Real servers and real queries; the exposition parsed with prometheus-client's parser.
The memory bound (256 MB of DuckDB) is shrunk for one server the way delays are
scaled down in tests: a ``sitecustomize`` on its ``PYTHONPATH`` sets the engine's
``MEMORY_LIMIT`` to 1 MB before it serves.
"""

from __future__ import annotations

import datetime as dt
import pathlib
import re
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests._server import ServerProcess
from tests.conftest import ServerFactory
from tests.test_insights_cache import _event, _events
from tests.test_metrics import samples, value

RANGE = {"dateFrom": "2026-03-02", "dateTo": "2026-03-03"}
TRENDS = RANGE | {"series": [{"event": "a"}]}
OPERATIONS = pathlib.Path(__file__).parent.parent / "docs" / "operations.md"


def _send(server: ServerProcess, count: int) -> None:
    start = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
    at = [(start + dt.timedelta(seconds=i)).isoformat() for i in range(count)]
    _events(server, [_event("abc"[i % 3], f"u{i % 2}", at[i]) for i in range(count)])


def _ask(server: ServerProcess, kind: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/insights/{kind}", json=body, headers=server.headers("read"), timeout=60
    )


def _scrape(server: ServerProcess) -> str:
    r = httpx.get(server.url + "/metrics", headers=server.headers("admin"))
    assert r.status_code == 200, r.text
    return r.text


def test_cache_lookups_are_counted(server_factory: ServerFactory) -> None:
    server = server_factory()
    found = samples(_scrape(server))
    for result in ("hit", "miss"):
        assert value(found, "innkt_insights_cache_lookups_total", result=result) == 0
    for error in ("query_timeout", "query_too_large"):
        assert value(found, "innkt_insights_query_errors_total", error=error) == 0
    _send(server, 300)
    # a miss, then two hits of the same answer; another query is a miss of its own
    answers = [_ask(server, "trends", TRENDS) for _ in range(3)]
    answers.append(_ask(server, "trends", TRENDS | {"interval": "hour"}))
    assert [r.status_code for r in answers] == [200] * 4, answers[0].text
    assert [r.headers["X-Innkt-Cache"] for r in answers] == ["miss", "hit", "hit", "miss"]
    found = samples(_scrape(server))
    assert value(found, "innkt_insights_cache_lookups_total", result="hit") == 2
    assert value(found, "innkt_insights_cache_lookups_total", result="miss") == 2
    for error in ("query_timeout", "query_too_large"):
        assert value(found, "innkt_insights_query_errors_total", error=error) == 0


def test_queries_past_the_time_limit_are_counted(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_INSIGHTS_TIMEOUT": "0.3"})
    _send(server, 40_000)
    # a 10-step funnel none of whose attempts gets past step 2 within its 1 s window,
    # so the engine sequences every one of the 40,000 events (as test_insights_cache's
    # time-limit test: ~0.6 s of DuckDB, past 0.3 s; with a day's window the first
    # attempts complete and the funnel takes a few joins, under the limit)
    heavy = RANGE | {"steps": [{"event": e} for e in "abcabcabca"], "windowSeconds": 1}
    r = _ask(server, "funnels", heavy)
    assert (r.status_code, r.json().get("error")) == (422, "query_timeout"), r.text
    found = samples(_scrape(server))
    assert value(found, "innkt_insights_query_errors_total", error="query_timeout") == 1
    assert value(found, "innkt_insights_query_errors_total", error="query_too_large") == 0
    assert value(found, "innkt_insights_cache_lookups_total", result="miss") == 1


def test_queries_past_the_memory_bound_are_counted(
    server_factory: ServerFactory, tmp_path: pathlib.Path
) -> None:
    patch = tmp_path / "shrink"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(
        "import innkt_analytics.server.insights._engine as engine\nengine.MEMORY_LIMIT = '1MB'\n"
    )
    server = server_factory(env={"PYTHONPATH": str(patch)})
    _send(server, 5_000)
    paths = RANGE | {"start": {"event": "a"}, "steps": 5}
    for _ in range(2):
        r = _ask(server, "paths", paths)
        assert (r.status_code, r.json()["error"]) == (422, "query_too_large"), r.text
    found = samples(_scrape(server))
    assert value(found, "innkt_insights_query_errors_total", error="query_too_large") == 2
    assert value(found, "innkt_insights_query_errors_total", error="query_timeout") == 0
    # a refused query is not cached: both were misses
    assert value(found, "innkt_insights_cache_lookups_total", result="miss") == 2


def test_the_operations_metrics_table_names_exported_metrics(
    shared_server: ServerProcess,
) -> None:
    text = OPERATIONS.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `innkt_")]
    documented = {name for row in rows for name in re.findall(r"`(innkt_\w+)", row)}
    assert {"innkt_insights_cache_lookups_total", "innkt_insights_query_errors_total"} <= documented
    exported = set()
    for family in text_string_to_metric_families(_scrape(shared_server)):
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
    assert documented <= exported, documented - exported
