"""The OpenAPI document, and schemathesis run against the live server with it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._server import ServerProcess
from tests.conftest import ServerFactory

_METHODS = ("get", "put", "post", "delete", "patch")


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in _METHODS
    ]


def _schema(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    found: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return found


def test_openapi_document_describes_the_api(shared_server: ServerProcess) -> None:
    r = httpx.get(shared_server.url + "/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, method in [
        ("/v1/events", "post"),
        ("/v1/events/batch", "post"),
        ("/v1/events", "get"),
        ("/v1/stats", "get"),
        ("/v1/config", "get"),
        ("/v1/config", "put"),
        ("/v1/health", "get"),
    ]:
        assert method in paths[path], (path, method)
    schemas = doc["components"]["schemas"]
    batch_ref = paths["/v1/events/batch"]["post"]["requestBody"]["content"]["application/json"]
    assert batch_ref["schema"]["$ref"] == "#/components/schemas/Batch"
    assert set(schemas["Event"]["required"]) == {"eventId", "eventType", "timestamp"}
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": ANY_TEXT}
    assert schemes["apiKey"] == {**schemes["apiKey"], "in": "header", "name": "X-API-Key"}
    assert schemes["segmentBasic"]["scheme"] == "basic"
    # /schema is the same document, not Litestar's own (which sees none of the shapes)
    assert httpx.get(shared_server.url + "/schema").json() == doc


class _AnyText:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY_TEXT: Any = _AnyText()

#: what every operation takes besides path parameters: (query names, body schema)
_TAKES: dict[tuple[str, str], tuple[set[str], str | None]] = {
    ("post", "/v1/events"): (set(), "Event"),
    ("post", "/v1/events/batch"): (set(), "Batch"),
    ("get", "/v1/events"): (
        {"eventType", "sessionId", "userId", "since", "until", "limit", "cursor"},
        None,
    ),
    ("get", "/v1/stats"): ({"eventType", "sessionId", "userId", "since", "until", "bucket"}, None),
    ("get", "/v1/export"): ({"format", "eventType", "sessionId", "userId", "since", "until"}, None),
    ("put", "/v1/config"): (set(), "ClientConfigUpdate"),
    ("post", "/v1/keys"): (set(), "KeyRequest"),
    ("post", "/v1/keys/{key_id}/rotate"): (set(), "RotateRequest"),
    ("get", "/v1/audit"): ({"limit", "before"}, None),
    ("post", "/v1/alerts/rules"): (set(), "AlertRuleRequest"),
    ("post", "/v1/reports"): (set(), "ReportSpec"),
    ("put", "/v1/reports/{report_id}"): (set(), "ReportSpec"),
    ("put", "/v1/dashboards/{name}"): (set(), "Dashboard"),
    ("post", "/v1/batch"): (set(), "SegmentBatch"),
    ("post", "/v1/track"): (set(), "SegmentMessage"),
}


def test_every_operation_declares_its_inputs_answers_errors_and_scope(
    shared_server: ServerProcess,
) -> None:
    doc = httpx.get(shared_server.url + "/openapi.json").json()
    operations = _operations(doc)
    assert len(operations) >= 40
    for method, path, op in operations:
        where = f"{method.upper()} {path}"
        assert "security" in op, f"{where} is not declared in server/_openapi.py"
        query, body = _TAKES.get((method, path), (set(), None))
        params = op.get("parameters", [])
        assert {p["name"] for p in params if p["in"] == "query"} >= query, where
        for name in re.findall(r"{(\w+)}", path):
            assert any(p["name"] == name and p["in"] == "path" for p in params), where
        for p in params:
            assert p["schema"].get("type") in ("string", "integer"), (where, p)
            assert p.get("description") or p["in"] == "path", (where, p)
        if body is not None:
            media = op["requestBody"]["content"]["application/json"]
            schema = media["schema"]
            ref = schema["allOf"][0]["$ref"] if "allOf" in schema else schema["$ref"]
            assert ref.endswith("/" + body), where
            assert "example" in media, where  # so the examples phase can reach 2xx
        elif method != "post" or not path.startswith("/v1/") or path.endswith("/send"):
            assert "requestBody" not in op, where
        else:  # every Segment single-message route
            assert op["requestBody"]["content"]["application/json"]["schema"], where
        codes = sorted(op["responses"])
        ok = [c for c in codes if c.startswith("2")]
        assert len(ok) == 1, where
        answer = op["responses"][ok[0]]
        if ok[0] != "204":
            for media_type, content in answer["content"].items():
                schema = _schema(doc, content["schema"])
                if media_type == "application/json":  # never Litestar's untyped "string"
                    assert schema.get("type") == "object", where
                    assert schema["properties"], where
                else:
                    assert schema == {"type": "string"}, where
        errors = [c for c in codes if c.startswith(("4", "5"))]
        assert errors or path == "/v1/health/live", where  # it answers while the loop runs
        for code in errors:
            schema = op["responses"][code]["content"]["application/json"]["schema"]
            assert schema["$ref"].split("/")[-1] in {
                "ErrorBody",
                "SegmentError",
                "Health",
                "Readiness",
            }, where
        security = op["security"]
        scope = op.get("x-required-scope")
        if scope is None:
            assert {} in security or all(s == [] for req in security for s in req.values()), where
        else:
            assert {"bearer": [scope]} in security, where
            assert {"apiKey": [scope]} in security, where
            assert {"401", "403"} <= set(codes), where
    error = doc["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"error", "message"}
    limit = next(p for p in doc["paths"]["/v1/events"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}


def test_every_documented_integer_bound_is_enforced_with_a_json_400(
    shared_server: ServerProcess,
) -> None:
    doc = httpx.get(shared_server.url + "/openapi.json").json()
    headers = {"Authorization": f"Bearer {shared_server.admin_key}"}
    checked = 0
    for method, path, op in _operations(doc):
        for param in op.get("parameters", []):
            schema = param["schema"]
            if param["in"] != "query" or schema.get("type") != "integer":
                continue
            for value in (schema["minimum"] - 1, schema["maximum"] + 1, "1" * 5000, "²"):
                r = httpx.request(
                    method, shared_server.url + path, params={param["name"]: value}, headers=headers
                )
                assert r.status_code == 400, (path, param["name"], value, r.text)
                assert r.json()["error"] == "invalid_parameter"
            for value in (schema["minimum"], schema["maximum"]):
                r = httpx.request(
                    method, shared_server.url + path, params={param["name"]: value}, headers=headers
                )
                assert r.status_code == 200, (path, param["name"], value, r.text)
            checked += 1
    assert checked >= 3  # /v1/events limit, /v1/audit limit and before


def test_every_documented_scope_is_needed(shared_server: ServerProcess) -> None:
    # The fuzz run shows the documented scope is enough; a key without it gets a 403.
    doc = httpx.get(shared_server.url + "/openapi.json").json()
    lesser = {"read": shared_server.write_key, "write": shared_server.read_key}
    checked = 0
    for method, path, op in _operations(doc):
        scope = op.get("x-required-scope")
        if scope is None:
            continue
        url = shared_server.url + re.sub(r"{\w+}", "x", path)
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        params = {
            p["name"]: p["schema"]["example"]
            for p in op.get("parameters", [])
            if p["in"] == "query" and p["required"]
        }
        for key in (lesser[scope],) if scope in lesser else lesser.values():
            r = httpx.request(
                method,
                url,
                params=params,
                headers={"Authorization": f"Bearer {key}"},
                json=body.get("example"),
            )
            assert r.status_code == 403, (method, path, key[:6], r.text)
            assert r.json()["error"] == "forbidden"
        checked += 1
    assert checked >= 35


def _seed(server: ServerProcess) -> dict[tuple[str, str], dict[str, str]]:
    """State the destructive operations need, as path-parameter examples per operation."""
    admin = {"Authorization": f"Bearer {server.admin_key}"}

    def make_key() -> str:
        r = httpx.post(server.url + "/v1/keys", json={"scopes": ["write"]}, headers=admin)
        assert r.status_code == 201, r.text
        key_id: str = r.json()["keyId"]
        return key_id

    dashboard = {"title": "Seeded", "panels": [{"kind": "events_per_minute"}]}
    for name in ("seeded-get", "seeded-delete"):
        r = httpx.put(f"{server.url}/v1/dashboards/{name}", json=dashboard, headers=admin)
        assert r.status_code == 200, r.text
    rule = {"name": "seeded", "kind": "ingest_lag", "threshold": 60}
    r = httpx.post(server.url + "/v1/alerts/rules", json=rule, headers=admin)
    assert r.status_code == 201, r.text
    rule_id = r.json()["id"]
    # Reports: one to read, replace and send (its webhook: a closed port here), one to delete
    report = {"name": "seeded", "queries": [{"kind": "stickiness", "query": {}}]}
    reports = []
    for _ in range(2):
        r = httpx.post(
            server.url + "/v1/reports",
            json={**report, "webhookUrl": "http://127.0.0.1:9/seeded"},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        reports.append(r.json()["id"])
    event = {"eventId": "seeded-1", "eventType": "signup", "timestamp": "2026-01-01T00:00:00Z"}
    r = httpx.post(server.url + "/v1/events", json={**event, "userId": "seeded"}, headers=admin)
    assert r.status_code == 200, r.text
    return {
        ("get", "/v1/persons/{person_or_id}"): {"person_or_id": "seeded"},
        ("get", "/v1/persons"): {"id": "seeded"},
        ("delete", "/v1/keys/{key_id}"): {"key_id": make_key()},
        ("post", "/v1/keys/{key_id}/rotate"): {"key_id": make_key()},
        ("get", "/v1/dashboards/{name}"): {"name": "seeded-get"},
        ("delete", "/v1/dashboards/{name}"): {"name": "seeded-delete"},
        ("delete", "/v1/alerts/rules/{rule_id}"): {"rule_id": rule_id},
        **{
            (method, path): {"report_id": reports[0]}
            for method, path in (
                ("get", "/v1/reports/{report_id}"),
                ("put", "/v1/reports/{report_id}"),
                ("post", "/v1/reports/{report_id}/send"),
            )
        },
        ("delete", "/v1/reports/{report_id}"): {"report_id": reports[1]},
    }


def _template(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\{\w+\\}", "[^/]+", re.escape(path)) + "$")


@pytest.mark.slow
def test_schemathesis_reaches_2xx_on_every_operation_and_never_5xx(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    # A server of its own: schemathesis creates keys, rules and dashboards, posts events.
    # Alert evaluation and report scheduling off: fuzzing creates rules and reports with
    # made-up webhook URLs, and a firing rule or a due report would POST to them. No
    # request of this test may leave the machine.
    server = server_factory(
        env={
            "INNKT_RATE_LIMIT_PER_SECOND": "0",
            "INNKT_ALERT_INTERVAL": "0",
            "INNKT_REPORT_INTERVAL": "0",
            # POST /v1/reports/{id}/send delivers at once, to whatever webhook URL a fuzzed
            # PUT left: every request to another host goes to a proxy that is not there
            "ALL_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    doc = httpx.get(server.url + "/openapi.json").json()
    seeded = _seed(server)
    # No probes with methods the routes lack (405s): they cost time and show nothing here.
    config = [
        "[generation]",
        "max-examples = 5",
        "[phases.coverage]",
        "unexpected-methods = []",
        "",
    ]
    for method, path, op in _operations(doc):
        for param in op.get("parameters", []):
            if param["name"] in seeded.get((method, path), {}):
                param["schema"]["example"] = seeded[method, path][param["name"]]
        # The least key the document says is enough: a wrong scope shows as a 403.
        scope = op.get("x-required-scope", "read")
        key = {"write": server.write_key, "read": server.read_key}.get(scope, server.admin_key)
        config += [
            "[[operations]]",
            f'include-operation-id = "{op["operationId"]}"',
            f'headers = {{ Authorization = "Bearer {key}" }}',
            "",
        ]
    (tmp_path / "openapi.json").write_text(json.dumps(doc))
    (tmp_path / "schemathesis.toml").write_text("\n".join(config))
    har = tmp_path / "run.har"
    started = time.monotonic()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "schemathesis.cli", "--no-color"),
            *("--config-file", str(tmp_path / "schemathesis.toml")),
            *("run", str(tmp_path / "openapi.json"), "--url", server.url),
            *("--checks", "not_a_server_error,status_code_conformance"),
            *("--checks", "content_type_conformance,response_schema_conformance"),
            *("--checks", "response_headers_conformance,negative_data_rejection"),
            *("--phases", "examples,coverage,fuzzing"),
            *("--workers", "1", "--seed", "1"),
            *("--report", "har", "--report-har-path", str(har)),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # its reports and example database stay out of the repository
        timeout=240,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    statuses: dict[tuple[str, str], set[int]] = {}
    templates = [(m, p, _template(p)) for m, p, _ in _operations(doc)]
    for entry in json.loads(har.read_text())["log"]["entries"]:
        method = entry["request"]["method"].lower()
        url_path = httpx.URL(entry["request"]["url"]).path
        status = entry["response"]["status"]
        matched = [(m, p) for m, p, t in templates if m == method and t.match(url_path)]
        # a literal path beats a template that also matches it
        if matched:  # not the probes of methods no route has (405)
            best = min(matched, key=lambda mp: mp[1].count("{"))
            statuses.setdefault(best, set()).add(status)
    missing = [mp for mp in ((m, p) for m, p, _ in _operations(doc)) if mp not in statuses]
    assert not missing, missing
    no_2xx = {mp: sorted(s) for mp, s in statuses.items() if not any(200 <= c < 300 for c in s)}
    assert not no_2xx, no_2xx
    server_errors = {mp: sorted(s) for mp, s in statuses.items() if any(c >= 500 for c in s)}
    assert not server_errors, server_errors
    print(f"schemathesis: {len(statuses)} operations, {elapsed:.1f} s")  # shown with -s


def test_no_page_that_loads_assets_from_elsewhere(shared_server: ServerProcess) -> None:
    # Litestar's HTML schema viewers fetch scripts from a CDN; only JSON is served.
    r = httpx.get(shared_server.url + "/schema")
    assert r.status_code == 200
    assert r.json()["openapi"].startswith("3.")
    for path in ("/schema/swagger", "/schema/redoc", "/schema/elements", "/schema/rapidoc"):
        r = httpx.get(shared_server.url + path)
        assert r.status_code != 200, path
        assert "<script" not in r.text, path
