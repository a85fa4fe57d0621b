"""The player, compare view, predict mode and presentation mode under shadow paging (`vm.mmu: "shadow"`),
through FastAPI's TestClient and the page hooks of docs/ui-hooks.md.

S1 of shadow-mmu.md §4 (tests/test_shadow_paging.py): one slot of two 2M host pages (gfns 0x200-0x5ff),
identity-mapped by the guest with 2M pages (PD 0x202 entries 1 and 2), its tables at 0x200 (PML4),
0x201 (PDPT) and 0x202 (PD). The guest links gfn 0x480 as the page table of gva 0x600000 (PD entry 3)
and maps 0x500 through it; reading 0x600000 shadows 0x480, which lies under the 2M spte of
0x400-0x5ff: 3.14 zaps that spte, 3.16 keeps it read-only (W and MW cleared, HW kept). Writing the
table unsyncs its level-1 shadow page. Every expected value below is read off the spec and the guest's
layout, not off a run.
"""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_app_routes import Element, Page, page
from test_shadow_paging import S1, shadow

from app.cache import Run
from app.explain.context import Context
from app.explain.events import explain
from app.main import create_app
from app.predict import Question, question_for
from app.settings import Settings
from app.views.guest_tables import DRAW_CAP
from engine.codec import encode_scenario
from engine.guest_pt import walk_addr_generic
from engine.policy import SHADOW_PAGING_INERT, make_policy
from engine.scenario import parse_scenario
from engine.shadow_query import peek_guest_walk
from engine.simulation import Simulation
from engine.spte import PT_ACCESSED_MASK, PT_DIRTY_MASK
from engine.trace import event_json

CODE = encode_scenario(parse_scenario(S1))
# The steps as the player counts them: step=N shows the state after the first N steps.
SHADOWED = 4  # after "read gva 0x600000": 0x480 is shadowed
TABLE_WRITTEN = 7  # after "write gfn 0x480": its shadow page is unsync
LARGE = "2:0x202:0x2"  # the 2M spte of gfns 0x400-0x5ff: entry 2 of the shadow of PD 0x202
PT_LEAF = "1:0x480:0x0"  # gva 0x600000 → gfn 0x500: entry 0 of the shadow of PT 0x480


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), follow_redirects=False)


def play(client: TestClient, step: int, preset: str = "lazy", code: str = CODE, **params: str) -> Page:
    tail = "".join(f"&{k}={v}" for k, v in params.items())
    return page(client, f"/play?s={code}&variant={preset}&step={step}{tail}")


def one(found: list[Element]) -> Element:
    assert len(found) == 1, [e.attrs for e in found]
    return found[0]


def bits(html: Page, row: Element) -> dict[str, bool]:
    """The flag chips inside `row` (the first chip of each name), as set or clear."""
    out: dict[str, bool] = {}
    for chip in html.find(data_bit=None):
        if row in chip.ancestors and chip.attrs["data-bit"] not in out:
            out[chip.attrs["data-bit"]] = chip.attrs["data-bit-set"] == "1"
    return out


def code_of(data: dict[str, Any]) -> str:
    return encode_scenario(parse_scenario(data))


# --- the tables side by side --------------------------------------------------------------------------------


