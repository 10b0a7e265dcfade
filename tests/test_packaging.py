"""What the published package carries (issue 16): metadata, extras, the API page, and
an SDK that installs and delivers on its own in a fresh virtual environment."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

import innkt_analytics
from tests._server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
SDK_DEPENDENCIES = {"msgspec", "h11", "websockets"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower()


def test_dependencies_are_the_sdk_only_and_extras_hold_the_rest() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {_name(r) for r in project["dependencies"]} == SDK_DEPENDENCIES
    extras = project["optional-dependencies"]
    server = {_name(r) for r in extras["server"]}
    assert {"litestar", "uvicorn", "typer", "rich"} <= server
    assert {_name(r) for r in extras["zstd"]} == {"zstandard"}
    assert {_name(r) for r in extras["encryption"]} == {"cryptography"}
    assert any(r.startswith("innkt-analytics[server,") for r in extras["test"])
    for extra in ("postgres", "redis", "parquet", "bench"):
        assert extras[extra]
    assert project["urls"]
    assert project["classifiers"]
    assert "Typing :: Typed" in project["classifiers"]


def test_the_changelog_has_an_entry_for_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(innkt_analytics.__version__)}\b", changelog, re.M)


def test_api_reference_is_generated_from_the_current_code() -> None:
    """docs/api.md is what scripts/apidoc writes now, and documents every name of __all__."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "apidoc"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^### `([^`]+)`$", page, re.M))
    assert documented == set(innkt_analytics.__all__)
    assert "(no docstring)" not in page


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and sdist, built once with ``python -m build`` (isolated, as a release is)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def _wheel(dist: Path) -> Path:
    return next(dist.glob("innkt_analytics-*.whl"))


@pytest.mark.slow
def test_wheel_and_sdist_pass_twine_check(dist: Path) -> None:
    files = sorted(str(p) for p in dist.iterdir())
    assert len(files) == 2, files
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_wheel_metadata_and_contents(dist: Path) -> None:
    with zipfile.ZipFile(_wheel(dist)) as wheel:
        names = wheel.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(wheel.read(meta_name))
    assert "innkt_analytics/py.typed" in names
    assert "innkt_analytics/server/static/index.html" in names
    assert meta["Version"] == innkt_analytics.__version__
    assert meta["Requires-Python"] == ">=3.11"
    unconditional = {_name(r) for r in meta.get_all("Requires-Dist", []) if "extra ==" not in r}
    assert unconditional == SDK_DEPENDENCIES
    assert {"server", "zstd", "encryption", "postgres", "redis", "parquet"} <= set(
        meta.get_all("Provides-Extra", [])
    )
    assert any(u.startswith("Changelog, ") for u in meta.get_all("Project-URL", []))
    assert "Typing :: Typed" in meta.get_all("Classifier", [])
    sdist = next(dist.glob("innkt_analytics-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"CHANGELOG.md", "README.md", "pyproject.toml", "src/innkt_analytics/py.typed"} <= (
        members
    )


@pytest.mark.slow
def test_the_sdk_alone_installs_and_delivers_in_a_fresh_venv(
    dist: Path, server: ServerProcess, tmp_path: Path
) -> None:
    """A venv with only the wheel and its dependencies: 4 distributions, and it delivers."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), str(_wheel(dist))],
        check=True,
        timeout=300,
    )
    script = textwrap.dedent(
        f"""
        import importlib.metadata, sys
        from innkt_analytics import AnalyticsBackendService, BackendConfig
        service = AnalyticsBackendService(BackendConfig(
            base_url={server.url!r}, api_key={server.write_key!r},
            queue_path={str(tmp_path / "q.sqlite3")!r},
        ))
        for i in range(5):
            service.track("fresh_venv", {{"i": i}})
        print(service.flush(timeout=30))
        service.shutdown()
        print(sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()))
        print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"litestar", "httpx", "rich"}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(
        [str(python), "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    flushed, dists, server_modules = done.stdout.splitlines()
    assert flushed == "True"
    assert dists == "['h11', 'innkt-analytics', 'msgspec', 'websockets']"
    assert server_modules == "[]"
    assert len(server.event_ids()) == 5
