"""Moving through the player: the step links, the keyboard, the help dialog, and URLs that reload to the
same state (style.md rule 5: reloading `/play?…&step=N` shows the identical state)."""

from __future__ import annotations

from playwright.sync_api import Browser, Page, expect

from .conftest import LiveServer
from .pagehooks import dirty_snapshot, expect_position, player_url, spte_snapshot
from .worked_example import STEPS

PRESET = "lazy"


def step_and_check(page: Page, action: str, step: int) -> None:
    """Do `action` (a key, or 'click:next') and check that the page and its URL moved to `step`."""
    if action == "click:next":
        page.locator('a[data-nav="next"]').first.click()
    else:
        page.keyboard.press(action)
    expect_position(page, step, STEPS)
    # The address bar names the same scenario and preset, so the URL is worth sharing.
    assert f"variant={PRESET}" in page.url
    assert "scenario=worked-example" in page.url


def reload_and_compare(page: Page, step: int) -> None:
    """Reloading the pushed URL renders the full page at the same step with the same sptes and bitmap."""
    sptes, dirty = spte_snapshot(page), dirty_snapshot(page)
    assert sptes, f"no [data-spte] rendered at step {step}"
    page.reload()
    expect_position(page, step, STEPS)
    assert spte_snapshot(page) == sptes
    assert dirty_snapshot(page) == dirty


def test_links_and_keys_move_the_player_and_the_url(page: Page) -> None:
    page.goto(player_url(PRESET, 0))
    expect_position(page, 0, STEPS)

    step_and_check(page, "click:next", 1)
    step_and_check(page, "click:next", 2)
    reload_and_compare(page, 2)

    step_and_check(page, "ArrowRight", 3)
    step_and_check(page, "ArrowRight", 4)
    step_and_check(page, "ArrowLeft", 3)
    reload_and_compare(page, 3)

    step_and_check(page, "End", STEPS)
    reload_and_compare(page, STEPS)

    step_and_check(page, "Home", 0)
    step_and_check(page, "ArrowRight", 1)


def test_question_mark_toggles_the_help(page: Page) -> None:
    page.goto(player_url(PRESET, 5))
    expect_position(page, 5, STEPS)
    help_dialog = page.locator("#help")
    expect(help_dialog).to_be_hidden()

    page.keyboard.press("?")
    expect(help_dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()

    page.keyboard.press("?")
    expect(help_dialog).to_be_visible()
    page.keyboard.press("?")
    expect(help_dialog).to_be_hidden()

    # Opening and closing the help does not move the player.
    expect_position(page, 5, STEPS)


def test_step_links_work_without_javascript(browser: Browser, live_server: LiveServer) -> None:
    """The step links are real links (style.md, "Pages work with JavaScript off, as links")."""
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(player_url(PRESET, 2))
        expect_position(page, 2, STEPS)
        page.locator('a[data-nav="next"]').first.click()
        expect_position(page, 3, STEPS)
        page.locator('a[data-nav="last"]').first.click()
        expect_position(page, STEPS, STEPS)
    finally:
        context.close()


def test_the_share_box_is_made_whole_from_the_address_bar(page: Page, live_server: LiveServer) -> None:
    """The server writes the share link as a path (it has no public URL and never trusts Host); the
    page's script puts the browser's own origin in front, on load and after every step."""
    page.goto(player_url(PRESET, 2))
    share = page.locator("#share-url")
    expect(share).to_have_value(f"{live_server.url}/play?scenario=worked-example&variant={PRESET}&step=2")
    page.locator('a[data-nav="next"]').first.click()
    expect_position(page, 3, STEPS)
    expect(share).to_have_value(f"{live_server.url}/play?scenario=worked-example&variant={PRESET}&step=3")