def test_the_guest_tables_of_cr3_are_drawn_with_the_shadowed_ones_marked(client: TestClient) -> None:
    html = play(client, SHADOWED)
    panel = one(html.find(id="panel-tree"))
    assert panel.attrs["data-mmu"] == "shadow"
    # PML4 → PDPT → PD → PT, each the table the guest's layout puts there.
    tables = {e.attrs["data-guest-table"]: e for e in html.find(data_guest_table=None)}
    assert {gfn: tables[gfn].attrs["data-guest-level"] for gfn in tables} == {
        "0x200": "4", "0x201": "3", "0x202": "2", "0x480": "1",
    }  # fmt: skip
    # Reading 0x600000 walked all four: KVM shadows each, in sync, so each is write-protected.
    marks = {gfn: e.attrs.get("data-shadowed") for gfn, e in tables.items()}
    assert marks == dict.fromkeys(tables, "protected")
    # The PD's entries: the two 2M identity pages and the pointer to 0x480 the guest wrote at step 2.
    pd = {e.attrs["data-gpte"]: e.attrs["data-gpte-value"] for e in html.find(data_gpte=None)}
    assert pd["2:0x202:0x1"] == "0x2000e7"  # P W U A D PS, gfn 0x200
    assert pd["2:0x202:0x2"] == "0x4000e7"
    assert pd["2:0x202:0x3"] == "0x480027"
    assert pd["1:0x480:0x0"] == "0x500067"
    leaf = one(html.find(data_gpte="1:0x480:0x0"))
    set_bits = {"P": True, "W": True, "U": True, "A": True, "D": True}
    assert bits(html, leaf) == {**set_bits, "PS": False, "NX": False}


def test_before_shadowing_0x480_is_not_marked(client: TestClient) -> None:
    html = play(client, SHADOWED - 1)  # the guest wrote the PTE; nothing has walked through it yet
    tables = {e.attrs["data-guest-table"]: e for e in html.find(data_guest_table=None)}
    assert "data-shadowed" not in tables["0x480"].attrs


def test_lazy_keeps_the_2m_spte_read_only_and_writable_by_the_host(client: TestClient) -> None:
    html = play(client, SHADOWED, "lazy")
    row = one(html.find(data_shadow_spte=LARGE))
    assert row.attrs["data-large"] == "1"
    assert row.attrs["data-changed"] == "1"
    assert "data-removed" not in row.attrs
    assert (row.attrs["data-gva"], row.attrs["data-gfn"]) == ("0x400000", "0x400")
    flags = bits(html, row)
    assert not flags["W"] and not flags["MW"] and flags["HW"] and flags["PS"]
    # The table it sits in is the shadow of the guest's PD, an indirect page.
    table = one(html.find(data_shadow_table="2:0x202"))
    assert table.attrs["data-shadow-direct"] == "0"


def test_zap_removes_the_2m_spte_when_0x480_is_shadowed(client: TestClient) -> None:
    html = play(client, SHADOWED, "zap")
    row = one(html.find(data_shadow_spte=LARGE))
    assert row.attrs["data-removed"] == "1"
    # After it, the read of another page of the range maps 4K: the entry points to a direct page (the
    # guest page is 2M), no huge spte may map a range holding a shadowed table.
    after = play(client, SHADOWED + 1, "zap")
    assert "data-large" not in one(after.find(data_shadow_spte=LARGE)).attrs
    direct = one(after.find(data_shadow_table="1:0x400"))
    assert direct.attrs["data-shadow-direct"] == "1"
    leaf = one(after.find(data_shadow_spte="1:0x400:0x20"))  # gfn 0x420 is entry 0x20 of 0x400-0x5ff
    assert (leaf.attrs["data-gva"], leaf.attrs["data-gfn"]) == ("0x420000", "0x420")


def test_writing_the_table_unsyncs_it(client: TestClient) -> None:
    html = play(client, TABLE_WRITTEN)
    found = html.find(data_guest_table=None)
    tables = {e.attrs["data-guest-table"]: e.attrs.get("data-shadowed") for e in found}
    assert tables == {"0x200": "protected", "0x201": "protected", "0x202": "protected", "0x480": "unsync"}
    assert one(html.find(data_shadow_table="1:0x480")).attrs["data-unsync"] == "1"
    assert [e.attrs["data-unsync-gfn"] for e in html.find(data_unsync_gfn=None)] == ["0x480"]
    protected = [e.attrs["data-protected-gfn"] for e in html.find(data_protected_gfn=None)]
    assert protected == ["0x200", "0x201", "0x202"]


# --- the walk strip -----------------------------------------------------------------------------------------


