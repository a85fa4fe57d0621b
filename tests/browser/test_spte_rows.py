"""The tree's rows in a real browser: each bit by its name, set and clear told apart by more than colour and
named for a screen reader; what a step changed, bit by bit; the step's address walk; the inspector drawer
beside the tree, with its focus and Escape; one numbering of steps.

The worked example (kvm-mmu.md §7.2) gives the expected values: step 5 is the write of gfn 0x250, which
under lazy maps a 4K spte at L1[0x50] of the table for gfns 0x200–0x3ff (0x250 = 0x200 + 0x50, and
0x250 >> 9 = 1 is its index in L2), and under lazy-buggy makes the write-protected 2M spte L2[1] writable
again while slot 1 is dirty-logged: W goes from 0 to 1, the bug.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .pagehooks import expect_position, player_url, spte_selector
from .worked_example import L1_SP, L2_INDEX, L2_SP, STEPS

NAMES = ["R", "W", "X", "PS", "A", "D", "HW", "MW"]


def test_bits_are_named_set_and_clear_differ_in_shape_and_each_row_has_a_name(page: Page) -> None:
    page.goto(player_url("lazy-buggy", 5))
    large = page.locator(spte_selector(2, L2_SP, L2_INDEX))
    chips = large.locator("[data-bit]")
    expect(chips).to_have_count(8)
    assert chips.evaluate_all("cs => cs.map(c => c.getAttribute('data-bit'))") == NAMES
    assert chips.evaluate_all("cs => cs.map(c => c.textContent.trim())")[0] == "R"
    # §1.3: 0x80000ff7 has every flag set; a pointer (| 0x107) has R W X A, and so PS, D, HW, MW clear.
    expect(large).to_have_attribute("data-flags", "R W X PS A D HW MW")
    pointer = page.locator(spte_selector(4, 0, 0))
    style = """c => { const s = getComputedStyle(c);
        return [s.borderTopStyle, s.textDecorationLine, s.backgroundColor]; }"""
    set_style = pointer.locator('> a [data-bit="R"][data-bit-set="1"]').evaluate(style)
    clear_style = pointer.locator('> a [data-bit="PS"][data-bit-set="0"]').evaluate(style)
    assert set_style[0] != clear_style[0]  # a solid border, a dashed one
    assert "line-through" in clear_style[1] and "line-through" not in set_style[1]
    expect(pointer.locator('> a [data-bit="PS"]')).to_have_text("PS")  # the name, not a dot
    # Every row's bits have an accessible name in words.
    names = page.locator("[data-spte] .bits").evaluate_all(
        "els => els.map(e => (e.getAttribute('aria-labelledby') || '').split(' ')"
        ".map(id => (document.getElementById(id) || {}).textContent || '').join(' '))"
    )
    assert names and all(name.startswith("bits: readable, ") for name in names)
    every_bit = re.compile(r"^bits: readable, writable, executable, large page, accessed, dirty, host-w")
    expect(page.get_by_role("img", name=every_bit)).to_have_count(1)  # L2[1], 0x80000ff7


def test_axe_finds_nothing_wrong_in_the_tree_and_the_inspector(page: Page) -> None:
    axe_module = pytest.importorskip("axe_playwright_python.sync_playwright")
    page.goto(player_url("lazy-buggy", 5) + "&spte=2:0:1")
    results = axe_module.Axe().run(page, context={"include": [["#panel-tree"], ["#panel-inspector"]]})
    violations = [
        f"{v['id']}: {[n['target'] for n in v['nodes']][:3]}" for v in results.response["violations"]
    ]
    assert violations == []


def test_a_changed_spte_shows_each_bit_it_changed_and_flags_the_dangerous_one(page: Page) -> None:
    page.goto(player_url("lazy-buggy", 5))
    large = page.locator(spte_selector(2, L2_SP, L2_INDEX))
    expect(large).to_have_attribute("data-changed", "1")
    w = large.locator('[data-bit="W"]')
    expect(w).to_have_attribute("data-bit-change", "0>1")
    expect(w).to_have_attribute("data-bit-set", "1")
    expect(w).to_contain_text("W 0→1")
    expect(w).to_have_attribute("data-bit-danger", "no_writable_large_while_logging")
    expect(large.locator("[data-bit-change]")).to_have_count(1)  # only W changed (0x…ff5 → 0x…ff7)
    # Step 3 (migrate_begin: logging on) had write-protected it, and said so.
    page.goto(player_url("lazy-buggy", 3))
    w = page.locator(spte_selector(2, L2_SP, L2_INDEX)).locator('[data-bit="W"]')
    expect(w).to_have_attribute("data-bit-change", "1>0")
    expect(w).to_have_text("W 1→0")
    expect(w).not_to_have_attribute("data-bit-danger", re.compile(".*"))


def test_the_walk_of_the_faulting_gfn_is_shown_and_marked_in_the_tree(page: Page) -> None:
    page.goto(player_url("lazy", 4))
    page.keyboard.press("ArrowRight")  # reached by an htmx swap
    expect_position(page, 5, STEPS)
    line = page.locator("[data-walk-path]")
    expect(line).to_be_visible()
    expect(line).to_contain_text("gfn 0x250: L4[0] → L3[0] → L2[1] → L1[0x50]")
    walked = page.locator('[data-spte][data-walk="1"]')
    expect(walked).to_have_count(4)
    for level, sp_gfn, index in ((4, 0, 0), (3, 0, 0), (2, L2_SP, L2_INDEX), (1, L1_SP, 0x50)):
        entry = page.locator(spte_selector(level, sp_gfn, index))
        expect(entry).to_have_attribute("data-walk", "1")
        expect(entry.locator(".walk-tag").first).to_be_visible()
    # A step that touches no guest page walks nowhere: step 8 is a migration round.
    page.goto(player_url("lazy", 8))
    expect(page.locator("[data-walk-path]")).to_have_count(0)
    expect(page.locator('[data-walk="1"]')).to_have_count(0)


def test_the_inspector_opens_beside_the_tree_focused_and_escape_closes_it(page: Page) -> None:
    page.goto(player_url("lazy", 5))
    spte = page.locator(spte_selector(1, L1_SP, 0x50))
    link = spte.locator("> a[data-inspect]")
    link.click()
    expect(page).to_have_url(re.compile(r"[?&]spte=1:200:50(&|$)"))
    drawer = page.get_by_role("dialog", name=re.compile(r"^Spte inspector"))
    expect(drawer).to_be_visible()
    expect(page.locator("#h-inspector")).to_be_focused()
    expect(drawer).to_contain_text("L1[0x50]")
    # Within the viewport, beside the tree rather than below it.
    box = drawer.bounding_box()
    tree = page.locator("#panel-tree").bounding_box()
    viewport = page.viewport_size
    assert box is not None and tree is not None and viewport is not None
    assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"] + 1
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"] + 1
    assert box["x"] >= tree["x"] + tree["width"] - 1  # to its right, not on top of it
    # Its history reads bit by bit: created by the write at step 5.
    expect(drawer.locator('[data-history-step="5"]')).to_contain_text("created")
    page.keyboard.press("Escape")
    expect(page).not_to_have_url(re.compile(r"spte="))
    expect(page.locator("#panel-inspector")).not_to_have_class(re.compile(r"\bis-open\b"))
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(link).to_be_focused()
    # The close link does the same.
    link.click()
    expect(page.locator("#h-inspector")).to_be_focused()
    page.locator('a[data-action="close-inspector"]').click()
    expect(page).not_to_have_url(re.compile(r"spte="))
    expect(link).to_be_focused()


def test_on_a_narrow_screen_the_inspector_is_a_drawer_at_the_right_edge(page: Page) -> None:
    page.set_viewport_size({"width": 800, "height": 700})
    page.goto(player_url("lazy", 9) + "&spte=1:200:50")
    drawer = page.locator("#panel-inspector")
    expect(drawer).to_be_visible()
    box = drawer.bounding_box()
    assert box is not None
    assert box["x"] + box["width"] <= 800 and box["x"] + box["width"] >= 800 - 24  # against the right edge
    assert box["y"] + box["height"] <= 700 + 1
    # §7.2 under lazy: the round at step 8 write-protected it, the fast path at step 9 made it writable.
    expect(drawer.locator('[data-history-step="8"] [data-bit="W"]')).to_have_text("W 1→0")
    expect(drawer.locator('[data-history-step="9"] [data-bit="W"]')).to_have_text("W 0→1")


def test_the_narration_tag_is_the_step_number(page: Page) -> None:
    page.goto(player_url("lazy-buggy", 0))
    expect(page.locator(".narration-line .step-tag")).to_have_count(0)  # nothing has run at step 0
    expect(page.locator(".next-op .step-tag")).to_have_text("#1")
    for step in range(1, 9):
        page.keyboard.press("ArrowRight")
        expect_position(page, step, STEPS)
        expect(page.locator(".narration-line .step-tag")).to_have_text(f"#{step}")
        expect(page.locator("#position .pos-op")).to_contain_text(f"ran #{step} ")
        expect(page.locator('.step-window [aria-current="step"] .step-tag')).to_have_text(f"#{step}")
        expect(page.locator(".next-op .step-tag")).to_have_text(f"#{step + 1}")
    # Step 8 is lazy-buggy's first migration round, whose dirty log misses the pages it wrote: the
    # violation is "at" the same step number the position shows.
    current = page.locator(".violation.is-current").first
    expect(current).to_contain_text("at #8 (this step)")
    expect(page.locator("#h-trace")).to_contain_text("of #8 migrate_round")


def test_with_a_long_share_code_the_spte_buttons_open_and_close_the_drawer_too(page: Page) -> None:
    """A player URL over 256 bytes makes every spte a button of one shared form (docs/ui-hooks.md): the
    drawer takes the focus and gives it back to that button the same way."""
    from engine.codec import encode_scenario
    from engine.scenario import parse_scenario
    from scenarios import load_builtin_text

    code = encode_scenario(parse_scenario(load_builtin_text("worked-example")))
    page.goto(f"/play?s={code}&variant=lazy&step=5")
    button = page.locator(spte_selector(1, L1_SP, 0x50)).locator("> button[data-inspect]")
    expect(button).to_have_count(1)  # the compact form of links, or this test tests nothing
    button.click()
    expect(page).to_have_url(re.compile(r"[?&]spte=1:200:50(&|$)"))
    expect(page.locator("#h-inspector")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page).not_to_have_url(re.compile(r"spte="))
    expect(button).to_be_focused()
