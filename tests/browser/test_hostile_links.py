"""Hostile share links in a real browser: a scenario's free text never runs, loads or navigates anything.

At a workshop, 30 to 60 people open links that others pasted in a chat, and a share code holds the whole
scenario: its title, its Markdown description and its notes are whatever the link's author wrote. Here a
scenario carries the classic payloads in all three (script tags, event handlers, `javascript:` and
`data:` links, raw HTML blocks, attribute-breaking quotes, htmx attributes, a meta refresh, a style sheet
link, CSS `url()`), and every place that shows its text is opened: the player at several steps (htmx
swaps included), predict mode, presentation mode, compare, the editor's messages, the error pages that
quote parameters, and the exported SVG opened on its own, without the app's Content-Security-Policy.

Each page must show the payloads as text and have run nothing: `window.__pwned` stays undefined, no dialog
opens, no request leaves 127.0.0.1 (every request is routed: one to anywhere else is recorded and
refused) and no request goes to a URL a payload names. The pages are not merely saved by the CSP: a
refused script or image is a `securitypolicyviolation` event (recorded here) and a console error (which
the `page` fixture turns into a failure), so a test passes only if nothing even tried to run or load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest
from playwright.sync_api import Dialog, Locator, Page, Route, expect

from engine.codec import encode_scenario

from .conftest import PageProblems
from .pagehooks import expect_position

WORKED_EXAMPLE_JSON = Path(__file__).resolve().parents[2] / "scenarios" / "worked-example.json"

PWN = "window.__pwned=1"
# Loopback paths the payloads point at: a request to any of them means a payload was live.
INJECTED = "/__injected"
PAYLOADS = [
    f"<script>{PWN}</script>",
    f'<img src=x onerror="{PWN}">',
    "<img src=x onerror=alert(document.domain)>",
    f'<svg onload="{PWN}"><circle r="1"/></svg>',
    f'"><script>{PWN}</script>',
    f"' autofocus onfocus='{PWN}' x='",
    f'" autofocus onfocus="{PWN}" x="',
    f'<div hx-get="{INJECTED}-hx" hx-trigger="load" hx-target="body" hx-swap="outerHTML">hx</div>',
    f'<button hx-on:click="{PWN}" hx-on::load="{PWN}">hx-on</button>',
    f'<meta http-equiv="refresh" content="0;url={INJECTED}-refresh">',
    '<link rel="stylesheet" href="http://evil.example/x.css">',
    f"<style>body{{background:url({INJECTED}-css)}}</style>",
    '<p style="background:url(http://evil.example/p.png)">styled</p>',
    f"</textarea><script>{PWN}</script>",
    f"</title><script>{PWN}</script>",
    "{{ 7*7 }} {% raw %}",
]
MARKDOWN = [
    f"[js link](javascript:{PWN})",
    "[data link](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    f"[spaced js](java\tscript:{PWN})",
    f"<javascript:{PWN}>",
    f"<div>\n<script>{PWN}</script>\n</div>",
    f'<iframe src="{INJECTED}-iframe"></iframe>',
    "![tracking pixel](http://evil.example/pixel.png)",
    "[a web link](https://example.org/ok)",
]
# The attribute and tag breakers, within the 200 characters a title may hold.
TITLE = "Hostile " + " ".join(PAYLOADS[i] for i in (0, 1, 4, 5))
NOTES = [" ".join(PAYLOADS[0:8]), " ".join(PAYLOADS[8:]), " ".join(PAYLOADS[3:11])]
DESCRIPTION = "\n\n".join(PAYLOADS + MARKDOWN)

VARIANT = "lazy"
# The worked example with a note after steps 0, 2 (migrate_begin) and 6 (the last write before the first
# round): the player shows note N at the step after it, predict mode asks nothing at it.
NOTE_AT = {2: 0, 5: 1, 10: 2}  # player step showing the note → which note


def hostile_scenario() -> dict[str, Any]:
    scenario: dict[str, Any] = json.loads(WORKED_EXAMPLE_JSON.read_text(encoding="utf-8"))
    scenario["title"] = TITLE
    scenario["description"] = DESCRIPTION
    steps = list(scenario["steps"])
    for after, note in sorted(zip((0, 2, 6), NOTES, strict=True), reverse=True):
        steps.insert(after + 1, {"op": "note", "text": note})
    scenario["steps"] = steps
    return scenario


SCENARIO = hostile_scenario()
STEPS = len(SCENARIO["steps"])
CODE = encode_scenario(SCENARIO)


def play_url(step: int, **extra: str) -> str:
    return "/play?" + urlencode({"s": CODE, "variant": VARIANT, "step": step, **extra})


# Run in every page: what must not be there, whatever the text. Our own markup has no event handler, no
# inline style or script, no frame, image or <base>; scripts and style sheets come from /static/.
_AUDIT = """() => {
    const problems = [];
    const own = (url) => {
        try { const u = new URL(url, location.href); return u.origin === location.origin; }
        catch (e) { return false; }
    };
    for (const el of document.querySelectorAll('*')) {
        for (const attr of el.attributes) {
            const name = attr.name.toLowerCase();
            if (name.startsWith('on') || name.includes('hx-on') || name === 'style') {
                problems.push(`${el.tagName} has ${name}`);
            }
            if (['href', 'src', 'action', 'formaction', 'xlink:href', 'hx-get', 'hx-post'].includes(name)
                    && /^\\s*(javascript|data|vbscript):/i.test(attr.value)) {
                problems.push(`${el.tagName} ${name}=${attr.value.slice(0, 60)}`);
            }
            if (name.startsWith('hx-') && ['hx-get', 'hx-post'].includes(name) && !own(attr.value)) {
                problems.push(`${el.tagName} ${name} leaves the app`);
            }
        }
    }
    for (const el of document.querySelectorAll('script')) {
        if (!el.src || !own(el.src) || !new URL(el.src).pathname.startsWith('/static/')) {
            problems.push('script ' + el.outerHTML.slice(0, 80));
        }
    }
    for (const el of document.querySelectorAll('link')) {
        if (!own(el.href) || !new URL(el.href).pathname.startsWith('/static/')) {
            problems.push('link ' + el.outerHTML.slice(0, 80));
        }
    }
    const markup = ['http://www.w3.org/1999/xhtml', 'http://www.w3.org/2000/svg'];
    const forbidden = new Set(['iframe', 'frame', 'object', 'embed', 'base', 'style', 'img', 'image',
        'video', 'audio', 'source', 'foreignobject', 'use', 'animate', 'set']);
    for (const el of document.querySelectorAll('*')) {
        const name = el.localName.toLowerCase();
        if (!markup.includes(el.namespaceURI)) continue;  // the SVG's RDF metadata is inert data
        if (forbidden.has(name) || (name === 'meta' && el.hasAttribute('http-equiv'))
                || (name === 'svg' && el !== document.documentElement)) {
            problems.push('element ' + el.outerHTML.slice(0, 80));
        }
    }
    for (const el of document.querySelectorAll('form[action]')) {
        if (!own(el.getAttribute('action'))) problems.push('form to ' + el.getAttribute('action'));
    }
    for (const el of document.querySelectorAll('a[href]')) {
        const url = new URL(el.href, location.href);
        if (url.origin !== location.origin) {
            if (!['http:', 'https:'].includes(url.protocol)) problems.push('link to ' + el.href);
            if (!/\\bnoopener\\b/.test(el.rel) || !/\\bnoreferrer\\b/.test(el.rel)) {
                problems.push('outside link without rel noopener noreferrer: ' + el.href);
            }
        }
    }
    return problems;
}"""

# Recorded from the first script of every document, before the page's own (Playwright's init scripts
# run outside the page's CSP): the CSP's refusals, which would mean a payload got as far as trying.
_WATCH = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) => {
    window.__violations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@dataclass
class Guard:
    """What the pages of one test tried: requests, dialogs; `check` asserts that nothing ran or left."""

    page: Page
    outside: list[str] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def route(self, route: Route) -> None:
        url = urlsplit(route.request.url)
        if url.scheme not in ("http", "https") or url.hostname != "127.0.0.1":
            self.outside.append(route.request.url)
            route.abort()
            return
        if url.path.startswith(INJECTED) or url.path == "/x":
            self.injected.append(route.request.url)
            route.abort()
            return
        route.continue_()

    def on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def check(self, where: str = "") -> None:
        """Nothing ran, opened, loaded or was refused on the page shown now, nor since the test began."""
        page = self.page
        where = where or page.url[:120]
        assert page.evaluate("typeof window.__pwned") == "undefined", f"a payload ran on {where}"
        assert self.dialogs == [], f"dialogs opened on {where}: {self.dialogs}"
        assert self.outside == [], f"requests left 127.0.0.1 from {where}: {self.outside}"
        assert self.injected == [], f"requests to payload URLs from {where}: {self.injected}"
        violations = page.evaluate("window.__violations || []")
        assert violations == [], f"the CSP had to refuse something on {where}: {violations}"
        problems = page.evaluate(_AUDIT)
        assert problems == [], f"live markup from the text on {where}: {problems}"


@pytest.fixture
def guard(page: Page) -> Iterator[Guard]:
    watch = Guard(page)
    page.context.route("**/*", watch.route)
    page.context.add_init_script(_WATCH)
    page.on("dialog", watch.on_dialog)
    yield watch
    watch.check("the last page")


def accept_document_status(problems: PageProblems, status: int, url: str) -> None:
    """Chromium logs a document answered with an error status as a console error; the error pages are
    meant to be answered so, so that one message (for the document itself, nothing it loaded) is expected
    and taken off the list the `page` fixture fails on."""
    expected = re.compile(
        rf"console error: Failed to load resource: the server responded with a status of {status} .*"
        rf"\(at {re.escape(url)}:0\)"
    )
    matching = [seen for seen in problems.seen if expected.fullmatch(seen)]
    assert len(matching) == 1, problems.seen
    problems.seen.remove(matching[0])


def expect_text(locator: Locator, *fragments: str) -> None:
    for fragment in fragments:
        expect(locator).to_contain_text(fragment)


# ---------------------------------------------------------------------------------------------------------
# The player


def test_player_shows_title_description_and_notes_as_text(page: Page, guard: Guard) -> None:
    page.goto(play_url(0))
    expect_position(page, 0, STEPS)
    guard.check()
    expect(page.locator("h1.scenario-title")).to_have_text(TITLE)
    assert page.title().startswith(TITLE + " · step 0/")
    description = page.locator("details.description .md")
    expect(description).to_be_visible()  # open at step 0
    expect_text(description, *PAYLOADS)
    expect_text(description, f"[js link](javascript:{PWN})", "[data link](data:text/html", "<iframe src=")
    expect(description.locator("*:not(p):not(a)")).to_have_count(0)  # paragraphs and links, nothing else
    links = description.locator("a")
    expect(links).to_have_count(2)  # the web link, and the image's link: no javascript:, data:, image
    expect(links.nth(0)).to_have_attribute("href", "http://evil.example/pixel.png")
    expect(links.nth(1)).to_have_attribute("href", "https://example.org/ok")
    for n in range(2):
        expect(links.nth(n)).to_have_attribute("rel", "noopener noreferrer nofollow")

    # Step with the keyboard: htmx swaps the panels in, notes included.
    for step in range(1, 11):
        page.keyboard.press("ArrowRight")
        expect_position(page, step, STEPS)
        if step in NOTE_AT:
            expect(page.locator('[data-panel="narration"] .note-text')).to_have_text(NOTES[NOTE_AT[step]])
        guard.check(f"step {step} (htmx)")
    page.keyboard.press("?")
    expect(page.locator("#help")).to_be_visible()
    guard.check()


@pytest.mark.parametrize("step", sorted(NOTE_AT))
def test_player_loaded_at_a_note(page: Page, guard: Guard, step: int) -> None:
    page.goto(play_url(step))
    expect_position(page, step, STEPS)
    expect(page.locator('[data-panel="narration"] .note-text')).to_have_text(NOTES[NOTE_AT[step]])
    expect(page.locator("h1.scenario-title")).to_have_text(TITLE)
    guard.check()


def test_predict_mode_shows_notes_and_explanations_as_text(page: Page, guard: Guard) -> None:
    page.goto(play_url(0, mode="predict", score="0-0"))
    expect_position(page, 0, STEPS)
    guard.check()
    for step in range(0, 6):
        panel = page.locator("#predict")
        expect(panel).to_have_attribute("data-predict-step", str(step))
        guard.check(f"predict mode, step {step}")
        if step + 1 in NOTE_AT:  # asks nothing about a note: shows it, and a continue link
            expect(panel.locator('[data-question="none"] .note-text')).to_have_text(NOTES[NOTE_AT[step + 1]])
            page.locator('a[data-action="predict-continue"]').click()
        else:
            page.locator('button[name="answer"][data-choice-key="a"]').click()
            expect(page.locator("#predict [data-feedback]")).to_have_count(1)
            expect(page.locator("#predict .explanation")).not_to_be_empty()
        expect_position(page, step + 1, STEPS)
    guard.check()


def test_presentation_mode(page: Page, guard: Guard) -> None:
    page.goto(play_url(1, present="1"))
    expect_position(page, 1, STEPS)
    expect(page.locator("body.is-present")).to_have_count(1)
    for key in "2345678":
        page.keyboard.press(key)
        expect(page.locator(f'#focus-picker a[data-focus-key="{key}"]')).to_have_attribute(
            "aria-current", "true"
        )
        guard.check(f"presentation mode, panel {key}")
    page.keyboard.press("ArrowRight")
    expect_position(page, 2, STEPS)
    expect(page.locator('[data-panel="narration"] .note-text')).to_have_text(NOTES[0])
    guard.check()


def test_compare_view(page: Page, guard: Guard) -> None:
    page.goto("/compare?" + urlencode({"s": CODE, "step": 4}))
    expect_position(page, 4, STEPS)
    expect(page.locator("h1.scenario-title")).to_have_text(TITLE)
    guard.check()
    page.keyboard.press("ArrowRight")
    expect_position(page, 5, STEPS)
    guard.check()


# ---------------------------------------------------------------------------------------------------------
# The editor


def edit(editor: Locator, text: str) -> None:
    """Replace the editor's text as a person pasting it would: the paste, a key, then leaving the field."""
    editor.fill(text)
    editor.press("End")
    editor.blur()


