"""The server's TLS context: HTTPS and WSS with modern protocol versions only."""

from __future__ import annotations

import ssl

from innkt_analytics.shared._exceptions import ConfigError

__all__ = ["server_ssl_context"]


def server_ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context for ``certfile``/``keyfile`` (PEM) that refuses TLS < 1.2.

    TLS 1.0 and 1.1 are deprecated (RFC 8996); OpenSSL's default context still
    accepts them at some security levels, so the floor is set here explicitly.
    Raises ``ConfigError`` when the files cannot be read or do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # HTTP/1.1 only: uvicorn speaks no HTTP/2, and ALPN lets clients know at once.
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls_certfile", f"cannot load {certfile} / {keyfile}: {exc}") from None
    return context
