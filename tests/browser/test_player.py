"""The player shows the spec's worked example value for value, on each preset, whether a step is reached by
stepping (htmx swaps) or by loading its URL (a full render)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .pagehooks import (
    Rendered,
    RenderedSpte,
    Screenshot,
    expect_dirty,
    expect_no_present_spte,
    expect_position,
    expect_present_count,
    expect_spte,
    player_url,
    read_rendered,
)
from .worked_example import (
    EXPECTED,
    L1_SP,
    L2_INDEX,
    L2_SP,
    POINTER,
    POINTER_FLAGS,
    PRESETS,
    STEPS,
    TOUCHED,
    Shown,
)

SCREENSHOT_STEPS = {3, 5, STEPS}
LOADED_STEPS = (2, 4, 5, 7, 8, STEPS)


def differences(rendered: Rendered, preset: str, shown: Shown) -> list[str]:
    """How one read of the page differs from what §7 says; empty when it shows exactly that."""
    found: list[str] = []

    def check_one(what: str, sptes: list[RenderedSpte], value: str | re.Pattern[str], flags: str) -> None:
        if len(sptes) != 1:
            found.append(f"{what}: expected one rendered spte, found {len(sptes)}")
            return
        spte = sptes[0]
        ok = value.fullmatch(spte.value) if isinstance(value, re.Pattern) else spte.value == value
        if not ok or spte.flags != flags:
            shown_value = value.pattern if isinstance(value, re.Pattern) else value
            found.append(f"{what}: expected {shown_value} [{flags}], shown {spte.value} [{spte.flags}]")

    l2 = rendered.at(2, L2_SP, L2_INDEX)
    if shown.l2 is None:
        present = [spte for spte in l2 if spte.present]
        if present:
            found.append(f"L2[1]: expected not present, shown {present}")
    elif isinstance(shown.l2, str):  # "pointer"
        check_one("L2[1]", l2, POINTER, POINTER_FLAGS)
    else:
        check_one("L2[1]", l2, *shown.l2)
    large = [spte for spte in rendered.sptes if spte.present and "PS" in spte.flags.split()]
    if len(large) != shown.large_leaves:
        found.append(f"present large leaves: expected {shown.large_leaves}, shown {large}")

    for index, small in sorted(shown.l1.items()):
        check_one(f"L1[{index:#x}]", rendered.at(1, L1_SP, index), small.value(L1_SP + index), small.flags)
    level1 = sorted(spte.index for spte in rendered.sptes if spte.present and spte.level == "0x1")
    if level1 != sorted(f"{index:#x}" for index in shown.l1):
        found.append(f"present L1 entries: expected {sorted(map(hex, shown.l1))}, shown {level1}")

    set_bits = {gfn for gfn, bits in rendered.dirty.items() if "1" in bits}
    expected_bits = {f"{gfn:#x}" for gfn in shown.dirty or ()}
    if set_bits != expected_bits:
        found.append(f"dirty bits: expected {sorted(expected_bits)}, shown {sorted(set_bits)}")
    if shown.dirty is not None:
        for gfn in TOUCHED:
            cells = rendered.dirty.get(f"{gfn:#x}")
            if cells not in (["0"], ["1"]):
                found.append(f"dirty cell {gfn:#x}: expected one cell, shown {cells}")

    if preset in ("zap", "lazy") and rendered.violations:
        found.append(f"violations: expected none, shown {rendered.violations}")
    for name in shown.violations:
        if name not in rendered.violations:
            found.append(f"violations: expected {name}, shown {rendered.violations}")
    return found


def expect_shown(page: Page, preset: str, shown: Shown) -> None:
    """The same checks as `differences`, one auto-waiting expectation at a time."""
    if shown.l2 is None:
        expect_no_present_spte(page, 2, L2_SP, L2_INDEX)
    elif isinstance(shown.l2, str):  # "pointer"
        expect_spte(page, 2, L2_SP, L2_INDEX, POINTER, POINTER_FLAGS)
    else:
        value, flags = shown.l2
        expect_spte(page, 2, L2_SP, L2_INDEX, value, flags)
    expect_present_count(page, shown.large_leaves, flag="PS")

    for index, small in sorted(shown.l1.items()):
        expect_spte(page, 1, L1_SP, index, small.value(L1_SP + index), small.flags)
    expect_present_count(page, len(shown.l1), level=1)

    if shown.dirty is None:
        expect(page.locator('[data-dirty-gfn][data-dirty="1"]')).to_have_count(0)
    else:
        expect_dirty(page, shown.dirty, clean=TOUCHED)

    if preset in ("zap", "lazy"):
        # kvm-mmu.md "Acceptance": zap and lazy never violate an invariant.
        expect(page.locator("[data-violation]")).to_have_count(0)
    for name in shown.violations:
        expect(page.locator(f'[data-violation="{name}"]').first).to_be_attached()


def check_shown(page: Page, preset: str, step: int, shown: Shown) -> None:
    """The page at `step` shows what §7 says for `preset`.

    Called once the position shows `step` and htmx has settled, so one read normally suffices. If it
    differs, the expectations run one by one: they wait, in case the page was still changing, and fail
    with the first difference; the full list of differences is kept for the message.
    """
    found = differences(read_rendered(page), preset, shown)
    if not found:
        return

    def message(found: list[str]) -> str:
        listing = "\n  ".join(found)
        return f"{preset}, step={step}: the page differs from kvm-mmu.md §7:\n  {listing}"

    try:
        expect_shown(page, preset, shown)
    except AssertionError as error:
        raise AssertionError(message(found)) from error
    # The expectations waited and then held: the page had not finished changing when it was read.
    again = differences(read_rendered(page), preset, shown)
    assert not again, message(again)


@pytest.mark.parametrize("preset", PRESETS)
def test_stepping_through_the_worked_example(page: Page, preset: str, screenshot: Screenshot) -> None:
    page.goto(player_url(preset, 0))
    expect_position(page, 0, STEPS)
    # Before the first step nothing is mapped.
    expect_present_count(page, 0, level=1)
    expect_present_count(page, 0, flag="PS")
    for step in range(1, STEPS + 1):
        page.locator('a[data-nav="next"]').first.click()
        expect_position(page, step, STEPS)
        check_shown(page, preset, step, EXPECTED[preset][step])
        if step in SCREENSHOT_STEPS:
            screenshot(page, f"play-{preset}-step-{step:02d}")


@pytest.mark.parametrize("preset", PRESETS)
def test_loading_steps_of_the_worked_example(page: Page, preset: str) -> None:
    """A full render of the steps the spec's tables turn on, and of the end (stepping covers every step)."""
    for step in LOADED_STEPS:
        page.goto(player_url(preset, step))
        expect_position(page, step, STEPS)
        check_shown(page, preset, step, EXPECTED[preset][step])
