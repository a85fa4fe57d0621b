"""Every row of kvm-mmu.md §5.7 (the upstream audit: what `modern`, the 6.13+ TDP MMU, must do) and §5.8
(the 3.14/3.16 details the first model missed), one test per row, on every preset the row concerns.

Expected values are built from the spec's facts: spte values from the bit layouts (§1.1/§1.3 for 3.x,
§5.7's "spte encoding" row for 6.x, through conftest's `Layout`), counts and logs from the rules the rows
state. Where a row leaves a detail to the sources, the comment names the kernel file it was read from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from conftest import (
    LAYOUT_3X,
    LAYOUT_6X,
    PRESET_NAMES,
    SLOT_2M,
    Layout,
    layout,
    make_scenario,
    run_scenario,
    spte_at,
)

from engine.policy import make_policy
from engine.scenario import Scenario
from engine.simulation import Simulation

A, D, W, PS = LAYOUT_3X.A, LAYOUT_3X.D, LAYOUT_3X.W, LAYOUT_3X.PS
THREE_X = ["zap", "lazy-buggy", "lazy"]

# 4K host pages: a fault there always maps 4K, so the read and prefetch rows see single pages.
SLOT_4K: dict[str, Any] = {
    "id": 2, "base_gfn": "0x1000", "npages": 64, "host_page": "4K", "base_pfn": "0x90000"
}
# §5.8: a host page the host shares (the zero page, KSM, a fork): a write copies it.
SLOT_2M_SHARED: dict[str, Any] = {**SLOT_2M, "host_writable": False}
# ... and one the process owns alone: a write makes it writable in place, with no copy.
SLOT_2M_OWNED: dict[str, Any] = {**SLOT_2M, "host_writable": False, "host_cow": "reuse"}
# §7.2 steps 1, 3 and 5: a 2M leaf, logging on, the decisive write.
READ_ENABLE_WRITE: list[dict[str, Any]] = [
    {"op": "read", "gfn": "0x210"},
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "write", "gfn": "0x250"},
]


def value(result: dict[str, Any], level: int, sp_gfn: int, index: int) -> int | None:
    found = spte_at(result, level, sp_gfn, index)
    return None if found is None else int(found["value"], 16)


def written(step: dict[str, Any], level: int, sp_gfn: int, index: int) -> int:
    """The last value the step stored at that location (from the choke point's record)."""
    changes = [
        int(c["new"], 16)
        for c in step["spte_changes"]
        if (c["level"], c["sp_gfn"], c["index"]) == (level, sp_gfn, index)
    ]
    assert changes, f"step {step['index']} wrote nothing at L{level}[{index:#x}] of {sp_gfn:#x}"
    return changes[-1]


def events(step: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in step["events"] if e["name"] == name]


def flush_callers(step: dict[str, Any]) -> list[str]:
    return [e["caller"] for e in events(step, "kvm_flush_remote_tlbs")]


def leaves(result: dict[str, Any], level: int) -> list[dict[str, Any]]:
    return [s for s in result["final"]["sptes"] if s["leaf"] and s["level"] == level]


def stats_after_each_step(
    scenario: Scenario, preset: str, overrides: dict[str, str | bool] | None = None
) -> Iterator[dict[str, int]]:
    sim = Simulation(scenario, make_policy(preset, overrides), detail="summary")
    while not sim.done:
        step = sim.step()
        assert step.violations == [], step.violations
        yield sim.kvm.stats()


# ---------------------------------------------------------------------------------------------------------
# §5.7, row "read fault on a logged slot, host page populated and writable": make_spte(ACC_ALL) builds W |
# MMU-writable | D and marks the page. 3.x did the same (§3.10), without D.


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_a_read_fault_on_a_logged_slot_maps_writable_and_logs_the_page(preset: str) -> None:
    lay = layout(preset)
    steps: list[dict[str, Any]] = [
        {"op": "enable_dirty_log", "slot": 2},
        {"op": "read", "gfn": "0x1005"},
        {"op": "get_dirty_log", "slot": 2},
    ]
    _, _, result = run_scenario(make_scenario([SLOT_4K], steps), preset)
    read, get = result["steps"][1], result["steps"][2]
    assert read["fault_counts"] == {"fast": 0, "slow": 1}
    assert read["marked_dirty"] == [0x1005]
    dirty = lay.D if lay is LAYOUT_6X else 0  # 6.x make_spte builds a writable spte dirty
    assert written(read, 1, 0x1000, 5) == lay.leaf(0x90005, W | A | lay.HW | lay.MW | dirty)
    assert get["dirty_log"] == [0x1005]


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_a_read_fault_on_a_shared_copy_on_write_page_maps_read_only_and_logs_nothing(preset: str) -> None:
    lay = layout(preset)
    steps: list[dict[str, Any]] = [
        {"op": "enable_dirty_log", "slot": 2},
        {"op": "read", "gfn": "0x1005"},
        {"op": "get_dirty_log", "slot": 2},
    ]
    _, _, result = run_scenario(make_scenario([{**SLOT_4K, "host_writable": False}], steps), preset)
    read, get = result["steps"][1], result["steps"][2]
    assert read["marked_dirty"] == []
    # map_writable is false: no HW, so no W and no MMU-writable either (§1.3, §5.7 row 1's exception).
    assert written(read, 1, 0x1000, 5) == lay.leaf(0x90005, A)
    assert get["dirty_log"] == []


# §5.7, row "D bit of sptes built writable": make_spte adds the dirty mask to every writable spte. 3.x
# set_spte never sets D (§1.3: 0x80000DF7, D only once the guest writes).


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_a_writable_spte_is_built_dirty_only_by_6x(preset: str) -> None:
    lay = layout(preset)
    _, _, result = run_scenario(make_scenario([SLOT_2M], [{"op": "read", "gfn": "0x210"}]), preset)
    dirty = lay.D if lay is LAYOUT_6X else 0
    assert written(result["steps"][0], 2, 0, 1) == lay.leaf(0x80000, W | PS | A | lay.HW | lay.MW | dirty)
    if lay is LAYOUT_3X:
        assert written(result["steps"][0], 2, 0, 1) == 0x80000DF7  # §1.3's constant


# §5.7, row "neighbour prefetch": only the shadow MMU's direct_map prefetches; the TDP MMU never does.


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_a_4k_fault_maps_one_spte_under_the_tdp_mmu_and_prefetches_under_3x(preset: str) -> None:
    _, _, result = run_scenario(make_scenario([SLOT_4K], [{"op": "read", "gfn": "0x1007"}]), preset)
    present = {s["index"] for s in leaves(result, 1)}
    if preset == "modern":
        assert present == {7}
    else:
        # §3.10: the empty neighbours of the aligned group of 8 before the faulting entry, speculatively.
        assert present == set(range(8))
        assert not spte_at(result, 1, 0x1000, 0)["accessed"]  # type: ignore[index]


# §5.7, row "disable logging": 6.13+ recovers huge pages in place, one flush per memslot; the huge leaf
# inherits the first present child's bits, so after a GET it is read-only and MMU-writable and the next
# write is a fast fault on it; a table with a single present leaf is recovered too.


def _logged_then_disabled(extra: Sequence[dict[str, Any]] = ()) -> Scenario:
    return make_scenario(
        [SLOT_2M],
        [
            {"op": "read", "gfn": "0x210"},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
            {"op": "get_dirty_log", "slot": 1},
            {"op": "disable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x300"},
            *extra,
        ],
    )


def test_disabling_logging_recovers_the_huge_page_in_place() -> None:
    lay = LAYOUT_6X
    sim, _, result = run_scenario(_logged_then_disabled(), "modern")
    disable, rewrite = result["steps"][4], result["steps"][5]
    # The first child, gfn 0x200, is a read-only copy of the dirty 2M leaf (eager split, then W cleared).
    recovered = lay.leaf(0x80000, PS | A | lay.D | lay.HW | lay.MW)
    assert written(disable, 2, 0, 1) == recovered
    assert [e["name"] for e in disable["events"] if e["name"] == "tdp_mmu_make_huge_spte"] == [
        "tdp_mmu_make_huge_spte"
    ]
    assert disable["tlb_flushes"] == 1 and flush_callers(disable) == ["kvm_mmu_recover_huge_pages"]
    # The table under it is gone at once: no 4K leaf is left.
    assert leaves(result, 1) == []
    # The next write anywhere in the range is a fast fault that sets W on the huge leaf.
    assert rewrite["fault_counts"] == {"fast": 1, "slow": 0}
    assert rewrite["faults"][0]["fast_result"] == "fixed"
    assert value(result, 2, 0, 1) == recovered | lay.W
    stats = sim.kvm.stats()
    assert (stats["pages_2m"], stats["pages_4k"]) == (1, 0)


def test_a_table_with_a_single_present_leaf_is_recovered_too() -> None:
    lay = LAYOUT_6X
    steps: list[dict[str, Any]] = [
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x250"},
        {"op": "disable_dirty_log", "slot": 1},
        {"op": "read", "gfn": "0x3ff"},
    ]
    _, _, result = run_scenario(make_scenario([SLOT_2M], steps), "modern")
    disable, read = result["steps"][2], result["steps"][3]
    # The one leaf, 0x250 (writable, dirty), with its address cut to the 2M boundary and PS set.
    assert written(disable, 2, 0, 1) == lay.leaf(0x80000, W | PS | A | lay.D | lay.HW | lay.MW)
    assert disable["tlb_flushes"] == 1
    assert read["fault_counts"] == {"fast": 0, "slow": 0}


def test_6_12_zaps_instead_and_the_next_fault_maps_the_huge_page() -> None:
    lay = LAYOUT_6X
    _, _, result = run_scenario(_logged_then_disabled(), "modern", {"huge_page_recovery": "zap_collapsible"})
    disable, rewrite = result["steps"][4], result["steps"][5]
    assert written(disable, 2, 0, 1) == lay.nonpresent
    assert flush_callers(disable) == ["zap_collapsible_spte_range"]  # one flush per zap
    assert rewrite["fault_counts"] == {"fast": 0, "slow": 1}
    assert value(result, 2, 0, 1) == lay.leaf(0x80000, W | PS | A | lay.D | lay.HW | lay.MW)


@pytest.mark.parametrize("preset", ["zap", "lazy"])  # lazy-buggy's fast path never builds the table
def test_3x_leaves_the_4k_table_when_logging_stops(preset: str) -> None:
    _, _, result = run_scenario(_logged_then_disabled(), preset)
    disable = result["steps"][4]
    assert disable["spte_changes"] == [] and disable["tlb_flushes"] == 0
    assert leaves(result, 1) != []


# §5.7, row "CLEAR under INITIALLY_SET protecting huge pages (eager split off)": write_protect_gfn clears W
# and MMU-writable, so later writes through those huge sptes go slow, not fast.


def test_clear_under_initially_set_takes_mmu_writable_from_the_huge_page() -> None:
    lay = LAYOUT_6X
    steps: list[dict[str, Any]] = [
        {"op": "read", "gfn": "0x210"},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "get_dirty_log", "slot": 1},
        {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 64},
        {"op": "write", "gfn": "0x210"},
    ]
    overrides: dict[str, str | bool] = {"dirty_log_mode": "initially_set", "eager_split": False}
    _, _, result = run_scenario(make_scenario([SLOT_2M], steps), "modern", overrides)
    enable, clear, write = result["steps"][1], result["steps"][3], result["steps"][4]
    assert enable["spte_changes"] == []  # §5.4: INITIALLY_SET touches no spte when logging starts
    assert written(clear, 2, 0, 1) == lay.leaf(0x80000, PS | A | lay.D | lay.HW)
    assert write["fault_counts"] == {"fast": 0, "slow": 1}
    assert write["faults"][0]["fast_result"] == "not_locklessly_modifiable"
    assert write["marked_dirty"] == [0x210]


