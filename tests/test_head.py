"""HEAD wherever GET works: every GET route of the app (found by walking its routers, so a new route must
be given an example here) answers HEAD with GET's status and headers, and no body. A link checker, a
proxy's health probe or `curl -I` must not get a 405 where a browser gets the page."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount

from app.main import create_app
from app.settings import Settings
from engine.codec import encode_scenario
from engine.scenario import parse_scenario
from scenarios import load_builtin_text

EXAMPLE = "worked-example"
SHARE = encode_scenario(parse_scenario(load_builtin_text(EXAMPLE)))

# One example request per GET route (path template → URLs), with a refusal or two where a route has one.
EXAMPLES: dict[str, list[str]] = {
    "/": ["/"],
    "/play": [
        f"/play?scenario={EXAMPLE}&variant=lazy&step=4",
        f"/play?s={SHARE}&step=2&spte=2:0:1",
        f"/play?scenario={EXAMPLE}&step=x",
        "/play?scenario=no-such",
    ],
    "/compare": [f"/compare?scenario={EXAMPLE}&step=3"],
    "/download": [f"/download?scenario={EXAMPLE}"],
    "/api/scenarios": ["/api/scenarios"],
    "/api/scenarios/{name}": [f"/api/scenarios/{EXAMPLE}", "/api/scenarios/nope"],
    "/api/decode": [f"/api/decode?s={SHARE}", "/api/decode?s=1.!!!"],
    "/api/schema": ["/api/schema"],
    "/healthz": ["/healthz"],
    "/healthz/memory": ["/healthz/memory"],
    "/favicon.ico": ["/favicon.ico"],
    "/export.svg": [f"/export.svg?scenario={EXAMPLE}&step=3"],
    "/result.json": [f"/result.json?scenario={EXAMPLE}"],
    "/real": [f"/real?scenario={EXAMPLE}"],
    "/docs": ["/docs"],
    "/openapi.json": ["/openapi.json"],
    "/static": ["/static/keys.js", "/static/app.css", "/static/nope.css"],
}


def _walk(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _walk(inner.routes)
        else:
            yield route


def get_paths(app: Any) -> set[str]:
    """The path of every route that answers GET, and of every mount (static files)."""
    paths = set()
    for route in _walk(app.routes):
        if isinstance(route, Mount) or "GET" in (getattr(route, "methods", None) or set()):
            paths.add(route.path)
    return paths


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings()), follow_redirects=False)


def test_every_get_route_has_an_example(client: TestClient) -> None:
    app = client.app
    assert get_paths(app) == set(EXAMPLES)


@pytest.mark.parametrize("url", [url for urls in EXAMPLES.values() for url in urls])
def test_head_answers_as_get_without_the_body(client: TestClient, url: str) -> None:
    get = client.get(url)
    head = client.head(url)
    assert head.status_code == get.status_code, url
    assert head.content == b""
    same = (
        "content-type",
        "content-length",
        "content-encoding",
        "vary",
        "cache-control",
        "content-disposition",
        "content-security-policy",
        "etag",
    )
    for name in same:
        assert head.headers.get(name) == get.headers.get(name), (url, name)
    if get.status_code == 200:
        # The length of what GET sent, compressed or not (the client asks for gzip).
        assert int(head.headers["content-length"]) == get.num_bytes_downloaded


def test_head_of_an_htmx_request_is_the_blocks_get_would_send(client: TestClient) -> None:
    url = f"/play?scenario={EXAMPLE}&variant=lazy&step=5"
    headers = {"HX-Request": "true"}
    get, head = client.get(url, headers=headers), client.head(url, headers=headers)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["hx-push-url"] == get.headers["hx-push-url"]
    assert int(head.headers["content-length"]) == get.num_bytes_downloaded


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_head_of_a_page_sends_the_encoding_get_would(client: TestClient, encoding: str) -> None:
    """A compressed GET's Content-Encoding and compressed Content-Length go to HEAD too; a client that
    takes no gzip gets the plain length from both."""
    url = f"/play?scenario={EXAMPLE}&variant=lazy&step=3"
    headers = {"Accept-Encoding": encoding}
    get, head = client.get(url, headers=headers), client.head(url, headers=headers)
    assert head.status_code == get.status_code == 200 and head.content == b""
    assert head.headers.get("content-encoding") == get.headers.get("content-encoding")
    assert (get.headers.get("content-encoding") == "gzip") == (encoding == "gzip")
    assert int(head.headers["content-length"]) == get.num_bytes_downloaded
    if encoding == "identity":
        assert get.num_bytes_downloaded == len(get.content)
    else:
        assert get.num_bytes_downloaded < len(get.content) / 3


def test_methods_other_than_get_and_head_are_still_refused(client: TestClient) -> None:
    assert client.delete("/healthz").status_code == 405
    assert client.put(f"/play?scenario={EXAMPLE}").status_code == 405
