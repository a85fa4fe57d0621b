"""Every page at a small laptop (1024×768), a common laptop (1366×768) and a phone (390×844): the page
never scrolls sideways, no spte's mapping (gfn → pfn) is cut short, and nothing spills out of its panel
(the bitmap's cells shrink with the panel instead)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, ViewportSize

from .conftest import PageProblems
from .layoutpages import VISITS, visit
from .pagehooks import Screenshot

SIZES: dict[str, ViewportSize] = {
    "1024": {"width": 1024, "height": 768},
    "1366": {"width": 1366, "height": 768},
    "phone": {"width": 390, "height": 844},
}

# Overflowing elements of the page, as (what, inner width, outer width): a mapping whose text is wider
# than its box (cut or hidden), and a panel or compare column whose content is wider than itself.
_OVERFLOWS = """() => {
    const shown = (el) => el.getClientRects().length > 0;
    const label = (el) => (el.getAttribute('data-panel') || el.getAttribute('data-variant') || '')
        + ' ' + el.textContent.trim().replace(/\\s+/g, ' ').slice(0, 50);
    const found = [];
    for (const el of document.querySelectorAll('[data-spte] .target, [data-spte-ghost] .target')) {
        if (shown(el) && el.scrollWidth > el.clientWidth) {
            found.push(['mapping ' + label(el), el.scrollWidth, el.clientWidth]);
        }
    }
    for (const el of document.querySelectorAll('.panel, .compare-col, .spte-link, .bitmap')) {
        if (shown(el) && el.scrollWidth > el.clientWidth + 1) {
            found.push([el.className + ' ' + label(el), el.scrollWidth, el.clientWidth]);
        }
    }
    return found;
}"""


@pytest.mark.parametrize("size", SIZES, ids=list(SIZES))
def test_no_sideways_scroll_and_no_cut_mapping(
    page: Page, page_problems: PageProblems, screenshot: Screenshot, size: str
) -> None:
    page.set_viewport_size(SIZES[size])
    failures: list[str] = []
    for target in VISITS:
        visit(page, page_problems, target)
        if target.large:
            # The longest row of the tree is on the page: the test would not see its mapping otherwise.
            assert page.locator('[data-spte][data-large="1"] .target').count() >= 1, target.name
        page_width, viewport = page.evaluate(
            "() => [document.documentElement.scrollWidth, window.innerWidth]"
        )
        if page_width > viewport:
            failures.append(f"{target.name}: the page is {page_width}px wide in a {viewport}px window")
        for what, inner, outer in page.evaluate(_OVERFLOWS):
            failures.append(f"{target.name}: {what}: {inner}px of content in {outer}px")
        if target.name in ("player-2m", "present", "compare-4", "landing"):
            screenshot(page, f"responsive-{target.name}-{size}")
    assert not failures, "\n".join(failures)
