"""Serving options of the web app: workshop mode (no editor) and a root path behind a reverse proxy.

Workshop mode (`Settings.workshop`, `sptelab serve --workshop`): the landing page has no editor and no
upload, the editor's routes answer 403 with a message, and built-in scenarios and share links still play.

A root path (`sptelab serve --root-path /prefix`, uvicorn's option): the server puts it in the request's
scope and in front of its path, and every URL the app writes (links, forms, htmx attributes, static
files, the pushed URL, redirects, share links) must start with it. The client here sends what uvicorn
would hand the app behind a proxy that strips the prefix: the prefix in `root_path` and in the path.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from engine.codec import encode_scenario
from engine.scenario import parse_scenario
from scenarios import load_builtin_text

EXAMPLE = "worked-example"
PREFIX = "/workshop/sptelab"
# Attributes whose value is a URL the browser follows, fetches, submits to or pushes.
URL_ATTRS = ("href", "src", "action", "formaction", "hx-get", "hx-post", "hx-put", "hx-delete", "hx-patch")
PUSH_ATTRS = ("hx-push-url", "hx-replace-url")


class Urls(HTMLParser):
    """Every URL a page holds, as (tag, attribute, value), and the share link's value."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str, str]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        for name, value in values.items():
            if name in URL_ATTRS or (name in PUSH_ATTRS and value not in ("true", "false")):
                self.found.append((tag, name, value))
        if values.get("id") == "share-url":
            self.found.append((tag, "value", values.get("value", "")))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)


def outside(urls: list[tuple[str, str, str]], base: str) -> list[tuple[str, str, str]]:
    """The URLs of the app that do not start with `base` + "/": a path, or an absolute URL to this
    server. Fragments and other sites (a scenario description's links) are not the app's."""
    wrong = []
    for tag, attr, value in urls:
        if value.startswith("#"):
            continue
        parts = urlsplit(value)
        if parts.scheme and parts.netloc != "testserver":
            continue
        if not parts.path.startswith(base + "/") or value.startswith("//"):
            wrong.append((tag, attr, value))
    return wrong


@pytest.fixture(scope="module")
def prefixed() -> TestClient:
    return TestClient(create_app(Settings()), root_path=PREFIX, follow_redirects=False)


@pytest.fixture(scope="module")
def plain() -> TestClient:
    return TestClient(create_app(Settings()), follow_redirects=False)


@pytest.fixture(scope="module")
def workshop() -> TestClient:
    return TestClient(create_app(Settings(workshop=True)), follow_redirects=False)


@pytest.fixture(scope="module")
def workshop_prefixed() -> TestClient:
    return TestClient(create_app(Settings(workshop=True)), root_path=PREFIX, follow_redirects=False)


def share_code() -> str:
    return encode_scenario(parse_scenario(load_builtin_text(EXAMPLE)))


PLAY = f"/play?scenario={EXAMPLE}"

# Every kind of page the app renders, whole and as htmx blocks: (path and query, htmx?, status).
PAGES = [
    ("/", False, 200),
    (f"{PLAY}", False, 200),
    (f"{PLAY}&variant=lazy-buggy&step=5&spte=2:0:1", False, 200),
    (f"{PLAY}&variant=lazy-buggy&step=5&spte=2:0:1", True, 200),
    (f"{PLAY}&variant=lazy&step=3&policy=fast_pf_level_guard=none", False, 200),
    (f"{PLAY}&variant=lazy-buggy&step=4&mode=predict&score=1-2", False, 200),
    (f"{PLAY}&variant=lazy-buggy&step=5&mode=predict&answer=fast&score=1-2", True, 200),
    (f"{PLAY}&variant=lazy-buggy&step=12&mode=predict&score=3-4", False, 200),
    (f"{PLAY}&variant=lazy&step=5&present=1&focus=bitmap", False, 200),
    (f"{PLAY}&variant=lazy&step=99", False, 200),
    ("SHARE&variant=lazy-buggy&step=8", False, 200),
    ("SHARE&variant=lazy-buggy&step=8&spte=2:0:1", True, 200),
    (f"/compare?scenario={EXAMPLE}&step=5", False, 200),
    (f"/compare?scenario={EXAMPLE}&variants=zap,lazy&step=6", True, 200),
    ("/nope", False, 404),
    ("/static/nope.css", False, 404),
    (f"{PLAY}&step=x", False, 400),
    ("/play?scenario=no-such-scenario", False, 404),
    ("/play?s=1.!!!", False, 400),
]


def _url(path: str) -> str:
    return path.replace("SHARE", f"/play?s={share_code()}")


