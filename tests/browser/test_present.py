"""Presentation mode on a projector: the type scales with the screen, the notes, the page tables and the
dirty bitmap are on screen together whatever panel is picked (so the writable 2M spte and the page it
loses are seen at once), and clicking an spte opens the inspector as in the normal player."""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page, expect

from .layoutpages import LARGE_STEP
from .pagehooks import Screenshot, expect_position, player_url
from .worked_example import LARGE_RW_D, STEPS

PRESENT = player_url("lazy-buggy", LARGE_STEP) + "&present=1"
PANELS = ("tree", "bitmap", "trace", "counters", "violations", "inspector", "rmaps", "tlb")


def in_viewport(page: Page, locator: Locator) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    assert box is not None and size is not None
    return (
        box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= size["width"] + 0.5
        and box["y"] + box["height"] <= size["height"] + 0.5
    )


def body_font_px(page: Page) -> float:
    return float(page.evaluate("() => parseFloat(getComputedStyle(document.body).fontSize)"))


def test_projector_shows_tree_and_bitmap_together_in_large_type(page: Page, screenshot: Screenshot) -> None:
    page.set_viewport_size({"width": 1024, "height": 768})
    page.goto(PRESENT)
    expect_position(page, LARGE_STEP, STEPS)
    small = body_font_px(page)
    tree, bitmap = page.locator('[data-panel="tree"]'), page.locator('[data-panel="bitmap"]')
    expect(tree).to_be_visible()
    expect(bitmap).to_be_visible()
    tree_box, bitmap_box = tree.bounding_box(), bitmap.bounding_box()
    assert tree_box and bitmap_box
    assert bitmap_box["y"] >= tree_box["y"] + tree_box["height"], "below 1280 px the bitmap is under the tree"
    screenshot(page, "present-1024x768")

    page.set_viewport_size({"width": 1920, "height": 1080})
    for panel in PANELS:
        page.goto(PRESENT + ("" if panel == "tree" else f"&focus={panel}"))
        expect_position(page, LARGE_STEP, STEPS)
        expect(page.locator(".panel[data-focused]")).to_have_attribute("data-panel", panel)
        # §7.2 step 5 under lazy-buggy: the 2M spte is writable while logged, and the write to 0x250
        # set no dirty bit: both on screen, whole, side by side.
        large_spte = page.locator('[data-spte][data-large="1"]').first
        lost = page.locator('[data-dirty-gfn="0x250"][data-written="1"]')
        expect(large_spte).to_be_visible()
        expect(lost).to_be_visible()
        spte_link = large_spte.locator("[data-inspect]")
        assert in_viewport(page, spte_link), f"2M spte off screen with focus={panel}"
        assert in_viewport(page, lost), f"the lost page's cell off screen with focus={panel}"
        expect(page.locator('[data-panel="narration"]')).to_be_visible()
        if panel not in ("tree", "bitmap"):
            expect(page.locator(".panel[data-focused]")).to_be_visible()
    page.goto(PRESENT)
    expect_position(page, LARGE_STEP, STEPS)
    tree_box, bitmap_box = tree.bounding_box(), bitmap.bounding_box()
    assert tree_box and bitmap_box
    assert bitmap_box["x"] >= tree_box["x"] + tree_box["width"], "from 1280 px they stand side by side"
    large = body_font_px(page)
    assert large >= 22, f"body type {large}px on a 1920×1080 projector"
    assert large > small, f"the type does not scale: {large}px at 1920, {small}px at 1024"
    cell = page.locator("[data-dirty-gfn]").first.bounding_box()
    assert cell and cell["width"] >= 14, f"bitmap cells {cell} too small to read from the back"
    screenshot(page, "present-1920x1080")


def test_clicking_an_spte_opens_the_inspector(page: Page, screenshot: Screenshot) -> None:
    page.goto(PRESENT)
    expect_position(page, LARGE_STEP, STEPS)
    inspector = page.locator('[data-panel="inspector"]')
    expect(inspector).to_be_hidden()
    page.locator('[data-spte][data-large="1"] [data-inspect]').first.click()
    expect(page).to_have_url(re.compile(r"[?&]spte=2:0:1(&|$)"))
    expect(inspector).to_be_visible()
    # L2[1] after §7.2 step 5 under lazy-buggy: writable again, D set (§1.3's constant).
    expect(inspector).to_contain_text(LARGE_RW_D)
    expect(inspector.locator('tr[data-bit="W"]')).to_be_visible()
    assert re.search(r"[?&]present=1", page.url)
    # The tables and the bitmap stay on screen beside it.
    expect(page.locator('[data-panel="tree"]')).to_be_visible()
    expect(page.locator('[data-panel="bitmap"]')).to_be_visible()
    screenshot(page, "present-inspector")
    # Stepping keeps it open, still in presentation mode.
    page.keyboard.press("ArrowRight")
    expect_position(page, LARGE_STEP + 1, STEPS)
    expect(inspector).to_be_visible()
