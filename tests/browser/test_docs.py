"""The API reference at /docs in a real browser, offline: Swagger UI comes from the app's own files.

Every request that does not go to the loopback server is recorded and refused, as on a machine with no
network (a workshop room's Wi-Fi without Internet); the page must still draw every operation of the API,
under its Content-Security-Policy (a refused script or style is a console error, which the `page` fixture
turns into a failure).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Page, Response, Route, expect

from app.wire import IMMUTABLE

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def test_the_docs_draw_the_api_with_the_network_cut(page: Page) -> None:
    outside: list[str] = []
    loaded: dict[str, Response] = {}

    def only_loopback(route: Route) -> None:
        url = urlsplit(route.request.url)
        if url.scheme in ("http", "https") and url.hostname in LOOPBACK:
            route.continue_()
            return
        if url.scheme == "data":
            route.continue_()
            return
        outside.append(route.request.url)
        route.abort()

    def keep(response: Response) -> None:
        loaded[urlsplit(response.url).path] = response

    page.context.route("**/*", only_loopback)
    page.on("response", keep)
    page.goto("/docs")

    run = page.locator('.opblock-post .opblock-summary-path[data-path="/api/run"]')
    expect(run).to_be_visible()
    expect(page.locator(".opblock-get .opblock-summary-path[data-path='/api/scenarios']")).to_be_visible()
    expect(page.locator(".opblock")).not_to_have_count(0)
    assert page.locator(".opblock").count() >= 5
    # An operation opens: Swagger UI's own script works, not only its first drawing.
    run.click()
    expect(page.locator(".opblock-post.is-open")).to_have_count(1)
    assert outside == [], f"/docs asked for something beyond this machine: {outside}"

    bundle = [response for path, response in loaded.items() if path.endswith(".js") and "swagger" in path]
    assert len(bundle) == 1, sorted(loaded)
    headers = bundle[0].all_headers()
    assert headers.get("content-encoding") == "gzip"
    assert headers.get("cache-control") == IMMUTABLE
