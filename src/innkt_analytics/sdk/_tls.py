"""TLS options shared by the SDK's HTTP and WebSocket clients.

Certificates are always verified: by default against the system's trust store
(``ssl.create_default_context()``, for HTTP and for WebSockets); a
``ca_bundle`` replaces it with a private CA; an ``ssl.SSLContext`` gives full
control (client certificates, pinning). There is no switch that turns
verification off and no fallback to plain HTTP: a certificate that does not
verify fails the connection, with ``tls_failure()`` saying why.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from innkt_analytics.shared._exceptions import ConfigError

__all__ = ["check_tls_options", "client_ssl_context", "tls_failure"]


def check_tls_options(ca_bundle: object, ssl_context: object) -> Path | None:
    """Validate the two options; returns ``ca_bundle`` as a ``Path``. Raises ``ConfigError``."""
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise ConfigError("ssl_context", "must be an ssl.SSLContext or None")
    if ca_bundle is None:
        return None
    if not isinstance(ca_bundle, str | Path) or not str(ca_bundle):
        raise ConfigError("ca_bundle", "must be the path of a PEM file or None")
    path = Path(ca_bundle)
    if not path.is_file():
        raise ConfigError("ca_bundle", f"no such file: {path}")
    return path


def client_ssl_context(
    ca_bundle: Path | None, ssl_context: ssl.SSLContext | None
) -> ssl.SSLContext | None:
    """The context to connect with; None means the library's verifying default.

    Raises ``ConfigError`` when the bundle holds no usable certificate.
    """
    if ssl_context is not None:
        return ssl_context
    if ca_bundle is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("ca_bundle", f"cannot load {ca_bundle}: {exc}") from None
    return context


def tls_failure(exc: BaseException) -> str | None:
    """A clear sentence when ``exc`` (or what caused it) is a certificate failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {current.verify_message or current}"
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake failed: {current.reason or current}"
        current = current.__cause__ or current.__context__
    # a client library may re-raise ssl errors as another error carrying only the text
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"TLS certificate verification failed: {text}"
    return None
