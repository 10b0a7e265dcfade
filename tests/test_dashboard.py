"""The dashboard: its API, its assets, its store, and the page in headless Chromium."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from innkt_analytics.server._kv import KVStore, PostgresKV, SQLiteKV, make_kv
from tests._server import ServerProcess

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the browser tests skip with the reason below
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PANEL_KINDS = [
    "events_per_minute",
    "active_sessions",
    "ingest_health",
    "top_event_types",
    "alerts",
    "event_stream",
    "stats_range",
]


def _unique() -> str:
    return uuid.uuid4().hex[:10]


def _post_events(server: ServerProcess, events: list[dict[str, Any]]) -> None:
    r = httpx.post(
        server.url + "/v1/events/batch", json={"events": events}, headers=server.headers("write")
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(events)


def _event(event_type: str, *, ago: float = 0.0, **extra: Any) -> dict[str, Any]:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=ago)
    return {
        "eventId": "ev-" + _unique(),
        "eventType": event_type,
        "sessionId": "sess-" + _unique(),
        "userId": "user-1",
        "timestamp": when.isoformat(),
        **extra,
    }


# -- the page's files ------------------------------------------------------------------


def test_page_and_assets_are_self_contained_and_locked_down(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    app_js = httpx.get(server.url + "/static/app.js").text
    referenced = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    referenced += ["/static/" + m for m in re.findall(r'from "\./([^"]+)"', app_js)]
    assert {"/static/app.js", "/static/app.css", "/static/charts.js"} <= set(referenced)
    for path in referenced:
        asset = httpx.get(server.url + path)
        assert asset.status_code == 200, path
        # Nothing is loaded from elsewhere: the only absolute URL is the SVG namespace.
        outside = set(re.findall(r"https?://[^\s\"'`)]+", asset.text)) - {
            "http://www.w3.org/2000/svg"
        }
        assert outside == set(), path
    assert (
        httpx.get(server.url + "/static/app.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )
    etag = httpx.get(server.url + "/static/app.css").headers["etag"]
    cached = httpx.get(server.url + "/static/app.css", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    for bad in ("/static/nope.js", "/static/..%2F_dashboard.py", "/static/%2e%2e"):
        missing = httpx.get(server.url + bad)
        assert missing.status_code == 404, bad
        assert missing.json()["error"] == "not_found"


# -- the dashboards API ------------------------------------------------------------------


def test_dashboards_api_versions_scopes_and_projects(backend_server: ServerProcess) -> None:
    server = backend_server
    url = server.url + "/v1/dashboards"
    read = server.headers("read")
    assert httpx.get(url, headers=read).json() == {"dashboards": []}
    body = {
        "title": "Ops",
        "panels": [
            {"kind": "event_stream", "width": 2, "options": {"eventType": "error"}},
            {"kind": "stats_range", "title": "Last week", "options": {"range": "7d"}},
        ],
    }
    first = httpx.put(url + "/ops", json=body, headers=read)
    assert first.status_code == 200, first.text
    assert (first.json()["name"], first.json()["version"]) == ("ops", 1)
    assert first.headers["etag"] == '"1"'
    got = httpx.get(url + "/ops", headers=read).json()
    assert got["panels"] == [
        {"kind": "event_stream", "width": 2, "options": {"eventType": "error"}},
        {"kind": "stats_range", "title": "Last week", "options": {"range": "7d"}},
    ]
    second = httpx.put(
        url + "/ops", json={**body, "title": "Ops 2"}, headers={**read, "If-Match": '"1"'}
    )
    assert second.json()["version"] == 2
    stale = httpx.put(url + "/ops", json=body, headers={**read, "If-Match": '"1"'})
    assert (stale.status_code, stale.json()["error"]) == (412, "version_conflict")
    admin_put = httpx.put(url + "/admin-made", json=body, headers=server.headers("admin"))
    assert admin_put.status_code == 200
    assert httpx.put(url + "/w", json=body, headers=server.headers("write")).status_code == 403
    assert httpx.get(url, headers=server.headers("write")).status_code == 403
    invalid = [
        ({**body, "panels": [{"kind": "crystal_ball"}]}, "/ok"),
        ({**body, "title": ""}, "/ok"),
        ({**body, "panels": [{"kind": "alerts", "width": 3}]}, "/ok"),
        (body, "/has%20space"),
        (body, "/-leading-dash"),
    ]
    for bad_body, path in invalid:
        r = httpx.put(url + path, json=bad_body, headers=read)
        assert r.status_code == 400, (path, bad_body)
    not_utf8 = httpx.put(
        url + "/ok",
        content=b'{"title":"\xff","panels":[]}',
        headers={**read, "Content-Type": "application/json"},
    )
    assert not_utf8.status_code == 400
    names = [d["name"] for d in httpx.get(url, headers=read).json()["dashboards"]]
    assert names == ["admin-made", "ops"]
    other = server.create_key("read", project="other")
    assert httpx.get(url, headers={"Authorization": f"Bearer {other}"}).json()["dashboards"] == []
    assert httpx.delete(url + "/ops", headers=read).status_code == 204
    assert httpx.get(url + "/ops", headers=read).status_code == 404
    assert httpx.delete(url + "/ops", headers=read).status_code == 404


# -- the key-value store -------------------------------------------------------------------


async def _exercise(kv: KVStore, ns: str) -> None:
    await kv.open()
    try:
        assert await kv.get(ns, "p/a") is None
        await kv.put(ns, "p/a", b"1")
        await kv.put(ns, "p/a", b"2")  # replace
        await kv.put(ns, "p/b", b"3")
        await kv.put(ns, "p_x/c", b"4")  # "_" and "%" are not wildcards in a prefix
        await kv.put(ns, "P/upper", b"5")  # nor is the prefix case-insensitive
        await kv.put(ns + "-other", "p/a", b"6")
        assert await kv.get(ns, "p/a") == b"2"
        assert await kv.items(ns, "p/") == [("p/a", b"2"), ("p/b", b"3")]
        assert await kv.items(ns, "p_") == [("p_x/c", b"4")]
        assert await kv.items(ns, "%") == []
        assert [k for k, _ in await kv.items(ns)] == ["P/upper", "p/a", "p/b", "p_x/c"]
        assert await kv.delete(ns, "p/a") is True
        assert await kv.delete(ns, "p/a") is False
    finally:
        await kv.close()
    await kv.open()  # durable across connections
    try:
        assert await kv.items(ns, "p/") == [("p/b", b"3")]
        for key, _ in await kv.items(ns):
            await kv.delete(ns, key)
        await kv.delete(ns + "-other", "p/a")
    finally:
        await kv.close()


def test_kv_on_sqlite_shares_the_event_database(tmp_path: Path, server: ServerProcess) -> None:
    asyncio.run(_exercise(SQLiteKV(str(tmp_path / "kv.db")), "t"))
    assert isinstance(make_kv("sqlite:///" + str(tmp_path / "x.db")), SQLiteKV)
    # Next to a live server's own tables, through its own connection.
    asyncio.run(_exercise(make_kv(server.db_path), "live"))
    assert server.count_events() == 0


@pytest.mark.postgres
def test_kv_on_postgres(pg_url: str) -> None:
    kv = make_kv(pg_url)
    assert isinstance(kv, PostgresKV)
    asyncio.run(_exercise(kv, "test-" + _unique()))


# -- the page in a real browser ------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not HAVE_PLAYWRIGHT:
        pytest.skip("playwright is not installed: pip install playwright (no browser download)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Tab:
    """A page in a fresh browser context that fails the test on any script error."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000})
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.sockets: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on(
            "console",
            lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )
        self.page.on("websocket", lambda ws: self.sockets.append(ws.url))

    def sign_in(self, server: ServerProcess, key: str | None = None) -> Page:
        page = self.page
        page.goto(server.url + "/")
        page.fill("#key-input", key or server.read_key)
        page.click("#login-submit")
        return page

    def wait_live(self) -> None:
        expect(self.page.locator("#conn")).to_have_attribute("data-state", "live", timeout=10_000)


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    t = Tab(browser)
    yield t
    t.context.close()
    assert t.errors == []


