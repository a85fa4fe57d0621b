"""A big step in the browser: after the write storm (512 pages written, one 4K spte each) the tree, the
reverse maps and the TLB each fit in a screenful or two, their collapsed lines say the right counts and open
in place, and the trace shows each caller before the functions it called, indented under it."""

from __future__ import annotations

import json

from playwright.sync_api import Browser, Page, expect

from scenarios import load_builtin_text

from .conftest import LiveServer
from .pagehooks import expect_position, player_url

SCENARIO = "write-storm-2m"
STEPS = len(json.loads(load_builtin_text(SCENARIO))["steps"])
STORM = 4  # the page after the step that writes 0x200-0x3ff
# A panel taller than this is a page to scroll through, not a panel to read.
TALL_PX = 2_000


def content_height(page: Page, panel: str) -> int:
    """The panel's full height, as if nothing capped it or scrolled it."""
    height: int = page.locator(f'[data-panel="{panel}"]').evaluate("el => el.scrollHeight")
    return height


def check_storm_page(page: Page) -> None:
    for panel in ("tree", "rmaps", "tlb"):
        assert content_height(page, panel) < TALL_PX, panel

    tree = page.locator('[data-panel="tree"]')
    # The step's first fault, at 0x200, is the walk shown: its leaf stays drawn on its own, in view.
    walked = tree.locator('[data-spte][data-walk="1"][data-sp-gfn="0x200"][data-index="0x0"]')
    expect(walked).to_be_visible()
    leaves = tree.locator('[data-collapsed][data-collapsed-range="0x1-0x1ff"]')
    expect(leaves).to_have_count(1)
    expect(leaves).to_have_attribute("data-collapsed", "511")
    summary = leaves.locator("summary")
    expect(summary).to_contain_text("511 × new 4K leaves")
    expect(summary).to_contain_text("gfns 0x201–0x3ff")
    # Closed, its rows take no room but are in the page; opened in place, they show.
    first = leaves.locator('[data-spte][data-index="0x1"]')
    expect(first).to_have_count(1)
    expect(first).to_be_hidden()
    summary.click()
    expect(first).to_be_visible()
    expect(first).to_have_attribute("data-changed", "1")

    rmap = page.locator('[data-panel="rmaps"] tr[data-collapsed]')
    expect(rmap).to_have_count(1)
    expect(rmap).to_have_attribute("data-collapsed", "512")
    expect(rmap).to_contain_text("L1[0x0–0x1ff] in table 0x200, writable")
    tlb = page.locator('[data-panel="tlb"] tr[data-collapsed]')
    expect(tlb).to_have_count(1)
    expect(tlb).to_have_attribute("data-collapsed", "512")
    expect(tlb).to_contain_text("0x200–0x3ff")

    events = page.locator('[data-panel="trace"] li[data-event]')
    expect(events.nth(0)).to_have_attribute("data-event", "guest_access")
    expect(events.nth(0)).to_have_attribute("data-depth", "0")
    expect(events.nth(1)).to_have_attribute("data-event", "handle_ept_violation")
    expect(events.nth(1)).to_have_attribute("data-depth", "1")
    expect(events.nth(2)).to_have_attribute("data-event", "tdp_page_fault")
    expect(events.nth(2)).to_have_attribute("data-depth", "2")
    lefts = [events.nth(i).bounding_box() for i in range(3)]
    assert all(box is not None for box in lefts)
    xs = [box["x"] for box in lefts if box is not None]
    assert xs[0] < xs[1] < xs[2], xs  # each callee indented under its caller
    folded = page.locator('[data-panel="trace"] li[data-event="guest_access"][data-count]')
    expect(folded).to_have_count(1)
    expect(folded).to_contain_text("×")


def test_a_write_storm_step_is_short_and_says_its_counts(browser: Browser, live_server: LiveServer) -> None:
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1366, "height": 768})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(player_url("lazy", STORM, SCENARIO))
        expect_position(page, STORM, STEPS)
        check_storm_page(page)
        assert not errors, errors
    finally:
        context.close()


def test_the_same_step_reached_by_stepping_reads_the_same(page: Page) -> None:
    page.goto(player_url("lazy", STORM - 1, SCENARIO))
    expect_position(page, STORM - 1, STEPS)
    page.locator('a[data-nav="next"]').first.click()
    expect_position(page, STORM, STEPS)
    check_storm_page(page)
