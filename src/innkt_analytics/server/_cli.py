"""The ``innkt-analytics`` command: serve, and manage API keys."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import os
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, NoReturn, TypeVar

import typer

from innkt_analytics.server._settings import ServerSettings
from innkt_analytics.shared._exceptions import (
    ConfigError,
    InnktError,
    StorageError,
    StorageFullError,
)
from innkt_analytics.shared._version import __version__

# Only the names the help text needs are imported here: asyncio, the storage layer,
# keys and backups load inside the commands that use them, so --help stays within
# its 0.3 s budget (issue 16, bench/footprint.py); serve imports the web server.
if TYPE_CHECKING:
    from innkt_analytics.server.storage import KeyRecord, Storage

__all__ = ["app", "main"]

T = TypeVar("T")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

# Plain (click) help and errors: typer's rich formatting imports rich, markdown-it and
# pygments, ~100 ms of the 0.3 s budget for --help (issue 16, docs/benchmarks.md).
app = typer.Typer(
    name="innkt-analytics",
    help="Offline-first analytics server.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(
    help="Create, list and revoke API keys.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(keys_app, name="keys")
backup_app = typer.Typer(
    help="Back up, verify and restore the SQLite database.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(backup_app, name="backup")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"innkt-analytics {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    """Offline-first analytics server."""


def _default(name: str) -> str:
    """``--help``'s note of an option's default: the setting's, and its variable.

    The options themselves default to None so that an unset option leaves the
    ``INNKT_*`` variable in force; click would show that None.
    """
    (default,) = (f.default for f in dataclasses.fields(ServerSettings) if f.name == name)
    return f"[default: {default}; env INNKT_{name.upper()}]"


DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help=f"SQLite path, sqlite:///path or postgresql://… {_default('db')}",
    ),
]


def _settings(
    *, host: str | None = None, port: int | None = None, db: str | None = None, **more: Any
) -> ServerSettings:
    try:
        return ServerSettings.from_env(host=host, port=port, db=db, **more)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _run(db: str, fn: Callable[[Storage], Awaitable[T]], *, must_exist: bool = True) -> T:
    """Run ``fn`` on the database; any storage problem is a one-line error.

    With ``must_exist`` a SQLite path that does not exist is refused rather than
    created: a mistyped ``--db`` must not look like an empty database.
    """
    import asyncio

    from innkt_analytics.server.storage import parse_db_url

    try:
        path = parse_db_url(db).sqlite_path
        if must_exist and path is not None and not os.path.exists(path):
            typer.echo(f"error: no database at {path}", err=True)
            raise typer.Exit(1)
        return asyncio.run(_with_storage(db, fn))
    except (InnktError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


async def _with_storage(db: str, fn: Callable[[Storage], Awaitable[T]]) -> T:
    from innkt_analytics.server.storage import SQLiteStorage, make_storage

    storage = make_storage(db)
    if isinstance(storage, SQLiteStorage):
        # The writer process starts on the first write: most of a read-only command's
        # time was starting it and waiting for it to exit (docs/benchmarks.md).
        await storage.open(start_writer=False)
    else:
        await storage.open()
    try:
        return await fn(storage)
    finally:
        await storage.close()


async def _bootstrap_when_reachable(settings: ServerSettings) -> list[tuple[str, str]]:
    """``_bootstrap_keys``, retried while PostgreSQL cannot be reached.

    Containers and services often start before their database: keep trying, with
    backoff, for ``storage_startup_wait`` seconds. Raises the last ``StorageError``.
    """
    import asyncio

    from innkt_analytics.server.storage import is_postgres_url
    from innkt_analytics.shared._retry import backoff

    patient = is_postgres_url(settings.db)
    deadline = time.monotonic() + settings.storage_startup_wait
    delays = backoff(0.5, 5.0, jitter=lambda: 0.5 + random.random() / 2)
    while True:
        try:
            return await _with_storage(settings.db, _bootstrap_keys)
        except StorageError as exc:
            left = deadline - time.monotonic()
            if not patient or left <= 0 or isinstance(exc, StorageFullError):
                raise
            typer.echo(f"waiting for storage: {exc} (giving up in {left:.0f} s)", err=True)
            await asyncio.sleep(min(next(delays), left))


async def _bootstrap_keys(storage: Storage) -> list[tuple[str, str]]:
    """On an empty database, create an admin, a write and a read key for project 'default'."""
    from innkt_analytics.server._auth import new_key_record

    if await storage.count_keys():
        return []
    created = []
    for scope in ("admin", "write", "read"):
        key = new_key_record("default", frozenset({scope}), f"bootstrap {scope}")
        await storage.create_key(key.record)
        created.append((scope, key.secret))
    return created


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(help=f"Interface to bind {_default('host')}"),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help=f"Port; 0 picks a free one {_default('port')}"),
    ] = None,
    db: DbOption = None,
    log_level: Annotated[
        str, typer.Option(help="critical, error, warning, info, debug or trace")
    ] = "warning",
    log_format: Annotated[
        str | None,
        typer.Option(help=f"text, or json: one JSON object per line {_default('log_format')}"),
    ] = None,
    tls_certfile: Annotated[
        str | None,
        typer.Option(help="PEM certificate chain: serve HTTPS/WSS (env INNKT_TLS_CERTFILE)"),
    ] = None,
    tls_keyfile: Annotated[
        str | None, typer.Option(help="PEM private key of the certificate (env INNKT_TLS_KEYFILE)")
    ] = None,
) -> None:
    """Run the server. On the first start of an empty database, print new API keys."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from innkt_analytics.server import build_app
    from innkt_analytics.server._connguard import ConnectionLimits, guarded_protocol
    from innkt_analytics.server._lifecycle import (
        GracefulServer,
        GracefulWebSocketProtocol,
        lifecycle_of,
    )
    from innkt_analytics.server._logging import (
        configure_json_logging,
        install_redaction,
        observe_requests,
    )
    from innkt_analytics.server._state import app_state
    from innkt_analytics.server._tls import server_ssl_context
    from innkt_analytics.server._ws_protocol import websocket_protocol

    settings = _settings(
        host=host,
        port=port,
        db=db,
        tls_certfile=tls_certfile,
        tls_keyfile=tls_keyfile,
        log_format=log_format,
    )
    if log_level.lower() not in LOG_LEVELS:
        typer.echo(f"error: --log-level must be one of {', '.join(LOG_LEVELS)}", err=True)
        raise typer.Exit(2)
    install_redaction()  # before anything logs: no key in any record, at any level
    json_logs = settings.log_format == "json"
    ssl_context = None
    if settings.tls_certfile:
        try:  # before anything else: a bad certificate must not leave new keys unseen
            ssl_context = server_ssl_context(settings.tls_certfile, settings.tls_keyfile)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    # Bind first: keys created by a start that then fails would never be shown.
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
        # Listen before printing the URL: connections made as soon as it is shown
        # wait in the backlog until uvicorn accepts them, instead of being refused.
        sock.listen(2048)
    except OSError as exc:
        typer.echo(f"error: cannot bind {settings.host}:{settings.port}: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        import asyncio

        created = asyncio.run(_bootstrap_when_reachable(settings))
    except (InnktError, OSError) as exc:
        sock.close()
        typer.echo(f"error: cannot open storage {settings.db!r}: {exc}", err=True)
        raise typer.Exit(1) from None
    bound_port = sock.getsockname()[1]
    shown_host = f"[{settings.host}]" if family == socket.AF_INET6 else settings.host
    url = f"{'https' if ssl_context else 'http'}://{shown_host}:{bound_port}"
    typer.echo(f"innkt-analytics {__version__}  storage: {settings.db}")
    for scope, secret in created:
        typer.echo(f"created {scope} key (project 'default'): {secret}")
    if created:
        typer.echo("keys are shown once; store them now")
    typer.echo(f"listening on {url}  (dashboard {url}/ , API {url}/v1/health)")
    sys.stdout.flush()
    try:
        app = build_app(settings)
    except InnktError as exc:  # e.g. a bad INNKT_ALERT_* variable
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if json_logs:
        configure_json_logging(log_level)  # after the app: Litestar configures logging too
    config = uvicorn.Config(
        observe_requests(app, app_state(app).metrics),
        log_level=log_level,
        # json: uvicorn adds no handlers; its records reach ours (see _logging)
        log_config=None if json_logs else LOGGING_CONFIG,
        access_log=False,
        lifespan="on",
        # SIGTERM: in-flight requests and WebSocket closes get this long (see _lifecycle)
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
        # uvicorn must not buffer a WebSocket message larger than the hub accepts.
        ws_max_size=settings.realtime_max_message_bytes + 1,
        # uvicorn's sans-I/O WebSocket protocol, with a synchronous send for the hub's
        # event fan-out (see _ws_protocol) and a 1001 close at shutdown (_lifecycle);
        # uvicorn's own, with a warning, if its internals are not as tested.
        ws=websocket_protocol(GracefulWebSocketProtocol),
        # httptools, with the limits on connections, heads, bodies and idling that
        # uvicorn lacks (see _connguard); uvicorn's own keep-alive timer is replaced.
        http=guarded_protocol(
            ConnectionLimits(
                max_connections=settings.http_max_connections,
                idle_timeout=settings.http_idle_timeout,
                header_timeout=settings.http_header_timeout,
                body_timeout=settings.http_body_timeout,
                max_header_bytes=settings.http_max_header_bytes,
            )
        ),
    )
    if ssl_context is not None:
        # uvicorn wraps the sockets in config.ssl; ours holds the TLS 1.2 floor.
        config.load()
        config.ssl = ssl_context
    _tune_gc()
    lifecycle = lifecycle_of(app_state(app))
    GracefulServer(config, lifecycle, settings.shutdown_drain_seconds).run(sockets=[sock])


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the ingest path.

    Each batch allocates thousands of short-lived containers; at the default
    threshold (700) the collector ran every few requests and took about a fifth
    of the server's CPU (bench/ingest.py). What exists now (the app, its routes and
    schemas) lives as long as the process, so it is frozen out of every collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 20, 20)