def test_editor_quotes_hostile_input_as_text(page: Page, guard: Guard, page_problems: PageProblems) -> None:
    page.goto("/")
    editor = page.locator('form#editor textarea[name="scenario"]')
    status = page.locator("#editor-status")
    op = PAYLOADS[0] + PAYLOADS[4]
    bad = dict(SCENARIO, steps=[{"op": op}])
    text = json.dumps(bad, indent=1)

    edit(editor, text)  # the live check: an htmx swap of the status
    expect(status).to_have_attribute("data-valid", "0")
    expect(status.locator("[data-error]")).to_contain_text(f"unknown op '{PAYLOADS[0]}")
    guard.check("the editor's live check")

    page.locator('button[data-action="play"]').click()  # POST /play: the landing page again, with a 422
    expect(page.locator("#editor-status [data-error]")).to_contain_text(f"unknown op '{PAYLOADS[0]}")
    expect(page.locator('form#editor textarea[name="scenario"]')).to_have_value(text)
    accept_document_status(page_problems, 422, page.url)
    guard.check("the editor's refusal")

    # A valid scenario quotes its title in the status, then plays.
    good = json.dumps(SCENARIO, indent=1)
    editor = page.locator('form#editor textarea[name="scenario"]')
    edit(editor, good)
    expect(status).to_have_attribute("data-valid", "1")
    expect(status).to_contain_text(f"Valid: {TITLE}")
    guard.check("the editor's summary")
    page.locator('button[data-action="play"]').click()
    expect_position(page, 0, STEPS)
    expect(page.locator("h1.scenario-title")).to_have_text(TITLE)
    guard.check()