@pytest.mark.parametrize(("path", "htmx", "status"), PAGES)
def test_every_url_of_a_page_carries_the_root_path(
    prefixed: TestClient, path: str, htmx: bool, status: int
) -> None:
    headers = {"HX-Request": "true"} if htmx else {}
    response = prefixed.get(PREFIX + _url(path), headers=headers)
    assert response.status_code == status, response.text[:300]
    urls = Urls(response.text).found
    assert urls, "a page without a single URL"
    assert outside(urls, PREFIX) == []
    if htmx and status == 200:
        assert response.headers["HX-Push-Url"].startswith(PREFIX + "/")
        assert "<html" not in response.text


@pytest.mark.parametrize(("path", "htmx", "status"), PAGES)
def test_without_a_root_path_the_urls_are_the_apps_own(
    plain: TestClient, path: str, htmx: bool, status: int
) -> None:
    headers = {"HX-Request": "true"} if htmx else {}
    response = plain.get(_url(path), headers=headers)
    assert response.status_code == status
    assert outside(Urls(response.text).found, "") == []
    if htmx and status == 200:
        assert response.headers["HX-Push-Url"].startswith(("/play?", "/compare?"))


def test_the_landing_page_links_every_builtin_under_the_root_path(prefixed: TestClient) -> None:
    urls = Urls(prefixed.get(PREFIX + "/").text).found
    hrefs = {value for _, attr, value in urls if attr == "href"}
    assert f"{PREFIX}/play?scenario={EXAMPLE}" in hrefs
    # The cards compare the presets at the step where they part (docs/ui-hooks.md, "built-in scenario").
    assert any(href.startswith(f"{PREFIX}/compare?scenario={EXAMPLE}&step=") for href in hrefs)
    assert f"{PREFIX}/" in hrefs and f"{PREFIX}/api/schema" in hrefs and f"{PREFIX}/docs" in hrefs
    forms = {(tag, attr): value for tag, attr, value in urls if tag in ("form", "textarea")}
    assert forms[("textarea", "hx-post")] == f"{PREFIX}/validate"
    actions = sorted(value for tag, attr, value in urls if attr == "action")
    assert actions == [f"{PREFIX}/play", f"{PREFIX}/upload"]


def test_static_files_load_under_the_root_path(prefixed: TestClient) -> None:
    urls = Urls(prefixed.get(PREFIX + "/").text).found
    statics = [value for tag, attr, value in urls if tag in ("script", "link")]
    assert len(statics) == 4  # the icon, the style sheet, htmx and keys.js
    for url in statics:
        assert url.startswith(f"{PREFIX}/static/")
        assert prefixed.get(url).status_code == 200


PUBLIC = "https://sptelab.example.org"


def test_the_share_link_and_the_svg_export_are_absolute_under_the_root_path() -> None:
    prefixed = TestClient(create_app(Settings(public_url=PUBLIC)), root_path=PREFIX)
    response = prefixed.get(f"{PREFIX}{PLAY}&variant=lazy-buggy&step=4")
    (share,) = [value for _, attr, value in Urls(response.text).found if attr == "value"]
    assert share.startswith(f"{PUBLIC}{PREFIX}/play?scenario={EXAMPLE}&variant=lazy-buggy&step=4")
    svg = prefixed.get(f"{PREFIX}/export.svg?scenario={EXAMPLE}&variant=lazy-buggy&step=4")
    assert svg.status_code == 200
    assert f'href="{PUBLIC}{PREFIX}/play?scenario={EXAMPLE}&amp;variant=lazy-buggy&amp;step=4"' in svg.text


def test_without_a_public_url_the_share_link_is_the_path_alone(prefixed: TestClient) -> None:
    response = prefixed.get(f"{PREFIX}{PLAY}&variant=lazy-buggy&step=4")
    (share,) = [value for _, attr, value in Urls(response.text).found if attr == "value"]
    assert share.startswith(f"{PREFIX}/play?scenario={EXAMPLE}&variant=lazy-buggy&step=4")


def test_redirects_carry_the_root_path(prefixed: TestClient) -> None:
    # The what-if form's switches become policy=...
    response = prefixed.get(f"{PREFIX}{PLAY}&variant=lazy&step=3&sw.wp_large=zap")
    assert response.status_code == 303
    assert response.headers["location"] == (
        f"{PREFIX}/play?scenario={EXAMPLE}&variant=lazy&step=3&policy=wp_large=zap"
    )
    # The editor's "Play this", and the upload.
    text = load_builtin_text(EXAMPLE)
    response = prefixed.post(f"{PREFIX}/play", data={"scenario": text})
    assert response.status_code == 303
    assert response.headers["location"].startswith(f"{PREFIX}/play?s=1.")
    files = {"file": ("s.json", text.encode(), "application/json")}
    response = prefixed.post(f"{PREFIX}/upload", files=files)
    assert response.status_code == 303
    assert response.headers["location"].startswith(f"{PREFIX}/play?s=1.")
    # And the page they lead to.
    assert prefixed.get(response.headers["location"]).status_code == 200


