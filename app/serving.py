"""How the app is served: the uvicorn options of the settings, shared by `sptelab serve` and `python -m app`.

The app itself reads only `workshop` from the settings. The root path reaches it through the server:
uvicorn puts `root_path` in every request's scope, and the app writes it in front of every URL
(`app.render.base_path`). Each of several workers is a process with its own caches.
"""

from __future__ import annotations

from typing import Any

from app.settings import Settings

# The ASGI app, as an import string: several workers each import it afresh.
APP = "app.main:app"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `uvicorn.run(APP, ...)` for these settings."""
    return {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        # No request lines unless asked: every player URL carries its scenario's share code.
        "access_log": settings.access_log,
        "root_path": settings.root_path,
        "proxy_headers": settings.proxy_headers,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