def _scopes(scope: list[str]) -> frozenset[str]:
    from innkt_analytics.server._auth import SCOPES

    scopes = frozenset(scope)
    if not scopes or scopes - SCOPES:
        typer.echo(f"error: --scope must be one of {', '.join(sorted(SCOPES))}", err=True)
        raise typer.Exit(2)
    return scopes


@keys_app.command("create")
def keys_create(
    scope: Annotated[list[str], typer.Option(help="write, read or admin; repeatable")],
    name: Annotated[str, typer.Option(help="A label for the key")] = "",
    project: Annotated[str, typer.Option(help="The project the key belongs to")] = "default",
    expires_in: Annotated[
        str | None, typer.Option(help="Expire after this long: 90d, 12h, 30m, 3600s")
    ] = None,
    db: DbOption = None,
) -> None:
    """Create a key; the key itself is the last line of output."""
    settings = _settings(db=db)
    expires_at = None if expires_in is None else _now_ms() + _duration_ms(expires_in)
    from innkt_analytics.server._auth import new_key_record

    key = new_key_record(project, _scopes(scope), name, expires_at=expires_at)

    async def run(storage: Storage) -> None:
        await storage.create_key(key.record)

    _run(settings.db, run, must_exist=False)
    typer.echo(f"created {key.record.key_id} scopes={','.join(sorted(key.record.scopes))}")
    typer.echo(key.secret)


