"""The OpenAPI document, and schemathesis run against the live server with it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests._server import ServerProcess
from tests.conftest import ServerFactory


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
    assert {"bearer", "apiKey"} <= set(doc["components"]["securitySchemes"])


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(server_factory: ServerFactory, tmp_path: Path) -> None:
    # A server of its own: schemathesis PUTs configs and posts thousands of events.
    server = server_factory(env={"INNKT_RATE_LIMIT_PER_SECOND": "0"})
    result = subprocess.run(
        [
            *(sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json"),
            *("--checks", "not_a_server_error"),
            *("--max-examples", "15"),
            *("--workers", "2"),
            *("--header", f"Authorization: Bearer {server.admin_key}"),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # its reports and example database stay out of the repository
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    counts = re.search(r"(\d+) selected / (\d+) total", output)
    assert counts is not None, output[-3000:]
    assert counts.group(1) == counts.group(2)  # every operation was exercised
    assert int(counts.group(1)) >= 7


def test_no_page_that_loads_assets_from_elsewhere(shared_server: ServerProcess) -> None:
    # Litestar's HTML schema viewers fetch scripts from a CDN; only JSON is served.
    r = httpx.get(shared_server.url + "/schema")
    assert r.status_code == 200
    assert r.json()["openapi"].startswith("3.")
    for path in ("/schema/swagger", "/schema/redoc", "/schema/elements", "/schema/rapidoc"):
        r = httpx.get(shared_server.url + path)
        assert r.status_code != 200, path
        assert "<script" not in r.text, path