def test_live_events_appear_within_two_seconds_without_reload(
    server: ServerProcess, tab: Tab
) -> None:
    page = tab.sign_in(server)
    tab.wait_live()
    assert page.evaluate("sessionStorage.getItem('innkt.readKey')") == server.read_key
    assert page.evaluate("localStorage.length") == 0
    page.evaluate("window.__sameDocument = true")
    event_type = "live_" + _unique()
    hostile = "<img src=x onerror=window.__xss=1>"
    events = [_event(event_type, properties={"n": i}) for i in range(3)] + [_event(hostile)]
    _post_events(server, events)
    # The acceptance bound of the issue: shown within 2 s, through the WebSocket.
    for event in events:
        row = page.locator(f'tr[data-event-id="{event["eventId"]}"]')
        expect(row).to_be_visible(timeout=2_000)
    expect(page.locator(f'tr[data-event-id="{events[0]["eventId"]}"] .badge')).to_have_text(
        event_type
    )
    expect(page.locator(f'.bar-row[data-event-type="{event_type}"] .count')).to_have_text("3")
    expect(page.locator("#sessions-value")).to_have_text("4")
    expect(page.locator("#epm-value")).to_have_text("4")
    expect(page.locator("#health-status")).to_have_text("ok")
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert page.evaluate("window.__xss === undefined") is True
    expect(page.locator(f'tr[data-event-id="{events[3]["eventId"]}"] .badge')).to_have_text(hostile)
    assert tab.sockets
    assert all(u.endswith("/v1/realtime") for u in tab.sockets)
    assert not any(server.read_key in u for u in tab.sockets)  # never in the URL