# §5.7, row "PML at enable": clear_dirty_gfn_range visits every present leaf, so D goes from 4K and huge
# leaves alike, then the huge leaves are write-protected. The rmap-based MMU clears D on 4K leaves only.


@pytest.mark.parametrize("preset", ["lazy", "modern"])
def test_pml_at_enable_clears_d_on_huge_leaves_only_in_the_tdp_mmu(preset: str) -> None:
    lay = layout(preset)
    steps: list[dict[str, Any]] = [
        {"op": "read", "gfn": "0x210"},
        {"op": "write", "gfn": "0x2a0"},
        {"op": "enable_dirty_log", "slot": 1},
    ]
    _, _, result = run_scenario(make_scenario([SLOT_2M], steps), preset, {"pml": True, "eager_split": False})
    huge = value(result, 2, 0, 1)
    if preset == "modern":
        assert huge == lay.leaf(0x80000, PS | A | lay.HW | lay.MW)
    else:
        assert huge == 0x80000FF5  # §7.2 step 3 (c): W cleared, D kept


# §5.7, row "gfn marked by the fast path": fault->gfn in 6.x, the shadow-page-derived gfn in 3.x (§3.9).


@pytest.mark.parametrize(
    ("preset", "overrides", "marked"),
    [
        ("lazy-buggy", {}, 0x200),
        ("modern", {"fast_pf_level_guard": "none", "eager_split": False}, 0x250),
        ("lazy-buggy", {"fast_pf_dirty_gfn": "fault_gfn"}, 0x250),
    ],
)
def test_the_fast_path_marks_the_faulting_gfn_in_6x(
    preset: str, overrides: dict[str, str | bool], marked: int
) -> None:
    _, _, result = run_scenario(make_scenario([SLOT_2M], READ_ENABLE_WRITE), preset, overrides)
    write = result["steps"][2]
    assert write["fault_counts"] == {"fast": 1, "slow": 0}
    # Either way one bit for a 2M range: still a loss (§5.1), only of other pages.
    assert write["marked_dirty"] == [marked]


