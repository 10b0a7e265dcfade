"""The SDK as a dependency (issue 16): importing it brings no server, and it works without one.

Each check runs in a fresh interpreter, because this test process has long since
imported the server. Timing is measured in ``bench/footprint.py``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests._server import ServerProcess

#: what only the server needs; the SDK must not import any of it
SERVER_MODULES = ("litestar", "uvicorn", "typer", "click", "rich", "prometheus_client")
#: what the SDK used to import and no longer needs (httpx's stack, the optional extras)
NOT_SDK = ("httpx", "httpcore", "anyio", "certifi", "zstandard", "cryptography")

# Makes the named top-level packages unimportable in the child, as if not installed.
_BLOCK = """
import sys
for _name in {blocked!r}:
    sys.modules[_name] = None
"""


def _run(code: str, *, blocked: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
    source = _BLOCK.format(blocked=list(blocked)) + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _top_level_modules(code: str) -> set[str]:
    """Top-level modules that ``code`` imports (not those the interpreter's site loaded)."""
    out = _run(
        "import json, sys\n_before = set(sys.modules)\n"
        + textwrap.dedent(code)
        + "\nprint(json.dumps(sorted(set(sys.modules) - _before)))\n"
    )
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_import_innkt_analytics_loads_no_server_module() -> None:
    loaded = _top_level_modules("import innkt_analytics")
    assert not loaded & {*SERVER_MODULES, *NOT_SDK}, loaded & {*SERVER_MODULES, *NOT_SDK}


def test_import_innkt_analytics_is_lazy() -> None:
    # Only the exception tree and the version load with the package; the services on use.
    out = _run(
        """
        import sys
        import innkt_analytics
        print(sorted(m for m in sys.modules if m.startswith("innkt_analytics.")))
        print("asyncio" in sys.modules)
        """
    )
    modules, asyncio_loaded = out.splitlines()
    assert modules == (
        "['innkt_analytics.shared', 'innkt_analytics.shared._exceptions', "
        "'innkt_analytics.shared._version']"
    )
    assert asyncio_loaded == "False"


def test_the_thread_service_loads_no_asyncio_nor_email() -> None:
    # A threaded app pays neither for asyncio (the asyncio HTTP front imports it on use)
    # nor for email.utils (only an HTTP-date Retry-After needs it).
    loaded = _top_level_modules(
        "from innkt_analytics import AnalyticsBackendService, BackendConfig"
    )
    assert not loaded & {"asyncio", "email"}, loaded & {"asyncio", "email"}


def test_the_whole_public_api_loads_no_server_module() -> None:
    loaded = _top_level_modules(
        """
        import innkt_analytics
        from innkt_analytics import *  # noqa: F403
        for name in innkt_analytics.__all__:
            getattr(innkt_analytics, name)
        import innkt_analytics.testing
        """
    )
    assert not loaded & {*SERVER_MODULES, *NOT_SDK}, loaded & {*SERVER_MODULES, *NOT_SDK}


def _imported_by(args: list[str], cwd: Path) -> set[str]:
    """Top-level modules a CLI run imports (``-X importtime`` names every one)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "innkt_analytics", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "innkt_analytics" in names  # the parse worked
    return names


def test_cli_help_and_keys_list_do_not_import_the_web_server(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    subprocess.run(
        [sys.executable, "-m", "innkt_analytics", "keys", "create", "--scope", "read"],
        check=True,
        capture_output=True,
        env={**os.environ, "INNKT_DB": str(db)},
        timeout=120,
    )
    web = {"litestar", "uvicorn", "rich", "httpx", "prometheus_client"}
    assert not _imported_by(["--help"], tmp_path) & web
    assert not _imported_by(["keys", "list", "--db", str(db)], tmp_path) & web


def test_zstd_compression_without_the_extra_names_it(tmp_path: Path) -> None:
    out = _run(
        f"""
        from pathlib import Path
        from innkt_analytics import (
            AnalyticsDataPersistenceService, ConfigError, PersistenceConfig, StoredRecord,
        )
        service = AnalyticsDataPersistenceService()
        try:
            service.initialize(
                PersistenceConfig(db_path=Path({str(tmp_path / "a.sqlite3")!r})), environ={{}}
            )
        except ConfigError as exc:
            print("refused:", exc)
        # Without compression the store works with the SDK's own dependencies only.
        service = AnalyticsDataPersistenceService()
        service.initialize(
            PersistenceConfig(
                db_path=Path({str(tmp_path / "b.sqlite3")!r}),
                enable_compression=False,
                backup_interval=None,
            ),
            environ={{}},
        )
        import datetime as dt
        service.store_data(StoredRecord(
            id="r1", type="note", data={{"x": 1}}, timestamp=dt.datetime.now(dt.UTC)
        ))
        print("stored:", service.get_data("r1").data)
        service.close()
        """,
        blocked=("zstandard",),
    )
    refused, stored = out.splitlines()
    assert refused.startswith("refused: enable_compression: ")
    assert "pip install 'innkt-analytics[zstd]'" in refused
    assert stored == "stored: {'x': 1}"


def test_encryption_without_the_extra_names_it(tmp_path: Path) -> None:
    out = _run(
        f"""
        from pathlib import Path
        from innkt_analytics import (
            AnalyticsDataPersistenceService, ConfigError, PersistenceConfig,
        )
        config = PersistenceConfig(
            db_path=Path({str(tmp_path / "c.sqlite3")!r}),
            enable_compression=False,
            enable_encryption=True,
            encryption_key=bytes(32),
        )
        try:
            AnalyticsDataPersistenceService().initialize(config, environ={{}})
        except ConfigError as exc:
            print("refused:", exc)
        """,
        blocked=("cryptography",),
    )
    assert out.startswith("refused: encryption_key: ")
    assert "pip install 'innkt-analytics[encryption]'" in out


def test_the_sdk_delivers_without_any_server_or_extra_package(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Tracks and flushes to the real server with the server's packages unimportable."""
    out = _run(
        f"""
        from innkt_analytics import AnalyticsBackendService, BackendConfig
        service = AnalyticsBackendService()
        service.initialize(BackendConfig(
            base_url={server.url!r},
            api_key={server.write_key!r},
            queue_path={str(tmp_path / "q.sqlite3")!r},
        ))
        for i in range(3):
            service.track("sdk_only", {{"i": i}})
        print(service.flush(timeout=30))
        print(service.check_backend_health().healthy)
        status = service.get_status()
        print(status.accepted)
        service.shutdown()
        """,
        blocked=(*SERVER_MODULES, *NOT_SDK),
    )
    assert out.splitlines() == ["True", "True", "3"]
    assert len(server.event_ids()) == 3


def test_the_asyncio_service_delivers_without_httpx(server: ServerProcess, tmp_path: Path) -> None:
    out = _run(
        f"""
        import asyncio
        from innkt_analytics import AsyncAnalyticsBackendService, BackendConfig

        async def main():
            service = AsyncAnalyticsBackendService()
            await service.initialize(BackendConfig(
                base_url={server.url!r},
                api_key={server.write_key!r},
                queue_path={str(tmp_path / "aq.sqlite3")!r},
            ))
            for i in range(4):
                service.track("sdk_only_async", {{"i": i}})
            print(await service.flush(timeout=30))
            await service.shutdown()

        asyncio.run(main())
        """,
        blocked=(*SERVER_MODULES, *NOT_SDK),
    )
    assert out.splitlines() == ["True"]
    assert len(server.event_ids()) == 4


def test_a_read_only_open_starts_no_writer_until_the_first_write(tmp_path: Path) -> None:
    """What ``keys list`` relies on: reading needs no writer process; a write starts it."""
    import asyncio

    from innkt_analytics.server._auth import new_key_record
    from innkt_analytics.server.storage import SQLiteStorage

    async def scenario() -> tuple[int | None, int, int | None, int]:
        storage = SQLiteStorage(str(tmp_path / "ro.db"))
        await storage.open(start_writer=False)
        try:
            before = storage.writer_pid, len(await storage.list_keys())
            await storage.create_key(new_key_record("p", frozenset({"read"}), "k").record)
            return (*before, storage.writer_pid, len(await storage.list_keys()))
        finally:
            await storage.close()

    pid_before, keys_before, pid_after, keys_after = asyncio.run(scenario())
    assert (pid_before, keys_before) == (None, 0)
    assert pid_after is not None
    assert keys_after == 1
