"""The later kernels' switches of kvm-mmu.md section 8 and §5.7, each on its own: a preset plus one override.

`split_on_fault`, `eager_split`, `recover_on_disable` with `huge_page_recovery`, `read_fault_marks_dirty`,
`pte_prefetch`, `fast_pf_dirty_gfn` and `era` (§5.1–5.3, §5.7). Every expected value is derived from the
spec section named beside it and from the spte layout of its kernel generation (§1.1/§1.3 for 3.x, §5.7's
"spte encoding" row for 6.x, through conftest's `Layout`), never copied from a run.
`fast_pf_level_guard=large_if_dirty_logged` (§5.1, the guard only while the slot is dirty-logged) has its
tests in test_policy_switches.py (`test_fast_pf_level_guard_with_logging_off` and `..._under_logging`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import pytest
from conftest import (
    HW,
    LAYOUT_3X,
    LAYOUT_6X,
    MW,
    PRESET_NAMES,
    PS,
    SLOT_2M,
    A,
    D,
    Layout,
    W,
    layout,
    leaf,
    make_scenario,
    per_preset,
    run_scenario,
    spte_at,
)

from app.explain.context import Context
from app.explain.events import EXPLAINERS, explain
from app.explain.kernel_files import KERNEL_SOURCES, kernel_source
from engine.invariants import check_all
from engine.policy import make_policy
from engine.result import result_json, step_json
from engine.scenario import Scenario
from engine.simulation import Simulation
from engine.spte import SpteMasks
from engine.tdp_iter import walk_spte
from engine.tdp_mmu import split_huge_pages_in_range
from engine.trace import MakeSpteReadOnly, event_json
from engine.trace_tables import (
    MmuNotifierInvalidateRangeStart,
    MmuNotifierRetry,
    RecoverHugePages,
    SlotTrySplitHugePages,
    TdpMmuMakeHugeSpte,
    TdpMmuSplitHugePage,
    ZapCollapsibleSpte,
    ZapCollapsibleSptes,
)

# One 1 GiB hugetlbfs page, aligned, guest and host alike: the only way to a 1G leaf (§1.2, §3.8).
SLOT_1G = {"id": 1, "base_gfn": "0x40000", "npages": 0x40000, "host_page": "1G", "base_pfn": "0x1000000"}
# 4K host pages: only 4K sptes.
SLOT_4K = {"id": 2, "base_gfn": "0x1000", "npages": 16, "host_page": "4K", "base_pfn": "0x90000"}



LARGE_RW = leaf(0x80000, PS | W | A | HW | MW)  # §1.3: 0x80000DF7
LARGE_RO_D = leaf(0x80000, PS | A | D | HW | MW)  # §1.3: 0x80000FF5
assert (LARGE_RW, LARGE_RO_D) == (0x80000DF7, 0x80000FF5)


def child_of_large_ro_d(index: int, lay: Layout = LAYOUT_3X) -> int:
    """§5.1: the `index`-th 4K child of LARGE_RO_D (in `lay`'s layout): the same bits, PS cleared, pfn
    offset by the index."""
    return lay.leaf(0x80000 + index, A | D | lay.HW | lay.MW)


def walk(
    scenario: Scenario, preset: str, overrides: Mapping[str, str | bool] | None = None
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each step's result (full detail) and the final state as if the scenario ended after it; the
    whole-state checker must find nothing after any step."""
    sim = Simulation(scenario, make_policy(preset, overrides), detail="full")
    out = []
    while not sim.done:
        step = sim.step()
        assert step.violations == [], (step.index, step.violations)
        assert check_all(sim.kvm, step.index) == [], step.index
        out.append((step_json(step), cast(dict[str, Any], result_json(sim, [])["final"])))
    return out


def value(state: dict[str, Any], level: int, sp_gfn: int, index: int) -> int | None:
    found = spte_at(state["sptes"], level, sp_gfn, index)
    return None if found is None else int(found["value"], 16)


def leaves_of(state: dict[str, Any], level: int, sp_gfn: int) -> dict[int, int]:
    """index -> value of the present leaves of one shadow page."""
    return {
        s["index"]: int(s["value"], 16)
        for s in state["sptes"]
        if s["leaf"] and (s["level"], s["sp_gfn"]) == (level, sp_gfn)
    }


def events(step: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in step["events"] if e["name"] == name]


def fault_rows(step: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(f["path"], f["fast_result"]) for f in step["faults"]]


# --- split_on_fault: what __direct_map does with a large spte above the target level ----------------------

# §7.2 steps 1-5, then two reads elsewhere in the 2M range.
STEP5_THEN_READS: list[dict[str, Any]] = [
    {"op": "read", "gfn": "0x210"},
    {"op": "write", "gfn": "0x2a0"},
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "read", "gfn": "0x2c0"},
    {"op": "write", "gfn": "0x250"},
    {"op": "read", "gfn": "0x3ff"},
    {"op": "read", "gfn": "0x201"},
]