# §5.7, rows "eager split" and "fast-path guard": unchanged, asserted here on the 6.x layout.


def test_eager_split_leaves_512_read_only_4k_sptes_and_the_guard_acts_only_while_logging() -> None:
    lay = LAYOUT_6X
    steps: list[dict[str, Any]] = [{"op": "read", "gfn": "0x210"}, {"op": "enable_dirty_log", "slot": 1}]
    sim, _, result = run_scenario(make_scenario([SLOT_2M], steps), "modern")
    small = leaves(result, 1)
    assert len(small) == 512 and not any(s["writable"] for s in small)
    assert all(s["host_writable"] and s["mmu_writable"] for s in small)
    assert int(small[0x50]["value"], 16) == lay.leaf(0x80050, A | lay.D | lay.HW | lay.MW)
    assert (sim.kvm.stats()["pages_2m"], sim.kvm.stats()["pages_4k"]) == (0, 512)
    # With eager split off, a write under logging meets the read-only 2M leaf: the guard sends it slow.
    steps.append({"op": "write", "gfn": "0x250"})
    _, _, result = run_scenario(make_scenario([SLOT_2M], steps), "modern", {"eager_split": False})
    assert result["steps"][2]["faults"][0]["fast_result"] == "bail_large"


# §5.7, row "dirty ring, PML drain order, ioctl errors": unchanged.