# ---------------------------------------------------------------------------------------------------------
# Error pages that quote what the URL said

X = f'"><script>{PWN}</script><img src=x onerror=alert(1)>'
ERRORS = [
    (f"/play?s={quote(X)}", 400),
    (f"/play?scenario={quote(X)}", 404),
    (f"/play?scenario=worked-example&step={quote(X)}", 400),
    (f"/play?scenario=worked-example&variant={quote(X)}", 400),
    (f"/play?scenario=worked-example&policy={quote(X)}", 400),
    (f"/play?scenario=worked-example&spte={quote(X)}", 400),
    (f"/play?scenario=worked-example&mode=predict&score={quote(X)}", 400),
    (f"/play?scenario=worked-example&present=1&focus={quote(X)}", 400),
    (f"/compare?scenario=worked-example&variants={quote(X)}", 400),
    (f"/export.svg?scenario=worked-example&step={quote(X)}", 400),
    (f"/{quote(X)}", 404),
]


@pytest.mark.parametrize(
    ("url", "status"), ERRORS, ids=[url.split("?")[0] + str(n) for n, (url, _) in enumerate(ERRORS)]
)
def test_error_pages_quote_parameters_as_text(
    page: Page, guard: Guard, page_problems: PageProblems, url: str, status: int
) -> None:
    response = page.goto(url)
    assert response is not None and response.status == status
    accept_document_status(page_problems, status, response.url)
    message = page.locator("[data-error-message]")
    expect(message).to_contain_text("<script>")
    guard.check()