@pytest.mark.parametrize("split", ["drop", "split_in_place"])
def test_split_on_fault_at_the_worked_example_step5(split: str) -> None:
    # Only lazy both keeps a read-only large spte under logging (§3.5) and refuses to fix it in the fast
    # path (§3.9), so only there does the slow path meet it: zap zapped it at enable, lazy-buggy's fast
    # path makes it writable, and modern split it at enable (eager_split).
    states = walk(make_scenario([SLOT_2M], STEP5_THEN_READS), "lazy", {"split_on_fault": split})
    write, after_write = states[4]
    assert fault_rows(write) == [("slow", "bail_large")]
    assert write["marked_dirty"] == [0x250]
    assert after_write["stats"]["lpages"] == 0
    pointer = spte_at(after_write["sptes"], 2, 0, 1)
    assert pointer is not None and not pointer["leaf"]
    written = leaf(0x80050, W | A | D | HW | MW)  # §7.2 step 5: R W X A HW MW, + D from the retried store
    reads = [states[5][0], states[6][0]]
    if split == "drop":
        # §3.2, §7.2 step 5 (c): drop_large_spte flushes, and the new table holds the written page only;
        # a read elsewhere in the range faults (§7.2 step 5 (c), last row).
        assert write["tlb_flushes"] == 1
        assert [e["index"] for e in events(write, "drop_large_spte")] == [1]
        assert leaves_of(after_write, 1, 0x200) == {0x50: written}
        assert [r["fault_counts"] for r in reads] == [{"fast": 0, "slow": 1}] * 2
    else:
        # §5.1: a full table of 512 4K sptes copying the large spte's permissions (read-only, A, D, HW,
        # MW), linked without a flush, then the writable target: 1 RW + 511 RO. Later reads do not fault.
        assert write["tlb_flushes"] == 0
        assert events(write, "drop_large_spte") == []
        (split_event,) = events(write, "tdp_mmu_split_huge_page")
        assert split_event == {
            "name": "tdp_mmu_split_huge_page",
            "level": 2,
            "sp_gfn": 0,
            "index": 1,
            "gfn": 0x200,
            "old": f"{LARGE_RO_D:#x}",
            "new": split_event["new"],
            "child_level": 1,
            "caller": "kvm_tdp_mmu_map",
        }
        expected = {index: child_of_large_ro_d(index) for index in range(512)}
        expected[0x50] = written
        assert leaves_of(after_write, 1, 0x200) == expected
        assert [r["fault_counts"] for r in reads] == [{"fast": 0, "slow": 0}] * 2
        assert [r["marked_dirty"] for r in reads] == [[], []]


def test_split_on_fault_splits_a_1g_page_one_level_at_a_time() -> None:
    # §5.1 with a 1G page: the fault at level 1 meets the 1G leaf at level 3 (split into 512 2M leaves,
    # PS kept, pfn + i × 512), then the 2M leaf on its path at level 2 (split into 512 4K leaves).
    steps: list[dict[str, Any]] = [
        {"op": "read", "gfn": "0x40010"},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x40250"},
        {"op": "read", "gfn": "0x7ffff"},
    ]
    scenario = make_scenario([SLOT_1G], steps, max_page_level="1G")
    states = walk(scenario, "lazy", {"split_on_fault": "split_in_place"})
    write, after = states[2]
    splits = [
        (e["level"], e["sp_gfn"], e["index"], e["gfn"], e["child_level"])
        for e in events(write, "tdp_mmu_split_huge_page")
    ]
    assert splits == [(3, 0, 1, 0x40000, 2), (2, 0x40000, 1, 0x40200, 1)]
    # The 1G leaf a read built: R W X PS A HW MW; write-protected at enable (§3.5): − W.
    large = leaf(0x1000000, PS | A | HW | MW)
    assert value(states[1][1], 3, 0, 1) == large
    assert value(after, 2, 0x40000, 5) == large + (5 * 512 << 12)
    assert value(after, 2, 0x40000, 511) == large + (511 * 512 << 12)
    assert value(after, 1, 0x40200, 0x10) == leaf(0x1000210, A | HW | MW)
    assert value(after, 1, 0x40200, 0x50) == leaf(0x1000250, W | A | D | HW | MW)
    # 1 large page → 512 → 511 (§3.13 invariant 3 is checked by walk()).
    assert after["stats"]["lpages"] == 511
    assert write["tlb_flushes"] == 0
    assert states[3][0]["fault_counts"] == {"fast": 0, "slow": 0}  # 0x7ffff: through a 2M child


# --- eager_split: split every huge page of the slot when logging starts ----------------------------------

EAGER_STEPS: list[dict[str, Any]] = [
    {"op": "read", "gfn": "0x210"},
    {"op": "write", "gfn": "0x2a0"},
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "read", "gfn": "0x2c0"},
    {"op": "write", "gfn": "0x250"},
]


def test_eager_split(preset: str) -> None:
    # §5.2: with eager splitting every preset enables logging alike: the 2M spte is split to 4K first,
    # then write protection takes W from the 4K sptes (zap only zaps *large* writable sptes, §3.3).
    # The 2M leaf is R W X PS A D HW MW before the split in both generations: 3.x's gets D from the store,
    # 6.x's is built with it (§5.7 "D bit of sptes built writable").
    lay = layout(preset)
    states = walk(make_scenario([SLOT_2M], EAGER_STEPS), preset, {"eager_split": True})
    enable, enabled = states[2]
    assert enabled["stats"]["lpages"] == 0  # "pages_2m drops to 0 immediately after enabling"
    assert leaves_of(enabled, 1, 0x200) == {index: child_of_large_ro_d(index, lay) for index in range(512)}
    assert [e["caller"] for e in events(enable, "tdp_mmu_split_huge_page")] == [
        "tdp_mmu_split_huge_pages_root"
    ]
    assert [e["split"] for e in events(enable, "kvm_mmu_slot_try_split_huge_pages")] == [1]
    assert {e["action"] for e in events(enable, "spte_write_protect")} == {"wrprotect"}
    assert enable["tlb_flushes"] == 1  # the write-protect flush only (§5.1 step 4): the split needs none
    read, _ = states[3]
    assert (read["fault_counts"], read["marked_dirty"]) == ({"fast": 0, "slow": 0}, [])
    # "the first write to any page is a fast-path fault on a 4K spte"
    write, written = states[4]
    assert fault_rows(write) == [("fast", "fixed")]
    assert (write["marked_dirty"], write["tlb_flushes"]) == ([0x250], 0)
    assert value(written, 1, 0x200, 0x50) == lay.leaf(0x80050, W | A | D | lay.HW | lay.MW)


