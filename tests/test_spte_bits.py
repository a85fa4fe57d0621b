"""Spte bits by name, their changes, the dangerous ones, the address walk and one numbering of steps.

Expected values come from the spec: the bit positions of kvm-mmu.md §1.1 and the worked constants of §1.3
(via tests/browser/worked_example.py, which takes them from there), the worked example's steps (§7.2), and
the invariants' definitions (contract §4: `w_implies_hw_mw`, `no_writable_large_while_logging`).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from browser.worked_example import LARGE_RO_D, LARGE_RW_D
from fastapi.testclient import TestClient

from app.main import create_app
from app.treehtml import bit_chips, changed_bits_html
from app.views.text import BIT_WORDS, bit_changes, bits_label
from app.views.tree import TableView, TreeBuilder, walk_gfn
from app.views.tree_fold import SpteView
from engine.policy import make_policy
from engine.scenario import parse_scenario
from engine.simulation import Simulation
from engine.spte import FLAG_BITS, PT_WRITABLE_MASK, SPTE_HOST_WRITEABLE, flag_word
from scenarios import load_builtin_text

NAMES = ["R", "W", "X", "PS", "A", "D", "HW", "MW"]  # contract §7's order
PLAY = "/play?scenario=worked-example"


class Chip:
    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.text = ""


class Chips(HTMLParser):
    """The `[data-bit]` chips of some HTML, in order, with their text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.chips: list[Chip] = []
        self._open: Chip | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if "data-bit" in found:
            self._open = Chip(tag, found)
            self.chips.append(self._open)

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open.text += data


def word(flags: str) -> int:
    bits = dict(FLAG_BITS)
    return sum(bits[name] for name in flags.split())


# --- names ---------------------------------------------------------------------------------------------


def test_every_flag_has_a_name_for_set_and_for_clear() -> None:
    assert [name for name, _ in FLAG_BITS] == NAMES
    assert set(BIT_WORDS) == set(NAMES)
    for on, off in BIT_WORDS.values():
        assert on and off and on != off


def test_the_label_names_every_bit_set_or_clear() -> None:
    # §1.3: 0x80000ff5 is the 2M leaf write-protected for logging, after the guest wrote it.
    label = bits_label(word("R X PS A D HW MW"))
    assert label == (
        "bits: readable, not writable, executable, large page, accessed, dirty, host-writable, MMU-writable"
    )


def test_the_chips_name_each_bit_and_tell_set_from_clear_by_element() -> None:
    chips = Chips(bit_chips(word("R W X A"))).chips  # a pointer: the table's address | 0x107 (§1.3)
    assert [c.attrs["data-bit"] for c in chips] == NAMES
    assert [c.text for c in chips] == NAMES  # the name, never a dot
    set_ = {c.attrs["data-bit"] for c in chips if c.attrs["data-bit-set"] == "1"}
    assert set_ == {"R", "W", "X", "A"}
    # Set and clear are different elements (a filled and a struck chip), not only different colours.
    assert {c.tag for c in chips if c.attrs["data-bit-set"] == "1"} == {"b"}
    assert {c.tag for c in chips if c.attrs["data-bit-set"] == "0"} == {"s"}
    assert not any("data-bit-change" in c.attrs for c in chips)


# --- changes bit by bit -------------------------------------------------------------------------------


def test_a_change_is_read_bit_by_bit() -> None:
    # §7.2 step 6 under lazy-buggy: the fast path sets W on the write-protected 2M spte (0x...ff5 → 0x...ff7).
    old, new = int(LARGE_RO_D, 16), int(LARGE_RW_D, 16)
    assert new ^ old == PT_WRITABLE_MASK
    three = Simulation(parse_scenario(load_builtin_text("worked-example")), make_policy("lazy")).kvm.masks
    assert bit_changes(flag_word(old, three), flag_word(new, three)) == (("W", False, True),)
    chips = Chips(bit_chips(flag_word(new, three), flag_word(old, three))).chips
    (changed,) = [c for c in chips if "data-bit-change" in c.attrs]
    found = (changed.attrs["data-bit"], changed.attrs["data-bit-change"], changed.text)
    assert found == ("W", "0>1", "W 0→1")
    back = Chips(bit_chips(flag_word(old, three), flag_word(new, three))).chips
    (changed,) = [c for c in back if "data-bit-change" in c.attrs]
    assert (changed.tag, changed.attrs["data-bit-change"], changed.text) == ("s", "1>0", "W 1→0")
    assert bits_label(flag_word(old, three), flag_word(new, three)).endswith("; changed: W 1→0")


def test_the_history_shows_only_the_changed_bits() -> None:
    html = str(changed_bits_html(word("R X A D HW MW"), word("R W X A HW MW")))
    texts = [c.text for c in Chips(html).chips]
    assert texts == ["W 1→0", "D 0→1"]
    assert str(changed_bits_html(word("R W"), word("R W"))) == ""


# --- the tree: the dangerous changes and the walk -------------------------------------------------------


def run_to(variant: str, steps: int) -> Simulation:
    sim = Simulation(parse_scenario(load_builtin_text("worked-example")), make_policy(variant))
    for _ in range(steps):
        sim.step()
    return sim


