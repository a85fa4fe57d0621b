"""The landing page's editor names what is wrong with a scenario before anything runs (contract §1, "Limits
and errors"), and clears the error once the scenario is fixed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, expect

from .conftest import PageProblems
from .pagehooks import Screenshot, expect_position
from .test_hostile_links import accept_document_status
from .worked_example import STEPS

WORKED_EXAMPLE_JSON = Path(__file__).resolve().parents[2] / "scenarios" / "worked-example.json"
BAD_STEP = 4  # write 0x250 in the worked example


def scenario_text(gfn_of_bad_step: str) -> str:
    scenario: dict[str, Any] = json.loads(WORKED_EXAMPLE_JSON.read_text(encoding="utf-8"))
    assert scenario["steps"][BAD_STEP] == {"op": "write", "gfn": "0x250"}
    scenario["steps"][BAD_STEP]["gfn"] = gfn_of_bad_step
    return json.dumps(scenario, indent=2)


def edit(editor: Locator, text: str) -> None:
    """Replace the editor's text as a person pasting it would: the paste, a key, then leaving the field."""
    editor.fill(text)
    editor.press("End")
    editor.blur()


def test_editor_shows_the_failing_step_and_then_accepts_the_fix(page: Page, screenshot: Screenshot) -> None:
    page.goto("/")
    editor = page.locator('form#editor textarea[name="scenario"]')
    status = page.locator("#editor-status")

    # Slot 1 holds gfns 0x200-0x3ff: 0x400 is one past its end.
    edit(editor, scenario_text("0x400"))
    expect(status).to_have_attribute("data-valid", "0")
    error = status.locator("[data-error]")
    expect(error).to_have_count(1)
    expect(error).to_have_attribute("data-error-step", str(BAD_STEP))
    expect(error).to_contain_text("outside every memslot")
    expect(error).to_contain_text("0x400")
    screenshot(page, "editor-error")

    edit(editor, scenario_text("0x250"))
    expect(status).to_have_attribute("data-valid", "1")
    expect(status.locator("[data-error]")).to_have_count(0)

    # The fixed scenario plays: POST /play redirects to the player with its share code.
    page.locator('button[data-action="play"]').click()
    expect_position(page, 0, STEPS)
    assert "/play?" in page.url
    assert "s=1." in page.url


def test_a_refused_play_opens_on_the_editor_and_its_error(page: Page, page_problems: PageProblems) -> None:
    """"Play this" on a scenario with an error answers the landing page again: it must open where the
    scenario and its message are, not at the top with the story and the cards between."""
    page.set_viewport_size({"width": 1024, "height": 768})
    page.goto("/")
    editor = page.locator('form#editor textarea[name="scenario"]')
    # Pasted without leaving the field, so the live check has not run: the server's answer is all there is.
    editor.fill(scenario_text("0x400"))
    page.locator('button[data-action="play"]').click()
    page.wait_for_load_state("load")
    error = page.locator("#editor-status [data-error]")
    expect(error).to_contain_text("outside every memslot")
    expect(page.locator("#editor-status")).to_be_focused()
    expect(error).to_be_in_viewport()
    assert page.evaluate("() => window.scrollY") > 0
    accept_document_status(page_problems, 422, page.url)