# ---------------------------------------------------------------------------------------------------------
# The SVG export, opened on its own


@pytest.mark.parametrize("with_csp", [False, True], ids=["as-a-file", "as-served"])
def test_exported_svg_is_inert(page: Page, guard: Guard, with_csp: bool) -> None:
    """The picture is passed around and opened outside the app: served here without the app's CSP (as a
    file would be), it must still run nothing and fetch nothing, and show the title as text."""
    response = page.request.get("/export.svg?" + urlencode({"s": CODE, "variant": VARIANT, "step": 2}))
    assert response.status == 200
    body = response.body()
    headers = {"content-type": "image/svg+xml"}
    if with_csp:
        headers["content-security-policy"] = response.headers["content-security-policy"]
    origin = urlsplit(response.url)
    url = f"{origin.scheme}://{origin.netloc}/__hostile__/step-2.svg"
    page.route(url, lambda route: route.fulfill(status=200, headers=headers, body=body))
    page.goto(url)
    assert page.evaluate("document.documentElement.namespaceURI") == "http://www.w3.org/2000/svg"
    tags = set(page.evaluate("[...document.querySelectorAll('*')].map(e => e.localName)"))
    assert not tags & {"script", "foreignObject", "style", "image", "use", "iframe", "animate", "set"}, tags
    texts = " ".join(page.locator("text").all_text_contents())
    assert PAYLOADS[0] in texts
    share = page.locator("a[data-share]")
    expect(share).to_have_count(1)
    # The server has no public URL and no trusted proxy here: the link is the app's path alone, never
    # an origin taken from the request's Host (docs/contract-extensions.md, Absolute URLs).
    assert re.match(r"/play\?s=1\.", share.get_attribute("href") or "")
    guard.check("the exported SVG")
