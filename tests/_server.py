"""A real server in a subprocess, for tests and benchmarks.

Starts ``python -m innkt_analytics serve`` on a free port, waits for it to
listen, and remembers the keys it printed on its first start. ``kill()`` is a
real SIGKILL; ``start()`` after it brings the same database back on the same port.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ServerProcess"]


def pg_events(url: str, columns: str, project: str) -> list[tuple[object, ...]]:
    """A project's rows of a PostgreSQL server database in seq order, from the hot rows
    and the segments (their bytes in ``segment_parts``) of one snapshot."""
    import tempfile

    import duckdb
    import psycopg

    with psycopg.connect(url) as conn, tempfile.TemporaryDirectory() as tmp:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        hot = conn.execute(
            f"SELECT seq, {columns} FROM events WHERE project = %s", (project,)
        ).fetchall()
        paths = []
        for (name,) in conn.execute("SELECT file FROM segments").fetchall():
            parts = conn.execute(
                "SELECT data FROM segment_parts WHERE file = %s ORDER BY part", (name,)
            ).fetchall()
            path = Path(tmp) / name
            path.write_bytes(b"".join(bytes(p[0]) for p in parts))
            paths.append(str(path))
        cold = (
            duckdb.connect()
            .execute(
                f"SELECT seq, {columns} FROM read_parquet(?) WHERE project = ?", [paths, project]
            )
            .fetchall()
            if paths
            else []
        )
    return [r[1:] for r in sorted(hot + cold, key=lambda r: r[0])]


_KEY = re.compile(r"created (\w+) key \(project '[^']+'\): (\S+)")
_URL = re.compile(r"listening on (https?://\S+)")


def sqlite_events(
    db: str | Path, columns: str, where: str, params: tuple[object, ...]
) -> list[tuple[object, ...]]:
    """Matching rows of a SQLite server database in seq order, from the hot log and the
    Parquet segments of one snapshot (``where``: SQL valid in SQLite and DuckDB)."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("BEGIN")  # one snapshot: a compaction moves rows between the reads
        hot = conn.execute(
            f"SELECT {columns} FROM events WHERE {where} ORDER BY seq", params
        ).fetchall()
        files = [r[0] for r in conn.execute("SELECT file FROM segments ORDER BY min_seq")]
    if not files:
        return hot
    import duckdb

    paths = [f"{db}.segments/{f}" for f in files]
    cold = (
        duckdb.connect()
        .execute(
            f"SELECT {columns} FROM read_parquet(?) WHERE {where} ORDER BY seq", [paths, *params]
        )
        .fetchall()
    )
    return cold + hot


class ServerProcess:
    def __init__(
        self,
        db: str | Path,
        *,
        log_dir: str | Path,
        env: dict[str, str] | None = None,
        port: int = 0,
        args: tuple[str, ...] = (),
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        #: extra ``serve`` options (e.g. TLS), and what the health wait verifies TLS with
        self.args = args
        self.verify = verify
        self.db = str(db)
        self.port = port
        self.env = dict(env or {})
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.keys: dict[str, str] = {}
        self.url = ""
        self._starts = 0

    @property
    def write_key(self) -> str:
        return self.keys["write"]

    @property
    def read_key(self) -> str:
        return self.keys["read"]

    @property
    def admin_key(self) -> str:
        return self.keys["admin"]

    @property
    def db_path(self) -> str:
        return self.db

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self._starts += 1
        #: what the running server process prints (stdout and stderr)
        self.log = log = self.log_dir / f"server-{self.port or 'new'}-{self._starts}.log"
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "innkt_analytics",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--db",
                    self.db,
                    *self.args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            for scope, key in _KEY.findall(text):
                self.keys[scope] = key
            found = _URL.search(text)
            if found:
                self.url = found.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                self._wait_healthy(deadline, log)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not start in {timeout}s:\n{log.read_text()}")

    def _wait_healthy(self, deadline: float, log: Path) -> None:
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{log.read_text()}")
            try:
                health = httpx.get(self.url + "/v1/health", timeout=1, verify=self.verify)
                if health.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server never became healthy")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no flush — what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def headers(self, scope: str = "write") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    def create_key(self, scope: str, project: str = "default") -> str:
        """A new key made with the real CLI against the live database."""
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "innkt_analytics",
                "keys",
                "create",
                "--scope",
                scope,
                "--project",
                project,
                "--db",
                self.db,
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
        )
        return out.stdout.strip().splitlines()[-1]

    # -- assertions read the database directly (SQLite or PostgreSQL) ------------

    @property
    def is_postgres(self) -> bool:
        return self.db.startswith(("postgresql://", "postgres://"))

    def _pg_rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg  # only PostgreSQL runs need it

        with psycopg.connect(self.db, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def event_ids(self, project: str = "default") -> list[str]:
        if self.is_postgres:
            return [str(r[0]) for r in pg_events(self.db, "event_id", project)]
        return [str(r[0]) for r in sqlite_events(self.db, "event_id", "project = ?", (project,))]

    def count_events(self, project: str | None = None) -> int:
        if self.is_postgres:
            # an id is in the dedup tables exactly while its event is stored, hot or
            # compacted into a segment
            where, params = ("", ()) if project is None else (" WHERE project = %s", (project,))
            rows = self._pg_rows(
                f"SELECT (SELECT count(*) FROM event_ids{where})"
                f" + (SELECT count(*) FROM event_uuids{where})",
                params * 2,
            )
            return int(rows[0][0])
        # the hot log, and the Parquet segments the compactor moved events to
        with contextlib.closing(sqlite3.connect(self.db, isolation_level=None)) as conn:
            where, params = ("", ()) if project is None else (" WHERE project = ?", (project,))
            conn.execute("BEGIN")  # one snapshot: a compaction moves rows between the two
            hot = int(conn.execute("SELECT COUNT(*) FROM events" + where, params).fetchone()[0])
            files = [r[0] for r in conn.execute("SELECT file FROM segments")]
        if not files:
            return hot
        import duckdb

        paths = [f"{self.db}.segments/{f}" for f in files]
        sql = "SELECT COUNT(*) FROM read_parquet(?)" + where
        [(cold,)] = duckdb.connect().execute(sql, [paths, *params]).fetchall()
        return hot + int(cold)
