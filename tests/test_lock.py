"""The locked install that tests and CI use (requirements/test.txt) stays complete and exact."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "test.txt"


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"not an exact pin in {LOCK.name}: {line!r}"
        pins[_name(name)] = version.strip()
    return pins


def test_every_dependency_of_the_tested_extras_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += [r for r in extra if not r.startswith("innkt-analytics")]
    locked = _locked()
    missing = sorted({_name(r) for r in wanted} - set(locked))
    assert not missing, f"run scripts/lock: {missing} are not in {LOCK.name}"


def test_the_readme_and_ci_install_from_the_lock() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -r requirements/test.txt" in readme
    assert "pip install -q -r requirements/test.txt" in ci
