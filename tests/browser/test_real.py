"""The player's "Run on this machine's kernel" button leads to the live kernel's dirty logs beside the
emulated guest's and every preset's. On a kernel that emulated the guest (this machine's), the page says
so in so many words: the dirty-log ioctls were checked, the MMU was not; the presets' columns are what
each preset's MMU would log, and lazy-buggy's would miss the pages kvm-mmu.md §7.2 names. Skipped, with
the reason, only where /dev/kvm cannot be opened."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from live.report import availability

from .pagehooks import Screenshot

UNAVAILABLE = availability()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no usable KVM device: {UNAVAILABLE}")

EMULATED = "The kernel emulated these accesses: its dirty-log ioctls were checked, its MMU was not."


def test_the_button_runs_the_scenario_on_the_kernel(page: Page, screenshot: Screenshot) -> None:
    page.goto("/play?scenario=worked-example&variant=lazy-buggy&step=8")
    page.locator("a[data-real-link]").click()
    assert page.url.endswith("/real?scenario=worked-example")
    execution = page.locator("[data-live-execution]")
    expect(execution).to_be_visible()
    if execution.get_attribute("data-mmu-exercised") == "0":
        expect(execution).to_have_attribute("data-live-execution", "emulated")
        expect(page.locator(".real-headline")).to_have_text(EMULATED)
        expect(page.get_by_text("What each preset's MMU would log")).to_be_visible()
    expect(page.locator(".real-verdict[data-oracle]")).to_have_attribute("data-agrees", "1")
    expect(page.locator(".real-verdict[data-variant]")).to_have_count(4)
    for preset, same in (("zap", "1"), ("lazy", "1"), ("lazy-buggy", "0")):
        verdict = page.locator(f'.real-verdict[data-variant="{preset}"]')
        expect(verdict).to_have_attribute("data-agrees", same)
    first_round = page.locator('tr[data-real-step="7"]')
    expect(first_round.locator("td[data-kernel-count]")).to_have_text("0x250 0x260 0x2c0")
    expect(first_round.locator("td[data-oracle]")).to_have_attribute("data-same", "1")
    buggy = first_round.locator('td[data-variant="lazy-buggy"]')
    expect(buggy).to_have_attribute("data-same", "0")
    expect(buggy.locator("[data-engine-only]")).to_have_text("0x200")
    screenshot(page, "real-worked-example")