@pytest.mark.parametrize("caller", ["eager", "on_fault"])
def test_a_split_links_its_table_with_the_layouts_pointer_bits(preset: str, caller: str) -> None:
    # The pointer that replaces the huge leaf is a non-leaf spte like any other: §1.3's "table address +
    # R W X A" (0x107), and under 6.x the present bits every spte carries, MMU-present and suppress-#VE
    # (§5.7 "spte encoding"; 6.12 tdp_mmu.c tdp_mmu_link_sp builds it with spte.c make_nonleaf_spte, whose
    # SPTE_MMU_PRESENT_MASK | shadow_present_mask includes both). The same bits as the pointers a fault
    # links (L4[0], L3[0]).
    lay = layout(preset)
    # On the fault path every preset needs a read-only large spte the fast path refuses (§3.5, §3.9).
    on_fault: dict[str, str | bool] = {
        "eager_split": False,
        "split_on_fault": "split_in_place",
        "wp_large": "readonly",
        "fast_pf_level_guard": "any_large",
    }
    overrides: dict[str, str | bool] = {"eager_split": True} if caller == "eager" else on_fault
    steps = EAGER_STEPS if caller == "eager" else STEP5_THEN_READS[:5]
    states = walk(make_scenario([SLOT_2M], steps), preset, overrides)
    _, after = states[-1]
    assert len(events(states[2 if caller == "eager" else 4][0], "tdp_mmu_split_huge_page")) == 1
    address = ((1 << 52) - 1) & ~0xFFF
    pointers = {(s["level"], s["index"]): int(s["value"], 16) for s in after["sptes"] if not s["leaf"]}
    assert set(pointers) == {(4, 0), (3, 0), (2, 1)}
    bits = {key: value & ~address for key, value in pointers.items()}
    assert bits == dict.fromkeys(pointers, lay.nonleaf(0))


def test_eager_split_off_keeps_the_read_only_large_spte() -> None:
    # The contrast on modern, whose other switches would split on the fault instead (§5.1): the large spte
    # survives enable read-only (§3.5), and the first write bails out of the fast path (§5.1's guard).
    states = walk(make_scenario([SLOT_2M], EAGER_STEPS), "modern", {"eager_split": False})
    enable, enabled = states[2]
    lay = LAYOUT_6X
    assert value(enabled, 2, 0, 1) == lay.leaf(0x80000, PS | A | D | lay.HW | lay.MW)
    assert enabled["stats"]["lpages"] == 1
    assert events(enable, "kvm_mmu_slot_try_split_huge_pages") == []
    assert fault_rows(states[4][0]) == [("slow", "bail_large")]


def test_eager_split_of_a_1g_page_leaves_only_4k_sptes() -> None:
    # T-SPLIT (§6.3): "huge = 0 and 4k = all pages right after enabling"; 1 split of the 1G page and 512 of
    # its 2M children.
    steps: list[dict[str, Any]] = [{"op": "read", "gfn": "0x40000"}, {"op": "enable_dirty_log", "slot": 1}]
    scenario = make_scenario([SLOT_1G], steps, max_page_level="1G")
    sim = Simulation(scenario, make_policy("lazy", {"eager_split": True}), detail="summary")
    results = sim.run()
    assert [s.violations for s in results] == [[], []]
    kvm = sim.kvm
    assert kvm.stat.lpages == 0
    tables = [sp for sp in kvm.active_mmu_pages.values() if sp.level == 1]
    assert len(tables) == 512
    assert all(spte & 1 and not spte & (W | PS) for sp in tables for spte in sp.spt)
    assert sum(1 for sp in tables for _ in sp.spt) == 0x40000


def test_split_huge_pages_in_range_splits_only_what_overlaps() -> None:
    # The eager-split primitive KVM_CLEAR_DIRTY_LOG uses with INITIALLY_SET (§5.2, §5.4), on a 1G leaf:
    # [0x40200, 0x40400) overlaps the 1G page and, once it is split, only its 2M child at 0x40200.
    scenario = make_scenario([SLOT_1G], [{"op": "read", "gfn": "0x40000"}], max_page_level="1G")
    sim = Simulation(scenario, make_policy("lazy"), detail="summary")
    sim.run()
    kvm, slot = sim.kvm, sim.kvm.memslots.by_id[1]
    assert split_huge_pages_in_range(kvm, slot, 0x40200, 0x40400) == 2
    levels = {}
    for gfn in (0x40000, 0x40200, 0x403FF, 0x40400, 0x7FFFF):
        found = walk_spte(kvm, gfn)
        assert found is not None
        levels[gfn] = found[0].level
    assert levels == {0x40000: 2, 0x40200: 1, 0x403FF: 1, 0x40400: 2, 0x7FFFF: 2}
    assert kvm.stat.lpages == 511
    # Same permissions, no flush: the vCPU's cached 1G translation still allows nothing the sptes do not.
    assert len(kvm.vcpus[0].tlb) == 1
    assert check_all(kvm, 1) == []
    # Nothing huge is left in the range, and a range outside the slot holds nothing.
    assert split_huge_pages_in_range(kvm, slot, 0x40200, 0x40400) == 0
    assert split_huge_pages_in_range(kvm, slot, 0x80000, 0x90000) == 0
    assert split_huge_pages_in_range(kvm, slot, 0x7FFFF, 0x80000) == 1
    assert kvm.stat.lpages == 510


# --- recover_on_disable: zap what a huge page could map again once logging stops ---------------------------

RECOVER_STEPS: list[dict[str, Any]] = [
    {"op": "read", "gfn": "0x210"},
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "write", "gfn": "0x250"},
    {"op": "disable_dirty_log", "slot": 1},
    {"op": "read", "gfn": "0x260"},
]

