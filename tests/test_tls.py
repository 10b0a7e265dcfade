"""HTTPS and WSS end to end, with certificates made here (trustme).

The server is the real ``serve --tls-certfile/--tls-keyfile``; the SDK's HTTP
and WebSocket clients connect to it over a real socket. A wrong CA or a
certificate for another host name is refused with an error that says so, and
nothing is sent in the clear instead.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from innkt_analytics import AnalyticsBackendService, BackendConfig, QueueMode
from innkt_analytics.sdk._realtime import RealTimeSyncService
from innkt_analytics.sdk._realtime_session import RealTimeConfig
from innkt_analytics.shared._realtime_codec import ConnectionState
from tests._server import ServerProcess

WAIT = 30.0


def wait_until(predicate: Callable[[], bool], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


class Pki:
    """A CA, a server certificate it issued, and the PEM files of both."""

    def __init__(self, directory: Path, *hosts: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        issued = self.ca.issue_cert(*hosts)
        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "cert.pem"
        self.key_file = directory / "key.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        issued.private_key_pem.write_to_path(str(self.key_file))
        self.cert_file.write_bytes(b"".join(p.bytes() for p in issued.cert_chain_pems))

    def args(self) -> tuple[str, ...]:
        return ("--tls-certfile", str(self.cert_file), "--tls-keyfile", str(self.key_file))

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def tls_server(tmp_path: Path, pki: Pki, name: str = "tls") -> ServerProcess:
    return ServerProcess(
        tmp_path / f"{name}.db", log_dir=tmp_path / "logs", args=pki.args(), verify=pki.context()
    )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki", "127.0.0.1", "localhost")


@pytest.fixture
def https_server(tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    server = tls_server(tmp_path, pki).start()
    yield server
    server.kill()


def backend(server: ServerProcess, **tls: object) -> AnalyticsBackendService:
    return AnalyticsBackendService(
        BackendConfig(
            base_url=server.url,
            api_key=server.write_key,
            queue_mode=QueueMode.MEMORY,
            config_refresh_interval=0,
            retry_delay=0.05,
            max_retry_delay=0.2,
            **tls,  # type: ignore[arg-type]
        )
    )


def realtime(server: ServerProcess, **tls: object) -> RealTimeSyncService:
    return RealTimeSyncService(
        RealTimeConfig(
            websocket_url=server.url.replace("https://", "wss://") + "/v1/realtime",
            api_key=server.read_key,
            reconnect_interval=0.05,
            max_reconnect_delay=0.2,
            max_reconnect_attempts=2,
            connection_timeout=5.0,
            **tls,  # type: ignore[arg-type]
        )
    )


def test_https_and_wss_work_with_a_custom_ca_bundle_or_context(
    https_server: ServerProcess, pki: Pki
) -> None:
    assert https_server.url.startswith("https://")
    # the dashboard page, the API and the WebSocket all come over TLS
    page = httpx.get(https_server.url + "/", verify=pki.context())
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]

    service = backend(https_server, ca_bundle=pki.ca_file)
    try:
        health = service.check_backend_health()
        assert health.healthy, health
        for i in range(5):
            service.track("tls_event", {"i": i})
        assert service.flush(timeout=WAIT)
    finally:
        service.shutdown(2)
    assert https_server.count_events() == 5

    service = backend(https_server, ssl_context=pki.context())
    try:
        service.track("tls_context_event")
        assert service.flush(timeout=WAIT)
    finally:
        service.shutdown(2)
    assert https_server.count_events() == 6

    for options in ({"ca_bundle": pki.ca_file}, {"ssl_context": pki.context()}):
        live = realtime(https_server, **options)
        try:
            assert live.connect(within=WAIT), live.get_connection_stats().last_error
            assert live.state is ConnectionState.OPEN
        finally:
            live.disconnect()


def test_the_server_refuses_tls_older_than_1_2(https_server: ServerProcess, pki: Pki) -> None:
    port = https_server.port
    modern = pki.context()
    modern.minimum_version = modern.maximum_version = ssl.TLSVersion.TLSv1_2
    assert httpx.get(https_server.url + "/v1/health", verify=modern).status_code == 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 itself
        old = pki.context()
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer what the server must refuse
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(httpx.ConnectError, match=r"(?i)protocol"):
        httpx.get(f"https://127.0.0.1:{port}/v1/health", verify=old)


def test_plain_http_to_the_tls_port_gets_no_answer(https_server: ServerProcess) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{https_server.port}/v1/health", timeout=5)


def test_a_wrong_ca_is_refused_with_a_clear_error(
    https_server: ServerProcess, tmp_path: Path
) -> None:
    stranger = Pki(tmp_path / "other", "127.0.0.1")
    for tls in ({"ca_bundle": stranger.ca_file}, {}):  # a private CA, and the system's store
        service = backend(https_server, **tls)
        try:
            health = service.check_backend_health()
            assert not health.healthy
            assert health.error is not None
            assert "TLS certificate verification failed" in health.error, health.error
            service.track("must_not_arrive")
            assert not service.flush(timeout=1.0)  # never delivered: no fallback of any kind
            status = service.get_status()
            assert status.last_error is not None
            assert "certificate verif" in status.last_error, status.last_error
        finally:
            service.shutdown(0.5)
    assert https_server.count_events() == 0

    live = realtime(https_server, ca_bundle=stranger.ca_file)
    try:
        assert not live.connect(within=WAIT)
        wait_until(lambda: live.state is ConnectionState.FAILED, "the real-time client to give up")
        error = live.get_connection_stats().last_error
        assert error is not None
        assert "TLS certificate verification failed" in error, error
    finally:
        live.disconnect()


def test_a_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    elsewhere = Pki(tmp_path / "elsewhere", "analytics.example.test")
    # The health wait of ServerProcess checks the certificate but not the name.
    lenient = elsewhere.context()
    lenient.check_hostname = False
    server = ServerProcess(
        tmp_path / "elsewhere.db", log_dir=tmp_path / "logs", args=elsewhere.args(), verify=lenient
    ).start()
    try:
        service = backend(server, ca_bundle=elsewhere.ca_file)
        try:
            health = service.check_backend_health()
            assert health.error is not None
            assert "TLS certificate verification failed" in health.error, health.error
            assert "mismatch" in health.error, health.error  # says it is the name
        finally:
            service.shutdown(0.5)
        live = realtime(server, ca_bundle=elsewhere.ca_file)
        try:
            assert not live.connect(within=WAIT)
            wait_until(lambda: live.state is ConnectionState.FAILED, "the client to give up")
            error = live.get_connection_stats().last_error
            assert error is not None
            assert "mismatch" in error, error
        finally:
            live.disconnect()
    finally:
        server.kill()


def test_serve_refuses_half_a_tls_configuration_and_unreadable_files(
    tmp_path: Path, pki: Pki
) -> None:
    base = [sys.executable, "-m", "innkt_analytics", "serve", "--port", "0"]
    db = ["--db", str(tmp_path / "never.db")]
    half = subprocess.run(
        [*base, *db, "--tls-certfile", str(pki.cert_file)], capture_output=True, text=True
    )
    assert half.returncode == 2
    assert "both a certificate and a key" in half.stderr
    wrong = subprocess.run(
        [*base, *db, "--tls-certfile", str(pki.cert_file), "--tls-keyfile", str(pki.ca_file)],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2
    assert "cannot load" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert not (tmp_path / "never.db").exists()  # refused before any key was made


def test_sdk_tls_options_are_validated(tmp_path: Path) -> None:
    from innkt_analytics import ConfigError

    with pytest.raises(ConfigError, match="ca_bundle"):
        BackendConfig(base_url="https://x.test", api_key="k", ca_bundle=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="ssl_context"):
        BackendConfig(base_url="https://x.test", api_key="k", ssl_context="no")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ca_bundle"):
        RealTimeConfig(websocket_url="wss://x.test/", api_key="k", ca_bundle=tmp_path / "no.pem")


def test_the_dashboard_works_over_https_and_wss(https_server: ServerProcess, pki: Pki) -> None:
    """Chromium trusts exactly this server's key (SPKI pin), signs in, goes live over
    wss:// and shows an event that arrives through it."""
    import base64
    import hashlib
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from tests.test_dashboard import (
        CHROMIUM,
        CHROMIUM_ARGS,
        HAVE_PLAYWRIGHT,
        _event,
        _unique,
    )

    if not HAVE_PLAYWRIGHT or not os.path.exists(CHROMIUM):
        pytest.skip("needs playwright and /usr/bin/chromium (see test_dashboard.py)")
    from playwright.sync_api import expect, sync_playwright

    leaf = x509.load_pem_x509_certificate(pki.cert_file.read_bytes())
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"],
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            sockets: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("websocket", lambda ws: sockets.append(ws.url))
            page.goto(https_server.url + "/")
            page.fill("#key-input", https_server.read_key)
            page.click("#login-submit")
            conn = page.locator("#conn")
            expect(conn).to_have_attribute("data-state", "live", timeout=WAIT * 1000)
            event = _event("tls_" + _unique())
            _post_events_tls(https_server, pki, [event])
            row = page.locator(f'tr[data-event-id="{event["eventId"]}"]')
            expect(row).to_be_visible(timeout=WAIT * 1000)
            assert sockets
            assert all(url.startswith("wss://") for url in sockets), sockets
            assert errors == []
        finally:
            browser.close()


