"""Reading the rendered page through its test hooks (contract §7, docs/ui-hooks.md).

Waiting is done by Playwright, never by sleeping: `expect_position` waits, through an auto-waiting
expectation, for the position to show the step, then for the address bar to name it and for htmx to finish
its swap and settle (htmx restores swapped attributes a moment after a swap, so a read right after a click
could see the old state). After that one read of the page (`read_rendered`) is enough; the `expect_*`
helpers check the same things one auto-waiting expectation at a time, with Playwright's messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from playwright.sync_api import Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

WORKED_EXAMPLE = "worked-example"
# How long an expectation waits (the browser fixture sets the same for `expect`).
EXPECT_TIMEOUT_MS = 5_000

# Saves a screenshot of a page under a name; the `screenshot` fixture provides one.
Screenshot = Callable[[Page, str], Path]


def hex_(value: int) -> str:
    """An integer as the hooks spell it: lowercase hex with a `0x` prefix, no padding."""
    return f"{value:#x}"


def player_url(variant: str, step: int, scenario: str = WORKED_EXAMPLE) -> str:
    return "/play?" + urlencode({"scenario": scenario, "variant": variant, "step": step})


def compare_url(variants: Iterable[str], step: int, scenario: str = WORKED_EXAMPLE) -> str:
    return "/compare?" + urlencode({"scenario": scenario, "variants": ",".join(variants), "step": step})


# Settled at a step: the position shows it, the address bar names it (no `step` means 0, contract §5), and
# no htmx request, swap or settle is in flight.
_AT_STEP = """([step, steps]) => {
    const position = document.querySelector('[data-step][data-steps]');
    if (!position || position.getAttribute('data-step') !== String(step)
            || position.getAttribute('data-steps') !== String(steps)) {
        return false;
    }
    const inUrl = new URLSearchParams(location.search).get('step');
    if ((inUrl === null ? '0' : inUrl) !== String(step)) {
        return false;
    }
    return !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling');
}"""


def position(page: Page) -> Locator:
    return page.locator("[data-step][data-steps]")


def expect_position(page: Page, step: int, steps: int) -> None:
    """The page shows step `step` of `steps`, the address bar says the same, and htmx has settled."""
    expect(position(page)).to_have_attribute("data-step", str(step))
    try:
        page.wait_for_function(_AT_STEP, arg=[step, steps], timeout=EXPECT_TIMEOUT_MS)
    except PlaywrightTimeoutError:
        pass  # the expectations below say which part is wrong
    else:
        return
    expect(position(page)).to_have_attribute("data-steps", str(steps))
    # Step 0 is the default (contract §5), so a URL without `step` also means step 0.
    pattern = rf"[?&]step={step}(?:[&#]|$)"
    if step == 0:
        pattern = rf"^(?:(?!step=).)*$|{pattern}"
    expect(page).to_have_url(re.compile(pattern))
    raise AssertionError(f"htmx did not settle within {EXPECT_TIMEOUT_MS} ms at step {step}")


def spte_selector(level: int, sp_gfn: int, index: int) -> str:
    """The rendered spte at `index` of the level-`level` sp covering `sp_gfn`, not a removed one's ghost."""
    return (
        f'[data-spte][data-level="{hex_(level)}"][data-sp-gfn="{hex_(sp_gfn)}"]'
        f'[data-index="{hex_(index)}"]:not([data-spte-ghost])'
    )


# A present spte has R (bit 0), the bit KVM treats as "present" (kvm-mmu.md §1.1).
PRESENT = '[data-flags~="R"]'


def expect_spte(scope: Page | Locator, level: int, sp_gfn: int, index: int, value: str | re.Pattern[str],
                flags: str) -> None:
    spte = scope.locator(spte_selector(level, sp_gfn, index))
    expect(spte).to_have_count(1)
    expect(spte).to_have_attribute("data-value", value)
    expect(spte).to_have_attribute("data-flags", flags)


def expect_no_present_spte(scope: Page | Locator, level: int, sp_gfn: int, index: int) -> None:
    expect(scope.locator(spte_selector(level, sp_gfn, index) + PRESENT)).to_have_count(0)


