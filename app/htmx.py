"""How a page or its blocks become a response: the htmx side of the app.

`page()` decides between the whole page and an htmx partial: a request with `HX-Request: true` (and not
a history restore, `is_partial`) gets only the named blocks, each swapped out of band, after the page's
`<title>` (which htmx puts in the tab), plus `HX-Push-Url` with the canonical URL of the state it shows;
both kinds carry `Vary: HX-Request`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from app.render import page_globals, render_blocks, render_page


def is_partial(request: Request) -> bool:
    headers = request.headers
    return headers.get("HX-Request") == "true" and headers.get("HX-History-Restore-Request") != "true"


def page(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    blocks: Iterable[str] = (),
    skip: Iterable[str] = (),
    push: str | None = None,
    status: int = 200,
    partial: bool | None = None,
) -> HTMLResponse:
    blocks = tuple(blocks)
    if partial is None:
        partial = bool(blocks) and is_partial(request)
    headers = {"Vary": "HX-Request"}
    context = {**page_globals(request.scope), **context}
    if partial:
        oob = template != "index.html"
        wanted = [block for block in blocks if block not in set(skip)]
        body = render_blocks(template, wanted, {**context, "oob": oob})
        if oob:
            # A <title> at the top of the answer: htmx puts it in the tab, so the tab names the state shown.
            body = "<title>" + render_blocks(template, ("title",), context).strip() + "</title>" + body
        if push:
            headers["HX-Push-Url"] = push
        return HTMLResponse(body, status_code=status, headers=headers)
    return HTMLResponse(render_page(template, {**context, "oob": False}), status_code=status, headers=headers)