def test_modern_keeps_the_ring_errors_and_the_pml_drain_order() -> None:
    steps: list[dict[str, Any]] = [
        {"op": "read", "gfn": "0x210"},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x260"},
        {"op": "write", "gfn": "0x250"},
        {"op": "get_dirty_log", "slot": 1},
    ]
    _, _, ring = run_scenario(make_scenario([SLOT_2M], steps), "modern", {"dirty_log_mode": "ring"})
    assert ring["steps"][4]["error"] == "KVM_GET_DIRTY_LOG: ENXIO"
    _, _, pml = run_scenario(make_scenario([SLOT_2M], steps), "modern", {"pml": True})
    # The 4K sptes of the split keep W and lose D: the stores take no fault, and the buffer is drained
    # oldest entry first at the GET's kick (6.14's order).
    assert pml["steps"][2]["fault_counts"] == {"fast": 0, "slow": 0}
    assert pml["steps"][4]["marked_dirty"] == [0x260, 0x250]
    assert pml["steps"][4]["dirty_log"] == [0x250, 0x260]


# §5.7, row "stats": the 6.x names under modern, 3.x's `largepages` under the others; and §5.7's closing
# paragraph: dirty_log_page_splitting_test's stages, asserted on the 6.x stat names.

STATS_6X = {
    "exits", "lpages", "pages_1g", "pages_2m", "pages_4k", "pf_fast", "pf_fixed", "pf_spurious", "pf_taken",
    "remote_tlb_flush",
}
STATS_3X = {
    "exits", "largepages", "lpages", "mmu_cache_miss", "mmu_shadow_zapped", "pf_fixed", "remote_tlb_flush"
}


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_each_generation_reports_its_own_statistics(preset: str) -> None:
    _, _, result = run_scenario(make_scenario([SLOT_2M], [{"op": "read", "gfn": "0x210"}]), preset)
    stats = result["final"]["stats"]
    assert set(stats) == (STATS_6X if preset == "modern" else STATS_3X)
    if preset == "modern":
        assert (stats["pages_2m"], stats["pf_taken"], stats["pf_fixed"]) == (1, 1, 1)
    else:
        assert stats["largepages"] == stats["lpages"] == 1