@keys_app.command("list")
def keys_list(
    project: Annotated[str | None, typer.Option(help="Only this project")] = None,
    db: DbOption = None,
) -> None:
    """List keys (never the secrets)."""
    settings = _settings(db=db)

    async def run(storage: Storage) -> list[KeyRecord]:
        return await storage.list_keys(project)

    records = _run(settings.db, run)
    now = _now_ms()
    for r in records:
        if r.revoked_at:
            state = "revoked"
        elif r.expires_at is not None and r.expires_at <= now:
            state = "expired"
        else:
            state = "active"
        typer.echo(
            f"{r.key_id}  {r.project:<12} {','.join(sorted(r.scopes)):<18} {state:<8}"
            f" {_when(r.created_at)}  last-used={_when(r.last_used_at):<20}"
            f" expires={_when(r.expires_at):<20}  {r.name}"
        )


@keys_app.command("rotate")
def keys_rotate(
    key_id: str,
    overlap: Annotated[
        str, typer.Option(help="How long the old key keeps working: 7d, 12h, 0 (at once)")
    ] = "7d",
    db: DbOption = None,
) -> None:
    """Replace a key: a successor with the same scopes and project; the old key
    expires after the overlap. The new key is the last line of output."""
    from innkt_analytics.server._auth import Rotation, rotate_key

    settings = _settings(db=db)
    overlap_ms = _duration_ms(overlap)

    async def run(storage: Storage) -> Rotation | None:
        return await rotate_key(storage, key_id, overlap_ms)

    done = _run(settings.db, run)
    if done is None:
        typer.echo(f"error: no active key {key_id}", err=True)
        raise typer.Exit(1)
    old, new = done.old, done.new.record
    typer.echo(f"rotated {old.key_id}: it expires at {_when(old.expires_at)}")
    typer.echo(
        f"created {new.key_id} scopes={','.join(sorted(new.scopes))} project={new.project}"
        + (f" expires={_when(new.expires_at)}" if new.expires_at is not None else "")
    )
    typer.echo(done.new.secret)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _duration_ms(text: str) -> int:
    from innkt_analytics.server._auth import parse_duration

    try:
        return round(parse_duration(text) * 1000)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@keys_app.command("revoke")
