"""The app: `create_app()` wires the routers, the static files, the limits and the error handlers.

Served by `sptelab serve` (uvicorn, one worker, `app.main:app`). Every client mistake gets its status
and a message, never a 500: JSON `{"detail": ...}` under /api, the error page elsewhere.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.deps import Store
from app.errors import URL_TOO_LONG_HINT, AppError
from app.render import STATIC, render_page
from app.routes import api, export, health, pages
from app.settings import Settings, get_settings
from engine.codec import MAX_URL_BYTES
from engine.scenario import MAX_SCENARIO_BYTES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A request body may hold a whole scenario (1 MiB) plus its envelope: form encoding, multipart headers.
MAX_BODY_BYTES = MAX_SCENARIO_BYTES * 3 + 64 * 1024

_TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    414: "Link too long",
    422: "Invalid scenario",
}

# Our pages load nothing from elsewhere and run no inline script; /docs (Swagger UI) is FastAPI's own.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none';"
    " base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/") or path == "/openapi.json"


def error_response(path: str, status: int, message: str, hint: str = "") -> Response:
    if _is_api(path):
        return JSONResponse({"detail": message}, status_code=status)
    if status == 414 and not hint:
        hint = URL_TOO_LONG_HINT
    html = render_page(
        "error.html",
        {
            "status": status,
            "title": _TITLES.get(status, "Error"),
            "message": message,
            "hint": hint,
            "oob": False,
        },
    )
    return HTMLResponse(html, status_code=status)


class LimitsMiddleware:
    """Refuse a URL over 8 KiB (414) before routing, and a request body over the limit (413) before
    anything reads it; add the security headers to every response. A plain ASGI middleware: it sits on
    every request, and Starlette's BaseHTTPMiddleware would cost more than some pages."""

    def __init__(self, app: AsgiApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(scope, send)
        path = scope.get("path", "")
        raw = scope.get("raw_path") or path.encode("utf-8")
        query = scope.get("query_string") or b""
        length = len(raw) + (len(query) + 1 if query else 0)
        if length > MAX_URL_BYTES:
            message = f"the URL is {length} bytes, more than the {MAX_URL_BYTES} this app accepts"
            await error_response(path, 414, message)(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await error_response(path, 400, "Content-Length is not a number")(scope, receive, send)
                return
            if size > MAX_BODY_BYTES:
                await error_response(path, 413, _too_large())(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # No length given (chunked): read up to the limit here, then hand the body on.
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            received = await receive()
            if received["type"] != "http.request":
                break
            chunk = received.get("body", b"")
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                await error_response(path, 413, _too_large())(scope, receive, send)
                return
            chunks.append(chunk)
            more = received.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _with_security_headers(scope: Scope, send: Send) -> Send:
    extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
    if not str(scope.get("path", "")).startswith("/docs"):
        extra.append((b"content-security-policy", _CSP.encode("ascii")))

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in present)]
        await send(message)

    return sending


def _too_large() -> str:
    return f"the request body is too large (a scenario may be at most {MAX_SCENARIO_BYTES} bytes, 1 MiB)"


def _validation_message(error: RequestValidationError) -> tuple[int, str]:
    """A request FastAPI could not bind: malformed JSON or query is 400, a bad body field 422."""
    errors = error.errors()
    first = errors[0] if errors else {}
    kind = str(first.get("type", ""))
    loc = [str(part) for part in first.get("loc", ())]
    where = ".".join(loc[1:]) if len(loc) > 1 else ".".join(loc)
    if kind == "json_invalid":
        return 400, "the request body is not valid JSON"
    message = str(first.get("msg", "invalid request"))
    if loc and loc[0] in ("query", "path", "header", "cookie"):
        return 400, f"{loc[0]} parameter {where}: {message}"
    if loc and loc[0] == "body" and len(loc) == 1:
        return 400, f"the request body: {message}"
    return 422, f"{where}: {message}" if where else message


# Young-generation size of the cyclic collector while serving (Python's default is 700).
GC_GEN0_THRESHOLD = 20_000


@asynccontextmanager
async def _settled_collector(app: FastAPI) -> AsyncIterator[None]:
    """Keep the cyclic collector's pauses out of the answers.

    The engine's objects form no cycles and a request's garbage goes with its reference counts, yet the
    collector would walk every live object again and again: the imported libraries, the cached runs. So
    the objects alive at startup are frozen out of its sight, and it looks at young objects after 20 000
    allocations instead of 700. Cycles are still collected, only less often."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, thresholds[1], thresholds[2])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="sptelab",
        summary="A step-able model of the KVM x86 TDP MMU around 'KVM: MMU: lazily drop large spte'",
        version="0.1.0",
        redoc_url=None,
        lifespan=_settled_collector,
    )
    app.state.store = Store(settings)
    app.state.settings = settings
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(pages.router)
    app.include_router(api.router, tags=["api"])
    app.include_router(health.router, tags=["health"])
    app.include_router(export.router, tags=["export"])

    @app.exception_handler(AppError)
    async def on_app_error(request: Request, exc: AppError) -> Response:
        return error_response(request.url.path, exc.status, exc.message, exc.hint)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        message = f"nothing here: {path[:200]}" if exc.status_code == 404 else str(exc.detail)
        response = error_response(request.url.path, exc.status_code, message)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        status, message = _validation_message(exc)
        return error_response(request.url.path, status, message)

    app.add_middleware(LimitsMiddleware)
    return app


app = create_app()
