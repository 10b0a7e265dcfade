"""Every CLI error is one line on stderr, never a traceback; --version; defaults in --help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from innkt_analytics import __version__

NOWHERE = "/proc/nope/x.db"  # its parent cannot be created, not even by root
UNREACHABLE_PG = "postgresql://nobody@127.0.0.1:1/x"


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "innkt_analytics", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "INNKT_STORAGE_STARTUP_WAIT": "0", **(env or {})},
        timeout=60,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a database that exists (made by ``keys create``)."""
    path = tmp_path_factory.mktemp("cli")
    made = _cli("keys", "create", "--scope", "read", "--db", "real.db", cwd=path)
    assert made.returncode == 0, made.stderr
    return path


BAD: list[tuple[str, ...]] = [
    # serve: storage, arguments, settings
    ("serve", "--port", "0", "--db", NOWHERE),
    ("serve", "--port", "0", "--db", "mysql://x"),
    ("serve", "--port", "0", "--db", UNREACHABLE_PG),
    ("serve", "--port", "99999"),
    ("serve", "--port", "abc"),
    ("serve", "--bogus"),
    ("serve", "--port", "0", "--db", "new.db", "--log-level", "loud"),
    ("serve", "--log-format", "xml"),
    ("serve", "--host", "256.1.1.1", "--port", "0", "--db", "new.db"),
    ("serve", "--tls-certfile", "/nope.pem", "--tls-keyfile", "/nope.key", "--db", "new.db"),
    # keys
    ("keys", "create", "--scope", "admin", "--db", NOWHERE),
    ("keys", "create", "--scope", "bogus", "--db", "real.db"),
    ("keys", "create", "--db", "real.db"),
    ("keys", "create", "--scope", "read", "--expires-in", "5x", "--db", "real.db"),
    ("keys", "list", "--db", NOWHERE),
    ("keys", "list", "--db", "mysql://x"),
    ("keys", "list", "--db", UNREACHABLE_PG),
    ("keys", "revoke", "key_nope", "--db", "real.db"),
    ("keys", "revoke", "--db", "real.db"),
    ("keys", "rotate", "key_nope", "--db", "real.db"),
    ("keys", "rotate", "key_nope", "--overlap", "zz", "--db", "real.db"),
    # backup
    ("backup", "create", "--db", NOWHERE),
    ("backup", "create", "--db", UNREACHABLE_PG),
    ("backup", "create", "--db", "mysql://x"),
    ("backup", "verify", "nope", "--db", "real.db"),
    ("backup", "verify", "../../etc", "--db", "real.db"),
    ("backup", "restore", "nope", "--db", "real.db"),
    ("backup", "restore", "--db", "real.db"),
    # export
    ("export", "-o", "/proc/nope/out.ndjson", "--db", "real.db"),
    ("export", "-o", "-", "--since", "garbage", "--db", "real.db"),
    ("export", "-o", "-", "--format", "xml", "--db", "real.db"),
    ("export", "-o", "-", "--db", NOWHERE),
    ("export", "--db", "real.db"),
    # the command itself
    ("nosuchcommand",),
    ("--bogus",),
]


@pytest.mark.parametrize("args", BAD, ids=" ".join)
def test_every_error_is_one_line(args: tuple[str, ...], workdir: Path, tmp_path: Path) -> None:
    shutil.copy(workdir / "real.db", tmp_path / "real.db")
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode in (1, 2), (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    # nothing else, and nothing half-done: no keys printed, no database left behind
    assert result.stdout == ""
    assert not (tmp_path / "new.db").exists()


def test_a_setting_that_does_not_parse_is_one_line(workdir: Path) -> None:
    result = _cli("serve", env={"INNKT_PORT": "eighty"}, cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: INNKT_PORT: cannot parse 'eighty'"]


def test_version(workdir: Path) -> None:
    result = _cli("--version", cwd=workdir)
    assert result.returncode == 0
    assert result.stdout.strip() == f"innkt-analytics {__version__}"


def test_serve_help_shows_the_defaults_and_their_variables(workdir: Path) -> None:
    result = _cli("serve", "--help", cwd=workdir, env={"COLUMNS": "200"})
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "[default: 127.0.0.1; env INNKT_HOST]" in text
    assert "[default: 8080; env INNKT_PORT]" in text
    assert "[default: innkt-analytics.db; env INNKT_DB]" in text
    assert "[default: warning]" in text
