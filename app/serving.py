"""How the app is served: granian, with the options of the settings, shared by `sptelab serve` and
`python -m app`.

granian was chosen by measurement (benchmarks/sockets.py, README "Sockets"): its HTTP/1 (hyper) refuses a
head over `header_bytes` or over 100 header lines with 431, and closes a connection whose head has not
arrived within `header_timeout` (an idle one too), with the throughput of uvicorn's httptools. What it
lacks, a deadline on the body, the app adds (app.main.LimitsMiddleware).

Each worker is a process that builds the app from the environment (`served_app`), so every setting a
flag of `sptelab serve` changes is put in the environment first (`export_settings`). The root path
reaches the app through the server, in every request's scope, and the app writes it in front of every
URL (`app.render.base_path`). The forwarded headers are the app's to judge (app/forwarded.py).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server import Server
from starlette.types import Receive, Scope, Send

from app.settings import Settings, get_settings

# The ASGI app as a factory, as an import string: each worker builds it afresh.
APP = "app.serving:served_app"

# The serving settings, each of which the workers read from the environment as SPTELAB_<NAME>.
SERVING_SETTINGS = (
    "host",
    "port",
    "workers",
    "root_path",
    "workshop",
    "proxy_headers",
    "forwarded_allow_ips",
    "access_log",
    "public_url",
    "header_timeout",
    "header_bytes",
    "body_timeout",
)


def served_app() -> Any:
    """The app as a worker serves it."""
    # Imported here, in the worker, after the settings are in its environment.
    return rooted(importlib.import_module("app.main").app)


def rooted(app: Any) -> Any:
    """`app` with granian's scope made the ASGI spec's: granian puts the root path in `root_path` but
    leaves `path` as the proxy sent it, without the prefix; the spec (and uvicorn) have `path` start
    with `root_path`."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path") or ""
        if root and scope["type"] in ("http", "websocket"):
            path = scope.get("path", "")
            if path != root and not path.startswith(root + "/"):
                raw = scope.get("raw_path") or path.encode("utf-8")
                scope = {**scope, "path": root + path, "raw_path": root.encode("utf-8") + raw}
        await app(scope, receive, send)

    return wrapped


def export_settings(settings: Settings) -> None:
    """Put the serving settings in the environment, where each worker's `get_settings` reads them."""
    for name in SERVING_SETTINGS:
        value = getattr(settings, name)
        if isinstance(value, bool):
            value = "1" if value else "0"
        os.environ[f"SPTELAB_{name.upper()}"] = str(value)
    get_settings.cache_clear()


def server_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of granian's `Server(APP, ...)` for these settings."""
    return {
        "address": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "interface": Interfaces.ASGI,
        "factory": True,
        # HTTP/1.1 only: no browser speaks cleartext HTTP/2, and a proxy in front speaks HTTP/1.1 to us.
        "http": HTTPModes.http1,
        "websockets": False,
        "http1_settings": HTTP1Settings(
            header_read_timeout=round(settings.header_timeout * 1000),
            max_buffer_size=settings.header_bytes,
        ),
        # No request lines unless asked: every player URL carries its scenario's share code.
        "log_access": settings.access_log,
        "url_path_prefix": settings.root_path or None,
        # A worker that dies is started again, so one bug cannot take the room's server down for good.
        "respawn_failed_workers": True,
    }


def serve(settings: Settings, target: str = APP) -> None:
    """Serve the app (`target`, an app factory as an import string) in the foreground until interrupted."""
    export_settings(settings)
    Server(target, **server_options(settings)).serve()