def _splitting_test(manual: bool) -> Scenario:
    """dirty_log_page_splitting_test: 2 vCPUs, 2 slots on huge pages; populate, enable logging,
    2 x (dirty all, GET [, CLEAR]), disable, repopulate (§6.3, §5.7)."""
    slots = [
        {"id": 1, "base_gfn": "0x10000", "npages": 1024, "host_page": "2M", "base_pfn": "0x200000"},
        {"id": 2, "base_gfn": "0x20000", "npages": 1024, "host_page": "2M", "base_pfn": "0x400000"},
    ]
    dirty_all = [
        {"op": "write", "gfn": "0x10000", "count": 1024, "vcpu": 0},
        {"op": "write", "gfn": "0x20000", "count": 1024, "vcpu": 1},
    ]
    harvest: list[dict[str, Any]] = []
    for slot in (1, 2):
        harvest.append({"op": "get_dirty_log", "slot": slot})
        if manual:
            harvest.append({"op": "clear_dirty_log", "slot": slot, "first": 0, "num": 1024})
    steps: list[dict[str, Any]] = [
        *dirty_all,
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "enable_dirty_log", "slot": 2},
        *dirty_all,
        *harvest,
        *dirty_all,
        *harvest,
        {"op": "disable_dirty_log", "slot": 1},
        {"op": "disable_dirty_log", "slot": 2},
        *dirty_all,
    ]
    return make_scenario(slots, steps, vcpus=2)


@pytest.mark.parametrize("manual", [False, True], ids=["get", "initially-set-clear"])
def test_dirty_log_page_splitting_test_stages(manual: bool) -> None:
    host_pages = 2048
    overrides: dict[str, str | bool] = {"dirty_log_mode": "initially_set"} if manual else {}
    stats = list(stats_after_each_step(_splitting_test(manual), "modern", overrides))
    populated = stats[1]
    assert populated["pages_2m"] * 512 + populated["pages_1g"] * 512 * 512 == host_pages
    enabled = stats[3]
    if manual:
        # Huge pages untouched by enabling, gone after the first CLEAR pass.
        assert (enabled["pages_2m"], enabled["pages_1g"]) == (populated["pages_2m"], populated["pages_1g"])
        first_clear_pass = stats[9]  # after dirty all (2 steps), GET, CLEAR, GET, CLEAR
        assert first_clear_pass["pages_2m"] == first_clear_pass["pages_1g"] == 0
    else:
        assert enabled["pages_2m"] == enabled["pages_1g"] == 0
        assert enabled["pages_4k"] >= host_pages
    repopulated = stats[-1]
    huge = ("pages_2m", "pages_1g")
    assert [repopulated[name] for name in huge] == [populated[name] for name in huge]


