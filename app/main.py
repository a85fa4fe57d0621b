"""The app: `create_app()` wires the routers, the static files, the limits and the error handlers.

Served by `sptelab serve` (granian, one worker, app/serving.py). Every client mistake gets its status
and a message, never a 500: JSON `{"detail": ...}` under /api, the error page elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import URL_TOO_LONG_HINT, AppError, query_not_utf8
from app.forwarded import ForwardedMiddleware
from app.livekernel import live_results
from app.malloc import limit_arenas, trim
from app.render import STATIC, SWAGGER_CSS, SWAGGER_JS, page_globals, render_page, route_path, static_url
from app.room import Cancelled, Room, checkpoint
from app.routes import api, export, health, pages, real
from app.settings import Settings, get_settings
from app.store import Store
from app.wire import StaticAssets, compression
from engine.codec import MAX_URL_BYTES
from engine.scenario import MAX_SCENARIO_BYTES
from engine.sched import set_resched

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A request body may hold a whole scenario (1 MiB) plus its envelope: form encoding, multipart headers.
MAX_BODY_BYTES = MAX_SCENARIO_BYTES * 3 + 64 * 1024
# Header lines a request may have: as many as the server's HTTP/1 parser takes (hyper's 100). A browser
# sends about 15.
MAX_HEADERS = 100

_TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    408: "Too slow",
    413: "Too large",
    414: "Link too long",
    431: "Headers too large",
    403: "Forbidden",
    422: "Invalid scenario",
    500: "Server error",
}
_SERVER_ERROR = "the server failed while answering this request: a bug in sptelab, not in what you sent"
_SERVER_ERROR_HINT = "Try again; if it fails again, report the URL you opened."

# A page shows text from whoever wrote the share code, so the browser is told to run and fetch nothing
# but the app's own files, whatever gets into a page: everything is refused unless listed (default-src
# 'none'), scripts and styles are our static files only (no inline script, no eval, no inline style),
# htmx talks only to us, forms post only to us, no <base> may move relative URLs, and no other site may
# frame a page (a workshop URL must not be wrapped in someone else's page).
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
    " form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# /docs alone is FastAPI's Swagger UI, from the app's own files (SWAGGER_JS, SWAGGER_CSS): it starts
# with one inline script (allowed by its hash, not by 'unsafe-inline') and styles itself inline. It shows
# no scenario text, only the API's own description.
_DOCS_CSP = (
    "default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/") or path == "/openapi.json"


def error_response(
    path: str, status: int, message: str, hint: str = "", *, scope: Scope | None = None
) -> Response:
    """JSON under /api, the error page elsewhere. Given the request's `scope`, `path` is read inside the
    app (without the root path of a reverse proxy) and the page's links carry the root path."""
    extra: dict[str, Any] = {}
    if scope is not None:
        path = route_path(scope)
        extra = page_globals(scope)
    if _is_api(path):
        return JSONResponse({"detail": message}, status_code=status)
    if status == 414 and not hint:
        hint = URL_TOO_LONG_HINT
    html = render_page(
        "error.html",
        {
            **extra,
            "status": status,
            "title": _TITLES.get(status, "Error"),
            "message": message,
            "hint": hint,
            "oob": False,
        },
    )
    return HTMLResponse(html, status_code=status)