def test_the_walk_strip_joins_the_guest_walk_the_gfn_and_the_shadow_spte(client: TestClient) -> None:
    html = play(client, SHADOWED)
    strip = one(html.find(data_walk_strip=None))
    assert strip.attrs["data-walk-gva"] == "0x600000"
    assert strip.attrs["data-walk-gfn"] == "0x500"
    assert "data-walk-fault" not in strip.attrs
    hops = [e.attrs["data-strip-level"] for e in html.find(data_strip_level=None)]
    assert hops == ["4", "3", "2", "1"]
    text = " ".join(strip.text.split())
    for hop in ("PML4 0x200[0x0]", "PDPT 0x201[0x0]", "PD 0x202[0x3]", "PT 0x480[0x0]", "slot 1"):
        assert hop in text
    # The host page is the one the shadow leaf maps, and that leaf is on the walk.
    leaf = one(html.find(data_shadow_spte=PT_LEAF))
    assert leaf.attrs["data-walk"] == "1"
    assert (leaf.attrs["data-gva"], leaf.attrs["data-gfn"]) == ("0x600000", "0x500")
    assert strip.attrs["data-walk-pfn"] == leaf.attrs["data-pfn"]
    assert one(html.find(data_walk_spte=None)).attrs["data-walk-spte-level"] == "1"


def test_the_walk_strip_of_an_unmapped_address_says_the_guest_faults(client: TestClient) -> None:
    # gva 0x800000 is PD entry 4, which the guest never filled.
    code = code_of({**S1, "steps": [*S1["steps"], {"op": "read", "gva": "0x800000"}]})
    html = play(client, len(S1["steps"]) + 1, code=code)
    strip = one(html.find(data_walk_strip=None))
    assert strip.attrs["data-walk-fault"] == "1"
    assert "data-walk-gfn" not in strip.attrs
    assert "#PF" in one(html.find(data_walk_guest_fault=None)).text
    absent = html.find(data_strip_level="2")
    assert "hop-absent" in one(absent).attrs["class"]


def test_write_gpte_shows_the_store_through_the_identity_map(client: TestClient) -> None:
    html = play(client, 2)  # write_gpte 0x202[3]: a store to gva 0x202000 + 3 × 8
    strip = one(html.find(data_walk_strip=None))
    assert strip.attrs["data-walk-gva"] == "0x202018"
    assert strip.attrs["data-walk-gfn"] == "0x202"
    assert one(html.find(data_gpte="2:0x202:0x3")).attrs["data-changed"] == "1"


# --- roots, pages, inert switches ---------------------------------------------------------------------------


def test_the_legend_lists_roots_and_shadow_pages(client: TestClient) -> None:
    html = play(client, SHADOWED)
    root = one(html.find(data_root_cr3=None))
    assert root.attrs["data-root-cr3"] == "0x200"
    assert "vCPU 0" in root.text and "root_count 1" in root.text
    pages = {e.attrs["data-shadow-page"] for e in html.find(data_shadow_page=None)}
    assert {"4:0x200", "3:0x201", "2:0x202", "1:0x480"} <= pages


@pytest.mark.parametrize("preset", ["zap", "lazy", "modern"])
def test_inert_switches_are_named_with_their_reasons(client: TestClient, preset: str) -> None:
    html = play(client, 1, preset)
    inert = {e.attrs["data-inert"]: " ".join(e.text.split()) for e in html.find(data_inert=None)}
    # shadow-mmu: for a paging guest the fast path never runs, and FNAME(fetch) always drops.
    assert set(SHADOW_PAGING_INERT) <= set(inert)
    spec = ("fast_pf_level_guard", "last_spte_check", "direct_map_drops_large", "read_fault_marks_dirty")
    for name in spec:
        assert name in inert and len(inert[name]) > len(name) + 10
    # ... and the what-if form tags each of them.
    tagged = {e.ancestors[-1].attrs.get("for", "") for e in html.find(data_inert_tag=None)}
    assert {f"sw-{name}" for name in SHADOW_PAGING_INERT} <= tagged


# --- the other modes and views ------------------------------------------------------------------------------