def entries(table: TableView) -> list[SpteView]:
    found: list[SpteView] = []
    for item in table.items:
        if isinstance(item, SpteView):
            found.append(item)
            if item.child is not None:
                found.extend(entries(item.child))
    return found


def test_a_large_spte_made_writable_while_logged_is_flagged() -> None:
    """§7.2 step 6 (index 4, write 0x250): lazy-buggy's fast path makes L2[1] writable while slot 1 is
    logged, the bug; under lazy the same write maps a 4K page, and nothing it changes is dangerous."""
    for variant, danger in (("lazy-buggy", "no_writable_large_while_logging"), ("lazy", "")):
        sim = run_to(variant, 4)
        result = sim.step()
        assert walk_gfn(result) == 0x250
        # The step's writes as the player takes them: (table, index) → the value before the step.
        views = entries(TreeBuilder(sim.kvm, sim.kvm.log.touched, None, 64).build().root)
        (l2,) = [e for e in views if (e.level, e.index) == (2, 1)]
        assert l2.changed
        if variant == "lazy":  # the 2M leaf became a pointer: no bit of it means what it meant before
            assert l2.kind == "ptr" and l2.bit_changes == ()
        else:
            assert l2.bit_changes == (("W", False, True),)
        flagged = [(e.level, e.index, e.danger, e.danger_bit) for e in views if e.danger]
        assert flagged == ([(2, 1, danger, "W")] if danger else [])


def test_w_without_hw_is_flagged() -> None:
    """W ⇒ HW ∧ MW (spte_is_locklessly_modifiable): a change that leaves W set and clears HW breaks it."""
    sim = run_to("lazy", 1)  # §7.2 step 1: the read faults L2[1] in as a writable 2M leaf
    (l2,) = [sp for sp in sim.kvm.active_mmu_pages.values() if sp.level == 2]
    good = l2.spt[1]
    assert good & PT_WRITABLE_MASK and good & SPTE_HOST_WRITEABLE
    l2.spt[1] = good & ~SPTE_HOST_WRITEABLE
    old = good & ~PT_WRITABLE_MASK
    tree = TreeBuilder(sim.kvm, {(l2, 1): old}, None, 64).build()
    (view,) = [e for e in entries(tree.root) if e.level == 2]
    assert view.danger == "w_implies_hw_mw" and view.danger_bit == "W"
    assert [(n, was, now) for n, was, now in view.bit_changes] == [("W", False, True), ("HW", True, False)]


def test_the_walk_splits_the_gfn_into_four_indices() -> None:
    """gfn 0x250 = L4 index 0, L3 index 0, L2 index 1 (0x250 >> 9), L1 index 0x50 (0x250 & 0x1ff)."""
    sim = run_to("lazy", 5)  # after the write of 0x250, lazy maps it by a 4K spte under L2[1]
    walk = TreeBuilder(sim.kvm, {}, None, 64, walk=0x250).build().walk
    assert walk is not None
    assert [(h.level, h.index, h.state) for h in walk.hops] == [
        (4, 0, "table"), (3, 0, "table"), (2, 1, "table"), (1, 0x50, "leaf")
    ]  # fmt: skip
    assert [h.name for h in walk.hops] == ["L4[0]", "L3[0]", "L2[1]", "L1[0x50]"]
    buggy = run_to("lazy-buggy", 5)  # there the 2M leaf L2[1] still maps it
    walk = TreeBuilder(buggy.kvm, {}, None, 64, walk=0x250).build().walk
    assert walk is not None and [h.state for h in walk.hops] == ["table", "table", "leaf", "beyond"]
    assert "2M leaf L2[1]" in walk.end
    empty = run_to("lazy", 0)
    walk = TreeBuilder(empty.kvm, {}, None, 64, walk=0x250).build().walk
    assert walk is not None and [h.state for h in walk.hops] == ["absent", "beyond", "beyond", "beyond"]


def test_only_guest_accesses_have_a_walk() -> None:
    sim = Simulation(parse_scenario(load_builtin_text("worked-example")), make_policy("lazy"))
    gfns = [walk_gfn(sim.step()) for _ in range(8)]
    # read 0x210, write 0x2a0, migrate_begin, read 0x2c0, write 0x250, write 0x260, write 0x2c0, round
    assert gfns == [0x210, 0x2A0, None, 0x2C0, 0x250, 0x260, 0x2C0, None]


# --- the page ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def rows(html: str) -> list[tuple[str, list[Chip]]]:
    """Each drawn spte's data-flags and its chips."""
    found = []
    row = r'<li class="spte[^>]* data-spte [^>]*data-flags="([^"]*)"[^>]*>(.*?)</a>'
    for match in re.finditer(row, html, re.S):
        found.append((match.group(1), Chips(match.group(2)).chips))
    return found


