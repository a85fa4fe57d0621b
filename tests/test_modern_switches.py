"""The later kernels' switches of kvm-mmu.md section 8, each on its own: a preset plus one override.

`split_on_fault`, `eager_split`, `recover_on_disable` and `read_fault_marks_dirty` (§5.1–5.3 and the
live-kernel note (1)). Every expected value is derived from the spec section named beside it and from the
spte layout of §1.1/§1.3, never copied from a run. `fast_pf_level_guard=large_if_dirty_logged` (§5.1, the
guard only while the slot is dirty-logged) has its tests in test_policy_switches.py
(`test_fast_pf_level_guard_with_logging_off` and `..._under_logging`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import pytest
from conftest import HW, MW, PS, SLOT_2M, A, D, W, leaf, make_scenario, per_preset, spte_at

from app.explain import EXPLAINERS, KERNEL_SOURCES, Context, explain, kernel_source
from engine.cpu import walk_spte
from engine.invariants import check_all
from engine.policy import make_policy
from engine.result import result_json, step_json
from engine.scenario import Scenario
from engine.simulation import Simulation
from engine.split import split_huge_pages_in_range
from engine.trace import (
    MakeSpteReadOnly,
    SlotTrySplitHugePages,
    TdpMmuSplitHugePage,
    ZapCollapsibleSpte,
    ZapCollapsibleSptes,
    event_json,
)

# One 1 GiB hugetlbfs page, aligned, guest and host alike: the only way to a 1G leaf (§1.2, §3.8).
SLOT_1G = {"id": 1, "base_gfn": "0x40000", "npages": 0x40000, "host_page": "1G", "base_pfn": "0x1000000"}
# 4K host pages: only 4K sptes.
SLOT_4K = {"id": 2, "base_gfn": "0x1000", "npages": 16, "host_page": "4K", "base_pfn": "0x90000"}



LARGE_RW = leaf(0x80000, PS | W | A | HW | MW)  # §1.3: 0x80000DF7
LARGE_RO_D = leaf(0x80000, PS | A | D | HW | MW)  # §1.3: 0x80000FF5
assert (LARGE_RW, LARGE_RO_D) == (0x80000DF7, 0x80000FF5)


def child_of_large_ro_d(index: int) -> int:
    """§5.1: the `index`-th 4K child of LARGE_RO_D: the same bits, PS cleared, pfn offset by the index."""
    return leaf(0x80000 + index, A | D | HW | MW)


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
    states = walk(make_scenario([SLOT_2M], EAGER_STEPS), preset, {"eager_split": True})
    enable, enabled = states[2]
    assert enabled["stats"]["lpages"] == 0  # "pages_2m drops to 0 immediately after enabling"
    assert leaves_of(enabled, 1, 0x200) == {index: child_of_large_ro_d(index) for index in range(512)}
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
    assert value(written, 1, 0x200, 0x50) == leaf(0x80050, W | A | D | HW | MW)


def test_eager_split_off_keeps_the_read_only_large_spte() -> None:
    # The contrast on modern, whose other switches would split on the fault instead (§5.1): the large spte
    # survives enable read-only (§3.5), and the first write bails out of the fast path (§5.1's guard).
    states = walk(make_scenario([SLOT_2M], EAGER_STEPS), "modern", {"eager_split": False})
    enable, enabled = states[2]
    assert value(enabled, 2, 0, 1) == LARGE_RO_D
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
    # The write left a level-1 table under L2[1] (§7.2 step 5 (a), (c); modern: §5.2): disabling zaps
    # the pointer with its table, and flushes (§5.3); the next fault maps the 2M leaf again, at a
    # not-present entry (§3.8, §3.10).
    "zap": {"zapped": [(2, 0, 1, 0x200, 2)], "flushes": 1, "read": {"fast": 0, "slow": 1}},
    "lazy": {"zapped": [(2, 0, 1, 0x200, 2)], "flushes": 1, "read": {"fast": 0, "slow": 1}},
    "modern": {"zapped": [(2, 0, 1, 0x200, 2)], "flushes": 1, "read": {"fast": 0, "slow": 1}},
}


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(RECOVER, {"lazy-buggy": "its write makes the 2M spte writable (§4.2): no table to recover"}),
)
def test_recover_on_disable(preset: str, expected: dict[str, Any]) -> None:
    states = walk(make_scenario([SLOT_2M], RECOVER_STEPS), preset, {"recover_on_disable": True})
    disable, disabled = states[3]
    zaps = events(disable, "zap_collapsible_spte_range")
    assert [(e["level"], e["sp_gfn"], e["index"], e["gfn"], e["max_level"]) for e in zaps] == expected[
        "zapped"
    ]
    assert [e["zapped"] for e in events(disable, "kvm_mmu_zap_collapsible_sptes")] == [len(zaps)]
    assert disable["tlb_flushes"] == expected["flushes"]
    read, final = states[4]
    assert read["fault_counts"] == expected["read"]
    assert final["stats"]["lpages"] == 1
    if zaps:
        # "the PDE for the region becomes non-present at once"; nothing of the range is mapped any more.
        assert spte_at(disabled["sptes"], 2, 0, 1) is None
        assert [s for s in disabled["sptes"] if s["leaf"]] == []
        assert disabled["stats"]["mmu_shadow_zapped"] == 1
        # The read's fault builds the 2M leaf at the empty entry (§1.3, logging off): no table to replace.
        assert value(final, 2, 0, 1) == LARGE_RW
        assert [e["result"] for e in events(read, "mmu_set_spte")] == ["created"]
        assert read["faults"][0]["level"] == 2


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
    # 4K host pages: no large spte, so every preset behaves alike here (§3.8).
    states = walk(make_scenario([SLOT_4K], READ_STEPS), preset, {"read_fault_marks_dirty": marks})
    read, after_read = states[1]
    assert read["fault_counts"] == {"fast": 0, "slow": 1}
    first_get, second_get = states[2][0], states[4][0]
    write = states[3][0]
    if marks:
        # §3.10: a read fault maps writable and marks the page dirty, so GET reports a page only read.
        assert value(after_read, 1, 0x1000, 3) == leaf(0x90003, W | A | HW | MW)
        assert read["marked_dirty"] == [0x1003]
        assert first_get["dirty_log"] == [0x1003]
        assert events(read, "make_spte") == []
    else:
        # Live-kernel note (1): read-only (W clear, HW and MW kept), nothing marked, not in the next GET.
        assert value(after_read, 1, 0x1000, 3) == leaf(0x90003, A | HW | MW)
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
    assert value(final, 1, 0x1000, 8) == leaf(0x90008, W | A | HW | MW)


# --- the trace explains the new events ---------------------------------------------------------------------

NEW_EVENTS = [
    TdpMmuSplitHugePage(2, 0, 1, 0x200, LARGE_RO_D, 0x1234007, 1, "kvm_tdp_mmu_map"),
    TdpMmuSplitHugePage(3, 0, 1, 0x40000, LARGE_RO_D, 0x1234007, 2, "tdp_mmu_split_huge_pages_root"),
    SlotTrySplitHugePages(1, 1),
    MakeSpteReadOnly(1, 0x1000, 3, 0x1003, 2, leaf(0x90003, A | HW | MW)),
    ZapCollapsibleSpte(2, 0, 1, 0x200, 0x1234007, 2),
    ZapCollapsibleSptes(1, 1),
    ZapCollapsibleSptes(1, 0),
]


@pytest.mark.parametrize("event", NEW_EVENTS, ids=lambda e: f"{e.name}")
def test_new_events_are_explained_with_their_kernel_file(event: Any) -> None:
    assert event.name in EXPLAINERS
    text = explain(event_json(event), Context())
    assert text and not text.endswith(" acted.")
    # The later kernels' files live under arch/x86/kvm/mmu/ (§0: M-TDP, M-SPTE).
    assert KERNEL_SOURCES[event.name].startswith("arch/x86/kvm/mmu/")
    assert kernel_source(event.name, "lazy").endswith("(6.x)")


def test_the_read_only_mapping_says_why() -> None:
    # Spec §8: the read-fault behaviour must be explicit in traces, for the modern behaviour too.
    text = explain(event_json(NEW_EVENTS[3]), Context())
    assert "read-only" in text and "not marked dirty" in text and "fast path" in text