def keys_revoke(key_id: str, db: DbOption = None) -> None:
    """Revoke a key by its id (key_…); takes effect within the key cache time."""
    settings = _settings(db=db)
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)

    async def run(storage: Storage) -> bool:
        return await storage.revoke_key(key_id, now)

    if not _run(settings.db, run):
        typer.echo(f"error: no active key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


@backup_app.command("create")
def backup_create(
    db: DbOption = None,
    keep: Annotated[int | None, typer.Option(help="Prune to this many newest backups")] = None,
) -> None:
    """Take a consistent backup now (safe while the server is running)."""
    from innkt_analytics.server._backups import backup_events, backup_identity

    settings = _settings(db=db)
    try:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn  # only when drawn

        # On stderr, and only on a terminal: elsewhere its clearing left an empty
        # line on stdout before a one-line error.
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            transient=True,
            console=Console(stderr=True),
            disable=not sys.stderr.isatty(),
        ) as bar:
            bar.add_task("backing up…")
            manifest, events = backup_events(
                settings, keep if keep is not None else settings.backup_keep
            )
            identity = backup_identity(
                settings, manifest.backup_id, keep if keep is not None else settings.backup_keep
            )
    except InnktError as exc:
        _fail(exc)
    typer.echo(
        f"backup {manifest.backup_id}: {events} events,"
        f" {manifest.size_bytes} bytes, sha256 {manifest.sha256}"
    )
    if identity is not None:
        typer.echo(f"  identity graph: {identity.record_count} links, sha256 {identity.sha256}")


@backup_app.command("list")
def backup_list(db: DbOption = None) -> None:
    """List backups, newest first, flagging those that still hold deleted users' data."""
    from innkt_analytics.server._backups import backup_dir
    from innkt_analytics.shared import _backup

    settings = _settings(db=db)

    async def deletions(storage: Storage) -> list[int]:
        return [s.deleted_at for s in await storage.suppressed_users()]

    try:
        manifests = _backup.list_backups(backup_dir(settings))
        deleted_at = _run(settings.db, deletions) if manifests else []
    except InnktError as exc:
        _fail(exc)
    for m in manifests:
        made = m.created_at.timestamp() * 1000
        # A backup made before a user's deletion still holds that user's events
        # until it ages out of the history.
        stale = sum(1 for at in deleted_at if at > made)
        note = f"  contains {stale} deleted user(s) until pruned" if stale else ""
        typer.echo(
            f"{m.backup_id}  {m.created_at.isoformat(timespec='seconds')}"
            f"  events={m.record_count}  bytes={m.size_bytes}{note}"
        )


@backup_app.command("verify")
def backup_verify(backup_id: str, db: DbOption = None) -> None:
    """Check a backup's hash, size, integrity and record count against its manifest."""
    from innkt_analytics.server._backups import identity_backup_for, verify_events

    settings = _settings(db=db)
    try:
        manifest, events = verify_events(settings, backup_id)
        identity = identity_backup_for(settings, backup_id)
    except InnktError as exc:
        _fail(exc)
    typer.echo(f"ok {manifest.backup_id}: {events} events, sha256 verified")
    if identity is not None:
        typer.echo(f"  identity graph: {identity.record_count} links, sha256 verified")