def expect_present_count(scope: Page | Locator, count: int, level: int | None = None,
                         flag: str | None = None) -> None:
    """Exactly `count` present sptes (at `level`, with `flag` among their flags, when given)."""
    selector = "[data-spte]:not([data-spte-ghost])" + PRESENT
    if level is not None:
        selector += f'[data-level="{hex_(level)}"]'
    if flag is not None:
        selector += f'[data-flags~="{flag}"]'
    expect(scope.locator(selector)).to_have_count(count)


def dirty_cell(scope: Page | Locator, gfn: int) -> Locator:
    return scope.locator(f'[data-dirty-gfn="{hex_(gfn)}"]')


def expect_dirty(scope: Page | Locator, dirty: set[int], clean: Iterable[int] = ()) -> None:
    """The set dirty bits are exactly `dirty`; the cells of `clean` are shown, and clear."""
    for gfn in sorted(dirty):
        expect(dirty_cell(scope, gfn)).to_have_attribute("data-dirty", "1")
    for gfn in sorted(set(clean) - dirty):
        expect(dirty_cell(scope, gfn)).to_have_attribute("data-dirty", "0")
    expect(scope.locator('[data-dirty-gfn][data-dirty="1"]')).to_have_count(len(dirty))


@dataclass(frozen=True)
class RenderedSpte:
    level: str
    sp_gfn: str
    index: str
    value: str
    flags: str

    @property
    def present(self) -> bool:
        return "R" in self.flags.split()


@dataclass(frozen=True)
class Rendered:
    """Everything the contract's hooks show on one page, read in one go."""

    sptes: list[RenderedSpte]
    dirty: dict[str, list[str]]  # gfn → the data-dirty of each cell for it (one, normally)
    violations: list[str]

    def at(self, level: int, sp_gfn: int, index: int) -> list[RenderedSpte]:
        key = (hex_(level), hex_(sp_gfn), hex_(index))
        return [spte for spte in self.sptes if (spte.level, spte.sp_gfn, spte.index) == key]


def read_rendered(page: Page) -> Rendered:
    """One read of every spte (ghosts left out), dirty cell and violation the page shows."""
    data: dict[str, Any] = page.evaluate(
        """() => ({
            sptes: [...document.querySelectorAll('[data-spte]:not([data-spte-ghost])')].map(e =>
                ['data-level', 'data-sp-gfn', 'data-index', 'data-value', 'data-flags']
                    .map(name => e.getAttribute(name) ?? '')),
            dirty: [...document.querySelectorAll('[data-dirty-gfn]')].map(e =>
                [e.getAttribute('data-dirty-gfn'), e.getAttribute('data-dirty') ?? '']),
            violations: [...document.querySelectorAll('[data-violation]')].map(e =>
                e.getAttribute('data-violation')),
        })"""
    )
    dirty: dict[str, list[str]] = {}
    for gfn, bit in data["dirty"]:
        dirty.setdefault(gfn, []).append(bit)
    return Rendered([RenderedSpte(*row) for row in data["sptes"]], dirty, list(data["violations"]))


def spte_snapshot(page: Page) -> list[str]:
    """Every rendered spte as 'level sp-gfn index value flags', sorted: to compare two renders."""
    rows: list[str] = page.locator("[data-spte]:not([data-spte-ghost])").evaluate_all(
        """els => els.map(e => ['data-level', 'data-sp-gfn', 'data-index', 'data-value', 'data-flags']
                             .map(name => e.getAttribute(name)).join(' '))"""
    )
    return sorted(rows)


def dirty_snapshot(page: Page) -> list[str]:
    rows: list[str] = page.locator("[data-dirty-gfn]").evaluate_all(
        "els => els.map(e => e.getAttribute('data-dirty-gfn') + '=' + e.getAttribute('data-dirty'))"
    )
    return sorted(rows)


def attribute_values(scope: Page | Locator, selector: str, attribute: str) -> set[str]:
    values: list[str | None] = scope.locator(selector).evaluate_all(
        f"els => els.map(e => e.getAttribute({attribute!r}))"
    )
    return {value for value in values if value is not None}