def test_saved_dashboard_survives_a_reload_and_a_new_session(
    server: ServerProcess, tab: Tab, browser: Browser
) -> None:
    page = tab.sign_in(server)
    tab.wait_live()
    assert page.locator("[data-panel]").evaluate_all("els => els.map(e => e.dataset.panel)") == (
        PANEL_KINDS
    )
    page.click("#customize")
    for kind in PANEL_KINDS:
        if kind not in ("event_stream", "stats_range"):
            page.click(f'#edit-panels li[data-kind="{kind}"] .remove-panel')
    page.fill("#edit-title", "Ops view")
    page.fill("#edit-name", "ops")
    page.select_option('[data-panel="stats_range"] select[aria-label="Range"]', "6h")
    page.click("#save-dashboard")
    expect(page.locator("#edit-status")).to_have_text("Saved (version 1)")

    saved = httpx.get(server.url + "/v1/dashboards/ops", headers=server.headers("read")).json()
    assert [p["kind"] for p in saved["panels"]] == ["event_stream", "stats_range"]
    assert saved["panels"][1]["options"] == {"range": "6h"}

    def shows_saved(p: Page) -> None:
        expect(p.locator("#dashboard-select option:checked")).to_have_text("Ops view")
        kinds = p.locator("[data-panel]").evaluate_all("els => els.map(e => e.dataset.panel)")
        assert kinds == ["event_stream", "stats_range"]
        expect(p.locator('[data-panel="stats_range"] select[aria-label="Range"]')).to_have_value(
            "6h"
        )

    page.reload()
    tab.wait_live()  # still signed in: the key survived in sessionStorage
    shows_saved(page)

    other = Tab(browser)
    try:
        fresh = other.sign_in(server)
        other.wait_live()
        shows_saved(fresh)  # it was saved on the server, not in the browser
    finally:
        other.context.close()
    assert other.errors == []


def test_time_range_view_reads_the_stats_api(server: ServerProcess, tab: Tab) -> None:
    event_type = "range_" + _unique()
    _post_events(server, [_event(event_type, ago=h * 3600 + 60) for h in range(5)])
    _post_events(server, [_event(event_type, ago=12 * 3600)])  # outside a 6 h range
    page = tab.sign_in(server)
    tab.wait_live()
    panel = page.locator('[data-panel="stats_range"]')
    expect(panel.locator("#range-total")).to_have_text("6")  # the default range is 24 h...
    page.select_option('[data-panel="stats_range"] select[aria-label="Range"]', "6h")
    with page.expect_request(
        lambda r: "/v1/stats?" in r.url and "eventType=" in r.url and "until=" in r.url
    ) as request:
        panel.locator('input[aria-label="Event type"]').fill(event_type)
        panel.locator('input[aria-label="Event type"]').press("Tab")
    query = httpx.URL(request.value.url).params
    assert query["bucket"] == "minute"
    assert query["eventType"] == event_type
    since = dt.datetime.fromisoformat(query["since"])
    until = dt.datetime.fromisoformat(query["until"])
    assert until - since == dt.timedelta(hours=6)
    expect(panel.locator("#range-total")).to_have_text("5")
    expect(panel.locator(".type-table .badge")).to_have_text([event_type])


