"""Predict mode and presentation mode in the browser (docs/ui-hooks.md): a whole game through the worked
example under lazy-buggy, some answers right and some wrong, by click and by key; and presentation mode's
panel picker and arrow keys at the projector size, 1280×720, where nothing may need scrolling.

The right answers come from the spec's §7.2 tables (see tests/test_predict.py for the step mapping).
"""

from __future__ import annotations

import re

from playwright.sync_api import Browser, Locator, Page, expect

from .conftest import LiveServer
from .pagehooks import Screenshot, expect_position, player_url, spte_selector
from .worked_example import L2_INDEX, L2_SP, LARGE_RW_D, LARGE_RW_D_FLAGS, STEPS

PRESET = "lazy-buggy"
# lazy-buggy's right answer to each step's question, by scenario index (§7.2 (b)).
RIGHT = ["slow", "set-d", "wp", "none", "fast", "none", "none", "no", "none", "none", "no", "yes"]
# The wrong answers given: the decisive write (what lazy would do) and the first round (what one hopes).
WRONG = {4: "bail", 7: "yes"}
ON_SCREEN = {4, 7, STEPS - 1}


def url_param(page: Page, name: str) -> str | None:
    value: str | None = page.evaluate(f"() => new URLSearchParams(location.search).get({name!r})")
    return value


def fits(page: Page, locator: Locator) -> bool:
    """The element lies inside the viewport (the projector's 1280×720), not below the fold."""
    box = locator.bounding_box()
    size = page.viewport_size
    assert box is not None and size is not None
    bottom, right = box["y"] + box["height"], box["x"] + box["width"]
    return box["y"] >= 0 and bottom <= size["height"] + 0.5 and right <= size["width"] + 0.5


def expect_no_page_scroll(page: Page) -> None:
    overflow = page.evaluate("() => document.documentElement.scrollHeight - window.innerHeight")
    assert overflow <= 0, f"the page is {overflow}px taller than the viewport"


def test_a_game_of_predict_through_the_worked_example(page: Page, screenshot: Screenshot) -> None:
    page.goto(player_url(PRESET, 0))
    expect_position(page, 0, STEPS)
    page.locator('a[data-action="predict"]').click()
    expect(page).to_have_url(re.compile(r"&step=0&mode=predict&score=0-0$"))

    right = 0
    for index, correct in enumerate(RIGHT):
        form = page.locator("#predict-form")
        expect(form).to_have_attribute("data-question-step", str(index))
        # No answer, no step: → and End wait for the question (the Next link is disabled).
        if index in (0, 4):
            page.keyboard.press("ArrowRight")
            page.keyboard.press("End")
            expect(page.locator('a[data-nav="next"]')).to_have_attribute("aria-disabled", "true")
            expect_position(page, index, STEPS)
        answer = WRONG.get(index, correct)
        choices = form.locator("button[data-choice]")
        keys = [choices.nth(i).get_attribute("data-choice") for i in range(choices.count())]
        assert correct in keys and answer in keys, (index, keys)
        if index % 2:
            form.locator(f'button[data-choice="{answer}"]').click()
        else:
            page.keyboard.press("abcd"[keys.index(answer)])
        expect_position(page, index + 1, STEPS)
        asked = index + 1
        right += answer == correct
        feedback = page.locator("[data-feedback]")
        expect(feedback).to_have_attribute("data-feedback", "right" if answer == correct else "wrong")
        expect(feedback).to_have_attribute("data-correct", correct)
        expect(feedback.locator(".explanation")).not_to_be_empty()
        expect(page.locator("[data-score]")).to_have_attribute("data-score", f"{right}-{asked}")
        assert url_param(page, "answer") == answer
        if index == 4:
            # The state after the decisive write: the fast path made the large spte writable, marked changed.
            large = page.locator(spte_selector(2, L2_SP, L2_INDEX))
            expect(large).to_have_attribute("data-value", LARGE_RW_D)
            expect(large).to_have_attribute("data-flags", LARGE_RW_D_FLAGS)
            expect(large).to_have_attribute("data-changed", "1")
            expect(feedback).to_contain_text("Wrong")
            expect(feedback).to_contain_text("gfn 0x200 marked dirty, not gfn 0x250")
        if index == 7:
            expect(feedback).to_contain_text("The log returns 0x200.")
        if index in ON_SCREEN:
            screenshot(page, f"predict-{PRESET}-answered-{index:02d}")

    final = page.locator("[data-predict-final]")
    expect(final).to_contain_text("Finished: 10 of 12 right")
    expect(final.locator("[data-score]")).to_have_attribute("data-asked", "12")
    expect(page.locator("#predict-form")).to_have_count(0)

    # A reload of the pushed address shows the same verdict and score.
    page.reload()
    expect_position(page, STEPS, STEPS)
    expect(page.locator("[data-predict-final]")).to_contain_text("Finished: 10 of 12 right")

    page.locator('a[data-action="predict-again"]').click()
    expect_position(page, 0, STEPS)
    assert url_param(page, "score") == "0-0"
    expect(page.locator("#predict-form")).to_have_attribute("data-question-step", "0")
    expect(page.locator("[data-feedback]")).to_have_count(0)

    # Leaving the mode: the normal player at the same step.
    page.locator('a[data-action="predict-leave"]').click()
    expect_position(page, 0, STEPS)
    assert url_param(page, "mode") is None
    page.keyboard.press("ArrowRight")
    expect_position(page, 1, STEPS)


def focused(page: Page) -> Locator:
    return page.locator(".panel[data-focused]")