RECOVER = {
    # The write left a level-1 table under L2[1] (§7.2 step 5 (a), (c); modern: the split of §5.2). With the
    # preset's own huge_page_recovery: 4.1 to 6.12 zap the pointer with its table and flush (§5.3); the
    # next fault maps the 2M leaf again, at a not-present entry (§3.8, §3.10). 6.13+ replace the table in
    # place by a 2M leaf built from its first present leaf, gfn 0x200 (read-only since enable: R X A D HW
    # MW), one flush for the memslot (§5.7 "disable logging"); the read goes through it without a fault.
    "zap": {"zapped": [(2, 0, 1, 0x200, 2)], "recovered": 0, "read": {"fast": 0, "slow": 1}},
    "lazy": {"zapped": [(2, 0, 1, 0x200, 2)], "recovered": 0, "read": {"fast": 0, "slow": 1}},
    "modern": {"zapped": [], "recovered": 1, "read": {"fast": 0, "slow": 0}},
}


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(RECOVER, {"lazy-buggy": "its write makes the 2M spte writable (§4.2): no table to recover"}),
)
def test_recover_on_disable(preset: str, expected: dict[str, Any]) -> None:
    lay = layout(preset)
    states = walk(make_scenario([SLOT_2M], RECOVER_STEPS), preset, {"recover_on_disable": True})
    disable, disabled = states[3]
    zaps = events(disable, "zap_collapsible_spte_range")
    assert [(e["level"], e["sp_gfn"], e["index"], e["gfn"], e["max_level"]) for e in zaps] == expected[
        "zapped"
    ]
    made = events(disable, "tdp_mmu_make_huge_spte")
    assert len(made) == expected["recovered"]
    assert disable["tlb_flushes"] == 1
    read, final = states[4]
    assert read["fault_counts"] == expected["read"]
    assert final["stats"]["lpages"] == 1
    if zaps:
        assert [e["zapped"] for e in events(disable, "kvm_mmu_zap_collapsible_sptes")] == [len(zaps)]
        # "the PDE for the region becomes non-present at once"; nothing of the range is mapped any more.
        assert spte_at(disabled["sptes"], 2, 0, 1) is None
        assert [s for s in disabled["sptes"] if s["leaf"]] == []
        assert disabled["stats"]["mmu_shadow_zapped"] == 1
        # The read's fault builds the 2M leaf at the empty entry (§1.3, logging off): no table to replace.
        assert value(final, 2, 0, 1) == LARGE_RW
        assert [e["result"] for e in events(read, "mmu_set_spte")] == ["created"]
        assert read["faults"][0]["level"] == 2
    else:
        assert [e["recovered"] for e in events(disable, "kvm_mmu_recover_huge_pages")] == [1]
        assert value(disabled, 2, 0, 1) == lay.leaf(0x80000, PS | A | D | lay.HW | lay.MW)
        assert [s for s in disabled["sptes"] if s["leaf"] and s["level"] == 1] == []


def test_recover_off_leaves_the_table() -> None:
    # Modern without recovery: disabling changes no spte (§2), so the 4K table eager splitting built
    # lingers (§5.3, "instead of the 4K table lingering"); every page of it is still mapped, so the read
    # takes no fault and no huge page comes back.
    states = walk(make_scenario([SLOT_2M], RECOVER_STEPS), "modern", {"recover_on_disable": False})
    disable, disabled = states[3]
    assert disable["spte_changes"] == [] and disable["tlb_flushes"] == 0
    assert events(disable, "kvm_mmu_zap_collapsible_sptes") == []
    assert len(leaves_of(disabled, 1, 0x200)) == 512
    read, final = states[4]
    assert read["fault_counts"] == {"fast": 0, "slow": 0}
    assert final["stats"]["lpages"] == 0


# --- huge_page_recovery: how recover_on_disable brings the huge page back ----------------------------------

# Nothing is mapped when logging starts, so every preset builds the same level-1 table under L2[1] (no large
# spte for the 3.x switches to treat differently): one 4K spte, written, then write-protected by the GET.
RECOVERY_STEPS: list[dict[str, Any]] = [
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "write", "gfn": "0x250"},
    {"op": "get_dirty_log", "slot": 1},
    {"op": "disable_dirty_log", "slot": 1},
    {"op": "write", "gfn": "0x300"},
]

# How the write after the in-place recovery meets the read-only 2M leaf, logging off (§3.9): the guards
# none and large_if_dirty_logged let the fast path set W on it; any_large (lazy) sends it slow, and the
# slow path maps the same 2M leaf writable (§3.10, mmu_set_spte of the same pfn).
IN_PLACE_WRITE = {
    "zap": [("fast", "fixed")],
    "lazy-buggy": [("fast", "fixed")],
    "lazy": [("slow", "bail_large")],
    "modern": [("fast", "fixed")],
}