def test_compare_shows_each_presets_shadow_tables(client: TestClient) -> None:
    html = page(client, f"/compare?s={CODE}&variants=zap,lazy&step={SHADOWED}")
    columns = {e.attrs["data-variant"]: e for e in html.find(data_variant=None) if e.tag == "section"}
    rows = {
        (name, e.attrs.get("data-removed")) for e in html.find(data_shadow_spte=LARGE)
        for name, col in columns.items() if col in e.ancestors
    }  # fmt: skip
    assert rows == {("zap", "1"), ("lazy", None)}
    assert len(html.find(data_mmu="shadow", data_panel="tree")) == 2


def test_predict_mode_asks_no_fast_path_question(client: TestClient) -> None:
    html = play(client, SHADOWED - 1, mode="predict")
    text = " ".join(html.elements[0].text.split())
    assert "reads gva 0x600000" in text
    assert "Fast fault" not in text and "fast path gives up" not in text


def _questions(data: dict[str, Any], preset: str) -> list[Question | None]:
    scenario = parse_scenario(data)
    policy = make_policy(preset)
    run = Run(("test", policy), scenario, policy, Settings())
    out = []
    for index in range(len(scenario.steps)):
        shown = run.at(index + 1)
        try:
            out.append(question_for(shown))
        finally:
            run.park(shown)
    return out


@pytest.mark.parametrize("preset", ["zap", "lazy"])
def test_predict_mode_answers_follow_the_spec(preset: str) -> None:
    asked = _questions(S1, preset)
    for question in asked:
        if question is not None:
            assert not {c.key for c in question.options} & {"fast", "bail"}
    assert asked[1] is None and asked[2] is None  # write_gpte asks nothing
    read_shadowing, read_other, write_other, write_table = asked[3], asked[4], asked[5], asked[6]
    assert read_shadowing is not None and read_shadowing.correct == "fixed"
    # 3.16: reading another page of the read-only 2M range takes no exit; 3.14 zapped it: a #PF exit.
    assert read_other is not None and read_other.correct == ("fixed" if preset == "zap" else "none")
    assert write_other is not None and write_other.correct == "fixed"
    # A write to a level-1 guest table unsyncs its shadow: fixed, not emulated.
    assert write_table is not None and write_table.correct == "fixed"


def test_predict_mode_knows_emulated_stores_and_guest_faults() -> None:
    data = shadow(
        {"op": "read", "gva": "0x400000"},  # shadows the PML4, PDPT and PD
        {"op": "write", "gfn": "0x202"},  # a store to the PD: write-protected, never unsync: emulated
        {"op": "read", "gva": "0x800000"},  # PD entry 4 is not present: the guest's #PF
    )
    asked = _questions(data, "lazy")
    assert [q.correct if q else None for q in asked] == ["fixed", "emulated", "guest_pf"]


def test_presentation_mode_shows_the_shadow_panel(client: TestClient) -> None:
    html = play(client, SHADOWED, present="1")
    panel = one(html.find(id="panel-tree"))
    assert panel.attrs["data-mmu"] == "shadow" and panel.attrs.get("data-shown") == "1"


