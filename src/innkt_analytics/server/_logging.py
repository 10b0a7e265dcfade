"""Structured logs and the per-request observation (request id, access log, counting).

``serve --log-format json`` writes one JSON object per line to stderr for every
log record — the server's, uvicorn's, the libraries' — with the request id of
the request it happened in. Every request gets an id: the client's
``X-Request-ID`` when it is a plain token of up to 128 characters, else a new
one; it is echoed in the ``X-Request-ID`` response header, so a client's report
and the server's log lines can be matched.

Nothing secret is logged at any level, in either format: ``serve`` installs a log
record factory (``install_redaction``) that masks anything that looks like an API
key (``ik_…``), a bearer or Basic credential or a password in a URL, wherever it
appears (message, arguments, traceback), and the JSON formatter masks its fields
too; the access log records the route and path, never the query string or headers.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import re
import sys
import time
import uuid
from typing import Any, Final

import msgspec
from litestar.types import ASGIApp, Message, Receive, Send

from innkt_analytics.server._metrics import ServerMetrics

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "configure_json_logging",
    "install_redaction",
    "observe_requests",
    "redact",
]

LOG_FORMATS: Final = ("text", "json")
HEADER: Final = b"x-request-id"

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "innkt_request_id", default=None
)
access_log = logging.getLogger("innkt_analytics.access")

_SECRETS: Final = re.compile(
    r"(?P<key>\bik_)[A-Za-z0-9_\-]{8,}"  # our API keys
    r"|(?P<bearer>\b[Bb]earer\s+)[^\s\"',;]+"  # any bearer credential
    r"|(?P<basic>\b[Bb]asic\s+)[A-Za-z0-9+/=_\-]+"  # Basic credentials (Segment's write key)
    r"|(?P<userinfo>://[^/\s:@]+:)[^@\s/]+(?=@)"  # passwords in URLs (postgresql://u:pw@h)
)
_ID: Final = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def redact(text: str) -> str:
    """``text`` with API keys, bearer credentials and URL passwords masked."""
    return _SECRETS.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    prefix = (
        match.group("key")
        or match.group("bearer")
        or match.group("basic")
        or match.group("userinfo")
        or ""
    )
    return prefix + "[redacted]"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request id, extras."""

    _STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        rid = request_id.get()
        if rid is not None:
            entry["requestId"] = rid
        for name, value in record.__dict__.items():
            if name not in self._STANDARD and not name.startswith("_") and name != "color_message":
                entry[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return msgspec.json.encode(entry, enc_hook=repr).decode()


def install_redaction() -> None:
    """Mask secrets in every log record this process makes, whatever logs it and
    however it is formatted or handled.

    A log record factory, not a filter or a formatter: filters on a logger miss
    the records its children propagate, and handlers and formatters are set up by
    uvicorn, Litestar and ``dictConfig`` after us (at debug level uvicorn and
    websockets log each handshake header, ``Authorization`` and
    ``Sec-WebSocket-Protocol: bearer.ik_…`` included). A record is only made once
    its level is enabled, so this costs nothing for records not written.
    """
    make = logging.getLogRecordFactory()
    if getattr(make, "redacting", False):
        return

    def redacting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(_plain.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    redacting.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting)


_plain: Final = logging.Formatter()


def configure_json_logging(level: str) -> None:
    """Send every logger's records to stderr as JSON at ``level``.

    Call it after the app is built: Litestar configures logging as it is built,
    and the handlers it (or anything else) installed are replaced here by
    propagation to the one JSON handler. Start uvicorn with ``log_config=None``
    so that it adds no handlers of its own.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and (logger.handlers or not logger.propagate):
            logger.handlers = []
            logger.propagate = True


def _incoming_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == HEADER:
            return value.decode("ascii") if _ID.fullmatch(value) else None
    return None


def observe_requests(app: ASGIApp, metrics: ServerMetrics) -> ASGIApp:
    """Wrap the ASGI app: a request id per HTTP request (echoed in ``X-Request-ID``),
    one access-log record per response at INFO, and the request counted by route
    and status for ``/metrics``.

    Outside Litestar, so 404s, 405s and errors raised before routing are seen
    too; the route template is what Litestar's router put in the scope.
    """

    async def observed(scope: Any, receive: Receive, send: Send) -> None:
        # scope is Any: Litestar's scope TypedDicts know neither lifespan nor path_template
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        rid = _incoming_id(scope["headers"]) or uuid.uuid4().hex
        token = request_id.set(rid)
        status = 0
        started = time.perf_counter()

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, rid.encode())]
            await send(message)

        try:
            await app(scope, receive, send_observed)
        finally:
            route = scope.get("path_template") or "unmatched"
            metrics.request(route, scope["method"], status)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "route": route,
                        "status": status,
                        "durationMs": round((time.perf_counter() - started) * 1000, 3),
                        "client": (scope.get("client") or ("", 0))[0],
                    },
                )
            request_id.reset(token)

    return observed
