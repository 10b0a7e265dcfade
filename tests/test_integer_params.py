"""Every integer parameter of every route, out of range: a 4xx with a JSON error, never a 500.

The parameters come from the live server's OpenAPI document, so a route or parameter
added later is swept too: query and path parameters typed integer must be answered 400
naming the parameter; integer fields of request bodies (reached through the operation's
example) must never give a 5xx, and a value outside their documented bounds is a 4xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests._server import ServerProcess

#: huge and negative values; the 5000-digit one is past int()'s own digit limit
HOSTILE: list[int | str] = [
    -1,
    -(2**63) - 1,
    2**63,
    2**64,
    10**30,
    "9" * 5000,
    "-" + "9" * 5000,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("ints")
    proc = ServerProcess(tmp / "i.db", log_dir=tmp / "logs").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def spec(server: ServerProcess) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(server.url + "/openapi.json", timeout=30).json()
    return document


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op:
                yield method.upper(), path, op


def _out_of_range(value: int | str, schema: dict[str, Any]) -> bool:
    number = int(value) if isinstance(value, int) or len(value) < 4000 else None
    if number is None or not -(2**63) <= number < 2**63:
        return True  # beyond any integer storage binds
    low, high = schema.get("minimum"), schema.get("maximum")
    return (low is not None and number < low) or (high is not None and number > high)


def _fill_path(path: str, values: dict[str, str] | None = None) -> str:
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            path = path.replace(part, (values or {}).get(part[1:-1], "x1"))
    return path


def _integer_parameters(spec: dict[str, Any]) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    found = []
    for method, path, op in _operations(spec):
        for p in op.get("parameters", []):
            if p.get("schema", {}).get("type") == "integer":
                found.append((method, path, p["name"], p["in"], p["schema"]))
    return found


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Top-level properties of a body schema, through $ref and allOf."""
    if "$ref" in schema:
        return _resolve(spec, spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    props: dict[str, Any] = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        props.update(_resolve(spec, part))
    return props


def _integer_schema(prop: dict[str, Any]) -> dict[str, Any] | None:
    if prop.get("type") == "integer":
        return prop
    for alt in prop.get("anyOf", []) + prop.get("oneOf", []):
        if alt.get("type") == "integer":
            return dict(alt)
    return None


def _body_fields(spec: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any], Any]]:
    found = []
    for method, path, op in _operations(spec):
        content = op.get("requestBody", {}).get("content", {}).get("application/json")
        if not content or not isinstance(content.get("example"), dict):
            continue
        for name, prop in _resolve(spec, content["schema"]).items():
            schema = _integer_schema(prop)
            if schema is not None:
                found.append((method, path, name, schema, content["example"]))
    return found


def _check_json_error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("error"), str)
    assert isinstance(body.get("message"), str)
    return body


def test_the_sweep_finds_the_known_integer_parameters(spec: dict[str, Any]) -> None:
    # so that the sweeps below cannot pass by finding nothing
    params = {(m, p, n) for m, p, n, _, _ in _integer_parameters(spec)}
    assert {
        ("GET", "/v1/events", "limit"),
        ("GET", "/v1/audit", "limit"),
        ("GET", "/v1/audit", "before"),
    } <= params
    fields = {(m, p, n) for m, p, n, _, _ in _body_fields(spec)}
    assert ("POST", "/v1/keys/{key_id}/rotate", "overlapSeconds") in fields
    assert ("PUT", "/v1/config", "batchSize") in fields


def test_integer_query_and_path_parameters_out_of_range_are_400(
    server: ServerProcess, spec: dict[str, Any]
) -> None:
    headers = server.headers("admin")
    failures = []
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        for method, path, name, where, schema in _integer_parameters(spec):
            for value in [*HOSTILE, schema.get("minimum", 0) - 1, schema.get("maximum", 0) + 1]:
                if not _out_of_range(value, schema):
                    continue
                text = str(value)
                if where == "query":
                    response = http.request(method, _fill_path(path), params={name: text})
                else:
                    response = http.request(method, _fill_path(path, {name: text}))
                if response.status_code != 400:
                    failures.append((method, path, name, text[:24], response.status_code))
                    continue
                body = _check_json_error(response)
                if name not in body["message"]:
                    failures.append((method, path, name, text[:24], body["message"]))
    assert failures == []


def test_integer_body_fields_never_give_a_5xx(server: ServerProcess, spec: dict[str, Any]) -> None:
    headers = {**server.headers("admin"), "Content-Type": "application/json"}
    failures = []
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        for method, path, name, schema, example in _body_fields(spec):
            for value in HOSTILE:
                # the number as JSON text: json.dumps would refuse the 5000-digit one
                marker = "__innkt_value__"
                raw = json.dumps({**example, name: marker}).replace(f'"{marker}"', str(value))
                response = http.request(method, _fill_path(path), content=raw.encode())
                status = response.status_code
                if status >= 500:
                    failures.append((method, path, name, str(value)[:24], status, response.text))
                elif _out_of_range(value, schema) and "maximum" in schema and status < 400:
                    failures.append((method, path, name, str(value)[:24], status, "accepted"))
                elif status >= 400:
                    _check_json_error(response)
    assert failures == []