def test_stepping_swaps_the_shadow_panel(client: TestClient) -> None:
    response = client.get(f"/play?s={CODE}&variant=lazy&step={SHADOWED}", headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = Page(response.text)
    panel = one(html.find(id="panel-tree"))
    assert panel.attrs["hx-swap-oob"] == "true" and panel.attrs["data-mmu"] == "shadow"


def test_tdp_pages_show_no_shadow_panel(client: TestClient) -> None:
    html = page(client, "/play?scenario=worked-example&step=3")
    assert not html.find(data_mmu="shadow") and not html.find(data_inert=None)
    assert html.find(data_spte=None)


def test_a_guest_with_paging_off_shows_the_direct_tree(client: TestClient) -> None:
    data = {**shadow({"op": "write", "gfn": "0x410"}), "guest": {"paging": False}}
    code = code_of(data)
    html = play(client, 1, "modern", code=code)
    assert one(html.find(data_paging_off=None))
    assert not html.find(data_mmu="shadow")
    assert html.find(data_spte=None)  # the TDP tree, in the shadow spte format
    inert = {e.attrs["data-inert"] for e in html.find(data_inert=None)}
    # modern splits eagerly on a TDP host; the shadow MMU does not. The fast path does run here.
    assert "eager_split" in inert
    assert "fast_pf_level_guard" not in inert
    for mode in ({"mode": "predict"}, {"present": "1"}):
        play(client, 1, "modern", code=code, **mode)


def test_the_narration_speaks_of_pf_exits_and_what_kvm_did(client: TestClient) -> None:
    def narration(step: int) -> str:
        html = play(client, step)
        return " ".join(one(html.find(data_panel="narration")).text.split())

    # A paging guest has no fast path: its faults are #PF exits.
    assert "reads gva 0x600000: 1 #PF exit, KVM fixed the shadow tables" in narration(SHADOWED)
    # 3.16 kept the 2M spte read-only: reading another page of it takes no exit.
    assert "reads gfn 0x420: no exit" in narration(SHADOWED + 1)
    assert "slow fault" not in narration(SHADOWED) and "fast fault" not in narration(SHADOWED)


def test_a_step_writing_thousands_of_sptes_keeps_the_drawing_budget(client: TestClient) -> None:
    # One slot the guest maps by 4K pages; 3 000 stores each map one more page.
    data = shadow(
        {"op": "write", "gva": "0x400000", "count": 3000},
        guest={"tables_at": "0x200", "spaces": [{"maps": [{"gfn": "0x400", "npages": 4096}]}]},
    )
    data["memslots"] = [{"id": 1, "base_gfn": "0x0", "npages": "0x2000", "host_page": "4K"}]
    html = play(client, 1, code=code_of(data))
    rows = html.find(data_shadow_spte=None)
    # The budget, which each of the four levels may pass by the entry that reached it, and the walk's
    # four entries, always drawn.
    assert 0 < len(rows) <= DRAW_CAP + 8
    folded = html.find(data_shadow_run=None)
    # What is not drawn is folded, and the lines say the step changed them.
    assert folded and any(e.attrs.get("data-changed") == "1" for e in folded)


@pytest.mark.parametrize("preset", ["zap", "lazy-buggy", "lazy", "modern"])
def test_every_shadow_paging_event_has_its_own_sentence(preset: str) -> None:
    """The trace panel names an event it has no sentence for ("NAME acted."): none may be left so."""
    data = {**S1, "steps": [
        *S1["steps"],
        {"op": "write", "gfn": "0x202"},  # emulated: the PD is write-protected and never unsync
        {"op": "invlpg", "gva": "0x480000"},
        {"op": "set_cr3"},
        {"op": "read", "gva": "0x800000"},  # the guest's own #PF
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "disable_dirty_log", "slot": 1},
    ]}  # fmt: skip
    sim = Simulation(parse_scenario(data), make_policy(preset), detail="full")
    ctx = Context(sim.kvm.masks)
    unexplained = set()
    for result in sim.run():
        for event in result.events or []:
            data_ = event_json(event)
            if explain(data_, ctx) == f"{data_['name']} acted.":
                unexplained.add(data_["name"])
    assert not unexplained


def test_the_exported_picture_draws_the_guest_and_shadow_tables(client: TestClient) -> None:
    response = client.get(f"/export.svg?s={CODE}&variant=lazy&step={SHADOWED}")
    assert response.status_code == 200
    svg = response.text
    assert 'data-shadow-spte="2:0x202:0x2" data-large="1" data-changed="1"' in svg
    assert 'data-guest-table="0x480" data-shadowed="protected"' in svg
    assert 'data-walk-gva="0x600000"' in svg
    assert "data-spte=" not in svg  # not the TDP tree, whose gfns would be read off positions