@pytest.mark.parametrize("recovery", ["zap_collapsible", "in_place"])
def test_huge_page_recovery(preset: str, recovery: str) -> None:
    lay = layout(preset)
    overrides: dict[str, str | bool] = {"recover_on_disable": True, "huge_page_recovery": recovery}
    states = walk(make_scenario([SLOT_2M], RECOVERY_STEPS), preset, overrides)
    get, got = states[2]
    assert get["dirty_log"] == [0x250]
    small = lay.leaf(0x80050, A | D | lay.HW | lay.MW)  # written (D), then write-protected (§3.6)
    assert value(got, 1, 0x200, 0x50) == small
    disable, disabled = states[3]
    write, final = states[4]
    written_2m = lay.leaf(0x80000, W | PS | A | D | lay.HW | lay.MW)
    flushes = [e["caller"] for e in events(disable, "kvm_flush_remote_tlbs")]
    if recovery == "zap_collapsible":
        # §5.3 (4.1 to 6.12): the pointer goes with its table, one flush per zap; the write faults on the
        # empty entry and the slow path maps a writable 2M leaf (§3.10; 3.x: D set by the store, 6.x: built
        # with D).
        assert spte_at(disabled["sptes"], 2, 0, 1) is None
        assert flushes == ["zap_collapsible_spte_range"]
        assert disabled["stats"]["lpages"] == 0
        assert fault_rows(write) == [("slow", None)]
    else:
        # §5.7 (6.13+): the table becomes a 2M leaf at once, the only leaf's bits with PS set and its address
        # cut to 0x80000: read-only, MMU-writable; one flush for the memslot.
        assert value(disabled, 2, 0, 1) == lay.leaf(0x80000, PS | A | D | lay.HW | lay.MW)
        assert flushes == ["kvm_mmu_recover_huge_pages"]
        assert disabled["stats"]["lpages"] == 1
        assert fault_rows(write) == IN_PLACE_WRITE[preset]
        assert write["tlb_flushes"] == 0  # a permission increase either way (§3.11)
    assert [s for s in disabled["sptes"] if s["leaf"] and s["level"] == 1] == []
    # Logging is off: nothing is marked, and the range ends on one writable 2M leaf.
    assert write["marked_dirty"] == []
    assert value(final, 2, 0, 1) == written_2m
    assert final["stats"]["lpages"] == 1


@pytest.mark.parametrize("recovery", ["zap_collapsible", "in_place"])
def test_huge_page_recovery_is_inert_without_recover_on_disable(preset: str, recovery: str) -> None:
    # recover_on_disable=false is 3.14/3.16 (§2): disabling logging changes no spte, whichever recovery.
    overrides: dict[str, str | bool] = {"recover_on_disable": False, "huge_page_recovery": recovery}
    states = walk(make_scenario([SLOT_2M], RECOVERY_STEPS), preset, overrides)
    disable, disabled = states[3]
    assert (disable["spte_changes"], disable["tlb_flushes"]) == ([], 0)
    assert value(disabled, 1, 0x200, 0x50) is not None


@pytest.mark.parametrize(
    ("slot", "vm", "gfns", "expected"),
    [
        # 4K host pages: host_mapping_level is 1 (§3.8), nothing can be collapsed.
        pytest.param(SLOT_4K, {}, (0x1001, 0x1003), [], id="4k-host-pages"),
        # Guest and host addresses misaligned: lpage_info forbids every large page (§2).
        pytest.param({**SLOT_2M, "base_pfn": "0x80001"}, {}, (0x210, 0x250), [], id="misaligned"),
        # A 1G page: the level-3 pointer is zapped with both tables under it.
        pytest.param(SLOT_1G, {"max_page_level": "1G"}, (0x40010, 0x40250), [(3, 0, 1, 0x40000, 3)], id="1g"),
        # A 1G host page in a VM limited to 2M: the level-3 pointer stays, the level-2 one under it goes,
        # and the 2M leaf the read built stays.
        pytest.param(
            SLOT_1G,
            {"max_page_level": "2M"},
            (0x40010, 0x40250),
            [(2, 0x40000, 1, 0x40200, 2)],
            id="1g-host-2m-vm",
        ),
    ],
)
def test_recover_on_disable_zaps_only_what_a_huge_page_can_map(
    slot: dict[str, Any], vm: dict[str, Any], gfns: tuple[int, int], expected: list[tuple[int, ...]]
) -> None:
    steps: list[dict[str, Any]] = [
        {"op": "read", "gfn": gfns[0]},
        {"op": "enable_dirty_log", "slot": slot["id"]},
        {"op": "write", "gfn": gfns[1]},
        {"op": "disable_dirty_log", "slot": slot["id"]},
    ]
    states = walk(make_scenario([slot], steps, **vm), "lazy", {"recover_on_disable": True})
    disable, disabled = states[3]
    zaps = events(disable, "zap_collapsible_spte_range")
    assert [(e["level"], e["sp_gfn"], e["index"], e["gfn"], e["max_level"]) for e in zaps] == expected
    assert disable["tlb_flushes"] == len(expected)
    if not expected:
        assert disable["spte_changes"] == []
    else:
        assert [s for s in disabled["sptes"] if s["leaf"] and s["level"] == 1] == []


# --- read_fault_marks_dirty: what a read fault on a logged slot maps ----------------------------------------

READ_STEPS: list[dict[str, Any]] = [
    {"op": "enable_dirty_log", "slot": 2},
    {"op": "read", "gfn": "0x1003"},
    {"op": "get_dirty_log", "slot": 2},
    {"op": "write", "gfn": "0x1003"},
    {"op": "get_dirty_log", "slot": 2},
    {"op": "disable_dirty_log", "slot": 2},
    {"op": "read", "gfn": "0x1008"},
]


