"""The timeline strip (docs/ui-hooks.md): in the player and in compare, one lane per preset and one marker per
step, each marker saying what its step did under that preset, a click jumping to the step.

The worked example's markers follow from kvm-mmu.md §7.2 (see worked_example.py for the step numbers):
step #5 is the decisive write (lazy-buggy's fast path, lazy's slow path after bail_large), #8 and
#11 are migrate_round and #12 migrate_end, a harvest each, and only lazy-buggy's verdict loses pages.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from .pagehooks import Screenshot, compare_url, expect_position, player_url
from .worked_example import LOST_AT_END, PRESETS, STEPS

# The presets the compare view shows by default, hence the player's lanes.
ALL_PRESETS = ("zap", "lazy-buggy", "lazy", "modern")
HARVESTS = (8, 11, 12)  # data-mark of migrate_round, migrate_round, migrate_end
DECISIVE = 5  # data-mark of step #5, write 0x250


def marks_of(page: Page, preset: str) -> list[str]:
    values: list[str] = page.locator(f'#timeline [data-lane="{preset}"] [data-mark]').evaluate_all(
        "els => els.map(e => e.getAttribute('data-mark'))"
    )
    return values


def test_player_timeline_has_a_lane_per_preset_and_a_marker_per_step(
    page: Page, screenshot: Screenshot
) -> None:
    page.goto(player_url("lazy", DECISIVE))
    expect_position(page, DECISIVE, STEPS)
    strip = page.locator("#timeline")
    expect(strip).to_be_visible()
    expect(strip.locator("[data-lane]")).to_have_count(len(ALL_PRESETS))
    for preset in ALL_PRESETS:
        assert marks_of(page, preset) == [str(n) for n in range(1, STEPS + 1)], preset
        lane = strip.locator(f'[data-lane="{preset}"]')
        # The step shown is highlighted in every lane, and only that one.
        expect(lane.locator('[aria-current="step"]')).to_have_count(1)
        expect(lane.locator('[aria-current="step"]')).to_have_attribute("data-mark", str(DECISIVE))
        for n in HARVESTS:
            expect(lane.locator(f'[data-mark="{n}"]')).to_have_attribute("data-harvest", "1")
    # The player's own preset is the marked lane.
    expect(strip.locator("[data-lane][data-own]")).to_have_count(1)
    expect(strip.locator('[data-lane="lazy"]')).to_have_attribute("data-own", "1")
    # The decisive write: lazy-buggy's fast path made the large spte writable, lazy's slow path dropped it.
    decisive_buggy = strip.locator(f'[data-lane="lazy-buggy"] [data-mark="{DECISIVE}"]')
    expect(decisive_buggy).to_have_attribute("data-fault", "fast")
    # §7.2 step 5: the fast path made the 2M spte writable again while the slot is logged.
    expect(decisive_buggy).to_have_attribute(
        "aria-label", "step #5: write gfn 0x250; 1 fast fault; 1 violation (no_writable_large_while_logging)"
    )
    expect(strip.locator(f'[data-lane="lazy"] [data-mark="{DECISIVE}"]')).to_have_attribute(
        "data-fault", "slow"
    )
    # Only lazy-buggy's verdict loses pages: four of them (§7.2's last paragraph).
    expect(strip.locator("[data-lost-pages]")).to_have_count(1)
    lost = strip.locator(f'[data-lane="lazy-buggy"] [data-mark="{STEPS}"]')
    expect(lost).to_have_attribute("data-lost-pages", str(len(LOST_AT_END["lazy-buggy"])))
    expect(lost).to_contain_text("✕")
    # Never colour alone: the violation has its glyph, the marker its words.
    expect(decisive_buggy).to_contain_text("⚠")
    screenshot(page, "timeline-player-step-05")


def test_clicking_a_marker_goes_to_its_step_and_highlights_it(page: Page) -> None:
    page.goto(player_url("lazy", 2))
    expect_position(page, 2, STEPS)
    page.evaluate("window.__inPlace = 'kept'")
    page.locator(f'#timeline [data-lane="lazy-buggy"] [data-mark="{STEPS}"]').click()
    expect_position(page, STEPS, STEPS)
    # An htmx swap, not a page load; the player stays on its own preset.
    assert page.evaluate("window.__inPlace") == "kept"
    expect(page).to_have_url(player_url("lazy", STEPS))
    current = page.locator('#timeline [aria-current="step"]')
    expect(current).to_have_count(len(ALL_PRESETS))
    for n in range(len(ALL_PRESETS)):
        expect(current.nth(n)).to_have_attribute("data-mark", str(STEPS))
    # Stepping with the keyboard moves the highlight too (the strip is swapped out of band).
    page.keyboard.press("ArrowLeft")
    expect_position(page, STEPS - 1, STEPS)
    expect(page.locator('#timeline [data-lane="zap"] [aria-current="step"]')).to_have_attribute(
        "data-mark", str(STEPS - 1)
    )


def test_compare_timeline_has_the_compared_presets_and_steps_in_place(
    page: Page, screenshot: Screenshot
) -> None:
    page.goto(compare_url(PRESETS, 3))
    expect_position(page, 3, STEPS)
    strip = page.locator("#timeline")
    expect(strip.locator("[data-lane]")).to_have_count(len(PRESETS))
    for preset in PRESETS:
        assert marks_of(page, preset) == [str(n) for n in range(1, STEPS + 1)], preset
    expect(strip.locator("[data-own]")).to_have_count(0)
    strip.locator(f'[data-lane="zap"] [data-mark="{DECISIVE}"]').click()
    expect_position(page, DECISIVE, STEPS)
    # The compare view's own step links' URL (app/links.py Links.compare), the presets kept.
    variants = ",".join(PRESETS)
    expect(page).to_have_url(
        re.compile(rf"/compare\?scenario=worked-example&variants={variants}&step={DECISIVE}$")
    )
    for preset in PRESETS:
        expect(strip.locator(f'[data-lane="{preset}"] [aria-current="step"]')).to_have_attribute(
            "data-mark", str(DECISIVE)
        )
    screenshot(page, "timeline-compare-step-05")


def test_a_marker_of_a_long_share_code_is_a_button_that_steps_in_place(page: Page) -> None:
    """With a share code the markers are buttons of one shared form (the code once, not per marker)."""
    scenario = page.request.get("/api/scenarios/worked-example").json()
    code = page.request.post("/api/encode", data={"scenario": scenario}).json()["code"]
    page.goto(f"/compare?s={code}&step=1")
    expect_position(page, 1, STEPS)
    page.evaluate("window.__inPlace = 'kept'")
    marker = page.locator(f'#timeline [data-lane="lazy"] button[data-mark="{DECISIVE}"]')
    expect(marker).to_have_count(1)
    marker.click()
    expect_position(page, DECISIVE, STEPS)
    assert page.evaluate("window.__inPlace") == "kept"
    expect(page.locator('#timeline [data-lane="lazy"] [aria-current="step"]')).to_have_attribute(
        "data-mark", str(DECISIVE)
    )
    page.goto(f"/play?s={code}&variant=zap&step=1")
    expect_position(page, 1, STEPS)
    page.locator('#timeline [data-lane="modern"] button[data-mark="3"]').click()
    expect_position(page, 3, STEPS)
    expect(page).to_have_url(re.compile(r"/play\?s=[^&]+&variant=zap&step=3$"))
