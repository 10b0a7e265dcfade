"""Every code example of the README and docs/ runs against a real server (issue #13, 9).

Users copy the examples literally, so they must run as written. Each ```python block
of README.md and docs/*.md runs in its own interpreter (the SDK's singletons and the
default queue path are per process), in a scratch directory, against a real server:
only the placeholders are replaced — ``ik_…`` by a real key (a read key on a line
that says "read", an admin key on one that says "admin", else a write key) and the
example hosts (``127.0.0.1:8080``, ``localhost:8080``, ``analytics.example.com``) by
the test server. A block with top-level ``await`` runs in an event loop, as in
``python -m asyncio``. The README's curl blocks run in bash the same way; every
comment line in them that is a JSON document is output the docs promise, and must
appear in what the commands print. A Python example must also leave stderr empty (no
warning, no traceback from a worker thread).

A block that cannot run (a fragment) carries ``<!-- not-run: reason -->`` on the
line before it; the reason is required.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
_MARKER = re.compile(r"<!--\s*not-run\b(?P<rest>.*?)-->")
_KEY = re.compile(r"ik_(?:…|\.\.\.)")
_HOST = re.compile(
    r"(?P<scheme>https?|wss?)://(?:127\.0\.0\.1:8080|localhost:8080|analytics\.example\.com)"
)

#: Runs one example: top-level ``await`` is allowed, as in ``python -m asyncio``.
_RUNNER = """
import ast, asyncio, inspect, sys
source = open(sys.argv[1], encoding="utf-8").read()
code = compile(source, sys.argv[2], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__"}
if code.co_flags & inspect.CO_COROUTINE:
    asyncio.run(eval(code, namespace))
else:
    exec(code, namespace)
"""


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    #: None: runs; otherwise what the page's not-run marker says (may be empty: an error)
    not_run: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse(page: Path) -> list[Block]:
    """The fenced code blocks of a page, with the not-run marker right before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent = len(opening["indent"])
        end = i + 1
        while end < len(lines) and _FENCE.match(lines[end]) is None:
            end += 1
        code = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = _MARKER.search(previous)
        not_run = None if marker is None else marker["rest"].strip().removeprefix(":").strip()
        blocks.append(Block(page, i + 1, opening["lang"], code, not_run))
        i = end + 1
    return blocks


def _runnable(block: Block) -> bool:
    if block.lang == "python":
        return True
    # The README's curl examples run too; other shell blocks are deployment recipes.
    return block.page.name == "README.md" and block.lang in {"sh", "bash"} and "curl " in block.code


ALL_BLOCKS = [block for page in PAGES for block in parse(page)]
EXAMPLES = [block for block in ALL_BLOCKS if _runnable(block)]


def substitute(code: str, server: ServerProcess, files: dict[str, Path] | None = None) -> str:
    """Replace the placeholders: keys by the server's keys, example hosts by the server,
    example file paths by real files."""
    host = server.url.split("://", 1)[1]
    for placeholder, real in (files or {}).items():
        code = code.replace(placeholder, str(real))
    out = []
    for line in code.splitlines(keepends=True):
        lower = line.lower()
        scope = "read" if "read" in lower else "admin" if "admin" in lower else "write"
        line = _KEY.sub(server.keys[scope], line)
        line = _HOST.sub(
            lambda m: ("ws" if m["scheme"].startswith("ws") else "http") + "://" + host, line
        )
        out.append(line)
    return "".join(out)


def test_examples_are_found() -> None:
    # The extraction itself must not rot: these pages have examples that run.
    names = {block.page.name for block in EXAMPLES if block.not_run is None}
    assert {"README.md", "sdk.md", "persistence.md"} <= names
    assert any(block.lang != "python" for block in EXAMPLES)  # the README's curl


def test_every_not_run_marker_has_a_reason_and_a_block() -> None:
    for block in ALL_BLOCKS:
        if block.not_run is not None:
            assert block.not_run, f"{block.name}: <!-- not-run: … --> needs a reason"
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if _MARKER.search(line) is None:
                continue
            following = next((text for text in lines[number:] if text.strip()), "")
            assert _FENCE.match(following), f"{page.name}:{number}: not-run marker without a block"


def test_sdk_config_table_lists_every_option() -> None:
    # docs/sdk.md's BackendConfig table is what users configure from: no option missing.
    import dataclasses

    from innkt_analytics import BackendConfig

    text = (ROOT / "docs" / "sdk.md").read_text(encoding="utf-8")
    table = text.split("## Configuration (`BackendConfig`)", 1)[1].split("\n\n", 3)[2]
    documented = {
        name for row in table.splitlines() for name in re.findall(r"`(\w+)`", row.split("|")[1])
    }
    assert documented == {field.name for field in dataclasses.fields(BackendConfig)}


def test_not_run_markers_are_read(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not-run: a fragment of the block above -->\n\n```python\nx\n```\n"
        "<!-- not-run -->\n  ```python\n  y\n  ```\n```python\nz\n```\n",
        encoding="utf-8",
    )
    blocks = parse(page)
    assert [(b.line, b.code, b.not_run) for b in blocks] == [
        (3, "x\n", "a fragment of the block above"),
        (7, "y\n", ""),  # a marker without a reason: the check above fails on it
        (10, "z\n", None),
    ]


def _env(tmp_path: Path) -> dict[str, str]:
    # The SDK's queue and the local store default to XDG directories: keep them here.
    return {
        **os.environ,
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
    }


def _files(tmp_path: Path) -> dict[str, Path]:
    """Real files for the example paths: the TLS example's private CA."""
    import trustme

    ca_pem = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_pem))
    return {"/etc/innkt/ca.pem": ca_pem}


@pytest.mark.parametrize("block", EXAMPLES, ids=[block.name for block in EXAMPLES])
def test_example_runs(
    block: Block, shared_server: ServerProcess, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if block.not_run is not None:
        pytest.skip(f"marked not-run: {block.not_run}")
    if block.lang == "python":
        source = tmp_path / "example.py"
        code = substitute(block.code, shared_server, _files(tmp_path))
        source.write_text(code, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(source), block.name],
            cwd=tmp_path,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{block.name} failed:\n{done.stdout}\n{done.stderr}"
        # Nothing logged either: a thread's traceback or a warning means the example is wrong.
        assert done.stderr == "", f"{block.name} wrote to stderr:\n{done.stderr}"
        return
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    # A fresh server: the example's fixed eventId must be new to get the documented answer.
    server: ServerProcess = request.getfixturevalue("server")
    script = substitute(block.code, server).replace("curl -s ", "curl -sS --fail-with-body ")
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{block.name} failed:\n{done.stdout}\n{done.stderr}"
    for line in block.code.splitlines():
        comment = line.strip().removeprefix("#").strip()
        if line.strip().startswith("#") and comment.startswith("{"):
            promised = json.dumps(json.loads(comment), separators=(",", ":"))
            assert promised in done.stdout, f"{block.name}: {comment} not printed"
