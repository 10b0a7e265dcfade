"""Server settings: one typed value object, read from ``INNKT_*`` environment variables.

Command-line options override the environment; the environment overrides the
defaults documented on each field.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from innkt_analytics.shared._exceptions import ConfigError

if TYPE_CHECKING:
    from innkt_analytics.server.storage import Storage
    from innkt_analytics.shared._protocol import Limits

__all__ = ["ServerSettings", "storage_for"]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything the server can be told. Environment: ``INNKT_<FIELD NAME UPPER>``."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: a path (SQLite), ``sqlite:///path`` or ``postgresql://...``
    db: str = "innkt-analytics.db"
    max_event_bytes: int = 32 * 1024
    max_body_bytes: int = 1024 * 1024
    max_batch_events: int = 2500
    #: token bucket per API key: requests per second (0 disables) and burst size
    rate_limit_per_second: float = 1000.0
    rate_limit_burst: int = 2000
    #: identity graph: link ids into persons at ingest (docs/identity.md); off skips the
    #: links and the persons routes answer 404
    identity: bool = True
    #: seconds a 503 asks clients to wait while storage is unavailable or full
    unavailable_retry_after: float = 5.0
    #: seconds an API key lookup is cached (revocations take effect within this)
    key_cache_seconds: float = 2.0
    #: real-time hub: allowed WebSocket Origins ("*" allows all); empty = no browser origins
    allowed_origins: tuple[str, ...] = ("*",)
    #: real-time channel backend: "memory", "redis://..." or "postgres"
    channels: str = "memory"
    #: shared rate-limit state ("" = per instance, or a redis:// URL)
    rate_limit_store: str = ""
    #: retention: days to keep events (0 keeps forever) and how often to enforce it
    retention_days: int = 0
    retention_interval: float = 3600.0
    #: scheduled server backups (seconds, 0 = off) and where they go
    backup_interval: float = 0.0
    backup_dir: str = ""
    backup_keep: int = 7
    #: real-time fan-out channel name (Redis channel, PostgreSQL NOTIFY channel); instances
    #: that share it see each other's events and config changes
    realtime_channel: str = "innkt_realtime"
    #: real-time: largest message a client may send (bytes; larger closes with 1009)
    realtime_max_message_bytes: int = 64 * 1024
    #: real-time: messages per second a connection may send, and the burst allowed
    realtime_message_rate: float = 20.0
    realtime_message_burst: int = 40
    #: real-time: messages (and bytes) waiting for one slow connection before the
    #: oldest are dropped and the client is told how many
    realtime_backlog: int = 256
    realtime_backlog_bytes: int = 8 * 1024 * 1024
    #: real-time: open connections per instance; more are refused with 503
    realtime_max_connections: int = 10_000
    #: real-time: what the event stream may cost one instance, all subscribers together;
    #: beyond it batches merge into fewer frames and lagging subscribers lose the oldest.
    #: The burst is how many subscribers one lone event reaches at once.
    realtime_fanout_frames_per_second: float = 1_000.0
    realtime_fanout_burst_frames: int = 2_000
    realtime_fanout_bytes_per_second: float = 4.0 * 1024 * 1024
    #: PostgreSQL: connections in this instance's event-storage pool, and ingest
    #: transactions it runs at once (concurrent batches beyond that are merged)
    pg_pool_size: int = 10
    pg_insert_concurrency: int = 4
    #: PostgreSQL: the directory where this instance caches the storage engine's
    #: segment files (kept across restarts); empty: a temporary one, removed at exit
    pg_segment_cache: str = ""
    #: seconds ``serve`` keeps trying to reach PostgreSQL when it starts first (0 gives
    #: up at once); SQLite errors are never retried
    storage_startup_wait: float = 30.0
    #: insights (docs/insights.md): seconds a query may run before it is interrupted
    #: (422 query_timeout); answers cached (0: none), and seconds one is kept on SQLite
    #: and on PostgreSQL (where other instances' writes are not seen)
    insights_timeout: float = 30.0
    insights_cache_size: int = 256
    insights_cache_ttl: float = 300.0
    insights_cache_ttl_postgres: float = 10.0
    #: on PostgreSQL, the hot events (not yet compacted into segments) one insights
    #: query may copy into memory (past them 422 query_too_large; ~100 B each, ~450 B
    #: with the JSON a property query reads)
    insights_max_events: int = 1_000_000
    #: TLS: a PEM certificate chain and its private key; with both, ``serve`` speaks
    #: only HTTPS and WSS (TLS 1.2 or newer)
    tls_certfile: str = ""
    tls_keyfile: str = ""
    #: seconds between writes of the API keys' last use (``keys list`` shows it)
    key_use_interval: float = 10.0
    #: graceful shutdown on SIGTERM: seconds to keep serving while reporting not ready
    #: (for load balancers to notice), then the deadline for in-flight requests and
    #: WebSocket closes before the rest is cancelled
    shutdown_drain_seconds: float = 0.0
    shutdown_timeout: float = 30.0
    #: also serve /metrics without a key on this host:port (a private interface only);
    #: empty: /metrics only on the API port, with an admin key
    metrics_address: str = ""
    #: server logs: "text", or "json" (one object per line, with request ids)
    log_format: str = "text"
    #: HTTP connections: open at once (one more is answered 503 and closed); seconds a
    #: connection may sit with no request under way; seconds from a request's first
    #: byte to the end of its head, and from there to the end of its body (408 after
    #: either); and the largest request head (request line and headers; 431 beyond)
    http_max_connections: int = 4096
    http_idle_timeout: float = 5.0
    http_header_timeout: float = 10.0
    http_body_timeout: float = 60.0
    http_max_header_bytes: int = 64 * 1024
    #: scheduled reports (docs/insights.md): seconds between checks for due reports
    #: (0: this instance sends none on schedule), delivery attempts per target and the
    #: first retry delay in seconds (doubling, at most an hour)
    report_interval: float = 30.0
    report_attempts: int = 5
    report_backoff: float = 60.0
    #: e-mail for reports: the SMTP server (empty host: no e-mail), "starttls", "ssl" or
    #: "none", the login (empty user: none) and the From address
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: str = "starttls"
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from: str = "innkt-analytics@localhost"
    smtp_timeout: float = 30.0

    @property
    def limits(self) -> Limits:
        # Imported here: the CLI reads settings for --help, which must not pay for msgspec.
        from innkt_analytics.shared._protocol import Limits

        return Limits(
            max_event_bytes=self.max_event_bytes,
            max_body_bytes=self.max_body_bytes,
            max_batch_events=self.max_batch_events,
        )

    def __post_init__(self) -> None:
        for name in ("max_event_bytes", "max_body_bytes", "max_batch_events"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")
        if self.rate_limit_per_second < 0:
            raise ConfigError("rate_limit_per_second", "must be >= 0")
        if self.rate_limit_burst < 1:
            raise ConfigError("rate_limit_burst", "must be >= 1")
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", "must be 0..65535")
        if self.rate_limit_store and not self.rate_limit_store.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError("rate_limit_store", "expected a redis:// URL or empty")
        for name in (
            "realtime_max_message_bytes",
            "realtime_message_burst",
            "realtime_backlog",
            "realtime_backlog_bytes",
            "realtime_max_connections",
            "realtime_message_rate",
            "realtime_fanout_frames_per_second",
            "realtime_fanout_burst_frames",
            "realtime_fanout_bytes_per_second",
            "pg_pool_size",
            "pg_insert_concurrency",
            "key_use_interval",
            "http_max_connections",
            "http_idle_timeout",
            "http_header_timeout",
            "http_body_timeout",
            "http_max_header_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")
        if self.insights_timeout <= 0:
            raise ConfigError("insights_timeout", "must be positive")
        if self.insights_max_events < 1:
            raise ConfigError("insights_max_events", "must be positive")
        for name in ("insights_cache_size", "insights_cache_ttl", "insights_cache_ttl_postgres"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "must be >= 0")
        for name in ("shutdown_drain_seconds", "shutdown_timeout"):
            if not 0 <= getattr(self, name) <= 3600:
                raise ConfigError(name, "must be 0..3600 seconds")
        if self.report_interval < 0 or self.report_backoff < 0:
            raise ConfigError("report_interval", "report_interval and report_backoff: >= 0")
        if self.report_attempts < 1:
            raise ConfigError("report_attempts", "must be >= 1")
        if self.smtp_security not in ("starttls", "ssl", "none"):
            raise ConfigError("smtp_security", f"starttls, ssl or none, not {self.smtp_security!r}")
        if not 0 < self.smtp_port < 65536 or self.smtp_timeout <= 0:
            raise ConfigError("smtp_port", "smtp_port 1..65535, smtp_timeout > 0")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format", f"must be text or json, got {self.log_format!r}")
        if self.metrics_address:
            _, sep, port = self.metrics_address.rpartition(":")
            if not sep or not port.isdecimal() or not 0 < int(port) < 65536:
                raise ConfigError(
                    "metrics_address", f"expected host:port, got {self.metrics_address!r}"
                )
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ConfigError("tls_certfile", "TLS needs both a certificate and a key file")
        channel = self.realtime_channel
        # It becomes a PostgreSQL identifier and a Redis key: keep it to a safe alphabet.
        if not (channel.isascii() and channel.replace("_", "").isalnum() and len(channel) <= 63):
            raise ConfigError("realtime_channel", "ASCII letters, digits and _ only, 1-63 long")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerSettings:
        """Read ``INNKT_*`` variables, then apply non-None ``overrides``.

        Raises ``ConfigError`` naming the variable when a value does not parse.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get("INNKT_" + f.name.upper())
            if raw is None:
                continue
            default = f.default
            try:
                if isinstance(default, bool):
                    values[f.name] = raw.lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                elif isinstance(default, tuple):
                    values[f.name] = tuple(p.strip() for p in raw.split(",") if p.strip())
                else:
                    values[f.name] = raw
            except ValueError:
                raise ConfigError("INNKT_" + f.name.upper(), f"cannot parse {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def storage_for(settings: ServerSettings) -> Storage:
    """The (unopened) storage these settings describe."""
    from innkt_analytics.server.storage import make_storage

    return make_storage(
        settings.db,
        pool_size=settings.pg_pool_size,
        insert_concurrency=settings.pg_insert_concurrency,
        segment_cache=settings.pg_segment_cache or None,
    )