@pytest.mark.parametrize("marks", [True, False])
def test_read_fault_marks_dirty(preset: str, marks: bool) -> None:
    # 4K host pages: no large spte, so every preset behaves alike here (§3.8), each in its own layout; a
    # spte built writable carries D under 6.x (§5.7 "D bit of sptes built writable").
    lay = layout(preset)
    built_d = lay.D if lay is LAYOUT_6X else 0
    states = walk(make_scenario([SLOT_4K], READ_STEPS), preset, {"read_fault_marks_dirty": marks})
    read, after_read = states[1]
    assert read["fault_counts"] == {"fast": 0, "slow": 1}
    first_get, second_get = states[2][0], states[4][0]
    write = states[3][0]
    if marks:
        # §3.10, §5.7 first row: a read fault maps writable and marks the page dirty, so GET reports a page
        # only read.
        assert value(after_read, 1, 0x1000, 3) == lay.leaf(0x90003, W | A | built_d | lay.HW | lay.MW)
        assert read["marked_dirty"] == [0x1003]
        assert first_get["dirty_log"] == [0x1003]
        assert events(read, "make_spte") == []
    else:
        # The what-if no TDP kernel does (§5.7 first row): read-only (W clear, HW and MW kept, so no D),
        # nothing marked, not in the next GET.
        assert value(after_read, 1, 0x1000, 3) == lay.leaf(0x90003, A | lay.HW | lay.MW)
        assert read["marked_dirty"] == []
        assert (first_get["dirty_log"], first_get["tlb_flushes"]) == ([], 0)
        (made,) = events(read, "make_spte")
        assert (made["level"], made["sp_gfn"], made["index"], made["gfn"], made["slot"]) == (
            1,
            0x1000,
            3,
            0x1003,
            2,
        )
    # Either way the write is a fast-path fault on the read-only 4K spte (HW ∧ MW, §3.9) and is logged.
    assert fault_rows(write) == [("fast", "fixed")]
    assert write["marked_dirty"] == [0x1003]
    assert second_get["dirty_log"] == [0x1003]
    # With logging off a read maps writable as ever (§3.10), and marks nothing (no bitmap).
    last_read, final = states[6]
    assert last_read["marked_dirty"] == []
    assert value(final, 1, 0x1000, 8) == lay.leaf(0x90008, W | A | built_d | lay.HW | lay.MW)


# --- pte_prefetch: direct_pte_prefetch, the speculative neighbours of a 4K fault --------------------------

# gfn 0x1003 is entry 3 of its aligned group of 8 (entries 0-7); 0x100b is entry 3 of the next group.
PREFETCH_STEPS: list[dict[str, Any]] = [
    {"op": "write", "gfn": "0x1003"},
    {"op": "enable_dirty_log", "slot": 2},
    {"op": "read", "gfn": "0x100b"},
]


def prefetched(lay: Layout, index: int) -> int:
    """A speculative 4K spte of SLOT_4K (§3.10): writable, no A; 6.x make_spte builds a writable spte
    dirty and only takes A away for a prefetch (6.12 spte.c: make_spte, mark_spte_for_access_track)."""
    built_d = lay.D if lay is LAYOUT_6X else 0
    return lay.leaf(0x90000 + index, W | built_d | lay.HW | lay.MW)


# Which entries of the group a prefetch fills around entry 3. 3.14/3.16 fill only runs of empty entries
# that end at a present one or at the faulting one (§3.10; 3.14 mmu.c __direct_pte_prefetch), so entries
# 4-7 stay empty; the 6.x rmap-based MMU also fills the run left open at the end of the group (6.12
# mmu/mmu.c __direct_pte_prefetch: `if (start) direct_pte_prefetch_many(...)` after the loop).
PREFETCHED = {"zap": [0, 1, 2], "lazy-buggy": [0, 1, 2], "lazy": [0, 1, 2], "modern": [0, 1, 2, 4, 5, 6, 7]}


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize(("preset", "neighbours"), per_preset(PREFETCHED))
def test_pte_prefetch(preset: str, neighbours: list[int], prefetch: bool) -> None:
    lay = layout(preset)
    states = walk(make_scenario([SLOT_4K], PREFETCH_STEPS), preset, {"pte_prefetch": prefetch})
    write, after_write = states[0]
    assert write["fault_counts"] == {"fast": 0, "slow": 1}
    expected = {3: lay.leaf(0x90003, W | A | D | lay.HW | lay.MW)}  # D: the store (3.x), make_spte (6.x)
    if prefetch:
        # §3.10: logging is off, so the empty neighbours are mapped speculatively, writable and without A.
        expected.update({index: prefetched(lay, index) for index in neighbours})
    assert leaves_of(after_write, 1, 0x1000) == expected
    if prefetch:
        (done,) = events(write, "direct_pte_prefetch")
        assert sorted(done["gfns"]) == [0x1000 + index for index in neighbours]
    else:
        # §5.7 "neighbour prefetch": the TDP MMU never prefetches: the fault builds exactly one spte.
        assert events(write, "direct_pte_prefetch") == []
    # Under logging the prefetch is skipped either way (§3.10): a read fault maps its own page alone, and
    # marks it (§3.10, §5.7 first row).
    read, after_read = states[2]
    assert read["marked_dirty"] == [0x100B]
    assert [index for index in leaves_of(after_read, 1, 0x1000) if index >= 8] == [0xB]


# --- fast_pf_dirty_gfn: the gfn fast_pf_fix_direct_spte marks ---------------------------------------------

FAST_PF_STEPS: list[dict[str, Any]] = [
    {"op": "read", "gfn": "0x210"},
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "write", "gfn": "0x250"},
    {"op": "write", "gfn": "0x260"},
    {"op": "get_dirty_log", "slot": 1},
]


@pytest.mark.parametrize(
    ("preset", "_none"),
    per_preset(
        {"lazy-buggy": None},
        {
            "zap": "wp_large=zap zaps the large spte at enable: the fast path only ever fixes 4K sptes",
            "lazy": "its guard refuses every large spte (§3.9): the fast path only ever fixes 4K sptes",
            "modern": "eager_split leaves no large spte under logging, and its guard refuses one (§5.1)",
        },
    ),
)
@pytest.mark.parametrize("which", ["sp_gfn", "fault_gfn"])
def test_fast_pf_dirty_gfn(preset: str, _none: None, which: str) -> None:
    # §3.9, §4.2: without a guard the fast path sets W on the read-only 2M spte and marks one gfn: 3.x the
    # one the spte's position maps (gfn 0x200, the first of the range), 6.x the faulting one, 0x250 (§5.1,
    # §5.7 "gfn marked by the fast path"). Either way the range is writable now, so the write of 0x260
    # takes no exit and the GET misses it: "still only one of 512" (§5.1).
    _, _, result = run_scenario(make_scenario([SLOT_2M], FAST_PF_STEPS), preset, {"fast_pf_dirty_gfn": which})
    marked = 0x200 if which == "sp_gfn" else 0x250
    write, other, get = result["steps"][2], result["steps"][3], result["steps"][4]
    assert fault_rows(write) == [("fast", "fixed")]
    assert write["marked_dirty"] == [marked]
    (fixed,) = events(write, "fast_pf_fix_direct_spte")
    assert (fixed["level"], fixed["index"], fixed["gfn"]) == (2, 1, marked)
    assert (other["fault_counts"], other["marked_dirty"]) == ({"fast": 0, "slow": 0}, [])
    assert get["dirty_log"] == [marked]
    not_logged = {v["gfn"] for v in result["final"]["violations"] if v["invariant"] == "written_not_logged"}
    assert not_logged == {0x250, 0x260} - {marked}


