"""The player's "Run on this machine's kernel" button leads to the live kernel's dirty logs beside every
preset's: on the worked example the kernel agrees with zap, lazy and modern, and lazy-buggy misses the
pages kvm-mmu.md §7.2 names. Skipped, with the reason, only where /dev/kvm cannot be opened."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from live.report import availability

from .pagehooks import Screenshot

UNAVAILABLE = availability()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no usable KVM device: {UNAVAILABLE}")


def test_the_button_runs_the_scenario_on_the_kernel(page: Page, screenshot: Screenshot) -> None:
    page.goto("/play?scenario=worked-example&variant=lazy-buggy&step=8")
    page.locator("a[data-real-link]").click()
    assert page.url.endswith("/real?scenario=worked-example")
    expect(page.locator(".real-verdict")).to_have_count(4)
    for preset, agrees in (("modern", "1"), ("zap", "1"), ("lazy", "1"), ("lazy-buggy", "0")):
        verdict = page.locator(f'.real-verdict[data-variant="{preset}"]')
        expect(verdict).to_have_attribute("data-agrees", agrees)
    first_round = page.locator('tr[data-real-step="7"]')
    expect(first_round.locator("td[data-kernel-count]")).to_have_text("0x250 0x260 0x2c0")
    buggy = first_round.locator('td[data-variant="lazy-buggy"]')
    expect(buggy).to_have_attribute("data-same", "0")
    expect(buggy.locator("[data-engine-only]")).to_have_text("0x200")
    screenshot(page, "real-worked-example")
