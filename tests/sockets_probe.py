"""The served app with three probe routes, for tests/test_sockets.py: the real app, settings and server
(app/serving.py `serve`), plus what a test needs to see from inside a handler.

  /_probe/client       the client address the app sees (`request.client.host`)
  /_probe/wait?id=K    runs until the client goes away (polling `request.is_disconnected()`), at most
                       WAIT_S seconds, and records how it ended under K
  /_probe/ended?id=K   how /_probe/wait?id=K ended: "running", "disconnected" or "timeout"
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from app.serving import rooted

WAIT_S = 10.0
POLL_S = 0.02
ENDED: dict[str, str] = {}


def probe_app() -> Any:
    """The factory granian calls in the worker."""
    from app.main import app

    async def client(request: Request) -> JSONResponse:
        return JSONResponse({"host": request.client.host if request.client else None})

    async def wait(request: Request) -> JSONResponse:
        key = request.query_params.get("id", "")
        ENDED[key] = "running"
        loop = asyncio.get_running_loop()
        until = loop.time() + WAIT_S
        while loop.time() < until:
            if await request.is_disconnected():
                ENDED[key] = "disconnected"
                return JSONResponse({"ended": "disconnected"})
            await asyncio.sleep(POLL_S)
        ENDED[key] = "timeout"
        return JSONResponse({"ended": "timeout"})

    async def ended(request: Request) -> JSONResponse:
        return JSONResponse({"ended": ENDED.get(request.query_params.get("id", ""), "unknown")})

    app.add_api_route("/_probe/client", client, include_in_schema=False)
    app.add_api_route("/_probe/wait", wait, include_in_schema=False)
    app.add_api_route("/_probe/ended", ended, include_in_schema=False)
    return rooted(app)