@backup_app.command("restore")
def backup_restore(backup_id: str, db: DbOption = None) -> None:
    """Replace the database with a verified backup. Stop the server first."""
    from innkt_analytics.server._backups import (
        identity_backup_for,
        restore_events,
        restore_identity,
    )

    settings = _settings(db=db)
    try:
        identity = identity_backup_for(settings, backup_id)  # verified before anything changes
        manifest, events = restore_events(settings, backup_id)
        if identity is not None:
            restore_identity(settings, identity)
    except InnktError as exc:
        _fail(exc)
    typer.echo(f"restored {manifest.backup_id}: {events} events")
    typer.echo(
        f"  identity graph: {identity.record_count} links"
        if identity is not None
        else "  no identity graph in this backup: <db>.identity.db left as it is"
    )


@app.command()
def export(
    output: Annotated[str, typer.Option("--output", "-o", help="File to write; - for stdout")],
    fmt: Annotated[str, typer.Option("--format", help="ndjson, csv or parquet")] = "ndjson",
    since: Annotated[str | None, typer.Option(help="ISO 8601, inclusive")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601, exclusive")] = None,
    project: Annotated[str, typer.Option(help="The project to export")] = "default",
    event_type: Annotated[str | None, typer.Option("--event-type")] = None,
    db: DbOption = None,
) -> None:
    """Export events of a project, with a progress bar."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from innkt_analytics.server._export import (  # keeps startup light
        export_stream,
        write_parquet,
    )
    from innkt_analytics.server._query import parse_time
    from innkt_analytics.server._state import ApiError
    from innkt_analytics.server.storage import EventFilter

    if fmt not in ("ndjson", "csv", "parquet"):
        _fail(ValueError("--format must be ndjson, csv or parquet"))
    if fmt == "parquet" and output == "-":
        _fail(ValueError("parquet needs a file (--output PATH)"))
    settings = _settings(db=db)
    try:
        flt = EventFilter(
            event_type=event_type,
            since=parse_time("--since", since),
            until=parse_time("--until", until),
        )
    except ApiError as exc:
        _fail(ValueError(exc.message))

    async def run(storage: Storage) -> int:
        stats = await storage.stats(project, flt, 86_400_000, uniques=False)
        with Progress(
            TextColumn("exporting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=output == "-",
        ) as bar:
            task = bar.add_task("export", total=stats.total)
            if fmt == "parquet":
                return await write_parquet(
                    storage, project, flt, output, lambda n: bar.advance(task, n)
                )
            assert sink is not None
            total = 0

            def advance(n: int) -> None:
                nonlocal total
                total += n
                bar.advance(task, n)

            async for chunk in export_stream(storage, project, flt, fmt, advance):
                sink.write(chunk)
            return total

    sink: BinaryIO | None = None
    try:
        if fmt != "parquet":
            sink = sys.stdout.buffer if output == "-" else open(output, "wb")  # noqa: SIM115 - closed in the finally below
        total = _run(settings.db, run)
    except (InnktError, ImportError, OSError) as exc:
        _fail(exc)
    finally:
        if sink is not None and sink is not sys.stdout.buffer:
            sink.close()
    typer.echo(f"exported {total} events", err=True)


def main() -> None:
    """Run the command; every error is one line on stderr (a usage error exits 2)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(standalone_mode=False)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        code = 1
    except Exception as exc:
        code = _one_line_error(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line_error(exc: Exception) -> int:
    """Print ``exc`` as one line (or the help a bare group asks for); its exit code."""
    # typer vendors click and exports only some of its exceptions: usage errors are
    # told by the click exception interface (format_message, exit_code), not by class.
    if type(exc).__name__ == "NoArgsIsHelpError":
        typer.echo(exc.format_message())  # type: ignore[attr-defined]
        return 2
    if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        return int(exc.exit_code)  # type: ignore[attr-defined]
    # The last resort: a failure no command turned into a message is still one line.
    typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
    return 1
