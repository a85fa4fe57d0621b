"""A first visit, as a visitor makes it: the landing page opens with the story, "Start here" lands on the
worked example's decisive write with the four kernels side by side, the player shows the lesson before the
first step without scrolling, and a note tells each preset its own sentence.

Expected values come from kvm-mmu.md §7.2 (the worked example) and the lesson files, never from the app.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, ViewportSize, expect

from .pagehooks import Screenshot, expect_dirty, expect_position
from .worked_example import STEPS

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
# The smallest windows a workshop room brings: a 1024x768 projector and a 1366x768 laptop.
SMALL: ViewportSize = {"width": 1024, "height": 768}
LAPTOP: ViewportSize = {"width": 1366, "height": 768}

# §7.2 step 5, "the decisive step": the write to 0x250, the example's fifth scenario step (player step 5).
DECISIVE = 5
# The dirty bits after it, since logging began (§7.2 steps 3 to 5): zap logged the read of 0x2c0 (step 4)
# and the write; caf6900f's fast path logged 0x200, the 2M range's first page, and not 0x250; the fix
# logged the write alone. 6.13's split left 0x2c0 a present 4K spte, so the read took no fault, and the
# write was a fast fault on 0x250's own spte (the lesson's description, §5.7).
DIRTY_AT_DECISIVE = {
    "zap": {0x2C0, 0x250},
    "lazy-buggy": {0x200},
    "lazy": {0x250},
    "modern": {0x250},
}


def lesson(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCENARIOS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def in_view(page: Page, locator: Locator) -> None:
    """The element is shown, and wholly inside the window as the page opens: no scrolling needed."""
    expect(locator).to_be_visible()
    box = locator.bounding_box()
    size = page.viewport_size
    assert box is not None and size is not None
    assert box["y"] >= 0 and box["y"] + box["height"] <= size["height"], (box, size)


def test_the_story_comes_first_and_start_here_lands_on_the_decisive_write(
    page: Page, screenshot: Screenshot
) -> None:
    page.set_viewport_size(SMALL)
    page.goto("/")
    expect(page.locator("h1")).to_have_text("One 2 MiB spte, four kernels")
    chapters = page.locator("[data-story] > li[data-story-step]")
    expect(chapters).to_have_count(4)
    for position, preset in enumerate(["zap", "lazy-buggy", "lazy", "modern"]):
        expect(chapters.nth(position)).to_have_attribute("data-story-step", preset)
        in_view(page, chapters.nth(position))
    start = page.locator("[data-start-here]")
    expect(start).to_have_count(1)
    in_view(page, start)
    screenshot(page, "story-landing-1024")

    start.click()
    expect_position(page, DECISIVE, STEPS)
    assert "/compare?" in page.url
    expect(page.locator("[data-variant]")).to_have_count(len(DIRTY_AT_DECISIVE))
    for preset, dirty in DIRTY_AT_DECISIVE.items():
        column = page.locator(f'section[data-variant="{preset}"]')
        expect_dirty(column, dirty, clean=[0x200, 0x250, 0x2C0])
    screenshot(page, "story-start-here")


@pytest.mark.parametrize("size", [SMALL, LAPTOP], ids=["1024x768", "1366x768"])
def test_the_lesson_is_in_view_before_the_first_step(page: Page, size: ViewportSize) -> None:
    page.set_viewport_size(size)
    page.goto("/play?scenario=worked-example")
    expect_position(page, 0, STEPS)
    text = page.locator('[data-panel="narration"] [data-lesson]')
    in_view(page, text)
    # The lesson's own first words, and what it says to watch.
    description = lesson("worked-example")["description"]
    expect(text).to_contain_text(description.split(". ")[0])
    expect(text).to_contain_text("the decisive write")
    # One step on, the narration is about the step, not the lesson any more.
    page.locator('a[data-nav="next"]').click()
    expect_position(page, 1, STEPS)
    expect(page.locator("[data-lesson]")).to_have_count(0)


def test_a_note_tells_the_preset_on_screen_its_own_text(page: Page, screenshot: Screenshot) -> None:
    data = lesson("migration-verdict")
    steps = data["steps"]
    # The note after the guest's three writes under logging: where caf6900f parts from the others.
    index = next(
        i for i, s in enumerate(steps) if s["op"] == "note" and i > 0 and steps[i - 1].get("gfn") == "0x1002"
    )
    by_preset = steps[index]["by_preset"]
    total = len(steps)
    page.goto(f"/play?scenario=migration-verdict&variant=zap&step={index + 1}")
    expect_position(page, index + 1, total)
    note = page.locator('[data-panel="narration"] [data-note]')
    expect(note).to_have_count(1)
    expect(note).to_have_text(by_preset["zap"])

    page.locator("select[name=variant]").select_option("lazy-buggy")
    expect(page).to_have_url(re.compile(r"[?&]variant=lazy-buggy(&|$)"))
    expect_position(page, index + 1, total)
    expect(note).to_have_text(by_preset["lazy-buggy"])
    # Shown once: the narration line says a note runs nothing, the text is the note's alone.
    expect(page.get_by_text(by_preset["lazy-buggy"])).to_have_count(1)
    screenshot(page, "story-note-lazy-buggy")

    # Side by side, each column tells its own.
    page.goto(f"/compare?scenario=migration-verdict&step={index + 1}")
    for preset, text in by_preset.items():
        expect(page.locator(f'section[data-variant="{preset}"] [data-note]')).to_have_text(text)
