"""What each policy switch of kvm-mmu.md section 8 toggles, one minimal scenario per switch.

Each test holds a preset fixed and overrides only the switch under test, on every preset where the other
switches let the difference show; a preset left out is named with the reason. Expected values come from
the spec section named beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import PRESET_NAMES, Layout, layout, make_scenario, per_preset, run_scenario, spte_at

from engine.policy import NOT_IMPLEMENTED, PRESETS, SWITCH_VALUES, PolicyError, make_policy
from engine.scenario import ScenarioError

# The worked example's memslot (§7.1): gfns 0x200-0x3ff on one writable 2 MiB host page at pfn 0x80000.
SLOT_2M = {"id": 1, "base_gfn": "0x200", "npages": 512, "host_page": "2M", "base_pfn": "0x80000"}
# The same with an unbroken copy-on-write host page (§7.3 edge case): a read maps it without HW. The host
# shares it (the zero page, KSM, a fork: `host_cow` "copy", the default), so a write copies it and fires the
# mmu notifier (§5.8)...
SLOT_2M_COW = {**SLOT_2M, "host_writable": False}
# ... or the process owns it alone ("reuse"): a write makes it writable where it is, with no notifier (§5.8,
# "a host page that the process owns alone has none of this"), as the host page of 404381c5's scenario.
SLOT_2M_OWNED = {**SLOT_2M, "host_writable": False, "host_cow": "reuse"}
# 4K host pages, for sptes that can only ever be 4K.
SLOT_4K = {"id": 2, "base_gfn": "0x1000", "npages": 16, "host_page": "4K", "base_pfn": "0x90000"}

# §1.3's constants, and the flags that tell them apart (§1.1).
LARGE_RW = 0x80000DF7
LARGE_RW_D = 0x80000FF7
LARGE_RO_D = 0x80000FF5
SMALL_0X250_RW_D = 0x80050F77  # §1.3's 4K leaf for pfn 0x80050 after the guest wrote it (+ D)
W, HW, MW, D = 1 << 1, 1 << 10, 1 << 11, 1 << 9
LARGE_COW = LARGE_RW & ~(W | HW | MW)  # built by a read of a non-writable host page: R X PS A (§1.3)


def value(result: dict[str, Any], level: int, sp_gfn: int, index: int) -> int | None:
    found = spte_at(result, level, sp_gfn, index)
    return None if found is None else int(found["value"], 16)


def flush_events(step: dict[str, Any]) -> list[tuple[str, bool]]:
    return [
        (e["caller"], e["under_mmu_lock"]) for e in step["events"] if e["name"] == "kvm_flush_remote_tlbs"
    ]


def fault_rows(step: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(f["path"], f["fast_result"]) for f in step["faults"]]


def invariants(step: dict[str, Any]) -> set[tuple[str, int | None]]:
    return {(v["invariant"], v["gfn"]) for v in step["violations"]}


# Under `modern`, enabling logging splits every large spte to 4K first (eager_split, §5.2) and disabling it
# turns the 4K tables back into huge leaves in place (recover_on_disable, §5.7): the scenarios below, built
# to put a large spte in front of a 3.x switch, never do under it. Its own switches are in
# test_modern_switches.py.
MODERN_SPLITS_FIRST = {"modern": "eager_split leaves no large spte once logging is on (§5.2)"}
MODERN_RECOVERS = {"modern": "recover_on_disable makes the 4K table a 2M leaf when logging stops (§5.7)"}
EVERY_3X = {"zap": None, "lazy-buggy": None, "lazy": None}


# --- wp_large: what enabling dirty logging does to a writable large spte ----------------------------------


@pytest.mark.parametrize("wp_large", ["zap", "readonly"])
@pytest.mark.parametrize(("preset", "_none"), per_preset(EVERY_3X, MODERN_SPLITS_FIRST))
def test_wp_large(preset: str, _none: None, wp_large: str) -> None:
    scenario = make_scenario(
        [SLOT_2M, SLOT_4K],
        [
            {"op": "read", "gfn": "0x210"},
            {"op": "write", "gfn": "0x2a0"},
            {"op": "write", "gfn": "0x1003"},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "enable_dirty_log", "slot": 2},
            {"op": "read", "gfn": "0x2c0"},
        ],
    )
    _, _, result = run_scenario(scenario, preset, {"wp_large": wp_large})
    enable, enable_4k, read = result["steps"][3], result["steps"][4], result["steps"][5]
    assert enable["tlb_flushes"] == 1  # §3.5: unconditional, either way
    actions = [e["action"] for e in enable["events"] if e["name"] == "spte_write_protect"]
    if wp_large == "zap":
        # §3.3, §3.5 (3.14): the writable large spte is zapped, largepages 0; the next touch faults
        # (§7.2 step 4).
        assert actions == ["zap"]
        assert read["fault_counts"] == {"fast": 0, "slow": 1}
        assert result["final"]["stats"]["lpages"] == 0
        large = spte_at(result, 2, 0, 1)
        assert large is not None and not large["leaf"]  # a pointer to the 4K table the read built
    else:
        # §3.5 (3.16): W cleared, PS HW MW A D kept, still one large page; a read does not fault.
        assert actions == ["wrprotect"]
        assert read["fault_counts"] == {"fast": 0, "slow": 0}
        assert value(result, 2, 0, 1) == LARGE_RO_D
        assert result["final"]["stats"]["lpages"] == 1
    # §3.5: "4K sptes lose W and keep MW and HW in both versions."
    small = spte_at(result, 1, 0x1000, 3)
    assert small is not None
    assert (small["writable"], small["host_writable"], small["mmu_writable"]) == (False, True, True)
    # The write to 0x1003 also prefetched 0x1000-0x1002 (§3.10, logging was off): four 4K sptes.
    assert [e["action"] for e in enable_4k["events"] if e["name"] == "spte_write_protect"] == [
        "wrprotect"
    ] * 4


# --- fast_pf_level_guard: which sptes fast_page_fault refuses to make writable -----------------------------

# A read-only large spte keeping HW and MW exists only after dirty-log write protection; under wp_large=zap
# it is zapped instead, so the guard never meets one.
NO_READONLY_LARGE = {
    "zap": "wp_large=zap leaves no read-only large spte for the guard to meet",
    **MODERN_SPLITS_FIRST,
}

GUARD_LOGGING_OFF = {
    # Logging was enabled then disabled: 3.14/3.16 leave the large spte read-only (§2, §3.5).
    # none: the fast path sets W on the 2M spte (§3.9, no guard).
    "none": {"faults": [("fast", "fixed")]},
    # any_large: the seed's guard refuses any sp above level 1 (§3.9); the slow path, with logging off,
    # maps at level 2 again and makes the same 2M spte writable (§3.8, §3.10).
    "any_large": {"faults": [("slow", "bail_large")]},
    # large_if_dirty_logged: the guard applies only while the slot is dirty-logged (§5.1, M-FPF), so with
    # logging off the large spte is fixed locklessly.
    "large_if_dirty_logged": {"faults": [("fast", "fixed")]},
}


@pytest.mark.parametrize("guard", list(GUARD_LOGGING_OFF))
@pytest.mark.parametrize(("preset", "_"), per_preset({"lazy-buggy": None, "lazy": None}, NO_READONLY_LARGE))
def test_fast_pf_level_guard_with_logging_off(preset: str, _: None, guard: str) -> None:
    scenario = make_scenario(
        [SLOT_2M],
        [
            {"op": "read", "gfn": "0x210"},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "disable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
        ],
    )
    _sim, _steps, result = run_scenario(scenario, preset, {"fast_pf_level_guard": guard})
    write = result["steps"][3]
    # §2: in 3.14/3.16 disabling logging does nothing to the sptes, so the 2M spte stays read-only.
    assert result["steps"][2]["spte_changes"] == []
    assert result["steps"][1]["spte_changes"][-1]["new"] == f"{LARGE_RW & ~W:#x}"  # never written: no D
    assert fault_rows(write) == GUARD_LOGGING_OFF[guard]["faults"]
    # Either way the write ends on a writable 2M spte (D set by the store), and nothing is logged.
    assert value(result, 2, 0, 1) == LARGE_RW_D
    assert result["final"]["stats"]["lpages"] == 1
    assert write["marked_dirty"] == []
    assert write["violations"] == []


GUARD_LOGGING_ON = {
    # none: caf6900f's behaviour (§4.2): W set on the 2M spte, only gfn 0x200 marked (§3.9).
    "none": {"faults": [("fast", "fixed")], "marked": [0x200], "l2": LARGE_RW_D, "l1_0x50": None},
    # any_large and large_if_dirty_logged behave alike under logging: bail, and the slow path drops the
    # large spte and maps gfn 0x250 alone (§7.2 step 5 (c)).
    "any_large": {
        "faults": [("slow", "bail_large")],
        "marked": [0x250],
        "l2": None,
        "l1_0x50": SMALL_0X250_RW_D,
    },
    "large_if_dirty_logged": {
        "faults": [("slow", "bail_large")],
        "marked": [0x250],
        "l2": None,
        "l1_0x50": SMALL_0X250_RW_D,
    },
}


@pytest.mark.parametrize("guard", list(GUARD_LOGGING_ON))
@pytest.mark.parametrize(("preset", "_"), per_preset({"lazy-buggy": None, "lazy": None}, NO_READONLY_LARGE))
def test_fast_pf_level_guard_under_logging(preset: str, _: None, guard: str) -> None:
    scenario = make_scenario(
        [SLOT_2M],
        [
            {"op": "read", "gfn": "0x210"},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
        ],
    )
    _sim, _steps, result = run_scenario(scenario, preset, {"fast_pf_level_guard": guard})
    expected = GUARD_LOGGING_ON[guard]
    write = result["steps"][2]
    assert fault_rows(write) == expected["faults"]
    assert write["marked_dirty"] == expected["marked"]
    l2 = spte_at(result, 2, 0, 1)
    assert l2 is not None
    if expected["l2"] is None:
        assert not l2["leaf"]
        assert value(result, 1, 0x200, 0x50) == expected["l1_0x50"]
        assert write["violations"] == []
    else:
        assert value(result, 2, 0, 1) == expected["l2"]
        # §3.13 invariant 2: a writable large spte in a logged slot is the bug, and it is reported.
        assert ("no_writable_large_while_logging", 0x200) in invariants(write)


# --- last_spte_check: the level fast_page_fault's is_last_spte() is asked about --------------------------

LAST_SPTE = {
    # §3.9 "The level argument in 3.14": logging off, so the requested level is 2; the walk stops on the
    # read-only 4K spte whose PS is clear, so 3.14 sends the write to the slow path, which maps a 2M
    # leaf over the table (§3.10 mmu_set_spte, first branch) and flushes (§3.11).
    "requested_level": {
        "faults": [("slow", "not_last_spte")],
        "flushes": [("mmu_set_spte", True)],
        "lpages": 1,
    },
    # 3.16 fixes the 4K spte locklessly: no flush for a permission increase (§3.11).
    "sp_level": {"faults": [("fast", "fixed")], "flushes": [], "lpages": 0},
}


@pytest.mark.parametrize("check", list(LAST_SPTE))
@pytest.mark.parametrize(("preset", "_none"), per_preset(EVERY_3X, MODERN_RECOVERS))
def test_last_spte_check(preset: str, _none: None, check: str) -> None:
    scenario = make_scenario(
        [SLOT_2M],
        [
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
            {"op": "get_dirty_log", "slot": 1},  # write-protects L1[0x50], keeping HW and MW
            {"op": "disable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
        ],
    )
    _, _, result = run_scenario(scenario, preset, {"last_spte_check": check})
    expected = LAST_SPTE[check]
    write = result["steps"][4]
    assert write["faults"][0]["error_code"] == 0b11  # PRESENT | WRITE on the read-only 4K spte
    assert fault_rows(write) == expected["faults"]
    assert flush_events(write) == expected["flushes"]
    assert result["final"]["stats"]["lpages"] == expected["lpages"]
    assert write["marked_dirty"] == []  # logging is off
    l2 = spte_at(result, 2, 0, 1)
    assert l2 is not None
    if check == "requested_level":
        # The 2M leaf the slow path built (§1.3), with D set by the store that retried through it.
        assert value(result, 2, 0, 1) == LARGE_RW_D
    else:
        assert not l2["leaf"]
        assert value(result, 1, 0x200, 0x50) == SMALL_0X250_RW_D


# --- flush_rule: mmu_spte_update's answer to "must TLBs be flushed?" --------------------------------------


def _large(lay: Layout, bits: int) -> int:
    """§1.3's 2M leaf in a preset's own layout (HW and MW sit at bits 10/11 in 3.x, 57/58 in 6.x: §5.7
    "spte encoding"), with `bits` besides PS and A."""
    return lay.leaf(0x80000, lay.PS | lay.A | bits)


def large_rw_d(lay: Layout) -> int:
    return _large(lay, lay.W | lay.D | lay.HW | lay.MW)


def large_ro_d(lay: Layout) -> int:
    return _large(lay, lay.D | lay.HW | lay.MW)


def large_cow(lay: Layout) -> int:
    return _large(lay, 0)


# (old spte, new spte) → need_flush under each rule (§3.1): 3.14 asks W(old) ∧ ¬W(new); 3.16 asks
# HW(old) ∧ MW(old) ∧ ¬W(new).
FLUSH_RULE_CASES = [
    pytest.param(large_rw_d, large_ro_d, {"old_w": True, "old_hw_mw": True}, id="writable-to-readonly"),
    pytest.param(large_ro_d, large_ro_d, {"old_w": False, "old_hw_mw": True}, id="readonly-hw-mw-kept"),
    pytest.param(large_cow, large_cow, {"old_w": False, "old_hw_mw": False}, id="readonly-no-hw"),
    pytest.param(large_ro_d, large_rw_d, {"old_w": False, "old_hw_mw": False}, id="permission-increase"),
]
assert (large_rw_d(layout("lazy")), large_ro_d(layout("lazy"))) == (LARGE_RW_D, LARGE_RO_D)  # §1.3


@pytest.mark.parametrize(("old", "new", "expected"), FLUSH_RULE_CASES)
@pytest.mark.parametrize("rule", ["old_w", "old_hw_mw"])
def test_flush_rule(
    preset: str,
    rule: str,
    old: Callable[[Layout], int],
    new: Callable[[Layout], int],
    expected: dict[str, bool],
) -> None:
    # The two rules differ only for an old spte that is read-only yet HW ∧ MW, updated to a read-only one.
    # Under TDP no caller does that: spte_write_protect skips read-only sptes unless pt_protect, which only
    # shadow paging passes (§3.3, §3.4), and set_spte only downgrades when the host page stops being
    # writable, which the model's copy-on-write never undoes. So the rule is asserted on a direct call to
    # mmu_spte_update, at the location of a real spte.
    from engine.mmu_spte import mmu_spte_update
    from engine.tdp_iter import walk_spte

    lay = layout(preset)
    sim, _, _ = run_scenario(
        make_scenario([SLOT_2M], [{"op": "read", "gfn": "0x210"}]), preset, {"flush_rule": rule}
    )
    found = walk_spte(sim.kvm, 0x210)
    assert found is not None
    sp, index, _spte = found
    sim.kvm.write_spte(sp, index, old(lay))
    assert mmu_spte_update(sim.kvm, sp, index, new(lay)) is expected[rule]
    assert sp.spt[index] == new(lay)


# --- flush_after_unlock: where the write-protect flushes run ----------------------------------------------


@pytest.mark.parametrize("after_unlock", [False, True])
def test_flush_after_unlock(preset: str, after_unlock: bool) -> None:
    scenario = make_scenario(
        [SLOT_2M],
        [
            {"op": "read", "gfn": "0x210"},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
            {"op": "get_dirty_log", "slot": 1},
        ],
    )
    _, _, result = run_scenario(scenario, preset, {"flush_after_unlock": after_unlock})
    enable, write, get = result["steps"][1], result["steps"][2], result["steps"][3]
    # §3.5, §3.6, §3.11: 198c74f4 moves the slot-write-protect and GET_DIRTY_LOG flushes after the unlock.
    assert flush_events(enable) == [("kvm_mmu_slot_remove_write_access", not after_unlock)]
    assert flush_events(get) == [("kvm_vm_ioctl_get_dirty_log", not after_unlock)]
    # The fault path's flushes run in __direct_map, under mmu_lock, in every version (§3.10, §3.11).
    assert all(under_lock for _, under_lock in flush_events(write))


# --- direct_map_drops_large: 404381c5's drop_large_spte in __direct_map -----------------------------------


@pytest.mark.parametrize("drops", [False, True])
@pytest.mark.parametrize(
    ("preset", "_none"),
    per_preset(
        EVERY_3X, {"modern": "split_on_fault=split_in_place splits a large spte instead of dropping it"}
    ),
)
def test_direct_map_drops_large(preset: str, _none: None, drops: bool) -> None:
    # 404381c5's scenario (§3.2, §7.3 edge case) with a host page the process owns alone: the write makes it
    # writable in place, so no mmu notifier drops the large spte first (§5.8), and __direct_map meets it.
    scenario = make_scenario(
        [SLOT_2M_OWNED],
        [
            {"op": "read", "gfn": "0x210"},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
        ],
    )
    _, steps, result = run_scenario(scenario, preset, {"direct_map_drops_large": drops})
    # §7.3 edge case: a read of an unbroken COW page builds a large spte without HW (and so without W, MW);
    # enabling logging leaves it untouched because it is not writable (§3.3 consequences).
    assert result["steps"][0]["spte_changes"][-1]["new"] == f"{LARGE_COW:#x}"
    assert result["steps"][1]["spte_changes"] == []
    write = result["steps"][2]
    # The fast path refuses it: no HW (§3.9).
    assert write["faults"][0]["fast_result"] == "not_locklessly_modifiable"
    assert [e for e in write["events"] if e["name"] == "kvm_mmu_notifier_invalidate_range_start"] == []
    if drops:
        # The slow path drops it (flush) and maps gfn 0x250 alone, writable, with HW (§3.2, §7.3).
        assert value(result, 1, 0x200, 0x50) == SMALL_0X250_RW_D
        assert write["marked_dirty"] == [0x250]
        assert write["fault_counts"] == {"fast": 0, "slow": 1}
        assert flush_events(write) == [("drop_large_spte", True)]
        assert write["violations"] == []
        # __drop_large_spte counts largepages down (§3.2): the kernel's count is the present one again.
        assert (result["final"]["stats"]["largepages"], result["final"]["stats"]["lpages"]) == (0, 0)
    else:
        # Without 404381c5 the walk stops on the leaf, nothing is mapped, and the write loops forever
        # (§3.2, §4.2 side note).
        assert value(result, 2, 0, 1) == LARGE_COW
        assert write["marked_dirty"] == []
        assert write["fault_counts"]["fast"] == 0
        assert write["fault_counts"]["slow"] > 1
        assert ("fault_livelock", 0x250) in invariants(write)
        assert steps[2].violations


@pytest.mark.parametrize("drops", [False, True])
def test_a_shared_page_is_dropped_by_the_notifier_before_direct_map(preset: str, drops: bool) -> None:
    # The same scenario on a shared host page (host_cow "copy"): the write copies the page, and the mmu
    # notifier drops every spte of the 2M host page with a flush before the fault takes mmu_lock; the fault
    # in flight maps nothing (mmu_notifier_retry), and the retried one finds nothing large in its way
    # (§5.8). So direct_map_drops_large cannot matter: the same two slow faults either way, and no livelock.
    lay = layout(preset)
    scenario = make_scenario(
        [SLOT_2M_COW],
        [
            {"op": "read", "gfn": "0x210"},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
        ],
    )
    _, _, result = run_scenario(scenario, preset, {"direct_map_drops_large": drops})
    write = result["steps"][2]
    assert write["fault_counts"] == {"fast": 0, "slow": 2}
    assert write["faults"][0]["fast_result"] == "not_locklessly_modifiable"
    notified = [e for e in write["events"] if e["name"] == "kvm_mmu_notifier_invalidate_range_start"]
    # 3.x: the 2M spte the read built; modern: the 512 read-only 4K sptes eager splitting made of it (§5.2).
    dropped = 512 if preset == "modern" else 1
    assert [(e["gfn_start"], e["gfn_end"], e["dropped"]) for e in notified] == [(0x200, 0x400, dropped)]
    assert [e["name"] for e in write["events"] if e["name"] == "mmu_notifier_retry"] == ["mmu_notifier_retry"]
    assert flush_events(write) == [("kvm_mmu_notifier_invalidate_range_start", True)]
    assert [e for e in write["events"] if e["name"] in ("drop_large_spte", "tdp_mmu_split_huge_page")] == []
    assert write["marked_dirty"] == [0x250]
    assert write["violations"] == []
    # The retried fault maps the new, writable page: D from the store (3.x) or make_spte (6.x).
    assert value(result, 1, 0x200, 0x50) == lay.leaf(0x80050, lay.W | lay.A | lay.D | lay.HW | lay.MW)
    stats = result["final"]["stats"]
    assert stats["lpages"] == 0
    if preset != "modern":
        # 3.14/3.16's kvm_unmap_rmapp drops the 2M spte with drop_spte, which never counts stat.lpages down
        # (3.14 mmu.c: kvm_unmap_rmapp, drop_spte): the kernel's `largepages` stays at 1.
        assert stats["largepages"] == 1


# --- host_cow: what a write does to a host page that is not writable yet ----------------------------------

# A 4K host page, so that only the page written is copied: the write of 0x1003 on a page a read mapped
# without HW.
SLOT_4K_RO = {**SLOT_4K, "host_writable": False}
HOST_COW_STEPS = [
    {"op": "read", "gfn": "0x1003"},
    {"op": "read", "gfn": "0x1004"},
    {"op": "write", "gfn": "0x1003"},
]


@pytest.mark.parametrize("cow", ["copy", "reuse"])
def test_host_cow(preset: str, cow: str) -> None:
    lay = layout(preset)
    scenario = make_scenario([{**SLOT_4K_RO, "host_cow": cow}], HOST_COW_STEPS)
    _, _, result = run_scenario(scenario, preset)
    read = result["steps"][0]
    # §1.3, §3.8: a read of an unbroken COW page: map_writable false, so no HW, no W, no MW.
    assert [c["new"] for c in read["spte_changes"] if c["index"] == 3] == [f"{lay.leaf(0x90003, lay.A):#x}"]
    write = result["steps"][2]
    notified = [e for e in write["events"] if e["name"] == "kvm_mmu_notifier_invalidate_range_start"]
    if cow == "copy":
        # §5.8: the copy fires the mmu notifier for that host page only: the 4K spte dropped, one flush, the
        # fault retried; the retried fault maps the copy writable. Two slow faults.
        assert [(e["gfn_start"], e["gfn_end"], e["dropped"], e["flush"]) for e in notified] == [
            (0x1003, 0x1004, 1, True)
        ]
        assert write["fault_counts"] == {"fast": 0, "slow": 2}
        assert flush_events(write) == [("kvm_mmu_notifier_invalidate_range_start", True)]
    else:
        # No notifier: one slow fault rebuilds the spte over the read-only one, with HW now (§3.10: the pfn
        # is the same, so mmu_set_spte updates it in place); a permission increase needs no flush (§3.11).
        assert notified == []
        assert write["fault_counts"] == {"fast": 0, "slow": 1}
        assert write["tlb_flushes"] == 0
    assert value(result, 1, 0x1000, 3) == lay.leaf(0x90003, lay.W | lay.A | lay.D | lay.HW | lay.MW)
    # The neighbour the second read mapped is another host page, untouched either way.
    assert value(result, 1, 0x1000, 4) == lay.leaf(0x90004, lay.A)


@pytest.mark.parametrize("index", [0, 1])
def test_host_cow_reuse_on_a_writable_host_page_is_refused(index: int) -> None:
    # "reuse" says what a write does to a page that is not writable yet: on a writable slot it means
    # nothing, and the scenario is refused before anything runs, naming the memslot (contract §1).
    slots = [{**SLOT_4K, "host_writable": False}, {**SLOT_2M}]
    slots[index] = {**slots[index], "host_writable": True, "host_cow": "reuse"}
    with pytest.raises(ScenarioError, match=rf"^memslots\[{index}\]: host_cow .*host_writable true"):
        make_scenario(slots, [{"op": "read", "gfn": "0x210"}])


@pytest.mark.parametrize("bad", ["share", "", "COPY", True, 1])
def test_an_unknown_host_cow_is_refused(bad: object) -> None:
    with pytest.raises(ScenarioError, match=r"^memslots\[0\]\.host_cow: must be 'copy' or 'reuse'"):
        make_scenario(
            [{**SLOT_2M, "host_writable": False, "host_cow": bad}], [{"op": "read", "gfn": "0x210"}]
        )


# --- the switch table itself ----------------------------------------------------------------------------

TESTED_SWITCHES = {
    "wp_large",
    "fast_pf_level_guard",
    "last_spte_check",
    "flush_rule",
    "flush_after_unlock",
    "direct_map_drops_large",
    # The later kernels' switches, one test each in test_modern_switches.py.
    "split_on_fault",
    "eager_split",
    "recover_on_disable",
    "huge_page_recovery",
    "read_fault_marks_dirty",
    "pte_prefetch",
    "fast_pf_dirty_gfn",
    "era",
    # One test per mode in test_dirty_log_modes.py.
    "dirty_log_mode",
    # Intel PML, in test_pml.py.
    "pml",
}


def test_every_implemented_switch_is_tested_here() -> None:
    implemented = {
        name
        for name, values in SWITCH_VALUES.items()
        if sum((name, v) not in NOT_IMPLEMENTED for v in values) > 1
    }
    assert implemented == TESTED_SWITCHES


def test_presets_are_the_spec_switch_combinations() -> None:
    # The "How to use this spec" table, for the switches the presets set.
    table = {
        "zap": ("zap", "none", "requested_level", "old_w", False, True),
        "lazy-buggy": ("readonly", "none", "requested_level", "old_w", False, True),
        "lazy": ("readonly", "any_large", "sp_level", "old_hw_mw", True, True),
        "modern": ("readonly", "large_if_dirty_logged", "sp_level", "old_hw_mw", True, True),
    }
    assert set(table) == set(PRESET_NAMES)
    # The modern column for the later kernels' switches (dirty_log_mode "bitmap": the later modes are
    # options; no PML), with read_fault_marks_dirty true as corrected, and §5.7's rows: no prefetch,
    # in-place recovery (6.13+), the faulting gfn marked by the fast path, the 6.x layout and statistics.
    modern = PRESETS["modern"]
    assert (modern.split_on_fault, modern.eager_split, modern.recover_on_disable) == (
        "split_in_place",
        True,
        True,
    )
    assert (modern.read_fault_marks_dirty, modern.dirty_log_mode, modern.pml) == (True, "bitmap", False)
    assert (modern.huge_page_recovery, modern.pte_prefetch, modern.fast_pf_dirty_gfn, modern.era) == (
        "in_place",
        False,
        "fault_gfn",
        "6.x",
    )
    for name, row in table.items():
        policy = PRESETS[name]
        got = (
            policy.wp_large,
            policy.fast_pf_level_guard,
            policy.last_spte_check,
            policy.flush_rule,
            policy.flush_after_unlock,
            policy.direct_map_drops_large,
        )
        assert got == row, name
        if name == "modern":
            continue
        # The 3.x presets keep split_on_fault=drop, no eager split, no recovery, read faults mark dirty,
        # prefetch (§3.10), the sp-derived gfn in the fast path (§3.9), and the 3.x layout (§1.1).
        assert (policy.split_on_fault, policy.eager_split, policy.recover_on_disable) == (
            "drop",
            False,
            False,
        )
        assert (policy.read_fault_marks_dirty, policy.dirty_log_mode) == (True, "bitmap")
        assert (policy.pte_prefetch, policy.fast_pf_dirty_gfn, policy.era) == (True, "sp_gfn", "3.x")


def test_nothing_listed_is_left_unimplemented() -> None:
    # PML was the last value of the switch table that the engine refused.
    assert NOT_IMPLEMENTED == {}


@pytest.mark.parametrize(("name", "raw"), [("eager_split", True), ("dirty_log_mode", "ring")])
def test_not_implemented_values_are_refused(
    preset: str, name: str, raw: str | bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mechanism stays for the next switch value the engine does not model: listed values are refused
    # by name, in every spelling, and nothing else is.
    monkeypatch.setitem(NOT_IMPLEMENTED, (name, raw), "a later kernel's feature")
    for spelling in (raw, str(raw).lower()):
        with pytest.raises(PolicyError, match="not implemented") as refused:
            make_policy(preset, {name: spelling})
        assert name in str(refused.value)
    for other in SWITCH_VALUES[name]:
        if other != raw:
            assert getattr(make_policy(preset, {name: other}), name) == other


def test_implemented_values_are_accepted(preset: str) -> None:
    for name, values in SWITCH_VALUES.items():
        for raw in values:
            if (name, raw) not in NOT_IMPLEMENTED:
                assert getattr(make_policy(preset, {name: raw}), name) == raw
                assert getattr(make_policy(preset, {name: str(raw).lower()}), name) == raw


def test_unknown_switch_is_refused(preset: str) -> None:
    with pytest.raises(PolicyError, match="no_such_switch"):
        make_policy(preset, {"no_such_switch": "on"})


@pytest.mark.parametrize("name", sorted(SWITCH_VALUES))
def test_unknown_value_is_refused(preset: str, name: str) -> None:
    with pytest.raises(PolicyError, match=name):
        make_policy(preset, {name: "sideways"})


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(PolicyError, match="no-such-preset"):
        make_policy("no-such-preset")
