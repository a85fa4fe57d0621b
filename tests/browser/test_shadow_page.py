"""The player in shadow-paging mode, in Chromium: stepping through S1 of shadow-mmu.md §4 with the keyboard,
the guest's tables and the shadow tables swap in place, the walk strip follows each step's address, and
the page stays free of critical or serious accessibility violations, light and dark.

S1 (tests/test_shadow_paging.py): a slot of gfns 0x200-0x5ff the guest maps with 2M pages, its tables
at 0x200 (PML4), 0x201 (PDPT), 0x202 (PD). The guest links 0x480 as the page table of gva 0x600000
(step 2) and fills it (step 3); the read of 0x600000 (step 4) shadows 0x480, under the 2M spte of
0x400-0x5ff, which 3.16 (`lazy`) keeps read-only; the write to 0x480 (step 7) unsyncs its shadow.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Page, expect
from test_shadow_paging import S1

from engine.codec import encode_scenario
from engine.scenario import parse_scenario

from .conftest import PageProblems
from .pagehooks import Screenshot, expect_position
from .test_a11y import blocking_violations

STEPS = len(S1["steps"])
CODE = encode_scenario(parse_scenario(S1))


def shadow_url(step: int, variant: str = "lazy") -> str:
    return "/play?" + urlencode({"s": CODE, "variant": variant, "step": step})


def guest_table(page: Page, gfn: str) -> str | None:
    return page.locator(f'[data-guest-table="{gfn}"]').get_attribute("data-shadowed")


def test_stepping_through_s1_updates_both_tables_and_the_walk(
    page: Page, page_problems: PageProblems, screenshot: Screenshot
) -> None:
    page.goto(shadow_url(0))
    expect_position(page, 0, STEPS)
    panel = page.locator('#panel-tree[data-mmu="shadow"]')
    expect(panel).to_be_visible()
    # Before any access no vCPU has a root, and the guest's PML4 is not shadowed yet.
    expect(panel.locator("[data-no-root]")).to_be_visible()
    expect(page.locator('[data-guest-table="0x200"]')).not_to_have_attribute("data-shadowed", "protected")

    page.locator('a[data-nav="next"]').focus()
    page.keyboard.press("ArrowRight")
    expect_position(page, 1, STEPS)
    # The write of gfn 0x410 went through the identity map: gva 0x410000, the PD's 2M page of 0x400.
    strip = page.locator("[data-walk-strip]")
    expect(strip).to_have_attribute("data-walk-gva", "0x410000")
    expect(strip).to_have_attribute("data-walk-gfn", "0x410")
    large = page.locator('[data-shadow-spte="2:0x202:0x2"]')
    expect(large).to_have_attribute("data-large", "1")
    expect(large.locator('[data-bit="W"]').first).to_have_attribute("data-bit-set", "1")

    for step in (2, 3, 4):
        page.keyboard.press("ArrowRight")
        expect_position(page, step, STEPS)
    # Step 4 read gva 0x600000 through the PT at 0x480: it is shadowed now, and the 2M spte over it is
    # read-only (W and MW cleared) but still there.
    expect(strip).to_have_attribute("data-walk-gva", "0x600000")
    expect(strip).to_have_attribute("data-walk-gfn", "0x500")
    expect(page.locator('[data-guest-table="0x480"]')).to_have_attribute("data-shadowed", "protected")
    expect(large).to_have_attribute("data-changed", "1")
    expect(large.locator('[data-bit="W"]').first).to_have_attribute("data-bit-set", "0")
    expect(large.locator('[data-bit="MW"]').first).to_have_attribute("data-bit-set", "0")
    expect(large.locator('[data-bit="HW"]').first).to_have_attribute("data-bit-set", "1")
    leaf = page.locator('[data-shadow-spte="1:0x480:0x0"]')
    expect(leaf).to_have_attribute("data-walk", "1")
    expect(page.locator('[data-protected-gfn="0x480"]')).to_be_visible()
    screenshot(page, "shadow-s1-step-04")

    for step in (5, 6, 7):
        page.keyboard.press("ArrowRight")
        expect_position(page, step, STEPS)
    expect(page.locator('[data-guest-table="0x480"]')).to_have_attribute("data-shadowed", "unsync")
    expect(page.locator('[data-shadow-table="1:0x480"]')).to_have_attribute("data-unsync", "1")
    expect(page.locator('[data-unsync-gfn="0x480"]')).to_be_visible()
    # The inert switches sit by the what-if controls.
    expect(page.locator('[data-inert="fast_pf_level_guard"]')).to_be_visible()
    assert guest_table(page, "0x202") == "protected"
    assert not page_problems.seen


def test_zap_drops_the_large_spte_on_screen(page: Page) -> None:
    page.goto(shadow_url(4, "zap"))
    expect_position(page, 4, STEPS)
    removed = page.locator('[data-shadow-spte="2:0x202:0x2"]')
    expect(removed).to_have_attribute("data-removed", "1")
    expect(removed).to_contain_text("removed this step")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_shadow_page_has_no_blocking_accessibility_violation(
    page: Page, screenshot: Screenshot, scheme: Literal["light", "dark"]
) -> None:
    page.emulate_media(color_scheme=scheme)
    failures: list[str] = []
    for url in (shadow_url(4), shadow_url(7), shadow_url(4) + "&present=1", shadow_url(3) + "&mode=predict"):
        page.goto(url)
        page.wait_for_load_state("networkidle")
        failures += [f"{url[-30:]}: {v}" for v in blocking_violations(page)]
    page.goto("/compare?" + urlencode({"s": CODE, "variants": "zap,lazy", "step": 4}))
    failures += [f"compare: {v}" for v in blocking_violations(page)]
    screenshot(page, f"shadow-compare-{scheme}")
    assert not failures, "\n".join(failures)


def test_a_shadow_spte_opens_the_inspector_in_the_x86_pte_format(page: Page) -> None:
    page.goto(shadow_url(4))
    expect_position(page, 4, STEPS)
    page.locator('[data-shadow-spte="2:0x202:0x2"] > [data-inspect]').click()
    inspector = page.locator("#panel-inspector.is-open")
    expect(inspector).to_be_visible()
    expect(page).to_have_url(re.compile(r"[?&]spte=2:202:2(&|$)"))
    # The gfns its guest PDE maps (not the ones its position would say), and the shadow format's bits.
    expect(inspector).to_contain_text("maps gfns 0x400–0x5ff")
    expect(inspector.locator('tr[data-bit="U"]')).to_have_attribute("data-bit-position", "2")
    expect(inspector.locator('tr[data-bit="MW"]')).to_have_attribute("data-bit-value", "0")
    expect(page.locator('[data-shadow-spte="2:0x202:0x2"]')).to_have_class(re.compile(r"\bis-selected\b"))