def test_the_tlb_panel_names_the_guest_virtual_address_each_entry_translates(client: TestClient) -> None:
    html = play(client, SHADOWED)
    # The read of gva 0x600000 left one translation, to gfn 0x500 (after the flush shadowing 0x480 made).
    rows = html.find(data_tlb_gva=None)
    assert [e.attrs["data-tlb-gva"] for e in rows] == ["0x600000"]
    assert "0x500" in rows[0].text


def test_the_pages_guest_walk_stores_nothing() -> None:
    """The panel reads the guest's tables after the step; KVM's own walk would set A (and D) in the PTEs
    it uses and mark their pages dirty (shadow-mmu.md §3), which a page must never do."""
    data = shadow(guest={"tables_at": "0x200", "spaces": [{"maps": [
        {"gfn": "0x300", "gva": "0x40000000", "npages": 1, "accessed": False, "dirty": False},
    ]}]})  # fmt: skip
    sim = Simulation(parse_scenario(data), make_policy("lazy"), detail="full")
    kvm, vcpu = sim.kvm, sim.kvm.vcpus[0]
    assert kvm.guest is not None and vcpu.paging is not None
    before = {gfn: list(ptes) for gfn, ptes in kvm.guest.tables.items()}
    peek = peek_guest_walk(kvm, kvm.guest, vcpu.paging, 0x40000000, write=True)
    assert peek.gfn == 0x300 and not peek.fault
    assert [hop.level for hop in peek.hops] == [4, 3, 2, 1]
    assert not peek.hops[-1].pte & PT_ACCESSED_MASK  # as the guest left it
    assert kvm.guest.tables == before
    # KVM's walk of the same address stores A and D into the leaf.
    walker = walk_addr_generic(kvm, kvm.guest, vcpu.paging, 0x40000000, write=True)
    assert walker.gfn == 0x300
    leaf = kvm.guest.read_gpte(walker.table_gfn[0], walker.index[0])
    assert leaf & PT_ACCESSED_MASK and leaf & PT_DIRTY_MASK


def test_a_scenario_with_the_guests_tables_links_to_itself_under_the_other_mmu() -> None:
    """The side-by-side lesson runs under TDP with the guest's tables: the player and the comparison link
    to the same accesses at the same step under shadow paging, and back; a scenario without the guest's
    tables has no such link."""
    client = TestClient(create_app())
    page = client.get("/play?scenario=tdp-vs-shadow&variant=lazy-buggy&step=5")
    assert page.status_code == 200
    link = re.search(r'<a class="button small" href="([^"]+)" data-mmu-twin="shadow"', page.text)
    assert link is not None and "step=5" in link.group(1) and "variant=lazy-buggy" in link.group(1)
    twin = client.get(html.unescape(link.group(1)))
    assert twin.status_code == 200 and 'data-mmu="shadow"' in twin.text
    back = re.search(r'href="([^"]+)" data-mmu-twin="tdp"', twin.text)
    assert back is not None
    compare = client.get("/compare?scenario=tdp-vs-shadow&variants=lazy-buggy,modern&step=5")
    other = re.search(r'href="([^"]+)" data-mmu-twin="shadow"', compare.text)
    assert other is not None and "variants=lazy-buggy,modern" in html.unescape(other.group(1))
    assert client.get(html.unescape(other.group(1))).status_code == 200
    assert "data-mmu-twin" not in client.get("/play?scenario=worked-example&step=2").text


def test_the_timeline_legend_says_a_paging_guest_takes_no_fast_fault() -> None:
    client = TestClient(create_app())
    shadow_page = client.get("/play?scenario=shadow-large-spte&step=3").text
    assert "no fast fault: a paging guest's faults never take the fast path" in shadow_page
    compare = client.get("/compare?scenario=shadow-large-spte&step=3").text
    assert "no fast fault" in compare
    tdp = client.get("/play?scenario=worked-example&step=3").text
    assert "△</span> fast fault" in tdp and "no fast fault" not in tdp
    paging_off = client.get("/play?scenario=shadow-paging-off&step=3").text
    assert "△</span> fast fault" in paging_off