def test_presentation_mode_focus_and_arrow_keys(page: Page, screenshot: Screenshot) -> None:
    page.goto(player_url(PRESET, 5))
    expect_position(page, 5, STEPS)
    page.locator('a[data-action="present"]').click()
    expect(page.locator("body")).to_have_class(re.compile(r"\bis-present\b"))
    expect(focused(page)).to_have_attribute("data-panel", "tree")
    # The bitmap stays beside the tables whatever is picked; a panel not picked is hidden.
    expect(page.locator('[data-panel="bitmap"]')).to_be_visible()
    expect(page.locator('[data-panel="counters"]')).to_be_hidden()
    narration = page.locator('[data-panel="narration"]')
    expect(narration).to_be_visible()
    expect_no_page_scroll(page)
    assert fits(page, narration) and fits(page, focused(page))
    screenshot(page, "present-tree-step-05")

    page.keyboard.press("2")
    expect(focused(page)).to_have_attribute("data-panel", "bitmap")
    expect(page.locator('[data-focus="bitmap"]')).to_have_attribute("aria-current", "true")
    expect(page.locator('[data-panel="tree"]')).to_be_visible()
    expect(page.locator('[data-panel="bitmap"]')).to_be_visible()
    expect(page.locator('[data-panel="trace"]')).to_be_hidden()
    assert url_param(page, "focus") == "bitmap"

    page.keyboard.press("ArrowRight")
    expect_position(page, 6, STEPS)
    assert (url_param(page, "present"), url_param(page, "focus")) == ("1", "bitmap")
    expect(focused(page)).to_have_attribute("data-panel", "bitmap")
    page.keyboard.press("ArrowLeft")
    expect_position(page, 5, STEPS)
    page.keyboard.press("End")
    expect_position(page, STEPS, STEPS)
    expect(page.locator('[data-panel="bitmap"]')).to_contain_text("Lost to the migration")
    expect_no_page_scroll(page)

    page.keyboard.press("3")
    expect(focused(page)).to_have_attribute("data-panel", "trace")
    page.keyboard.press("1")
    expect(focused(page)).to_have_attribute("data-panel", "tree")
    assert url_param(page, "focus") is None  # the default panel is left out of the address
    page.keyboard.press("Home")
    expect_position(page, 0, STEPS)
    page.keyboard.press("ArrowRight")
    expect_position(page, 1, STEPS)
    assert url_param(page, "present") == "1"
    expect_no_page_scroll(page)
    screenshot(page, "present-tree-step-01")

    page.emulate_media(color_scheme="dark")
    page.goto(player_url(PRESET, 7) + "&present=1&focus=bitmap")
    expect_no_page_scroll(page)
    assert fits(page, focused(page))
    screenshot(page, "present-bitmap-step-07-dark")

    page.locator('a[data-action="present"]').click()
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bis-present\b"))
    assert url_param(page, "present") is None
    expect(page.locator('[data-panel="tree"]')).to_be_visible()


def test_predicting_on_a_projector(page: Page, screenshot: Screenshot) -> None:
    """Both modes at once: the question is on screen whole, → waits for it, the picker keeps the answer."""
    page.goto(player_url("lazy", 4) + "&mode=predict&score=3-4&present=1")
    expect_position(page, 4, STEPS)
    form = page.locator("#predict-form")
    expect(form).to_have_attribute("data-question-step", "4")
    expect_no_page_scroll(page)
    for choice in form.locator("button[data-choice]").all():
        assert fits(page, choice)
    page.keyboard.press("ArrowRight")
    expect_position(page, 4, STEPS)

    page.keyboard.press("c")  # the third choice: the fast path gives up, the slow path maps 4K (§7.2 (c))
    expect_position(page, 5, STEPS)
    expect(page.locator("[data-feedback]")).to_have_attribute("data-feedback", "right")
    expect(page.locator("[data-score]")).to_have_attribute("data-score", "4-5")
    expect_no_page_scroll(page)
    # The verdict, its explanation and the next question all on screen at once.
    expect(form).to_have_attribute("data-question-step", "5")
    for choice in [page.locator("[data-feedback]"), *form.locator("button[data-choice]").all()]:
        assert fits(page, choice)
    screenshot(page, "present-predict-lazy-step-05")

    page.keyboard.press("3")
    expect(focused(page)).to_have_attribute("data-panel", "trace")
    # Switching the panel shows the same page: the verdict stays, the address keeps the answer.
    expect(page.locator("[data-feedback]")).to_have_attribute("data-feedback", "right")
    assert url_param(page, "answer") == "bail"
    expect(page.locator('[data-panel="trace"] [data-event="drop_large_spte"]')).to_have_count(1)


def test_predict_works_without_javascript(browser: Browser, live_server: LiveServer) -> None:
    """The choices are buttons of a GET form, the panel picker plain links."""
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(player_url(PRESET, 4) + "&mode=predict&score=3-4&present=1")
        expect_position(page, 4, STEPS)
        page.locator('button[data-choice="fast"]').click()
        expect_position(page, 5, STEPS)
        expect(page.locator("[data-feedback]")).to_have_attribute("data-feedback", "right")
        expect(page.locator("[data-score]")).to_have_attribute("data-score", "4-5")
        assert url_param(page, "answer") == "fast" and url_param(page, "present") == "1"
        page.locator('a[data-focus="counters"]').click()
        expect(page.locator(".panel[data-focused]")).to_have_attribute("data-panel", "counters")
        expect(page.locator("[data-feedback]")).to_have_attribute("data-feedback", "right")
    finally:
        context.close()