class LimitsMiddleware:
    """Refuse a head of more than MAX_HEADERS lines or `header_bytes` bytes (431), a URL over 8 KiB (414)
    before routing, a request body over the limit (413) before anything reads it, and a body that has not
    arrived within `body_timeout` seconds of the head (408); answer HEAD as GET without the body; add the
    security headers to every response, a 500 for a bug included. A plain ASGI middleware: it sits on
    every request, and Starlette's BaseHTTPMiddleware would cost more than some pages.

    The server bounds the head's time and size before the app sees it (app/serving.py); the head checks
    here hold the same limits under any server, and the body's deadline is the app's alone."""

    def __init__(self, app: AsgiApp, *, body_timeout: float = 30.0, header_bytes: int = 65_536) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.header_bytes = header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope.get("method") == "HEAD"
        if head:
            # HEAD wherever GET works: the same status and headers, no body.
            scope = {**scope, "method": "GET"}
        secured = _SecuredSend(send, head=head)
        deadline = _BodyDeadline(scope, receive, secured, self.body_timeout)
        try:
            await self._limited(scope, deadline.receive, secured)
        except Exception:
            if deadline.expired:
                return  # answered 408 already; what the app made of the missing body does not matter
            # A bug, not the client's doing. Answer here, with the headers, before Starlette's last-resort
            # handler would (outside this middleware, so without them); it still logs the exception.
            if not secured.started:
                path = scope.get("path", "")
                await error_response(path, 500, _SERVER_ERROR, _SERVER_ERROR_HINT, scope=scope)(
                    scope, receive, secured
                )
            raise

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        headers = scope.get("headers") or []
        size = sum(len(name) + len(value) + 4 for name, value in headers)
        if len(headers) > MAX_HEADERS or size > self.header_bytes:
            message = (
                f"the request has {len(headers)} header lines, more than the {MAX_HEADERS} this app accepts"
                if len(headers) > MAX_HEADERS
                else f"the request's headers are {size} bytes, more than the {self.header_bytes} this app"
                " accepts"
            )
            await error_response(path, 431, message, scope=scope)(scope, receive, send)
            return
        raw = scope.get("raw_path") or path.encode("utf-8")
        query = scope.get("query_string") or b""
        length = len(raw) + (len(query) + 1 if query else 0)
        if length > MAX_URL_BYTES:
            message = f"the URL is {length} bytes, more than the {MAX_URL_BYTES} this app accepts"
            await error_response(path, 414, message, scope=scope)(scope, receive, send)
            return
        not_utf8 = query_not_utf8(query)
        if not_utf8:
            await error_response(path, 400, not_utf8, scope=scope)(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                refusal = error_response(path, 400, "Content-Length is not a number", scope=scope)
                await refusal(scope, receive, send)
                return
            if size > MAX_BODY_BYTES:
                await error_response(path, 413, _too_large(), scope=scope)(scope, receive, send)
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
                await error_response(path, 413, _too_large(), scope=scope)(scope, receive, send)
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


# On every response, unless the route set its own (only /docs does, for its CSP). nosniff: a JSON or SVG
# answer holding scenario text is never read as HTML. same-origin referrers: a share URL (the whole
# scenario) is not handed to the sites a description links to. X-Frame-Options for browsers without
# frame-ancestors. The opener policy cuts the link to a page that opened ours (a link in a chat window).
_SECURITY_HEADERS = [
    (b"content-security-policy", _CSP.encode("ascii")),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class _SecuredSend:
    """The server's `send`, adding the security headers to the response, and remembering whether the
    response has started (after that, a failure can only cut it short). For a HEAD request the body is
    left out (the headers, Content-Length included, are GET's). Once `closed`, the app's own answer is
    dropped: the request was answered without it (a 408)."""

    def __init__(self, send: Send, *, head: bool = False) -> None:
        self.send = send
        self.head = head
        self.started = False
        self.closed = False

    async def __call__(self, message: Message) -> None:
        if self.closed:
            return
        if message["type"] == "http.response.start":
            self.started = True
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            message["headers"] = headers + [h for h in _SECURITY_HEADERS if h[0] not in present]
        elif message["type"] == "http.response.body" and self.head:
            message = {**message, "body": b""}
        await self.send(message)


# A request whose body has not arrived this long after its head is answered 408: a client that announces
# a body and stalls would otherwise hold its connection, and the request's task, for ever.
_BODY_TIMEOUT_MESSAGE = (
    "the request body did not arrive within {seconds:g} seconds: send it whole, or send it again"
)


class _BodyDeadline:
    """The server's `receive` with a deadline on the whole body, counted from the head's arrival. When it
    passes, the client gets 408 (with Connection: close) at once, and the app a disconnect: it stops, and
    whatever it would answer is dropped. Once the body is complete, receive waits as long as it likes
    (for a disconnect, while a response streams)."""

    def __init__(self, scope: Scope, receive: Receive, send: _SecuredSend, seconds: float) -> None:
        self.scope = scope
        self.inner = receive
        self.send = send
        self.seconds = seconds
        self.deadline = asyncio.get_running_loop().time() + seconds
        self.complete = False
        self.expired = False

    async def receive(self) -> Message:
        if self.expired:
            return {"type": "http.disconnect"}
        if self.complete:
            return await self.inner()
        left = self.deadline - asyncio.get_running_loop().time()
        try:
            message = await asyncio.wait_for(self.inner(), timeout=max(left, 0.0))
        except TimeoutError:
            await self._expire()
            return {"type": "http.disconnect"}
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.complete = True
        return message

    async def _expire(self) -> None:
        self.expired = True
        if self.send.started:
            self.send.closed = True
            return
        message = _BODY_TIMEOUT_MESSAGE.format(seconds=self.seconds)
        response = error_response(str(self.scope.get("path", "")), 408, message, scope=self.scope)
        response.headers["connection"] = "close"
        await response(self.scope, self.inner, self.send)
        self.send.closed = True


def _swagger_ui(app: FastAPI, request: Request) -> Response:
    """FastAPI's Swagger UI page, as FastAPI would serve it at /docs but from the vendored files (it
    works offline, and no CDN sees who reads the API), with the CSP that lets exactly its
    own inline script run: the hash of that script, which depends on the mount point (root_path)."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    page = get_swagger_ui_html(
        openapi_url=root + (app.openapi_url or "/openapi.json"),
        title=f"{app.title} - Swagger UI",
        swagger_js_url=root + static_url(SWAGGER_JS),
        swagger_css_url=root + static_url(SWAGGER_CSS),
        swagger_favicon_url=root + static_url("favicon.svg"),
        swagger_ui_parameters=app.swagger_ui_parameters,
    )
    html = bytes(page.body).decode("utf-8")
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    page.headers["content-security-policy"] = _DOCS_CSP.format(hashes=hashes)
    return page


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
        missing = "is empty" if kind == "missing" else "is not a JSON object"
        return 400, f'the request body {missing}: send {{"scenario": {{...}}}} as application/json'
    return 422, f"{where}: {message}" if where else message


# Young-generation size of the cyclic collector while serving (Python's default is 700).
GC_GEN0_THRESHOLD = 20_000
# The old generation is never collected on allocation counts while serving, only every this many seconds.
GC_NEVER = 1 << 30
GC_FULL_INTERVAL_S = 60.0


@asynccontextmanager
async def _settled_collector(app: FastAPI) -> AsyncIterator[None]:
    """Keep the cyclic collector's pauses out of the answers.

    The engine's objects form no cycles and a request's garbage goes with its reference counts, yet the
    collector would walk every live object again and again: the imported libraries, the cached runs (a
    full pass over them stalls a step for 100-800 ms). So the objects alive at startup are frozen out of
    its sight, it looks at young objects after 20 000 allocations instead of 700 (a request's cycles die
    young), and the full pass over the old generation runs on a timer, once a minute, instead of after
    whichever request happens to tip the count; then the allocator's free pages go back (app.malloc)."""
    limit_arenas()
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, thresholds[1], GC_NEVER)
    sweeper = asyncio.get_running_loop().create_task(_sweep_old_generation())
    try:
        yield
    finally:
        sweeper.cancel()
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _sweep_old_generation() -> None:
    while True:
        await asyncio.sleep(GC_FULL_INTERVAL_S)
        gc.collect()
        trim()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="sptelab",
        summary="A step-able model of the KVM x86 TDP MMU around 'KVM: MMU: lazily drop large spte'",
        version="0.1.0",
        # Swagger UI is served by `_docs` below, with a CSP of its own; no OAuth, so no redirect page.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        # Swagger UI would send the schema's URL to validator.swagger.io for a badge.
        swagger_ui_parameters={"validatorUrl": None},
        lifespan=_settled_collector,
        # A form field may hold a whole scenario, percent-encoded (up to three bytes a character):
        # Starlette's 1 MiB per field would refuse a valid 400 KB scenario with a 400. The body limit
        # above bounds it, and the scenario's own limit refuses it by name.
        form_limits={"max_part_size": MAX_BODY_BYTES},
    )
    app.state.store = Store(settings)
    live_results.attach(app.state.store.budget)
    app.state.settings = settings
    app.state.room = Room(settings.room_slots, settings.room_turn, settings.effective_client_share)
    # The engine's long walks pause at their cond_resched points for the room's other builds, and stop
    # there when their client has gone (checkpoint does nothing outside a build).
    set_resched(checkpoint)
    app.mount("/static", StaticAssets(directory=STATIC), name="static")
    app.include_router(pages.router)
    app.include_router(api.router, tags=["api"])
    app.include_router(health.router, tags=["health"])
    app.include_router(export.router, tags=["export"])
    app.include_router(real.router)

    @app.get("/docs", include_in_schema=False)
    async def _docs(request: Request) -> Response:
        return _swagger_ui(app, request)

    @app.exception_handler(Cancelled)
    async def client_gone(request: Request, exc: Cancelled) -> Response:
        # Nobody is there to read it: the build stopped because its client closed the connection.
        return Response(status_code=499)

    @app.exception_handler(AppError)
    async def on_app_error(request: Request, exc: AppError) -> Response:
        return error_response(request.url.path, exc.status, exc.message, exc.hint, scope=request.scope)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        message = f"nothing here: {path[:200]}" if exc.status_code == 404 else str(exc.detail)
        response = error_response(request.url.path, exc.status_code, message, scope=request.scope)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        status, message = _validation_message(exc)
        return error_response(request.url.path, status, message, scope=request.scope)

    # Innermost: everything the app answers leaves it compressed for a client that takes gzip, the page
    # cache having kept the plain bytes; the limits outside see HEAD's GET, so HEAD gets the compressed
    # GET's headers (Content-Encoding, Content-Length) and no body. The limits' own refusals go plain.
    app.add_middleware(compression)
    # Inside the limits: a refused head never reaches it. Under any server, the proxy headers are the
    # app's to judge (app/forwarded.py), with the trusted peers of the settings.
    app.add_middleware(
        ForwardedMiddleware, trusted=settings.forwarded_allow_ips, enabled=settings.proxy_headers
    )
    app.add_middleware(
        LimitsMiddleware, body_timeout=settings.body_timeout, header_bytes=settings.header_bytes
    )
    return app


app = create_app()