def test_every_row_shows_its_flags_by_name_as_its_hook_says(client: TestClient) -> None:
    html = client.get(f"{PLAY}&variant=lazy-buggy&step=5").text
    drawn = rows(html)
    assert len(drawn) == 3  # L4[0] and L3[0] pointing down, the 2M leaf L2[1]
    for flags, chips in drawn:
        assert [c.attrs["data-bit"] for c in chips] == NAMES
        assert [c.attrs["data-bit"] for c in chips if c.attrs["data-bit-set"] == "1"] == flags.split()
    # The changed 2M leaf says "W 0→1", flagged as the bug.
    assert re.search(r'data-bit=W data-bit-set=1 data-bit-change="0>1" data-bit-danger=no_writable', html)
    # Every row's bits are named by an element that exists, once per distinct combination.
    labels = set(re.findall(r"aria-labelledby=(bl\d+)>", html))
    assert labels and all(f'<span id="{label}">bits: ' in html for label in labels)


@pytest.mark.parametrize("step", [3, 5, 9])
def test_the_6x_layout_shows_the_same_names(client: TestClient, step: int) -> None:
    """modern keeps HW and MW at bits 57 and 58 (6.x): the chips read them there, as data-flags does."""
    drawn = rows(client.get(f"{PLAY}&variant=modern&step={step}").text)
    assert drawn
    assert any("HW" in flags.split() for flags, _ in drawn)
    for flags, chips in drawn:
        assert [c.attrs["data-bit"] for c in chips] == NAMES
        assert [c.attrs["data-bit"] for c in chips if c.attrs["data-bit-set"] == "1"] == flags.split()


def test_the_walk_is_in_the_tree_header_and_on_its_entries(client: TestClient) -> None:
    html = client.get(f"{PLAY}&variant=lazy&step=5").text
    line = re.search(r"<p class=\"walk-line\" data-walk-path data-walk-gfn=\"0x250\">(.*?)</p>", html, re.S)
    assert line is not None
    text = re.sub(r"<[^>]+>", "", line.group(1))
    assert "gfn 0x250: L4[0] → L3[0] → L2[1] → L1[0x50]" in text
    entry = r'data-level="(0x\d)" data-sp-gfn="(0x[0-9a-f]+)" data-index="(0x[0-9a-f]+)"[^>]*data-walk="1"'
    marked = re.findall(entry, html)
    assert marked == [
        ("0x4", "0x0", "0x0"), ("0x3", "0x0", "0x0"), ("0x2", "0x0", "0x1"), ("0x1", "0x200", "0x50")
    ]  # fmt: skip
    assert "data-walk-path" not in client.get(f"{PLAY}&variant=lazy&step=3").text  # migrate_begin


def test_the_compare_view_says_the_changed_bits(client: TestClient) -> None:
    html = client.get("/compare?scenario=worked-example&variants=lazy-buggy,lazy&step=5").text
    assert "L2[0x1] of table 0x0: 0x80000ff5 → 0x80000ff7 (W 0→1)" in html
    # lazy replaces the leaf by a pointer: its values, no bit list
    assert re.search(r"L2\[0x1\] of table 0x0: 0x80000ff5 → 0x[0-9a-f]+107<", html)


def test_a_leaf_replaced_by_a_table_is_said_so_in_the_history(client: TestClient) -> None:
    html = client.get(f"{PLAY}&variant=lazy&step=5&spte=2:0:1").text
    history = dict(re.findall(r'<li data-history-step="(\d+)">(.*?)</li>', html, re.S))
    assert "replaced by a table pointer" in history["5"] and "data-bit" not in history["5"]
    assert [c.text for c in Chips(history["3"]).chips] == ["W 1→0"]  # logging on: write-protected


def test_the_inspector_history_reads_bit_by_bit(client: TestClient) -> None:
    """§7.2 under lazy, L1[0x50] (gfn 0x250): created writable by the write at step 5, write-protected by
    the round at step 8, made writable again by the fast path at step 9."""
    html = client.get(f"{PLAY}&variant=lazy&step=9&spte=1:200:50").text
    history = dict(re.findall(r'<li data-history-step="(\d+)">(.*?)</li>', html, re.S))
    assert list(history) == ["5", "8", "9"]
    assert "created" in history["5"]
    assert [c.text for c in Chips(history["8"]).chips] == ["W 1→0"]
    assert [c.text for c in Chips(history["9"]).chips] == ["W 0→1"]
    assert ">#8</span>" in history["8"]


def test_one_numbering_of_steps(client: TestClient) -> None:
    """The op that produces step N is "#N" on every panel: the narration, the window, the next op, the
    trace, the violations."""
    html = client.get(f"{PLAY}&variant=lazy-buggy&step=8").text
    assert 'data-step="8"' in html
    assert re.search(r'<p class="narration-line"><span class="step-tag">#8</span> ', html)
    current = re.search(r'<li class="is-current" aria-current="step">.*?class="step-tag">#(\d+)</span>', html)
    assert current is not None and current.group(1) == "8"
    assert re.search(r'Next: <span class="step-tag">#9</span>', html)
    assert re.search(r"Kernel trace <span class=\"muted\">of #8 migrate_round", html)
    # lazy-buggy's first round (scenario index 7, step 8) misses the pages written through the 2M spte.
    assert "at #8 (this step)" in html