@pytest.mark.parametrize("which", ["sp_gfn", "fault_gfn"])
def test_fast_pf_dirty_gfn_is_the_same_gfn_for_a_4k_spte(preset: str, which: str) -> None:
    # A 4K spte's position maps exactly the faulting gfn (§3.9, kvm_mmu_page_get_gfn of a level-1 sp), so
    # both choices mark the same page.
    steps: list[dict[str, Any]] = [
        {"op": "enable_dirty_log", "slot": 2},
        {"op": "write", "gfn": "0x1003"},
        {"op": "get_dirty_log", "slot": 2},
        {"op": "write", "gfn": "0x1003"},  # a fast fault on the 4K spte the GET write-protected (§3.9)
        {"op": "get_dirty_log", "slot": 2},
    ]
    _, _, result = run_scenario(make_scenario([SLOT_4K], steps), preset, {"fast_pf_dirty_gfn": which})
    rewrite = result["steps"][3]
    assert (fault_rows(rewrite), rewrite["marked_dirty"]) == ([("fast", "fixed")], [0x1003])
    assert [s["dirty_log"] for s in result["steps"] if s["dirty_log"] is not None] == [[0x1003], [0x1003]]


# --- era: the kernel generation's spte layout, statistics and memslot zap ---------------------------------

ERA_LAYOUT = {"3.x": LAYOUT_3X, "6.x": LAYOUT_6X}
STATS = {
    "3.x": {
        "exits", "largepages", "lpages", "mmu_cache_miss", "mmu_shadow_zapped", "pf_fixed",
        "remote_tlb_flush",
    },
    "6.x": {
        "exits", "lpages", "pages_1g", "pages_2m", "pages_4k", "pf_fast", "pf_fixed", "pf_spurious",
        "pf_taken", "remote_tlb_flush",
    },
}  # fmt: skip


@pytest.mark.parametrize("era", ["3.x", "6.x"])
def test_era_spte_layout_and_memslot_zap(preset: str, era: str) -> None:
    # §1.1/§1.3 (3.x) and §5.7 "spte encoding" (6.x: MMU-present 11, HW/MW 57/58, suppress-#VE 63 in every
    # spte; 6.12 spte.h: a non-present spte is suppress-#VE alone). 6.x builds a writable spte dirty (§5.7).
    lay = ERA_LAYOUT[era]
    steps: list[dict[str, Any]] = [{"op": "read", "gfn": "0x210"}, {"op": "zap_all"}]
    states = walk(make_scenario([SLOT_2M], steps), preset, {"era": era})
    (_, after_read), (zap, after_zap) = states
    built_d = lay.D if era == "6.x" else 0
    assert value(after_read, 2, 0, 1) == lay.leaf(0x80000, W | PS | A | built_d | lay.HW | lay.MW)
    large = spte_at(after_read["sptes"], 2, 0, 1)
    assert large is not None
    assert (large["host_writable"], large["mmu_writable"], large["dirty"]) == (True, True, era == "6.x")
    address = ((1 << 52) - 1) & ~0xFFF
    pointers = [int(s["value"], 16) for s in after_read["sptes"] if not s["leaf"]]
    assert len(pointers) == 2 and all(p & ~address == lay.nonleaf(0) for p in pointers)  # L4[0], L3[0]
    assert set(after_read["stats"]) == STATS[era]
    # zap_all (§5.8): 3.14/3.16's kvm_mmu_invalidate_zap_all_pages, two flushes (the commit, then the last
    # vCPU freeing the old root); the older kvm_mmu_zap_all, one flush, for 6.x. Either way nothing stays
    # mapped, and every cleared spte holds the layout's non-present value.
    generation = events(zap, "kvm_mmu_invalidate_zap_all_pages")
    assert len(generation) == (1 if era == "3.x" else 0)
    assert zap["tlb_flushes"] == (2 if era == "3.x" else 1)
    assert after_zap["sptes"] == []
    assert {int(c["new"], 16) for c in zap["spte_changes"]} == {lay.nonpresent}


@pytest.mark.parametrize("era", ["3.x", "6.x"])
def test_era_fault_statistics(preset: str, era: str) -> None:
    # §3.12, §5.7 "stats": 3.x counts pf_fixed where __direct_map installs a leaf (the slow path only);
    # 6.x counts every fault in pf_taken, every fixed one in pf_fixed, the fast ones in pf_fast too.
    steps: list[dict[str, Any]] = [
        {"op": "enable_dirty_log", "slot": 2},
        {"op": "write", "gfn": "0x1003"},  # slow: not present
        {"op": "get_dirty_log", "slot": 2},
        {"op": "write", "gfn": "0x1003"},  # fast: write-protected by the GET, HW ∧ MW
    ]
    _, _, result = run_scenario(make_scenario([SLOT_4K], steps), preset, {"era": era})
    stats = result["final"]["stats"]
    faults = [s["fault_counts"] for s in result["steps"]]
    assert faults[1::2] == [{"fast": 0, "slow": 1}, {"fast": 1, "slow": 0}]
    assert stats["exits"] == 2
    if era == "3.x":
        assert (stats["pf_fixed"], stats["largepages"], stats["lpages"]) == (1, 0, 0)
    else:
        names = ("pf_taken", "pf_fixed", "pf_fast", "pf_spurious", "pages_4k")
        assert [stats[name] for name in names] == [2, 2, 1, 0, 1]