# §5.7, row "spte encoding": the 6.x EPT layout. Every spte carries suppress-#VE, a present one
# MMU-present; a non-present one is suppress-#VE alone (6.12 spte.h, SHADOW_NONPRESENT_VALUE).


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_spte_values_are_in_the_encoding_of_the_presets_kernel(preset: str) -> None:
    lay: Layout = layout(preset)
    steps: list[dict[str, Any]] = [{"op": "read", "gfn": "0x210"}, {"op": "zap_all"}]
    _, _, result = run_scenario(make_scenario([SLOT_2M], steps), preset)
    read, zap = result["steps"]
    if lay is LAYOUT_6X:
        assert written(read, 2, 0, 1) == 0x8600000080000BF7
    else:
        assert written(read, 2, 0, 1) == 0x80000DF7
    pointers = [c for c in read["spte_changes"] if c["level"] > 2]
    # A pointer is the table's address and the layout's pointer bits (address bits 12-51 masked off).
    address = ((1 << 52) - 1) & ~0xFFF
    assert pointers and all(int(c["new"], 16) & ~address == lay.nonleaf(0) for c in pointers)
    cleared = {int(c["new"], 16) for c in zap["spte_changes"]}
    assert cleared == {lay.nonpresent}
    # The result's decoded fields read the software bits where the layout keeps them: a 4K spte that a
    # GET_DIRTY_LOG write-protected keeps HW and MW (§3.6).
    logged: list[dict[str, Any]] = [
        {"op": "enable_dirty_log", "slot": 2},
        {"op": "write", "gfn": "0x1005"},
        {"op": "get_dirty_log", "slot": 2},
    ]
    _, _, result = run_scenario(make_scenario([SLOT_4K], logged), preset)
    small = spte_at(result, 1, 0x1000, 5)
    assert small is not None
    assert (small["writable"], small["host_writable"], small["mmu_writable"]) == (False, True, True)
    assert int(small["value"], 16) == lay.leaf(0x90005, A | lay.D | lay.HW | lay.MW)


# ---------------------------------------------------------------------------------------------------------
# §5.8, "shared copy-on-write host pages": the write copies the page; the mmu notifier drops the
# read-only spte and flushes; the fault in flight retries; the retried fault maps the new, writable page.


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_a_write_to_a_shared_page_aborts_its_fault_drops_the_spte_and_retries(preset: str) -> None:
    lay = layout(preset)
    steps: list[dict[str, Any]] = [{"op": "read", "gfn": "0x210"}, {"op": "write", "gfn": "0x250"}]
    sim, _, result = run_scenario(make_scenario([SLOT_2M_SHARED], steps), preset)
    read, write = result["steps"]
    assert written(read, 2, 0, 1) == lay.leaf(0x80000, PS | A)  # no HW, so no W, MW (§1.3)
    assert write["fault_counts"] == {"fast": 0, "slow": 2}
    notifier = events(write, "kvm_mmu_notifier_invalidate_range_start")
    got = [(e["gfn_start"], e["gfn_end"], e["dropped"], e["flush"]) for e in notifier]
    assert got == [(0x200, 0x400, 1, True)]
    assert len(events(write, "mmu_notifier_retry")) == 1
    assert flush_callers(write) == ["kvm_mmu_notifier_invalidate_range_start"]
    assert events(write, "drop_large_spte") == []
    # The retried fault maps the 2M page writable (logging is off); the store sets D (6.x: already set).
    assert value(result, 2, 0, 1) == lay.leaf(0x80000, W | PS | A | lay.D | lay.HW | lay.MW)
    stats = sim.kvm.stats()
    if preset == "modern":
        assert stats["pages_2m"] == 1
    else:
        # 3.14's kvm_unmap_rmapp drops the large spte with drop_spte, which never counts stat.lpages down
        # (mmu.c, kvm_unmap_rmapp and drop_spte): the debugfs count drifts up by one.
        assert (stats["largepages"], stats["lpages"]) == (2, 1)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_a_shared_page_under_logging_is_dropped_by_the_notifier_not_by_drop_large_spte(preset: str) -> None:
    lay = layout(preset)
    scenario = make_scenario([SLOT_2M_SHARED], READ_ENABLE_WRITE)
    _, _, result = run_scenario(scenario, preset, {"eager_split": False})
    write = result["steps"][2]
    assert write["fault_counts"] == {"fast": 0, "slow": 2}
    assert write["marked_dirty"] == [0x250]
    assert events(write, "drop_large_spte") == [] and events(write, "tdp_mmu_split_huge_page") == []
    assert value(result, 2, 0, 1) is not None and not spte_at(result, 2, 0, 1)["leaf"]  # type: ignore[index]
    dirty = lay.D  # 3.x: set by the store through the new spte; 6.x: built dirty
    assert value(result, 1, 0x200, 0x50) == lay.leaf(0x80050, W | A | dirty | lay.HW | lay.MW)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_a_page_owned_alone_has_no_notifier_and_one_fault(preset: str) -> None:
    scenario = make_scenario([SLOT_2M_OWNED], READ_ENABLE_WRITE)
    _, _, result = run_scenario(scenario, preset, {"eager_split": False})
    write = result["steps"][2]
    assert write["fault_counts"] == {"fast": 0, "slow": 1}
    assert events(write, "kvm_mmu_notifier_invalidate_range_start") == []
    if preset == "modern":
        assert len(events(write, "tdp_mmu_split_huge_page")) == 1
    else:
        # 404381c5: the slow path drops the read-only large spte in its way, with a flush (§3.2, §7.3).
        assert flush_callers(write) == ["drop_large_spte"]


