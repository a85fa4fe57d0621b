"""What goes on the wire (app/wire.py): gzip for a client that asks for it, on every kind of answer the app
gives above 500 bytes, never for one that does not; the page cache keeps plain bytes; a streamed run
still streams; static files carry the cache policy of their URL's version."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.render import static_url, static_version
from app.settings import Settings
from app.wire import IMMUTABLE, REVALIDATE
from engine.policy import PRESETS
from scenarios import load_builtin_text

EXAMPLE = "worked-example"
PLAY = f"/play?scenario={EXAMPLE}&variant=lazy"
GZIP = {"Accept-Encoding": "gzip"}
PLAIN = {"Accept-Encoding": "identity"}

# (what, url, request headers): each answer is over 500 bytes.
KINDS: list[tuple[str, str, dict[str, str]]] = [
    ("landing page", "/", {}),
    ("player page", f"{PLAY}&step=3", {}),
    ("player step swap (htmx)", f"{PLAY}&step=4", {"HX-Request": "true"}),
    ("compare page", f"/compare?scenario={EXAMPLE}&step=3", {}),
    ("API JSON", "/api/scenarios", {}),
    ("OpenAPI JSON", "/openapi.json", {}),
    ("SVG export", f"/export.svg?scenario={EXAMPLE}&variant=lazy&step=5", {}),
    ("result JSON", f"/result.json?scenario={EXAMPLE}&variant=lazy", {}),
    ("static CSS", static_url("app.css"), {}),
    ("static script", static_url("keys.js"), {}),
    ("vendored htmx, no version", "/static/vendor/htmx-2.0.11.min.js", {}),
    ("the docs page", "/docs", {}),
]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings()), follow_redirects=False)


def raw(client: TestClient, url: str, headers: dict[str, str]) -> tuple[Any, bytes]:
    """The response and its body as sent, before any decoding."""
    with client.stream("GET", url, headers=headers) as response:
        body = b"".join(response.iter_raw())
    return response, body


@pytest.mark.parametrize(
    ("url", "headers"), [pytest.param(url, headers, id=what) for what, url, headers in KINDS]
)
def test_compressed_when_asked_plain_otherwise(client: TestClient, url: str, headers: dict[str, str]) -> None:
    zipped, zipped_body = raw(client, url, {**headers, **GZIP})
    plain, plain_body = raw(client, url, {**headers, **PLAIN})
    assert zipped.status_code == plain.status_code == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in zipped.headers["vary"].lower()
    assert "accept-encoding" in plain.headers["vary"].lower()
    assert "content-encoding" not in plain.headers
    assert int(zipped.headers["content-length"]) == len(zipped_body) < len(plain_body)
    assert int(plain.headers["content-length"]) == len(plain_body)
    assert gzip.decompress(zipped_body) == plain_body


def test_a_small_answer_goes_plain(client: TestClient) -> None:
    response, body = raw(client, "/static/favicon.svg", GZIP)
    assert response.status_code == 200 and len(body) < 500
    assert "content-encoding" not in response.headers


def test_the_page_cache_keeps_plain_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(Settings())
    pages = app.state.store.pages
    kept: list[bytes] = []
    put = pages.put

    def record(key: Any, value: Any) -> None:
        kept.append(value[0])
        put(key, value)

    monkeypatch.setattr(pages, "put", record)
    client = TestClient(app)
    url = f"{PLAY}&step=6"
    first, first_body = raw(client, url, {**GZIP, "HX-Request": "true"})
    assert first.headers["content-encoding"] == "gzip" and len(kept) == 1
    assert gzip.decompress(first_body) == kept[0]
    assert kept[0].lstrip().startswith(b"<")
    # Answered from the cache: compressed for one client, plain for the other.
    again, again_body = raw(client, url, {**GZIP, "HX-Request": "true"})
    assert again.headers["content-encoding"] == "gzip"
    plain, plain_body = raw(client, url, {**PLAIN, "HX-Request": "true"})
    assert len(kept) == 1
    assert gzip.decompress(again_body) == plain_body == kept[0]
    assert "content-encoding" not in plain.headers


def test_a_streamed_run_still_streams_compressed() -> None:
    """POST /api/run sends the result in chunks as it is written: each compressed chunk is flushed, so
    the client can decode the first before the last is sent."""
    app = create_app(Settings())
    body = json.dumps({"scenario": json.loads(load_builtin_text("write-storm-2m"))}).encode()
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/run",
        "raw_path": b"/api/run",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"accept-encoding", b"gzip"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    # On a loop of its own, in a thread of its own: the browser tests keep a loop in the main thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    start, *bodies = sent
    headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    assert start["status"] == 200 and headers["content-encoding"] == "gzip"
    assert "content-length" not in headers
    chunks = [message["body"] for message in bodies if message["body"]]
    assert len(chunks) >= 2 and bodies[0].get("more_body")
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    first = decoder.decompress(chunks[0])
    assert first.startswith(b"{") and len(first) > 1000
    whole = first + b"".join(decoder.decompress(chunk) for chunk in chunks[1:]) + decoder.flush()
    assert json.loads(whole)["format"]


def test_a_versioned_static_url_is_cached_for_a_year(client: TestClient) -> None:
    for path in ("keys.js", "app.css", "vendor/htmx-2.0.11.min.js", "favicon.svg"):
        url = static_url(path)
        assert url.endswith(f"?v={static_version(path)}")
        for headers in (GZIP, PLAIN):
            response = client.get(url, headers=headers)
            assert response.status_code == 200
            assert response.headers["cache-control"] == IMMUTABLE, (url, headers)


@pytest.mark.parametrize(
    "url",
    ["/static/keys.js", "/static/keys.js?v=0000000000", "/static/keys.js?v=", "/static/app.css?x=1"],
)
def test_any_other_static_url_is_asked_again(client: TestClient, url: str) -> None:
    response = client.get(url, headers=GZIP)
    assert response.status_code == 200
    assert response.headers["cache-control"] == REVALIDATE


@pytest.mark.parametrize("headers", [GZIP, PLAIN])
def test_an_unchanged_static_file_is_answered_304(client: TestClient, headers: dict[str, str]) -> None:
    url = "/static/app.css"
    first = client.get(url, headers=headers)
    etag = first.headers["etag"]
    assert etag.startswith("W/") == (headers is GZIP)
    again = client.get(url, headers={**headers, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["cache-control"] == REVALIDATE


def test_a_missing_static_file_is_still_404(client: TestClient) -> None:
    assert client.get("/static/nope.js?v=0000000000", headers=GZIP).status_code == 404


# A step swap is the bytes a presenter's arrow key costs on a room's shared Wi-Fi: each one the player's
# heaviest lesson asks for, under every preset, stays under this many bytes as sent gzip-compressed.
SWAP_LIMIT = 15 * 1024


@pytest.mark.parametrize("variant", list(PRESETS))
def test_every_write_storm_swap_is_light_compressed(client: TestClient, variant: str) -> None:
    steps = len(json.loads(load_builtin_text("write-storm-2m"))["steps"])
    sizes: dict[int, int] = {}
    for step in range(1, steps + 1):
        url = f"/play?scenario=write-storm-2m&variant={variant}&step={step}"
        response, body = raw(client, url, {**GZIP, "HX-Request": "true"})
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"
        assert b"hx-swap-oob" in gzip.decompress(body), "a swap, not a whole page"
        sizes[step] = len(body)
    heavy = {step: size for step, size in sizes.items() if size > SWAP_LIMIT}
    assert not heavy, f"swaps over {SWAP_LIMIT} B compressed under {variant}: {heavy}"
