"""The innkt-analytics backend server (Litestar on uvicorn).

Litestar and the server's subsystems are imported with ``build_app``/``create_app``
(PEP 562 ``__getattr__``), not with this package: the CLI's key and backup
commands and the storage layer run without them.
"""

from __future__ import annotations

import typing

from innkt_analytics.server._settings import ServerSettings

if typing.TYPE_CHECKING:
    from litestar import Litestar

    from innkt_analytics.server._app import create_app
    from innkt_analytics.server.storage import Storage

__all__ = ["ServerSettings", "build_app", "create_app"]


def build_app(settings: ServerSettings, storage: Storage | None = None) -> Litestar:
    """The full server: the API plus every subsystem wired in (real-time hub, dashboard)."""
    from innkt_analytics.server._alerts import ALERT_HANDLERS, install_alerts
    from innkt_analytics.server._app import create_app
    from innkt_analytics.server._dashboard import DASHBOARD_HANDLERS, install_dashboard
    from innkt_analytics.server._kv import install_kv
    from innkt_analytics.server._lifecycle import LIFECYCLE_HANDLERS, install_lifecycle
    from innkt_analytics.server._metrics_export import METRICS_HANDLERS, install_metrics
    from innkt_analytics.server._persons import PERSON_HANDLERS, install_identity
    from innkt_analytics.server._realtime import install_realtime, realtime_endpoint
    from innkt_analytics.server._reports import REPORT_HANDLERS, install_reports
    from innkt_analytics.server._segment import SEGMENT_HANDLERS

    return create_app(
        settings,
        storage,
        extra_handlers=[
            *SEGMENT_HANDLERS,
            *DASHBOARD_HANDLERS,
            *ALERT_HANDLERS,
            *LIFECYCLE_HANDLERS,
            *METRICS_HANDLERS,
            *PERSON_HANDLERS,
            *REPORT_HANDLERS,
            realtime_endpoint,
        ],
        # Each hook sets its part in state.parts; the store the dashboards and
        # alerts keep their documents in comes first.
        on_state=[
            install_kv,
            install_realtime,
            install_dashboard,
            install_alerts,
            install_lifecycle,
            install_metrics,
            install_identity,
            install_reports,
        ],
    )


def __getattr__(name: str) -> object:
    if name == "create_app":
        from innkt_analytics.server._app import create_app

        return create_app
    raise AttributeError(f"module 'innkt_analytics.server' has no attribute {name!r}")