# §5.8, "memslot delete/move in 3.14/3.16": kvm_mmu_invalidate_zap_all_pages: a generation bump, the
# oldest shadow pages first, the roots freed later with one more flush.


@pytest.mark.parametrize("vcpus", [1, 2])
@pytest.mark.parametrize("preset", THREE_X)
def test_zap_all_under_3x_invalidates_the_generation(preset: str, vcpus: int) -> None:
    read: dict[str, Any] = {"op": "read", "gfn": "0x210"}
    steps = [read, {"op": "zap_all"}, read]
    sim, _, result = run_scenario(make_scenario([SLOT_2M], steps, vcpus=vcpus), preset)
    zap = result["steps"][1]
    names = [e["name"] for e in zap["events"] if e["name"] != "drop_parent_pte" and e["name"] != "drop_spte"]
    zapped = [(e["level"], e["gfn"]) for e in events(zap, "kvm_mmu_prepare_zap_page")]
    # Oldest first: the root, then the level-3 and level-2 tables the read built; then the root again.
    assert zapped == [(4, 0), (3, 0), (2, 0), (4, 0)]
    assert names[0] == "kvm_mmu_invalidate_zap_all_pages"
    frees = [(e["vcpu"], e["freed"]) for e in events(zap, "mmu_free_roots")]
    assert frees == [(v, v == vcpus - 1) for v in range(vcpus)]
    assert flush_callers(zap) == ["kvm_mmu_commit_zap_page", "kvm_mmu_commit_zap_page"]
    assert len(events(zap, "kvm_mmu_load")) == 1
    assert zap["tlb_flushes"] == 2
    stats = result["final"]["stats"]
    assert stats["mmu_shadow_zapped"] == 4
    # L3, L2 and the new root are hash misses; the read after the zap builds L3 and L2 again.
    assert stats["mmu_cache_miss"] == 2 + 1 + 2
    assert result["steps"][2]["fault_counts"] == {"fast": 0, "slow": 1}
    assert sim.kvm.stats()["largepages"] == 1


def test_zap_all_under_modern_zaps_every_page_with_one_flush() -> None:
    steps: list[dict[str, Any]] = [{"op": "read", "gfn": "0x210"}, {"op": "zap_all"}]
    _, _, result = run_scenario(make_scenario([SLOT_2M], steps), "modern")
    zap = result["steps"][1]
    assert [e["name"] for e in zap["events"]].count("kvm_mmu_invalidate_zap_all_pages") == 0
    assert zap["tlb_flushes"] == 1
    assert result["final"]["sptes"] == []