def test_the_editor_check_and_its_refusal_page_under_the_root_path(prefixed: TestClient) -> None:
    response = prefixed.post(f"{PREFIX}/validate", data={"scenario": "{"}, headers={"HX-Request": "true"})
    assert response.status_code == 200 and 'id="editor-status"' in response.text
    response = prefixed.post(f"{PREFIX}/play", data={"scenario": "{"})
    assert response.status_code == 422
    assert outside(Urls(response.text).found, PREFIX) == []


def test_api_errors_stay_json_under_the_root_path(prefixed: TestClient) -> None:
    response = prefixed.get(f"{PREFIX}/api/decode?s=1.!!!")
    assert response.status_code == 400
    assert set(response.json()) == {"detail"}
    response = prefixed.get(f"{PREFIX}/api/scenarios/nope")
    assert response.status_code == 404 and set(response.json()) == {"detail"}
    assert prefixed.get(f"{PREFIX}/healthz").json() == {"status": "ok"}


def test_the_api_reference_finds_its_schema_under_the_root_path(prefixed: TestClient) -> None:
    response = prefixed.get(f"{PREFIX}/docs")
    assert response.status_code == 200
    assert f"{PREFIX}/openapi.json" in response.text
    assert prefixed.get(f"{PREFIX}/openapi.json").status_code == 200


# ---------------------------------------------------------------------------------------------------------
# Workshop mode

REFUSAL = "this server runs in workshop mode: the editor is off"


def test_workshop_landing_page_has_no_editor(workshop: TestClient) -> None:
    response = workshop.get("/")
    assert response.status_code == 200
    html = response.text
    urls = Urls(html).found
    assert [value for _, attr, value in urls if attr in ("action", "hx-post")] == []
    for hook in ('id="editor"', 'id="upload"', "<textarea", 'type="file"', 'data-action="play"'):
        assert hook not in html
    assert "data-workshop" in html and "workshop mode" in html
    # The built-in scenarios are all there.
    assert f'data-scenario="{EXAMPLE}"' in html
    assert f"/play?scenario={EXAMPLE}" in {value for _, _, value in urls}


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/play", {"data": {"scenario": load_builtin_text(EXAMPLE)}}),
        ("/validate", {"data": {"scenario": load_builtin_text(EXAMPLE)}, "headers": {"HX-Request": "true"}}),
        ("/upload", {"files": {"file": ("s.json", load_builtin_text(EXAMPLE).encode(), "application/json")}}),
        ("/upload", {}),
    ],
)
def test_workshop_refuses_the_editor(workshop: TestClient, path: str, kwargs: dict[str, object]) -> None:
    response = workshop.post(path, **kwargs)
    assert response.status_code == 403
    assert "location" not in response.headers
    assert 'data-status="403"' in response.text
    assert REFUSAL in response.text
    assert "Back to the scenarios</a>" in response.text  # not "... and the editor"


def test_workshop_still_plays_builtins_and_share_links(workshop: TestClient) -> None:
    assert workshop.get(f"{PLAY}&variant=lazy-buggy&step=8").status_code == 200
    partial = workshop.get(f"{PLAY}&variant=lazy&step=5", headers={"HX-Request": "true"})
    assert partial.status_code == 200 and partial.headers["HX-Push-Url"].startswith("/play?")
    assert workshop.get(f"/play?s={share_code()}&variant=lazy-buggy&step=8").status_code == 200
    assert workshop.get(f"/compare?s={share_code()}&step=4").status_code == 200
    assert workshop.get(f"/compare?scenario={EXAMPLE}&step=4").status_code == 200
    assert workshop.get(f"{PLAY}&variant=lazy&step=3&sw.wp_large=zap").status_code == 303
    download = workshop.get(f"/download?scenario={EXAMPLE}")
    assert download.status_code == 200 and json.loads(download.text)["title"]
    assert workshop.get(f"/export.svg?scenario={EXAMPLE}&step=4").status_code == 200


def test_workshop_mode_under_a_root_path(workshop_prefixed: TestClient) -> None:
    response = workshop_prefixed.post(f"{PREFIX}/play", data={"scenario": "{}"})
    assert response.status_code == 403 and REFUSAL in response.text
    assert outside(Urls(response.text).found, PREFIX) == []
    landing = workshop_prefixed.get(f"{PREFIX}/")
    assert outside(Urls(landing.text).found, PREFIX) == [] and 'id="editor"' not in landing.text


def test_the_editor_is_on_by_default(prefixed: TestClient, plain: TestClient) -> None:
    html = prefixed.get(f"{PREFIX}/").text
    assert 'id="editor"' in html and 'id="upload"' in html and "data-workshop" not in html
    response = plain.get("/nope")
    assert "Back to the scenarios and the editor" in response.text
