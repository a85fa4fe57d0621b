"""Running a request's build: in the room's turns (app/room.py), and for a page through the page
cache, keyed by what the page is a function of, so that many viewers stepping through the same scenario
share one rendering."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import HTMLResponse

from app.budget_bytes import Lru
from app.forwarded import public_origin
from app.htmx import is_partial
from app.render import base_path
from app.room import Room

R = TypeVar("R")


async def built(request: Request, build: Callable[[], R], *, turns: bool = True) -> R:
    """Run `build` as the room's scheduler admits it (app/room.py): per client and in all, in turns with
    the other builds, stopped if the client goes away. Every request that may run the engine, or wait
    for the live kernel (`turns=False`: it waits on the kernel, not on the interpreter), goes through
    here."""
    room: Room = request.app.state.room
    return await room.run(request, build, turns=turns)


# The htmx triggers whose request gets a different answer: the step slider keeps its own position.
# Any other HX-Trigger (an id a client made up) is dropped from the page's key.
OWN_TRIGGERS = frozenset({"step-slider"})


def page_key(request: Request) -> tuple[str, ...]:
    """The key of a page in the page cache: what the page is a function of, from the app's own
    parameters. The origin its share links name (the configured or trusted one, never a raw Host), the
    path under the root path, the query's parameters in sorted order, whether htmx asked for the
    blocks, and the trigger if the app reads it. Never a raw header: a client could make every key
    unique or huge. Computed on the event loop, so it parses nothing: the query is bounded by the URL's
    limit, and a share code written two ways is two pages, each counted in the byte budget."""
    params = sorted(request.query_params.multi_items())
    partial = is_partial(request)
    trigger = request.headers.get("HX-Trigger") or ""
    return (
        public_origin(request.scope),
        base_path(request.scope),
        request.url.path,
        "&".join(f"{name}={value}" for name, value in params),
        str(partial),
        trigger if partial and trigger in OWN_TRIGGERS else "",
    )


async def cached(
    request: Request,
    pages: Lru[tuple[str, ...], tuple[bytes, dict[str, str]]],
    build: Callable[[], HTMLResponse],
) -> HTMLResponse:
    """A page is a function of its URL (and whether htmx asked for the blocks): keep the last ones built,
    so that many viewers stepping through the same scenario share the rendering. A page the cache holds
    is answered at once, without waiting for any build."""
    key = page_key(request)
    hit = pages.get(key)
    if hit is not None:
        body, stored = hit
        return HTMLResponse(body, headers=stored)
    response = await built(request, build)
    if response.status_code == 200:
        wanted = ("vary", "hx-push-url")
        kept = {name: value for name, value in response.headers.items() if name in wanted}
        pages.put(key, (bytes(response.body), kept))
    return response
