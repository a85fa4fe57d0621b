"""Stepping the player in place: no step moves the page's scroll position, keys pressed faster than the
server answers are all counted and replayed by htmx (never a whole page load), the tab title and the
slider follow the step shown, and a request htmx could not complete is said on the page."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import Page, Route, expect

from app.main import error_response

from .conftest import PageProblems
from .pagehooks import expect_position, player_url
from .worked_example import STEPS

PRESET = "lazy"

# Set on `window` before stepping: a whole page load would lose it, an htmx swap keeps it.
MARK = "window.__steppedInPlace = 'kept'"
MARKED = "window.__steppedInPlace === 'kept'"

# Where the trace panel's top lands below the sticky header, and what is left of the viewport under it.
_TRACE_BOX = """() => {
    const panel = document.querySelector('[data-panel="trace"]');
    const header = document.querySelector('header.site');
    const box = panel.getBoundingClientRect();
    const below = header.getBoundingClientRect().bottom;
    return {top: box.top, bottom: box.bottom, below: below, height: window.innerHeight};
}"""


def scroll_to_trace(page: Page) -> float:
    """Scroll so that the trace panel starts just under the sticky header; returns window.scrollY."""
    page.evaluate(
        """() => {
            const panel = document.querySelector('[data-panel="trace"]');
            const below = document.querySelector('header.site').getBoundingClientRect().bottom;
            window.scrollBy(0, panel.getBoundingClientRect().top - below - 8);
        }"""
    )
    scrolled: float = page.evaluate("window.scrollY")
    assert scrolled > 0, "the page at this step is too short to scroll to its trace panel"
    return scrolled


def expect_trace_in_view(page: Page) -> None:
    box = page.evaluate(_TRACE_BOX)
    # Some of the panel is on screen below the header (it may have grown or shrunk with the step).
    assert box["top"] < box["height"] and box["bottom"] > box["below"], box


def test_stepping_keeps_the_scroll_position(page: Page) -> None:
    page.goto(player_url(PRESET, 4))
    expect_position(page, 4, STEPS)
    scrolled = scroll_to_trace(page)
    page.evaluate(MARK)

    page.keyboard.press("ArrowRight")
    expect_position(page, 5, STEPS)
    assert page.evaluate("window.scrollY") == scrolled
    expect_trace_in_view(page)

    page.locator('a[data-nav="next"]').click()
    expect_position(page, 6, STEPS)
    assert page.evaluate("window.scrollY") == scrolled

    page.locator('a[data-nav="prev"]').click()
    expect_position(page, 5, STEPS)
    assert page.evaluate("window.scrollY") == scrolled

    # A step chip in the narration's window (a click as a script makes it: the test's own click would
    # first scroll the chip into view).
    page.locator('.step-window a[href*="step=3"]').evaluate("chip => chip.click()")
    expect_position(page, 3, STEPS)
    assert page.evaluate("window.scrollY") == scrolled

    # The slider, moved with its own arrow key.
    page.locator("#step-slider").focus()
    page.keyboard.press("ArrowRight")
    expect_position(page, 4, STEPS)
    assert page.evaluate("window.scrollY") == scrolled
    expect_trace_in_view(page)
    assert page.evaluate(MARKED)


def burst(page: Page, key: str, times: int) -> None:
    """Press `key` `times` times without waiting for anything in between."""
    for _ in range(times):
        page.keyboard.press(key)


def test_a_burst_of_arrow_keys_moves_by_every_key_in_place(page: Page) -> None:
    page.goto(player_url(PRESET, 1))
    expect_position(page, 1, STEPS)
    page.evaluate(MARK)

    burst(page, "ArrowRight", 5)
    expect_position(page, 6, STEPS)
    assert page.evaluate(MARKED), "the page was loaded again while stepping"

    burst(page, "ArrowLeft", 5)
    expect_position(page, 1, STEPS)
    assert page.evaluate(MARKED), "the page was loaded again while stepping"

    # Keys one way and the other cancel out.
    burst(page, "ArrowRight", 4)
    burst(page, "ArrowLeft", 2)
    expect_position(page, 3, STEPS)
    assert page.evaluate(MARKED)


def test_home_and_end_drop_the_steps_queued_before_them(page: Page) -> None:
    page.goto(player_url(PRESET, 5))
    expect_position(page, 5, STEPS)
    page.evaluate(MARK)

    # Steps before Home go nowhere; the two after it count from step 0.
    burst(page, "ArrowRight", 3)
    page.keyboard.press("Home")
    burst(page, "ArrowRight", 2)
    expect_position(page, 2, STEPS)

    burst(page, "ArrowLeft", 2)
    page.keyboard.press("End")
    page.keyboard.press("ArrowLeft")
    expect_position(page, STEPS - 1, STEPS)

    # A jump to where the player already is goes on to the steps after it.
    page.keyboard.press("End")
    burst(page, "ArrowLeft", 1)
    page.keyboard.press("End")
    burst(page, "ArrowLeft", 3)
    expect_position(page, STEPS - 3, STEPS)
    assert page.evaluate(MARKED)


def test_a_held_key_stops_at_the_end(page: Page) -> None:
    page.goto(player_url(PRESET, STEPS - 2))
    expect_position(page, STEPS - 2, STEPS)
    burst(page, "ArrowRight", 6)
    expect_position(page, STEPS, STEPS)
    # Nothing left queued: one key back is one step back.
    page.keyboard.press("ArrowLeft")
    expect_position(page, STEPS - 1, STEPS)


def test_title_and_slider_follow_the_step(page: Page) -> None:
    page.goto(player_url(PRESET, 2))
    expect_position(page, 2, STEPS)
    slider = page.locator("#step-slider")
    expect(page).to_have_title(re.compile(rf"step 2/{STEPS}\b"))

    page.keyboard.press("ArrowRight")
    expect_position(page, 3, STEPS)
    expect(page).to_have_title(re.compile(rf"step 3/{STEPS}\b"))
    expect(slider).to_have_value("3")
    expect(slider).to_have_attribute("aria-valuetext", f"step 3 of {STEPS}")

    # The slider asks, so its own block is not swapped: its label follows all the same.
    slider.focus()
    page.keyboard.press("ArrowRight")
    expect_position(page, 4, STEPS)
    expect(page).to_have_title(re.compile(rf"step 4/{STEPS}\b"))
    expect(slider).to_have_attribute("aria-valuetext", f"step 4 of {STEPS}")

    page.locator('a[data-nav="last"]').click()
    expect_position(page, STEPS, STEPS)
    expect(page).to_have_title(re.compile(rf"step {STEPS}/{STEPS}\b"))
    expect(slider).to_have_value(str(STEPS))
    expect(slider).to_have_attribute("aria-valuetext", f"step {STEPS} of {STEPS}")


TOO_MUCH = "too much work for this server: showing step 4 needs about 9,999 units of work"
STEP_4 = re.compile(r"/play\?.*\bstep=4\b")


class Refuser:
    """Answers the requests for step 4 with `answer` while armed; passes every other request on. Routed
    from before the page loads, so that no request can slip past a route still being set up."""

    def __init__(self, page: Page, answer: Callable[[Route], None]) -> None:
        self.armed = False
        self.answer = answer
        page.route("**/*", self.route)

    def route(self, route: Route) -> None:
        if self.armed and STEP_4.search(route.request.url):
            self.answer(route)
        else:
            route.continue_()


def accept_errors(problems: PageProblems, *marks: str) -> None:
    """Chromium logs a response with an error status or a failed load as a console error, and htmx logs
    the error events it raises: the expected outcome here, taken off the list the `page` fixture fails
    on (at least one must be there)."""
    expected = [seen for seen in problems.seen if any(mark in seen for mark in marks)]
    assert expected, problems.seen
    for seen in expected:
        problems.seen.remove(seen)


def test_a_refused_step_is_said_on_the_page(page: Page, page_problems: PageProblems) -> None:
    refusal = bytes(error_response("/play", 413, TOO_MUCH).body)
    refuser = Refuser(
        page, lambda route: route.fulfill(status=413, content_type="text/html; charset=utf-8", body=refusal)
    )
    page.goto(player_url(PRESET, 3))
    expect_position(page, 3, STEPS)
    page.evaluate(MARK)
    alert = page.locator("#request-error[role=alert]")
    expect(alert).to_be_hidden()

    refuser.armed = True
    burst(page, "ArrowRight", 3)
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("413 Too large")
    expect(alert).to_contain_text(TOO_MUCH)
    expect(alert).to_have_attribute("data-request-error", "413")
    # The player stays where it was, and the keys queued behind the refusal are dropped.
    expect_position(page, 3, STEPS)
    assert page.evaluate(MARKED)

    refuser.armed = False
    page.keyboard.press("ArrowRight")
    expect_position(page, 4, STEPS)
    expect(alert).to_be_hidden()
    assert page.evaluate(MARKED)
    accept_errors(page_problems, "413")


def test_an_unreachable_server_is_said_on_the_page(page: Page, page_problems: PageProblems) -> None:
    refuser = Refuser(page, lambda route: route.abort())
    page.goto(player_url(PRESET, 3))
    expect_position(page, 3, STEPS)
    page.evaluate(MARK)
    refuser.armed = True
    page.keyboard.press("ArrowRight")
    alert = page.locator("#request-error[role=alert]")
    expect(alert).to_contain_text("could not be reached")
    expect_position(page, 3, STEPS)
    assert page.evaluate(MARKED)
    page.locator('[data-action="dismiss-error"]').click()
    expect(alert).to_be_hidden()
    accept_errors(page_problems, "ERR_FAILED", "htmx:sendError", "htmx:afterRequest")
