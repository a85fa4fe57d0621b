"""The compare view puts the presets side by side; at the end of the worked example only lazy-buggy has lost
pages, and exactly the ones kvm-mmu.md §7.2 names."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from .pagehooks import Screenshot, attribute_values, compare_url, hex_
from .worked_example import LOST_AT_END, PRESETS, STEPS


def test_compare_shows_the_lost_pages_of_lazy_buggy_only(page: Page, screenshot: Screenshot) -> None:
    page.goto(compare_url(PRESETS, STEPS))
    expect(page.locator("[data-variant]")).to_have_count(len(PRESETS))
    for preset in PRESETS:
        column = page.locator(f'[data-variant="{preset}"]')
        expect(column).to_have_count(1)
        lost = LOST_AT_END[preset]
        if not lost:
            expect(column.locator("[data-lost-gfn]")).to_have_count(0)
            continue
        expect(column.locator('[data-lost-gfn="0x250"]').first).to_be_attached()
        assert attribute_values(column, "[data-lost-gfn]", "data-lost-gfn") == {hex_(gfn) for gfn in lost}
    screenshot(page, f"compare-step-{STEPS:02d}")


def test_compare_before_the_end_has_no_verdict(page: Page, screenshot: Screenshot) -> None:
    """Pages are lost only once migrate_end has compared source and destination (contract §1)."""
    page.goto(compare_url(PRESETS, 5))
    expect(page.locator("[data-variant]")).to_have_count(len(PRESETS))
    expect(page.locator("[data-lost-gfn]")).to_have_count(0)
    screenshot(page, "compare-step-05")