def _post_events_tls(server: ServerProcess, pki: Pki, events: list[dict[str, object]]) -> None:
    answer = httpx.post(
        server.url + "/v1/events/batch",
        json={"events": events},
        headers=server.headers("write"),
        verify=pki.context(),
    )
    assert answer.status_code == 200, answer.text


def test_the_asyncio_services_verify_tls_the_same_way(
    https_server: ServerProcess, pki: Pki, tmp_path: Path
) -> None:
    import asyncio

    from innkt_analytics import AsyncAnalyticsBackendService
    from innkt_analytics.sdk._realtime import AsyncRealTimeSyncService

    stranger = Pki(tmp_path / "other", "127.0.0.1")
    wss = https_server.url.replace("https://", "wss://") + "/v1/realtime"

    async def main() -> None:
        for bundle, works in ((pki.ca_file, True), (stranger.ca_file, False)):
            service = AsyncAnalyticsBackendService()
            await service.initialize(
                BackendConfig(
                    base_url=https_server.url,
                    api_key=https_server.write_key,
                    queue_mode=QueueMode.MEMORY,
                    config_refresh_interval=0,
                    ca_bundle=bundle,
                )
            )
            try:
                health = await service.check_backend_health()
                assert health.healthy is works, health
                if not works:
                    assert health.error is not None
                    assert "TLS certificate verification failed" in health.error
            finally:
                await service.shutdown(1)
            live = AsyncRealTimeSyncService(
                RealTimeConfig(
                    websocket_url=wss,
                    api_key=https_server.read_key,
                    ca_bundle=bundle,
                    reconnect_interval=0.05,
                    max_reconnect_attempts=1,
                    connection_timeout=5.0,
                )
            )
            try:
                assert await live.connect(within=WAIT) is works
                if not works:
                    error = live.get_connection_stats().last_error
                    assert error is not None
                    assert "TLS certificate verification failed" in error
            finally:
                await live.disconnect()

    asyncio.run(main())


def test_tls_from_the_environment(tmp_path: Path, pki: Pki) -> None:
    server = ServerProcess(
        tmp_path / "env.db",
        log_dir=tmp_path / "logs",
        env={"INNKT_TLS_CERTFILE": str(pki.cert_file), "INNKT_TLS_KEYFILE": str(pki.key_file)},
        verify=pki.context(),
    ).start()
    try:
        assert server.url.startswith("https://")
        assert httpx.get(server.url + "/v1/health/ready", verify=pki.context()).status_code == 200
    finally:
        server.kill()
