"""The compare view puts the presets side by side; at the end of the worked example only lazy-buggy has lost
pages, and exactly the ones kvm-mmu.md §7.2 names."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from .pagehooks import Screenshot, attribute_values, compare_url, expect_spte, hex_, spte_selector
from .worked_example import (
    L1_SP,
    L2_INDEX,
    L2_SP,
    LARGE_RW_D,
    LARGE_RW_D_FLAGS,
    LOST_AT_END,
    POINTER,
    POINTER_FLAGS,
    PRESETS,
    RW_D,
    STEPS,
)


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


# The story view: every column shows its preset's tables and bitmaps, marks only the odd one out, and draws
# the verdict's lost pages on the bitmap.

ALL_PRESETS = ("zap", "lazy-buggy", "lazy", "modern")
DECISIVE = 5  # the state after scenario step #4, the write to 0x250 (§7.2 step 5)


def test_each_column_shows_its_tree_and_bitmap(page: Page) -> None:
    page.goto(compare_url(ALL_PRESETS, DECISIVE))
    expect(page.locator("[data-variant]")).to_have_count(len(ALL_PRESETS))
    for preset in ALL_PRESETS:
        column = page.locator(f'[data-variant="{preset}"]')
        expect(column.locator('[data-panel="tree"]')).to_have_count(1)
        expect(column.locator('[data-panel="bitmap"]')).to_have_count(1)
        # Logging is on since migrate_begin: the slot's 512 pages each have a cell.
        expect(column.locator('[data-panel="bitmap"] [data-dirty-gfn]')).to_have_count(512)
    # §7.2 step 5: lazy-buggy's fast path left L2[1] a writable, dirty 2M leaf; lazy's slow path dropped it
    # and linked a table of 4K sptes in its place.
    buggy_tree = page.locator('[data-variant="lazy-buggy"] [data-panel="tree"]')
    expect_spte(buggy_tree, 2, L2_SP, L2_INDEX, LARGE_RW_D, LARGE_RW_D_FLAGS)
    expect(buggy_tree.locator(spte_selector(2, L2_SP, L2_INDEX))).to_have_attribute("data-large", "1")
    lazy_tree = page.locator('[data-variant="lazy"] [data-panel="tree"]')
    expect_spte(lazy_tree, 2, L2_SP, L2_INDEX, POINTER, POINTER_FLAGS)
    expect_spte(lazy_tree, 1, L1_SP, 0x50, RW_D.value(0x250), RW_D.flags)


_OVERFLOW = """() => {
    const clipped = (e) => e.scrollWidth > e.clientWidth + 1;
    const cols = [...document.querySelectorAll('[data-variant]')];
    return {
        page: document.documentElement.scrollWidth - document.documentElement.clientWidth,
        right: Math.max(...cols.map(c => c.getBoundingClientRect().right)),
        columns: cols.filter(clipped).map(c => c.getAttribute('data-variant')),
        bitmaps: [...document.querySelectorAll('[data-variant] [data-panel="bitmap"]')]
            .filter(clipped).length,
        slots: [...document.querySelectorAll('[data-variant] .bitmap')].filter(clipped).length,
    };
}"""


def test_four_columns_fit_at_1366_without_horizontal_scroll(page: Page, screenshot: Screenshot) -> None:
    page.set_viewport_size({"width": 1366, "height": 768})
    for step in (DECISIVE, STEPS):
        page.goto(compare_url(ALL_PRESETS, step))
        expect(page.locator("[data-variant]")).to_have_count(len(ALL_PRESETS))
        fit = page.evaluate(_OVERFLOW)
        assert fit["page"] <= 0, f"the page scrolls sideways by {fit['page']} px at step {step}"
        assert fit["right"] <= 1366, f"a column ends at {fit['right']} px at step {step}"
        assert fit["columns"] == [], f"clipped columns at step {step}: {fit['columns']}"
        assert fit["bitmaps"] == 0 and fit["slots"] == 0, f"a bitmap is clipped at step {step}"
        screenshot(page, f"compare-1366-step-{step:02d}")


def test_only_the_odd_one_out_is_marked(page: Page) -> None:
    # At the end only lazy-buggy lost pages: its migration cell alone differs, from the two that agree.
    page.goto(compare_url(PRESETS, STEPS))
    marked = page.locator('[data-field="migration"][data-differs="1"]')
    expect(marked).to_have_count(1)
    expect(page.locator('[data-variant="lazy-buggy"] [data-field="migration"]')).to_have_attribute(
        "data-differs", "1"
    )
    expect(marked).to_have_attribute("data-differs-from", "zap, lazy")
    expect(marked.locator(".differs-mark")).to_contain_text("differs from zap, lazy")
    # Step #4 under four presets: four different fault paths, no majority: said once, no column marked.
    page.goto(compare_url(ALL_PRESETS, DECISIVE))
    expect(page.locator('[data-field="faults"][data-differs]')).to_have_count(0)
    expect(page.locator('[data-tie="faults"]')).to_have_count(1)
    # Only lazy-buggy violates an invariant there (kvm-mmu.md "Acceptance": zap and lazy never do).
    expect(page.locator('[data-field="violations"][data-differs="1"]')).to_have_count(1)
    expect(page.locator('[data-variant="lazy-buggy"] [data-field="violations"]')).to_have_attribute(
        "data-differs", "1"
    )


def _lost_cells(page: Page, preset: str) -> set[str]:
    cells = page.locator(f'[data-variant="{preset}"] [data-panel="bitmap"] [data-lost="1"]')
    values: list[str] = cells.evaluate_all(
        "els => els.map(e => e.getAttribute('data-gfn') || e.getAttribute('data-dirty-gfn'))"
    )
    return set(values)


def test_lost_pages_are_drawn_on_the_bitmap_at_the_verdict(page: Page, screenshot: Screenshot) -> None:
    page.goto(compare_url(PRESETS, STEPS - 1))
    expect(page.locator("[data-variant]")).to_have_count(len(PRESETS))
    expect(page.locator('[data-lost="1"]')).to_have_count(0)  # no verdict before migrate_end
    page.goto(compare_url(PRESETS, STEPS))
    for preset in PRESETS:
        assert _lost_cells(page, preset) == {hex_(gfn) for gfn in LOST_AT_END[preset]}, preset
    cells = page.locator('[data-variant="lazy-buggy"] [data-panel="bitmap"] [data-lost="1"]')
    for n in range(cells.count()):
        expect(cells.nth(n)).to_have_text("✕")
        expect(cells.nth(n)).to_be_visible()
    screenshot(page, "compare-verdict-lost-on-bitmap")
