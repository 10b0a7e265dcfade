"""The package's three parts (issue 18, docs/architecture.md).

``shared/`` (both sides), ``sdk/`` (what an app embeds), ``server/``; the root keeps the
public face only. lint-imports (scripts/check) enforces that imports point only down;
this checks what a user of the SDK gets. Fresh interpreters: this process has the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import innkt_analytics

PACKAGE = Path(innkt_analytics.__file__).parent


def test_the_root_holds_the_public_face_and_the_three_parts_only() -> None:
    # A new module belongs in one of the parts; a flat one would blur them again.
    names = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert names == {
        "__init__.py",
        "__main__.py",
        "testing.py",
        "py.typed",
        "shared",
        "sdk",
        "server",
    }


def _loaded(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_importing_the_sdk_imports_no_server_module() -> None:
    loaded = _loaded(
        """
        import json, sys
        import innkt_analytics
        print(json.dumps(sorted(sys.modules)))
        """
    )
    assert "innkt_analytics" in loaded
    assert [m for m in loaded if m.startswith("innkt_analytics.server")] == []


def test_all_of_the_sdk_and_shared_imports_no_server_module() -> None:
    loaded = _loaded(
        """
        import importlib, json, pkgutil, sys
        import innkt_analytics, innkt_analytics.testing
        for name in innkt_analytics.__all__:
            getattr(innkt_analytics, name)
        for part in ("innkt_analytics.shared", "innkt_analytics.sdk"):
            package = importlib.import_module(part)
            for info in pkgutil.iter_modules(package.__path__, part + "."):
                importlib.import_module(info.name)
        print(json.dumps(sorted(sys.modules)))
        """
    )
    assert "innkt_analytics.sdk._backend" in loaded
    assert "innkt_analytics.shared._protocol" in loaded
    assert [m for m in loaded if m.startswith("innkt_analytics.server")] == []
