"""Accessibility: axe-core (through axe-playwright-python, which carries its own copy: no network) finds
no critical or serious violation on any page, in light and in dark; and the page's one live region stays
the same element across steps and says each step's outcome.

/docs is left out: it is the vendored Swagger UI's own markup and colours, not the app's.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from .conftest import PageProblems
from .layoutpages import LARGE_STEP, VISITS, visit
from .pagehooks import Screenshot, compare_url, expect_position, player_url

BLOCKING = ("critical", "serious")


def blocking_violations(page: Page) -> list[str]:
    results: Any = Axe().run(page)
    found = []
    for rule in results.response["violations"]:
        if rule["impact"] in BLOCKING:
            for node in rule["nodes"]:
                found.append(
                    f"{rule['impact']} {rule['id']} ({rule['help']}): {node['target']}"
                    f"\n      {node.get('failureSummary', '').strip()}"
                )
    return found


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_critical_or_serious_violation(
    page: Page, page_problems: PageProblems, screenshot: Screenshot, scheme: Literal["light", "dark"]
) -> None:
    page.emulate_media(color_scheme=scheme)
    failures: list[str] = []
    for target in VISITS:
        visit(page, page_problems, target)
        failures += [f"{target.name}: {v}" for v in blocking_violations(page)]
    # After a step by htmx too: the swapped panels, the focus kept on the Next link.
    page.goto(player_url("lazy-buggy", 4))
    page.locator('a[data-nav="next"]').focus()
    page.keyboard.press("ArrowRight")
    expect_position(page, 5, 12)
    failures += [f"player after a step: {v}" for v in blocking_violations(page)]
    screenshot(page, f"a11y-player-step-05-{scheme}")
    if failures:
        print("\n".join(failures))
    assert not failures, f"{len(failures)} critical or serious violations:\n" + "\n".join(failures)


def test_one_live_region_says_each_steps_outcome(page: Page) -> None:
    page.goto(player_url("lazy-buggy", 0))
    expect_position(page, 0, 12)
    announcer = page.locator("#announcer")
    expect(announcer).to_have_attribute("role", "status")
    expect(announcer).to_have_attribute("aria-live", "polite")
    # The error region stays as it was: an alert, hidden until a request fails.
    expect(page.locator('#request-error[role="alert"]')).to_be_hidden()
    page.evaluate("() => { window.announcerAtLoad = document.getElementById('announcer'); }")

    # kvm-mmu.md §7.2: step 1's read faults (the slow path maps the 2M page), step 2's write needs no
    # exit (the read fault mapped it writable), step 3 starts the migration (dirty logging on).
    outcomes = {
        1: ("Step 1 of 12", "reads gfn 0x210", "slow fault"),
        2: ("Step 2 of 12", "writes gfn 0x2a0", "no exit"),
        3: ("Step 3 of 12", "Migration starts", "dirty logging on"),
    }
    for step, words in outcomes.items():
        page.keyboard.press("ArrowRight")
        expect_position(page, step, 12)
        for word in words:
            expect(announcer).to_contain_text(word)
        same = page.evaluate("() => document.getElementById('announcer') === window.announcerAtLoad")
        assert same, f"the live region was replaced at step {step}"
        assert page.locator("[aria-live]").count() == 1, "one live region, not one per swapped block"

    # Predict mode's verdict is part of the outcome.
    page.goto(player_url("lazy-buggy", 4) + "&mode=predict&score=0-0")
    expect_position(page, 4, 12)
    page.locator("button[data-choice]").first.click()
    expect_position(page, 5, 12)
    verdict = page.locator("[data-feedback]").get_attribute("data-feedback")
    expect(announcer).to_contain_text("Right." if verdict == "right" else "Wrong")
    expect(announcer).to_contain_text("Step 5 of 12")

    # In /compare the outcome is what differs: §7.2 step 5's write faults differently under each preset
    # (zap and lazy: slow, lazy-buggy: fast).
    page.goto(compare_url(("zap", "lazy-buggy", "lazy"), 4))
    expect_position(page, 4, 12)
    page.keyboard.press("ArrowRight")
    expect_position(page, 5, 12)
    expect(announcer).to_contain_text("Step 5 of 12")
    expect(announcer).to_contain_text(re.compile(r"the presets differ in [^.]*\bfaults\b"))


_RING = """(el) => {
    const style = getComputedStyle(el);
    return [style.outlineStyle, parseFloat(style.outlineWidth), style.outlineColor];
}"""


def test_focus_ring_shows_on_a_changed_spte(page: Page) -> None:
    """A changed spte has an amber outline of its own; the focus ring must replace it, not lose to it."""
    page.goto(player_url("lazy-buggy", LARGE_STEP))
    expect_position(page, LARGE_STEP, 12)
    changed = page.locator('[data-spte][data-changed="1"] > [data-inspect]')
    assert changed.count() >= 1  # §7.2 step 5: the write changed L2[1]
    link = changed.first
    _, _, changed_colour = link.evaluate(_RING)
    page.keyboard.press("Tab")  # keyboard use: the browser shows :focus-visible from now on
    link.focus()
    assert link.evaluate("(el) => el.matches(':focus-visible')")
    style, width, colour = link.evaluate(_RING)
    assert style == "solid" and width >= 3, (style, width)
    assert colour != changed_colour, f"the focus ring has the colour of 'changed': {colour}"