def _stored_events(page: Page) -> Any:
    return page.locator('[data-panel="ingest_health"] dt:text-is("Stored events") + dd')


def test_time_range_and_health_figures_follow_new_events(
    server: ServerProcess, tab: Tab, tmp_path: Path
) -> None:
    event_type = "later_" + _unique()
    # The page's first health answer: until the fix the next one came 10 s after it.
    with tab.page.expect_response(lambda r: r.url.endswith("/v1/health")):
        page = tab.sign_in(server)
    tab.wait_live()
    panel = page.locator('[data-panel="stats_range"]')
    expect(panel.locator("#range-total")).to_have_text("0")
    expect(_stored_events(page)).to_have_text("0")
    _post_events(server, [_event(event_type) for _ in range(3)])
    # Within expect's 5 s: the time-range panel re-reads the stats API and the health
    # figures are re-read as the events arrive, well before the 10 s health poll.
    expect(panel.locator("#range-total")).to_have_text("3")
    expect(panel.locator(".type-table .badge")).to_have_text([event_type])
    # A count axis up to 3 is labelled in whole, distinct steps (it read 0 1 2 2 3).
    expect(panel.locator("svg.chart text.axis-y")).to_have_text(["0", "1", "2", "3", "4"])
    expect(_stored_events(page)).to_have_text("3")
    ingest_rate = page.locator('[data-panel="ingest_health"] dt:text-is("Ingest rate") + dd')
    expect(ingest_rate).not_to_have_text("0.00 /s")
    page.screenshot(path=str(tmp_path / "live-range.png"), full_page=True)


def test_time_range_without_event_types_draws_no_stray_text(
    server: ServerProcess, tab: Tab
) -> None:
    page = tab.sign_in(server)
    tab.wait_live()
    panel = page.locator('[data-panel="stats_range"]')
    expect(panel.locator("#range-total")).to_have_text("0")
    expect(panel.locator("svg.chart")).to_have_count(1)
    # Only elements in the panel body: no text node such as "null" beside them.
    stray = panel.locator(".panel-body").evaluate(
        "body => [...body.childNodes].filter(n => n.nodeType !== Node.ELEMENT_NODE)"
        ".map(n => n.textContent)"
    )
    assert stray == []
    assert "null" not in panel.inner_text()
    assert panel.locator(".type-table").count() == 0


def test_sign_in_refuses_keys_that_cannot_read(server: ServerProcess, tab: Tab) -> None:
    page = tab.sign_in(server, server.write_key)
    expect(page.locator("#login-error")).to_contain_text("use a read key")
    page.fill("#key-input", "ik_not-a-real-key")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_text("Unknown or revoked key.")
    assert page.locator("#app").is_hidden()
    assert page.evaluate("sessionStorage.getItem('innkt.readKey')") is None
    # 401/403 answers are logged by the browser as failed loads; they are expected here.
    tab.errors = [e for e in tab.errors if "status of 40" not in e]


def test_page_reconnects_after_the_server_restarts(server: ServerProcess, tab: Tab) -> None:
    page = tab.sign_in(server)
    tab.wait_live()
    page.evaluate("window.__sameDocument = true")
    server.kill()
    expect(page.locator("#conn")).not_to_have_attribute("data-state", "live")
    server.start()  # same database, same port
    tab.wait_live()
    event = _event("after_restart")
    _post_events(server, [event])
    expect(page.locator(f'tr[data-event-id="{event["eventId"]}"]')).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True
    # The browser logs the loads and WebSocket attempts that failed while the server
    # was down: refused, reset, or in flight when it was killed (network errors only;
    # an HTTP status would be an answer).
    tab.errors = [e for e in tab.errors if "net::ERR_" not in e]
