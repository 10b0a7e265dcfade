"""Insight panels: saved with dashboards (validated as queries), drawn in Chromium from the
same answers the insights API gives."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests import test_dashboard
from tests._server import ServerProcess
from tests.test_dashboard import HAVE_PLAYWRIGHT

if HAVE_PLAYWRIGHT:
    from playwright.sync_api import Browser, Page, Request, expect

#: test_dashboard's Chromium, one per module (it skips with the reason when missing)
browser = test_dashboard.browser

TRENDS = {"kind": "trends", "range": "7d", "query": {"series": [{"event": "view"}]}}


def _dashboard(*panels: dict[str, Any]) -> dict[str, Any]:
    return {"title": "Product", "panels": list(panels)}


def test_insight_panels_are_validated_as_queries_when_saved(server: ServerProcess) -> None:
    url = server.url + "/v1/dashboards/product"
    read = server.headers("read")
    ok = httpx.put(url, json=_dashboard({"kind": "insight", "insight": TRENDS}), headers=read)
    assert ok.status_code == 200, ok.text
    assert ok.json()["panels"] == [{"kind": "insight", "insight": TRENDS}]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"kind": "insight"}, "panels[0].insight: an insight panel needs one"),
        ({"kind": "alerts", "insight": TRENDS}, "panels[0].insight: only on insight panels"),
        (
            {"kind": "insight", "insight": {**TRENDS, "query": {"series": []}}},
            "panels[0].insight.query.series: between 1 and 10 series",
        ),
        (
            {"kind": "insight", "insight": {"kind": "funnels", "query": {"steps": "x"}}},
            "panels[0].insight.query.steps: expected `array`, got `str`",
        ),
        (
            {"kind": "insight", "insight": {**TRENDS, "query": {"dateFrom": "2026-01-01"}}},
            "panels[0].insight.query: the range sets dateFrom and dateTo",
        ),
        (
            # 90 days by the minute is past the 1,500-bucket bound: the range's fault
            {
                "kind": "insight",
                "insight": {
                    "kind": "trends",
                    "range": "90d",
                    "query": {"series": [{}], "interval": "minute"},
                },
            },
            "panels[0].insight.range: a range of more than 1500 minutes",
        ),
    ]
    for panel, message in bad:
        r = httpx.put(url, json=_dashboard(panel), headers=read)
        assert r.status_code == 400, (panel, r.text)
        assert r.json() == {"error": "invalid_dashboard", "message": message}
    unknown_kind = {"kind": "insight", "insight": {**TRENDS, "kind": "crystal_ball"}}
    assert httpx.put(url, json=_dashboard(unknown_kind), headers=read).status_code == 400
    unknown_range = {"kind": "insight", "insight": {**TRENDS, "range": "1y"}}
    assert httpx.put(url, json=_dashboard(unknown_range), headers=read).status_code == 400


def test_every_module_of_the_page_is_served_and_self_contained(server: ServerProcess) -> None:
    """The modules app.js imports, and theirs, all come from here and name no other host."""
    seen: set[str] = set()
    todo = ["app.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        r = httpx.get(f"{server.url}/static/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith("text/javascript"), name
        assert set(re.findall(r"https?://[^\s\"'`)]+", r.text)) <= {"http://www.w3.org/2000/svg"}
        todo += re.findall(r'from "\./([^"]+)"', r.text)
    assert {"insights.js", "insight_charts.js", "dom.js", "charts.js"} <= seen


# -- in Chromium -----------------------------------------------------------------------


def _journeys(now: dt.datetime) -> list[dict[str, Any]]:
    """Four users over the last five days: views, signups and purchases, with a plan."""
    day = now.replace(hour=12, minute=0, second=0, microsecond=0)
    if day > now:  # keep every event in the past
        day -= dt.timedelta(days=1)
    plan = {"ada": "pro", "bob": "free", "cy": "free", "dee": "pro"}
    steps = [
        ("ada", 5, 0, "view"),
        ("ada", 5, 10, "signup"),
        ("ada", 5, 30, "purchase"),
        ("ada", 3, 0, "view"),
        ("ada", 1, 0, "view"),
        ("bob", 4, 0, "view"),
        ("bob", 4, 60, "signup"),
        ("bob", 2, 0, "view"),
        ("cy", 3, 0, "view"),
        ("dee", 2, 0, "view"),
        ("dee", 2, 5, "signup"),
        ("dee", 2, 20, "purchase"),
        ("dee", 2, 40, "view"),
    ]
    return [
        {
            "eventId": uuid.uuid4().hex,
            "eventType": event,
            "userId": user,
            "sessionId": f"{user}-{days}",
            "timestamp": (day - dt.timedelta(days=days, minutes=-minutes)).isoformat(),
            "properties": {"plan": plan[user]},
        }
        for user, days, minutes, event in steps
    ]


def _answer(server: ServerProcess, request: Request) -> Any:
    """The API's own answer to the query the page sent."""
    r = httpx.post(
        request.url,
        content=request.post_data or "",
        headers={**server.headers("read"), "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    return r.json()


#: (type, the editor's fields) of each panel the test adds
PANELS: list[tuple[str, dict[str, str]]] = [
    ("trends", {"events": "view, signup", "breakdown": "plan", "interval": "day"}),
    (
        "funnels",
        {
            "steps": "view, signup, purchase",
            "window": "1",
            "windowUnit": "day",
            "breakdown": "plan",
        },
    ),
    ("retention", {"target": "view", "returning": "view", "period": "day", "periods": "6"}),
    ("paths", {"start": "view", "depth": "3"}),
    ("lifecycle", {"event": "view", "interval": "day"}),
    ("stickiness", {"event": "view", "interval": "day"}),
]


def _add_panel(page: Page, kind: str, fields: dict[str, str]) -> Request:
    page.select_option("#add-kind", "insight")
    page.click("#add-panel")
    editor = page.locator("#insight-editor")
    expect(editor).to_be_visible()
    editor.locator('select[name="type"]').select_option(kind)
    editor.locator('select[name="range"]').select_option("7d")
    for name, value in fields.items():
        field = editor.locator(f'[name="{name}"]')
        if field.evaluate("el => el.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    # the grid's panel runs the query after the editor's preview: wait for that one
    with page.expect_request(lambda r: r.url.endswith(f"/v1/insights/{kind}")) as first:
        editor.locator("#insight-apply").click()
    expect(editor).to_be_hidden()
    expect(page.locator(f'[data-panel="insight"] .insight[data-insight="{kind}"]')).to_be_visible()
    return first.value


def _check(page: Page, kind: str, answer: Any) -> None:
    """What the panel shows is the API's answer."""
    box = page.locator(f'[data-panel="insight"] .insight[data-insight="{kind}"]')
    if kind == "trends":
        names = {0: "view", 1: "signup"}
        expected = [
            f"{names[s['index']]} · {s['breakdownValue']} {sum(s['values'])}"
            for s in answer["series"]
        ]
        shown = box.locator(".legend-item").evaluate_all(
            "els => els.map(e => e.querySelector('.legend-name').textContent + ' ' +"
            " e.querySelector('.legend-total').textContent)"
        )
        assert shown == expected
        assert len(expected) == 4  # two events by two plans
        assert box.locator("path.series-line").count() == 4
    elif kind == "funnels":
        rows = box.locator(".funnel-table tbody tr")
        for i, step in enumerate(answer["steps"]):
            expect(rows.nth(i).locator(".count")).to_have_text(str(step["count"]))
            expect(rows.nth(i).locator(".rate")).to_have_text(
                f"{100 * step['conversionRate']:.1f}%"
            )
            if i:
                drop = box.locator(f'.funnel-drop[data-step="{i + 1}"] .drop-count')
                expect(drop).to_have_text(f"\u2212{step['droppedOff']}")  # a minus sign
        assert [s["count"] for s in answer["steps"]] == [4, 3, 2]
        by_plan = box.locator("tr[data-breakdown]").evaluate_all(
            "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        )
        assert by_plan == [
            [
                b["breakdownValue"],
                str(b["steps"][0]["count"]),
                str(b["steps"][-1]["count"]),
                f"{100 * b['steps'][-1]['conversionRate']:.1f}%",
            ]
            for b in answer["breakdown"]
        ]
        assert len(by_plan) == 2
    elif kind == "retention":
        shown = box.locator("tbody tr").evaluate_all(
            "rows => rows.map(r => [r.dataset.cohort,"
            " [...r.querySelectorAll('td.heat')].map(td => Number(td.dataset.count))])"
        )
        assert shown == [[c["start"], c["values"]] for c in answer["cohorts"]]
        assert any(c["size"] for c in answer["cohorts"])
    elif kind == "paths":
        links = box.locator(".path-link").evaluate_all(
            "els => els.map(e => [e.dataset.source, e.dataset.target, Number(e.dataset.count)])"
        )
        edges = [[e["source"], e["target"], e["count"]] for e in answer["edges"]]
        assert sorted(links) == sorted(edges)
        assert edges
    elif kind == "lifecycle":
        for status in ("new", "returning", "resurrecting", "dormant"):
            total = box.locator(f'.legend-item[data-status="{status}"] .legend-total')
            expect(total).to_have_text(str(sum(answer[status])))
        assert sum(answer["new"]) == 4
    else:
        note = box.locator(".insight-note")
        expect(note).to_have_attribute("data-total", str(sum(answer["actors"])))
        assert box.locator("rect.bar").count() == sum(1 for n in answer["actors"] if n)


def test_every_insight_type_is_drawn_from_the_api_and_saved(
    server: ServerProcess, browser: Browser, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    r = httpx.post(
        server.url + "/v1/events/batch",
        json={"events": _journeys(now)},
        headers=server.headers("write"),
    )
    assert r.status_code == 200, r.text
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, timezone_id="UTC")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(server.url + "/")
        page.fill("#key-input", server.read_key)
        page.click("#login-submit")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=10_000)
        page.click("#customize")
        for kind in ("events_per_minute", "active_sessions", "alerts", "event_stream"):
            page.click(f'#edit-panels li[data-kind="{kind}"] .remove-panel')
        answers = {}
        for kind, fields in PANELS:
            request = _add_panel(page, kind, fields)
            answers[kind] = _answer(server, request)
            body = json.loads(request.post_data or "{}")
            assert body["timezone"] == "UTC"  # the browser's zone
            _check(page, kind, answers[kind])
        page.fill("#edit-title", "Product")
        page.fill("#edit-name", "product")
        page.click("#save-dashboard")
        expect(page.locator("#edit-status")).to_have_text("Saved (version 1)")
        saved = httpx.get(
            server.url + "/v1/dashboards/product", headers=server.headers("read")
        ).json()
        insights = [p["insight"] for p in saved["panels"] if p["kind"] == "insight"]
        assert [i["kind"] for i in insights] == [kind for kind, _ in PANELS]
        assert insights[1]["query"]["windowSeconds"] == 86400
        assert insights[1]["query"]["breakdown"] == {"property": "plan"}
        assert insights[1]["query"]["steps"] == [
            {"event": "view"},
            {"event": "signup"},
            {"event": "purchase"},
        ]
        page.locator("#cancel-edit").click()
        page.screenshot(path=str(tmp_path / "insights.png"), full_page=True)

        page.reload()
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=10_000)
        expect(page.locator("#dashboard-select option:checked")).to_have_text("Product")
        for kind, _ in PANELS:
            box = page.locator(f'[data-panel="insight"] .insight[data-insight="{kind}"]')
            expect(box).to_be_visible()
            _check(page, kind, answers[kind])
        heads = page.locator('[data-panel="insight"] h2').all_inner_texts()
        assert heads[0] == "Trends: view, signup"
        assert heads[1] == "Funnel: view → signup → purchase"

        # Edit one: the editor opens with the panel's query, and an update replaces it.
        page.locator('[data-panel="insight"]').nth(1).locator(".edit-insight").click()
        editor = page.locator("#insight-editor")
        expect(editor.locator('[name="steps"]')).to_have_value("view, signup, purchase")
        editor.locator('[name="steps"]').fill("view, purchase")
        editor.locator("#insight-apply").click()
        funnel = page.locator('[data-panel="insight"] .insight[data-insight="funnels"]')
        expect(funnel.locator(".funnel-table tbody tr")).to_have_count(2)
        expect(page.locator("#edit-status")).to_have_text("Unsaved changes")

        # A query the server refuses shows its message in the editor's preview.
        page.select_option("#add-kind", "insight")
        page.click("#add-panel")
        editor.locator('select[name="type"]').select_option("funnels")
        editor.locator('[name="steps"]').fill("view")
        editor.locator("#insight-run").click()
        expect(editor.locator(".insight-error")).to_have_text(
            "steps: a funnel has between 2 and 10 steps"
        )
        editor.locator("#insight-cancel").click()
        page.screenshot(path=str(tmp_path / "insights-after-reload.png"), full_page=True)
    finally:
        context.close()
    # the refused query's 400 is logged by the browser as a failed load: expected
    assert [e for e in errors if "status of 400" not in e] == []