@pytest.mark.parametrize("era", ["3.x", "6.x"])
def test_era_fast_path_on_a_spte_gone_non_present(preset: str, era: str) -> None:
    # A write fault that arrives PRESENT but finds the spte gone (the mapping changed since the exit): 3.14
    # lets the guest retry (3.14 mmu.c fast_page_fault: `if (!is_rmap_spte(spte)) { ret = true; ... }`),
    # 6.x goes to the slow path (6.12 mmu/mmu.c fast_page_fault: `if (!is_shadow_present_pte(spte))
    # break;`, RET_PF_INVALID). No scenario reaches it (every zap flushes the TLB that could hold a stale
    # translation), so the fast path is asked directly about a dropped 4K spte.
    from engine.mmu import PFERR_PRESENT_MASK, PFERR_WRITE_MASK, fast_page_fault
    from engine.mmu_spte import drop_spte

    steps: list[dict[str, Any]] = [{"op": "enable_dirty_log", "slot": 2}, {"op": "write", "gfn": "0x1003"}]
    sim, _, _ = run_scenario(make_scenario([SLOT_4K], steps), preset, {"era": era})
    found = walk_spte(sim.kvm, 0x1003)
    assert found is not None
    sp, index, _spte = found
    drop_spte(sim.kvm, sp, index)
    assert sp.spt[index] == ERA_LAYOUT[era].nonpresent
    error = PFERR_PRESENT_MASK | PFERR_WRITE_MASK
    got = fast_page_fault(sim.kvm, sim.kvm.vcpus[0], 0x1003, 1, error)
    assert got == ((True, "retry") if era == "3.x" else (False, "not_present"))


# --- the trace explains the new events ---------------------------------------------------------------------

NEW_EVENTS = [
    TdpMmuSplitHugePage(2, 0, 1, 0x200, LARGE_RO_D, 0x1234007, 1, "kvm_tdp_mmu_map"),
    TdpMmuSplitHugePage(3, 0, 1, 0x40000, LARGE_RO_D, 0x1234007, 2, "tdp_mmu_split_huge_pages_root"),
    SlotTrySplitHugePages(1, 1),
    MakeSpteReadOnly(1, 0x1000, 3, 0x1003, 2, leaf(0x90003, A | HW | MW)),
    ZapCollapsibleSpte(2, 0, 1, 0x200, 0x1234007, 2),
    ZapCollapsibleSptes(1, 1),
    ZapCollapsibleSptes(1, 0),
    TdpMmuMakeHugeSpte(2, 0, 1, 0x200, 0x1234007, leaf(0x80050, A | D | HW | MW), LARGE_RO_D),
    RecoverHugePages(1, 1),
    RecoverHugePages(1, 0),
]
# The events carry 3.x values: read them with the 3.x layout.
MASKS_3X = SpteMasks.for_ept(True)


@pytest.mark.parametrize("event", NEW_EVENTS, ids=lambda e: f"{e.name}")
def test_new_events_are_explained_with_their_kernel_file(event: Any) -> None:
    assert event.name in EXPLAINERS
    text = explain(event_json(event), Context(MASKS_3X))
    assert text and not text.endswith(" acted.")
    # The later kernels' files live under arch/x86/kvm/mmu/ (§0: M-TDP, M-SPTE), quoted from the 6.13+ tree
    # `modern` stands for, but for 6.12's zap-and-refault recovery, which 6.13 replaced (§5.7).
    assert KERNEL_SOURCES[event.name].startswith("arch/x86/kvm/mmu/")
    later = "(up to 6.12)" if "zap_collapsible" in event.name else "(6.13+)"
    assert kernel_source(event.name, "lazy").endswith(later)


@pytest.mark.parametrize(
    "event",
    [MmuNotifierInvalidateRangeStart(0x200, 0x400, 1, True), MmuNotifierRetry(0, 0x250)],
    ids=lambda e: f"{e.name}",
)
def test_the_mmu_notifier_events_are_explained_for_every_kernel(event: Any) -> None:
    # §5.8: the notifier is no later kernel's feature; 3.14/3.16 have it as 6.x does.
    text = explain(event_json(event), Context(MASKS_3X))
    assert text and not text.endswith(" acted.")
    for preset in PRESET_NAMES:
        assert not kernel_source(event.name, preset).endswith("(6.13+)") or preset == "modern"


def test_the_in_place_recovery_says_what_the_huge_leaf_is_built_from() -> None:
    # §5.7 "disable logging": the first present child's bits, PS set, one flush per memslot at the end.
    made = explain(event_json(NEW_EVENTS[7]), Context(MASKS_3X))
    assert "first present leaf" in made and "PS" in made and "No flush yet" in made
    recovered = explain(event_json(NEW_EVENTS[8]), Context(MASKS_3X))
    assert "in place" in recovered and "one TLB flush" in recovered and "fast fault" in recovered


def test_the_read_only_mapping_says_why() -> None:
    # Spec §8: the read-fault behaviour must be explicit in traces, for the what-if too, which must say
    # it is one (§5.7: every TDP kernel maps the read writable and logs it).
    text = explain(event_json(NEW_EVENTS[3]), Context(MASKS_3X))
    assert "read-only" in text and "not marked dirty" in text and "fast path" in text
    assert "what-if" in text
