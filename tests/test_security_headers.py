"""The security headers on every kind of response (app/main.py), through FastAPI's TestClient.

A shared URL is written by someone else: whatever text of it reaches a page, the browser must run and
fetch nothing but the app's own files. The pages escape that text (tests/browser/test_hostile_links.py
shows it in a real browser); these tests pin the second line of defence, the headers, on every kind of
answer the app gives: whole pages and htmx partials, JSON, static files, the SVG and JSON attachments,
redirects and every error status, a server bug's 500 included. Only /docs (Swagger UI, from the app's
own vendored files) has a policy of its own, and only that exact path.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from app.main import create_app
from engine.codec import encode_scenario
from engine.scenario import MAX_SCENARIO_BYTES
from scenarios import load_builtin_text

EXAMPLE = "worked-example"
PLAY = f"/play?scenario={EXAMPLE}&variant=lazy"


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), follow_redirects=False)


def csp(response: Response) -> dict[str, list[str]]:
    """The Content-Security-Policy as {directive: [sources]}; one header, no directive twice."""
    values = response.headers.get_list("content-security-policy")
    assert len(values) == 1, values
    policy: dict[str, list[str]] = {}
    for part in values[0].split(";"):
        words = part.split()
        if words:
            assert words[0] not in policy, f"{words[0]} twice"
            policy[words[0]] = words[1:]
    return policy


def assert_secured(response: Response) -> None:
    """The app's own strict policy and the other headers, whatever the status and content type."""
    policy = csp(response)
    assert policy == {
        "default-src": ["'none'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "connect-src": ["'self'"],
        "form-action": ["'self'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
    }, policy
    headers = response.headers
    assert headers.get_list("x-content-type-options") == ["nosniff"]
    assert headers.get_list("referrer-policy") == ["same-origin"]
    assert headers.get_list("x-frame-options") == ["DENY"]
    assert headers.get_list("cross-origin-opener-policy") == ["same-origin"]


def raw_code(data: bytes) -> str:
    """A share code of any bytes (contract §6), valid scenario or not."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = deflate.compress(data) + deflate.flush()
    return "1." + base64.urlsafe_b64encode(packed).decode("ascii").rstrip("=")


def shared_code() -> str:
    return encode_scenario(json.loads(load_builtin_text(EXAMPLE)))


# (what, url, request headers, expected status)
GETS: list[tuple[str, str, dict[str, str], int]] = [
    ("landing page", "/", {}, 200),
    ("player page", f"{PLAY}&step=3", {}, 200),
    ("player page, from the page cache", f"{PLAY}&step=3", {}, 200),
    ("player partial (htmx)", f"{PLAY}&step=4", {"HX-Request": "true"}, 200),
    ("predict mode", f"{PLAY}&step=2&mode=predict&score=0-0", {}, 200),
    ("presentation mode", f"{PLAY}&step=2&present=1&focus=bitmap", {}, 200),
    ("compare page", f"/compare?scenario={EXAMPLE}&step=3", {}, 200),
    ("compare partial (htmx)", f"/compare?scenario={EXAMPLE}&step=4", {"HX-Request": "true"}, 200),
    ("health JSON", "/healthz", {}, 200),
    ("API JSON", "/api/scenarios", {}, 200),
    ("API JSON of a scenario", f"/api/scenarios/{EXAMPLE}", {}, 200),
    ("JSON Schema", "/api/schema", {}, 200),
    ("OpenAPI JSON", "/openapi.json", {}, 200),
    ("static CSS", "/static/app.css", {}, 200),
    ("static script", "/static/keys.js", {}, 200),
    ("vendored htmx", "/static/vendor/htmx-2.0.11.min.js", {}, 200),
    ("static SVG (favicon)", "/static/favicon.svg", {}, 200),
    ("SVG export", f"/export.svg?scenario={EXAMPLE}&variant=lazy&step=5", {}, 200),
    ("result JSON attachment", f"/result.json?scenario={EXAMPLE}&variant=lazy", {}, 200),
    ("scenario download", f"/download?scenario={EXAMPLE}", {}, 200),
    ("what-if redirect", f"{PLAY}&step=1&sw.wp_large=zap", {}, 303),
    ("400 page", f"{PLAY}&step=x", {}, 400),
    ("400 page of a bad share code", "/play?s=1.***", {}, 400),
    ("400 JSON", "/api/decode?s=1.***", {}, 400),
    ("404 page", "/no/such/page", {}, 404),
    ("404 page near /docs", "/docsx", {}, 404),
    ("404 page under /docs", "/docs/oauth2-redirect", {}, 404),
    ("404 JSON", "/api/scenarios/nope", {}, 404),
    ("404 static file", "/static/nope.js", {}, 404),
    ("414 page", "/play?s=1." + "A" * 9000, {}, 414),
    ("414 JSON", "/api/decode?s=1." + "A" * 9000, {}, 414),
    ("422 page", "/play?s=" + raw_code(b'{"format": "sptelab-scenario", "version": 1}'), {}, 422),
]


@pytest.mark.parametrize(
    ("url", "headers", "status"),
    [pytest.param(url, headers, status, id=what) for what, url, headers, status in GETS],
)
def test_get_responses_carry_the_headers(
    client: TestClient, url: str, headers: dict[str, str], status: int
) -> None:
    response = client.get(url, headers=headers)
    assert response.status_code == status, response.text[:300]
    assert_secured(response)


def _posts(client: TestClient) -> Iterator[tuple[str, Response, int]]:
    example = load_builtin_text(EXAMPLE)
    yield "editor: valid scenario, redirect", client.post("/play", data={"scenario": example}), 303
    yield "editor: invalid scenario, 422 page", client.post("/play", data={"scenario": "{"}), 422
    yield (
        "editor: live check partial",
        client.post("/validate", data={"scenario": "{"}, headers={"HX-Request": "true"}),
        200,
    )
    yield "upload redirect", client.post("/upload", files={"file": ("s.json", example.encode())}), 303
    yield "API run", client.post("/api/run", json={"scenario": json.loads(example)}), 200
    yield "API encode", client.post("/api/encode", json={"scenario": json.loads(example)}), 200
    yield (
        "400 JSON: malformed body",
        client.post("/api/run", content=b"{", headers={"content-type": "application/json"}),
        400,
    )
    yield "422 JSON: invalid scenario", client.post("/api/run", json={"scenario": {"format": "x"}}), 422
    yield "405 page", client.post("/export.svg"), 405
    yield "405 JSON", client.post("/api/scenarios"), 405
    yield (
        "413 page: declared body",
        client.post("/play", content=b"x", headers={"content-length": str(4 * MAX_SCENARIO_BYTES)}),
        413,
    )
    yield (
        "413 JSON: declared body",
        client.post("/api/run", content=b"x", headers={"content-length": str(4 * MAX_SCENARIO_BYTES)}),
        413,
    )
    big = iter([b"x" * (1 << 20)] * 4)
    yield "413 page: chunked body", client.post("/play", content=big), 413
    yield (
        "400 page: bad Content-Length",
        client.post("/play", content=b"", headers={"content-length": "nope"}),
        400,
    )


def test_other_methods_and_bodies_carry_the_headers(client: TestClient) -> None:
    for what, response, status in _posts(client):
        assert response.status_code == status, (what, response.text[:300])
        try:
            assert_secured(response)
        except AssertionError as error:
            raise AssertionError(f"{what}: {error}") from None


def test_a_server_bug_gets_the_error_page_with_the_headers() -> None:
    """A 500 is answered inside the middleware, not by Starlette's last-resort handler outside it."""
    app = create_app()

    @app.get("/bug")
    def bug() -> None:
        raise RuntimeError("a bug")

    @app.get("/api/bug")
    def api_bug() -> None:
        raise RuntimeError("a bug")

    client = TestClient(app, raise_server_exceptions=False)
    page = client.get("/bug")
    assert page.status_code == 500 and "data-error-message" in page.text
    assert "a bug in sptelab" in page.text and "RuntimeError" not in page.text
    assert_secured(page)
    api = client.get("/api/bug")
    assert api.status_code == 500 and "a bug in sptelab" in api.json()["detail"]
    assert_secured(api)
    with pytest.raises(RuntimeError):  # still raised, so the server logs it
        TestClient(app).get("/bug")


def test_the_docs_page_has_its_own_narrow_policy(client: TestClient) -> None:
    """Swagger UI comes from the app's own files and starts with one inline script: that script's hash is
    allowed, never 'unsafe-inline' or 'unsafe-eval' for scripts, no other site; nobody may frame it;
    everything else is strict."""
    response = client.get("/docs")
    assert response.status_code == 200
    policy = csp(response)
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    scripts = policy["script-src"]
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    hashes = [source for source in scripts if source.startswith("'sha256-")]
    inline = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    assert len(hashes) == len(inline) == 1
    assert set(scripts) - set(hashes) == {"'self'"}
    assert not any("http" in source for sources in policy.values() for source in sources)
    assert "cdn." not in response.text and "https://" not in response.text
    assert policy["connect-src"] == ["'self'"]
    assert "validator.swagger.io" not in response.text
    assert all("'unsafe-eval'" not in sources for sources in policy.values())
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    assert response.headers.get_list("x-frame-options") == ["DENY"]
    # The hash follows the mount point: behind a proxy at /lab, the script loads /lab/openapi.json.
    mounted = TestClient(create_app(), root_path="/lab").get("/docs")
    assert "'/lab/openapi.json'" in mounted.text
    assert csp(mounted)["script-src"] != scripts


def test_the_share_code_player_carries_the_headers(client: TestClient) -> None:
    response = client.get(f"/play?s={shared_code()}&variant=lazy&step=2")
    assert response.status_code == 200
    assert_secured(response)


@pytest.mark.parametrize(
    "title",
    [
        'a"; filename="evil.html',
        "line\r\nSet-Cookie: x=1",
        "tab\tand\x0bvertical",
        "../../etc/passwd",
        "ünïcødé ✓ 名前",
        "",
        "<script>window.__pwned=1</script>",
    ],
)
def test_attachment_names_are_plain_whatever_the_title(client: TestClient, title: str) -> None:
    """Content-Disposition names a shared scenario by a slug of its title: no quote, CR, LF, slash or
    non-ASCII character of the title reaches the header."""
    scenario = json.loads(load_builtin_text(EXAMPLE))
    scenario["title"] = title
    code = encode_scenario(scenario)
    for url, suffix in (
        (f"/download?s={code}", ".json"),
        (f"/export.svg?s={code}&variant=lazy&step=1", "-lazy-step-1.svg"),
        (f"/result.json?s={code}&variant=lazy", "-lazy-result.json"),
    ):
        response = client.get(url)
        assert response.status_code == 200, response.text[:300]
        (disposition,) = response.headers.get_list("content-disposition")
        match = re.fullmatch(r'attachment; filename="([a-z0-9-]{1,60})"', disposition.replace(suffix, "", 1))
        assert match is not None and disposition.endswith(f'{suffix}"'), disposition
        assert_secured(response)
