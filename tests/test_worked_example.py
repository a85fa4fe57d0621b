"""The worked example of kvm-mmu.md section 7, value for value, on each preset: the spec's "Acceptance".

The built-in `scenarios/worked-example.json` drives the spec's steps through a live migration, so its step
indexes differ from the spec's step numbers:

    spec step   1     2     3              4     5     6           7               8           9
    index       0     1     2              3     4     5, 6        7               8, 9        10
    op          read  write migrate_begin  read  write write ×2    migrate_round   write ×2    migrate_round

and index 11 is migrate_end (the final stop-and-copy of §7.2 step 9's last paragraph).

The §7.2 tables have columns (a), (b), (c): `zap`, `lazy-buggy`, `lazy`. `modern` (the 6.13+ TDP MMU, §5.7)
appears where the spec gives its value: steps 1 and 2 with logging off (§5.7's rows "D bit of sptes built
writable" and "spte encoding"), the dirty logs, which any correct write-protect logging returns here (the
guest writes every page it reads after logging starts, §7.2), and what §5.1–5.3 and §5.7 change about
large pages and flushes; its step-by-step walk through the same example is in test_modern_preset.py.

Every expected value below comes from the spec text (the section is named beside it), never from a run.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest
from conftest import LAYOUT_6X, per_preset, run_scenario, scenario_dict, spec_example, spte_at

from engine.canonical import dumps
from engine.invariants import check_all
from engine.policy import make_policy
from engine.result import result_json
from engine.scenario import parse_scenario
from engine.simulation import Simulation

# Spec step → index in worked-example.json.
READ_0X210, WRITE_0X2A0, ENABLE, READ_0X2C0, WRITE_0X250 = 0, 1, 2, 3, 4
WRITE_0X260, WRITE_0X2C0, ROUND_1, REWRITE_0X250, WRITE_0X300, ROUND_2, END = 5, 6, 7, 8, 9, 10, 11

# §1.3's worked constants (EPT, A/D on, write-back RAM, host pfn base 0x80000).
LARGE_RW = 0x80000DF7  # 2M leaf R W X MT IPAT PS A HW MW, as a fault builds it
LARGE_RW_D = 0x80000FF7  # the same after the guest wrote it (the CPU sets D)
LARGE_RO_D = 0x80000FF5  # the same, write-protected for dirty logging (− W)
SMALL_0X2C0 = 0x800C0D77  # 4K leaf for gfn 0x2c0, R W X MT IPAT A HW MW
W_BIT, D_BIT = 1 << 1, 1 << 9  # §1.1: bit 1 is W, bit 9 is EPT D
# The same 2M leaf as modern's make_spte builds it: the 6.x layout (§5.7 "spte encoding"), and D set on a
# spte built writable (§5.7 "D bit of sptes built writable").
L6 = LAYOUT_6X
LARGE_RW_6X = L6.leaf(0x80000, L6.W | L6.PS | L6.A | L6.D | L6.HW | L6.MW)


def small_rw(gfn: int) -> int:
    """§1.3's 4K leaf for `gfn` (pfn 0x80000 + gfn − 0x200), writable, not yet written."""
    return SMALL_0X2C0 - (0x800C0 << 12) + ((0x80000 + gfn - 0x200) << 12)


@functools.cache
def run_worked(
    preset: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], list[list[Any]]]:
    """Run the worked example step by step: per-step results (contract §4), the `final` state after each
    step, the whole result, and check_all's findings after each step."""
    scenario = parse_scenario(scenario_dict("worked-example"))
    sim = Simulation(scenario, make_policy(preset), detail="full")
    steps, states, full_checks = [], [], []
    while not sim.done:
        steps.append(sim.step())
        states.append(cast(dict[str, Any], result_json(sim, [])["final"]))
        full_checks.append(check_all(sim.kvm, steps[-1].index))
    result: dict[str, Any] = result_json(sim, steps)
    return result["steps"], states, result, full_checks


def step(preset: str, index: int) -> dict[str, Any]:
    return run_worked(preset)[0][index]


def state(preset: str, index: int) -> dict[str, Any]:
    """The VM state (contract §4 `final` shape) right after step `index`."""
    return run_worked(preset)[1][index]


def spte(preset: str, index: int, level: int, sp_gfn: int, entry: int) -> Mapping[str, Any] | None:
    return spte_at(state(preset, index)["sptes"], level, sp_gfn, entry)


def value(preset: str, index: int, level: int, sp_gfn: int, entry: int) -> int | None:
    found = spte(preset, index, level, sp_gfn, entry)
    return None if found is None else int(found["value"], 16)


def l1_entries(preset: str, index: int) -> list[int]:
    """The present entries of the level-1 sp with gfn 0x200 (§7.1's table path)."""
    return [s["index"] for s in state(preset, index)["sptes"] if (s["level"], s["sp_gfn"]) == (1, 0x200)]


def events(preset: str, index: int, name: str) -> list[dict[str, Any]]:
    return [e for e in step(preset, index)["events"] if e["name"] == name]


def flags(found: Mapping[str, Any] | None) -> dict[str, bool]:
    assert found is not None
    keys = ("present", "leaf", "large", "writable", "host_writable", "mmu_writable", "accessed", "dirty")
    return {key: found[key] for key in keys}


def bitmap(preset: str, index: int) -> list[int]:
    gfns: list[int] = state(preset, index)["dirty_bitmaps"].get("1", [])
    return gfns


# --- step 1: read gfn 0x210, logging off (identical in all variants) --------------------------------------


# §7.2 step 1 for (a), (b), (c): L2[1] = R W X PS A HW MW, pfn 0x80000 (0x80000DF7). modern builds the same
# permissions in the 6.x layout, and dirty (§5.7).
STEP1 = {
    "zap": (LARGE_RW, False),
    "lazy-buggy": (LARGE_RW, False),
    "lazy": (LARGE_RW, False),
    "modern": (LARGE_RW_6X, True),
}


@pytest.mark.parametrize(("preset", "expected"), per_preset(STEP1))
def test_step1_read_maps_one_writable_2m_spte(preset: str, expected: tuple[int, bool]) -> None:
    # §7.2 step 1: one writable 2M leaf at L2[1]; largepages = 1; no flush.
    built, dirty = expected
    s = step(preset, READ_0X210)
    assert s["fault_counts"] == {"fast": 0, "slow": 1}
    assert s["faults"][0]["level"] == 2  # mapping_level = 2
    assert value(preset, READ_0X210, 2, 0, 1) == built
    assert flags(spte(preset, READ_0X210, 2, 0, 1)) == {
        "present": True, "leaf": True, "large": True, "writable": True,
        "host_writable": True, "mmu_writable": True, "accessed": True, "dirty": dirty,
    }  # fmt: skip
    large = spte(preset, READ_0X210, 2, 0, 1)
    assert large is not None and large["pfn"] == 0x80000
    assert state(preset, READ_0X210)["stats"]["lpages"] == 1
    assert s["tlb_flushes"] == 0
    assert s["marked_dirty"] == []  # mark_page_dirty(0x200) is a no-op without a bitmap
    # Prefetch is skipped (sp level 2; the TDP MMU never prefetches, §5.7): the 2M leaf is the only leaf.
    assert [x["level"] for x in state(preset, READ_0X210)["sptes"] if x["leaf"]] == [2]


# --- step 2: write gfn 0x2a0, logging off -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "expected"),
    # §7.2 step 2: the hardware sets D on L2[1] (0x80000FF7). modern's leaf was built with D already
    # (§5.7), so the store finds nothing to set and no spte changes.
    per_preset(
        {
            "zap": (LARGE_RW_D, [(2, 0, 1)]),
            "lazy-buggy": (LARGE_RW_D, [(2, 0, 1)]),
            "lazy": (LARGE_RW_D, [(2, 0, 1)]),
            "modern": (LARGE_RW_6X, []),
        }
    ),
)
def test_step2_write_sets_d_without_an_exit(preset: str, expected: tuple[int, list[tuple[int, ...]]]) -> None:
    # §7.2 step 2: no exit. Nothing else changes.
    after, changed = expected
    s = step(preset, WRITE_0X2A0)
    assert s["fault_counts"] == {"fast": 0, "slow": 0}
    assert s["faults"] == []
    assert value(preset, WRITE_0X2A0, 2, 0, 1) == after
    assert [(c["level"], c["sp_gfn"], c["index"]) for c in s["spte_changes"]] == changed
    assert s["tlb_flushes"] == 0


# --- step 3: enable dirty logging ------------------------------------------------------------------------

# The §7.2 step tables cover (a), (b), (c); modern splits the 2M spte when logging starts (§5.2), so its
# steps 3 to 6 differ in kind, and are checked one by one in test_modern_preset.py.
MODERN_STEPS = {"modern": "eager splitting changes these steps (§5.2): test_modern_preset.py"}


@pytest.mark.parametrize(
    ("preset", "expected"),
    per_preset(
        {
            # §7.2 step 3 table: (a) zapped, largepages 0; (b) and (c) W cleared (0x80000FF5), largepages 1.
            "zap": {"l2_1": None, "lpages": 0},
            "lazy-buggy": {"l2_1": LARGE_RO_D, "lpages": 1},
            "lazy": {"l2_1": LARGE_RO_D, "lpages": 1},
        },
        MODERN_STEPS,
    ),
)
def test_step3_enable_write_protects_the_large_spte(preset: str, expected: dict[str, Any]) -> None:
    s = step(preset, ENABLE)
    assert value(preset, ENABLE, 2, 0, 1) == expected["l2_1"]
    assert state(preset, ENABLE)["stats"]["lpages"] == expected["lpages"]
    assert s["tlb_flushes"] == 1  # §7.2 step 3: one flush in every variant
    assert bitmap(preset, ENABLE) == []  # the bitmap is allocated all zero
    assert s["marked_dirty"] == []
    if expected["l2_1"] is not None:
        # §3.5: the read-only large spte keeps PS, HW, MW, A and D.
        assert flags(spte(preset, ENABLE, 2, 0, 1)) == {
            "present": True, "leaf": True, "large": True, "writable": False,
            "host_writable": True, "mmu_writable": True, "accessed": True, "dirty": True,
        }  # fmt: skip


@pytest.mark.parametrize(
    ("preset", "under_lock"),
    # §7.2 step 3: (a) flush inside mmu_lock; (b) era-dependent, inside the lock; (c) after unlock (§3.5);
    # modern keeps 3.16's flush after unlock (§5.1 step 4).
    per_preset({"zap": True, "lazy-buggy": True, "lazy": False, "modern": False}),
)
def test_step3_enable_flush_placement(preset: str, under_lock: bool) -> None:
    flushes = events(preset, ENABLE, "kvm_flush_remote_tlbs")
    assert [f["under_mmu_lock"] for f in flushes] == [under_lock]


def test_step3_zap_marks_the_host_page_dirty() -> None:
    # §7.2 step 3 (a): "host pfn marked accessed and dirty (D was set)" — drop_spte tracks D (§3.1).
    drops = events("zap", ENABLE, "drop_spte")
    assert [(d["level"], d["sp_gfn"], d["index"], d["pfn_dirty"]) for d in drops] == [(2, 0, 1, True)]


# --- step 4: read gfn 0x2c0 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "faults"),
    # §7.2 step 4: (a) slow path; (b) and (c) no fault ("this is the patch's benefit").
    per_preset(
        {"zap": {"fast": 0, "slow": 1}, "lazy-buggy": {"fast": 0, "slow": 0}, "lazy": {"fast": 0, "slow": 0}},
        MODERN_STEPS,
    ),
)
def test_step4_read_faults_only_under_zap(preset: str, faults: dict[str, int]) -> None:
    s = step(preset, READ_0X2C0)
    assert s["fault_counts"] == faults
    assert s["tlb_flushes"] == 0  # §7.2 step 4: flush none in every variant
    if preset == "zap":
        # New L1 sp (gfn 0x200), L2[1] → pointer, L1[0xc0] = 0x800C0D77, prefetch skipped (slot logged).
        assert s["faults"][0]["level"] == 1
        assert value(preset, READ_0X2C0, 1, 0x200, 0xC0) == SMALL_0X2C0
        pointer = spte(preset, READ_0X2C0, 2, 0, 1)
        assert pointer is not None and not pointer["leaf"]
        assert l1_entries(preset, READ_0X2C0) == [0xC0]
        # A read fault marks the page dirty (§3.10): bit 0xc0.
        assert s["marked_dirty"] == [0x2C0]
        assert bitmap(preset, READ_0X2C0) == [0x2C0]
    else:
        assert s["spte_changes"] == []
        assert value(preset, READ_0X2C0, 2, 0, 1) == LARGE_RO_D
        assert s["marked_dirty"] == []
        assert bitmap(preset, READ_0X2C0) == []


# --- step 5: write gfn 0x250, the decisive step -------------------------------------------------------------

STEP5 = {
    # §7.2 step 5 table.
    "zap": {
        "error": 0b10,  # WRITE (L1[0x50] non-present)
        "fault_counts": {"fast": 0, "slow": 1},
        "fast_tried": False,  # not eligible
        "marked": [0x250],  # bit 0x50
        "flushes": 0,
        "l1": [0x50, 0xC0],  # L1 has entries 0x50 and 0xc0
        "lpages": 0,
    },
    "lazy-buggy": {
        "error": 0b11,  # PRESENT | WRITE
        "fault_counts": {"fast": 1, "slow": 0},  # CAS sets W on the 2M spte
        "fast_tried": True,
        "marked": [0x200],  # bit 0x000: sp.gfn 0 + index 1 × 512, not bit 0x50
        "flushes": 0,  # the fast path sets W: no flush (§3.11)
        "l1": [],
        "lpages": 1,
    },
    "lazy": {
        "error": 0b11,  # PRESENT | WRITE
        "fault_counts": {"fast": 0, "slow": 1},  # guard: level > 1 → give up; slow path
        "fast_tried": True,
        "marked": [0x250],  # bit 0x50
        "flushes": 1,  # drop_large_spte flushes
        "l1": [0x50],  # L1 has entry 0x50 only
        "lpages": 0,
    },
}


@pytest.mark.parametrize(("preset", "expected"), per_preset(STEP5, MODERN_STEPS))
def test_step5_write_0x250(preset: str, expected: dict[str, Any]) -> None:
    s = step(preset, WRITE_0X250)
    assert s["fault_counts"] == expected["fault_counts"]
    assert [f["error_code"] for f in s["faults"]] == [expected["error"]]
    assert [f["fast_tried"] for f in s["faults"]] == [expected["fast_tried"]]
    assert s["marked_dirty"] == expected["marked"]
    assert s["tlb_flushes"] == expected["flushes"]
    assert l1_entries(preset, WRITE_0X250) == expected["l1"]
    assert state(preset, WRITE_0X250)["stats"]["lpages"] == expected["lpages"]
    if preset == "lazy-buggy":
        # L2[1] = R W X PS A D HW MW: a writable 2M spte while the slot is logged.
        assert value(preset, WRITE_0X250, 2, 0, 1) == LARGE_RW_D
    else:
        # L1[0x50] = R W X A HW MW, pfn 0x80050; after the retry the write lands and the CPU sets D.
        assert value(preset, WRITE_0X250, 1, 0x200, 0x50) == small_rw(0x250) | D_BIT
        pointer = spte(preset, WRITE_0X250, 2, 0, 1)
        assert pointer is not None and not pointer["leaf"]


def test_step5_lazy_drops_the_large_spte_in_direct_map() -> None:
    # §7.2 step 5 (c): the fast path bails on the large spte; __direct_map meets it at L2 and
    # drop_large_spte clears it and flushes.
    fast = events("lazy", WRITE_0X250, "fast_page_fault")
    assert [f["sp_level"] for f in fast] == [2]
    assert events("lazy", WRITE_0X250, "fast_pf_fix_direct_spte") == []
    drops = events("lazy", WRITE_0X250, "drop_large_spte")
    assert [(d["level"], d["sp_gfn"], d["index"], d["old"]) for d in drops] == [(2, 0, 1, f"{LARGE_RO_D:#x}")]
    flushes = events("lazy", WRITE_0X250, "kvm_flush_remote_tlbs")
    assert [f["caller"] for f in flushes] == ["drop_large_spte"]


def test_step5_buggy_fast_path_fixes_the_large_spte() -> None:
    # §7.2 step 5 (b) and §3.9: fast_pf_fix_direct_spte CASes W onto the 2M spte and marks the gfn its
    # position maps, 0x200.
    fixes = events("lazy-buggy", WRITE_0X250, "fast_pf_fix_direct_spte")
    assert [(f["level"], f["sp_gfn"], f["index"], f["gfn"]) for f in fixes] == [(2, 0, 1, 0x200)]
    assert [(f["old"], f["new"]) for f in fixes] == [(f"{LARGE_RO_D:#x}", f"{LARGE_RW_D:#x}")]


# --- step 6: writes to 0x260 and 0x2c0 ---------------------------------------------------------------------

STEP6 = {
    # §7.2 step 6 table: (fault counts, marked dirty) for 0x260, then for 0x2c0.
    "zap": [({"fast": 0, "slow": 1}, [0x260]), ({"fast": 0, "slow": 0}, [])],  # 0x2c0 already RW
    "lazy-buggy": [({"fast": 0, "slow": 0}, []), ({"fast": 0, "slow": 0}, [])],  # no exit, not logged
    "lazy": [({"fast": 0, "slow": 1}, [0x260]), ({"fast": 0, "slow": 1}, [0x2C0])],
}


@pytest.mark.parametrize(("preset", "expected"), per_preset(STEP6, MODERN_STEPS))
def test_step6_writes_0x260_and_0x2c0(preset: str, expected: list[tuple[dict[str, int], list[int]]]) -> None:
    for index, (faults, marked) in zip((WRITE_0X260, WRITE_0X2C0), expected, strict=True):
        assert step(preset, index)["fault_counts"] == faults
        assert step(preset, index)["marked_dirty"] == marked
    if preset == "lazy-buggy":
        assert bitmap(preset, WRITE_0X2C0) == [0x200]
        assert value(preset, WRITE_0X2C0, 2, 0, 1) == LARGE_RW_D
    else:
        # Both: L1[0x50], L1[0x60], L1[0xc0] writable, bits 0x50, 0x60, 0xc0 set.
        assert bitmap(preset, WRITE_0X2C0) == [0x250, 0x260, 0x2C0]
        assert l1_entries(preset, WRITE_0X2C0) == [0x50, 0x60, 0xC0]
        for entry in (0x50, 0x60, 0xC0):
            assert flags(spte(preset, WRITE_0X2C0, 1, 0x200, entry))["writable"]


# --- step 7: KVM_GET_DIRTY_LOG, round 1 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "returned"),
    # §7.2 step 7 "returned set": (a), (c) {0x250, 0x260, 0x2c0}; (b) {0x200}. modern: each write is a fast
    # fault on its own 4K spte (§5.2) and logs its page; the read of 0x2c0 hits the 4K spte the split left
    # (no fault, nothing logged), and 0x2c0 is written in step 6 anyway.
    per_preset(
        {
            "zap": [0x250, 0x260, 0x2C0],
            "lazy-buggy": [0x200],
            "lazy": [0x250, 0x260, 0x2C0],
            "modern": [0x250, 0x260, 0x2C0],
        }
    ),
)
def test_step7_round1_returns_the_dirty_set(preset: str, returned: list[int]) -> None:
    s = step(preset, ROUND_1)
    assert s["dirty_log"] == returned
    assert s["tlb_flushes"] == 1  # "flush: yes" in all three (bits were set)
    assert bitmap(preset, ROUND_1) == []  # GET_DIRTY_LOG clears what it returns (§3.6)


@pytest.mark.parametrize("preset", ["zap", "lazy"])  # lazy-buggy: see the next test
def test_step7_round1_write_protects_the_4k_sptes(preset: str) -> None:
    # §7.2 step 7 (a), (c): W cleared on L1[0x50], L1[0x60], L1[0xc0]; HW and MW kept.
    for entry in (0x50, 0x60, 0xC0):
        before = flags(spte(preset, WRITE_0X2C0, 1, 0x200, entry))
        after = flags(spte(preset, ROUND_1, 1, 0x200, entry))
        assert after == {**before, "writable": False, "host_writable": True, "mmu_writable": True}
        writable = value(preset, WRITE_0X2C0, 1, 0x200, entry)
        assert writable is not None
        assert value(preset, ROUND_1, 1, 0x200, entry) == writable & ~W_BIT
    # L1[0x50] was written in step 5, so D is set: R X A D HW MW.
    assert value(preset, ROUND_1, 1, 0x200, 0x50) == (small_rw(0x250) | D_BIT) & ~W_BIT


def test_step7_buggy_leaves_the_2m_spte_writable() -> None:
    # §7.2 step 7 (b): rmap(1, 0) for gfn 0x200 is empty, nothing changes, the 2M spte stays writable.
    assert step("lazy-buggy", ROUND_1)["spte_changes"] == []
    assert value("lazy-buggy", ROUND_1, 2, 0, 1) == LARGE_RW_D


@pytest.mark.parametrize(
    ("preset", "under_lock"),
    # §7.2 step 7: (a) inside mmu_lock; (c) after unlock. (b) follows its era, before 198c74f4 (§3.6, §4.1).
    # modern: as (c).
    per_preset({"zap": True, "lazy-buggy": True, "lazy": False, "modern": False}),
)
def test_step7_flush_placement(preset: str, under_lock: bool) -> None:
    flushes = events(preset, ROUND_1, "kvm_flush_remote_tlbs")
    assert [(f["caller"], f["under_mmu_lock"]) for f in flushes] == [
        ("kvm_vm_ioctl_get_dirty_log", under_lock)
    ]


# --- step 8: writes 0x250 again and 0x300 -------------------------------------------------------------------

STEP8 = {
    # §7.2 step 8 table: (fault counts, marked dirty) for 0x250, then 0x300.
    "zap": [({"fast": 1, "slow": 0}, [0x250]), ({"fast": 0, "slow": 1}, [0x300])],
    "lazy-buggy": [({"fast": 0, "slow": 0}, []), ({"fast": 0, "slow": 0}, [])],
    "lazy": [({"fast": 1, "slow": 0}, [0x250]), ({"fast": 0, "slow": 1}, [0x300])],
}


@pytest.mark.parametrize(("preset", "expected"), per_preset(STEP8, MODERN_STEPS))
def test_step8_rewrite_0x250_and_first_touch_0x300(
    preset: str, expected: list[tuple[dict[str, int], list[int]]]
) -> None:
    for index, (faults, marked) in zip((REWRITE_0X250, WRITE_0X300), expected, strict=True):
        assert step(preset, index)["fault_counts"] == faults
        assert step(preset, index)["marked_dirty"] == marked
    if preset != "lazy-buggy":
        # 0x250: the fast path CASes W back on the 4K spte (HW ∧ MW); no flush for a permission increase.
        assert step(preset, REWRITE_0X250)["faults"][0]["error_code"] == 0b11
        assert step(preset, REWRITE_0X250)["tlb_flushes"] == 0
        assert flags(spte(preset, REWRITE_0X250, 1, 0x200, 0x50))["writable"]
        # 0x300: slow path, L1[0x100] RW, bit 0x100 (gfn 0x300).
        assert flags(spte(preset, WRITE_0X300, 1, 0x200, 0x100))["writable"]
        assert bitmap(preset, WRITE_0X300) == [0x250, 0x300]


# --- step 9: KVM_GET_DIRTY_LOG, round 2 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "returned"),
    # §7.2 step 9: (a), (c) {0x250, 0x300}; (b) {}: both writes lost; modern: both fast faults log their
    # pages (§5.2, §5.7 "gfn marked by the fast path").
    per_preset({"zap": [0x250, 0x300], "lazy-buggy": [], "lazy": [0x250, 0x300], "modern": [0x250, 0x300]}),
)
def test_step9_round2_returns_the_dirty_set(preset: str, returned: list[int]) -> None:
    s = step(preset, ROUND_2)
    assert s["dirty_log"] == returned
    # §3.6: the flush is conditioned on some bit being set.
    assert s["tlb_flushes"] == (1 if returned else 0)


# --- §7.3: what to draw from the example -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "expected"),
    # §7.3: faults during logging, steps 4–8: (a) 4 slow + 1 fast; (c) also 4 slow + 1 fast; (b) 1 fast.
    # modern: no slow fault at all; the read does not fault and every write is a fast-path fault on a 4K
    # spte (§5.2, "the first write to any page is a fast-path fault"): 0x250, 0x260, 0x2c0, 0x250, 0x300.
    per_preset(
        {
            "zap": {"fast": 1, "slow": 4},
            "lazy-buggy": {"fast": 1, "slow": 0},
            "lazy": {"fast": 1, "slow": 4},
            "modern": {"fast": 5, "slow": 0},
        }
    ),
)
def test_fault_counts_during_logging(preset: str, expected: dict[str, int]) -> None:
    steps = run_worked(preset)[0][READ_0X2C0 : WRITE_0X300 + 1]
    total = {kind: sum(s["fault_counts"][kind] for s in steps) for kind in ("fast", "slow")}
    assert total == expected


@pytest.mark.parametrize(
    ("preset", "span"),
    # §7.3: (a) largepages drops to 0 at enable time; (c) only at the first write fault in the range
    # (spec step 5); (b) stays at 1 forever. modern: at enable time, split rather than zapped (§5.2: pages_2m
    # drops to 0 immediately after enabling), no fault brings it back while logging is on, and migrate_end's
    # disable recovers it in place at once (§5.7 "disable logging"). 3.14/3.16 leave the 4K table when
    # logging stops (§2, §5.3), so the 3.x counts stay at 0.
    per_preset(
        {
            "zap": (ENABLE, None),
            "lazy-buggy": (None, None),
            "lazy": (WRITE_0X250, None),
            "modern": (ENABLE, END),
        }
    ),
)
def test_large_page_count(preset: str, span: tuple[int | None, int | None]) -> None:
    zero, back = span  # the step the count drops to 0 at, and the step it comes back at
    counts = [s["stats"]["lpages"] for s in run_worked(preset)[1]]
    expected = [
        0 if zero is not None and zero <= index and (back is None or index < back) else 1
        for index in range(len(counts))
    ]
    assert counts == expected
    if preset != "modern":
        # §3.13 invariant 3: the kernel's own count (3.x debugfs `largepages`) is the present large leaves;
        # nothing here goes through the mmu notifier, whose drop 3.14/3.16 forget to count (§5.8).
        assert [s["stats"]["largepages"] for s in run_worked(preset)[1]] == expected


@pytest.mark.parametrize(
    ("preset", "expected"),
    # §7.3 "TLB flushes after enabling": (a) 1 per GET with bits; (c) 1 at the step-5 drop + 1 per GET;
    # (b) 1 per GET with bits. GETs with bits: rounds 1 and 2 for (a) and (c), round 1 only for (b) (§7.2
    # step 9 returns nothing); the final GET of migrate_end finds nothing written since round 2.
    per_preset(
        {
            "zap": {ROUND_1: 1, ROUND_2: 1},
            "lazy-buggy": {ROUND_1: 1},
            "lazy": {WRITE_0X250: 1, ROUND_1: 1, ROUND_2: 1},
            # modern: no drop (the split at enable needs no flush, §5.2), so 1 per GET with bits;
            # migrate_end disables logging, and the in-place recovery flushes once for the memslot
            # (§5.7 "disable logging": one kvm_flush_remote_tlbs_memslot at the end).
            "modern": {ROUND_1: 1, ROUND_2: 1, END: 1},
        }
    ),
)
def test_tlb_flushes_after_enabling(preset: str, expected: dict[int, int]) -> None:
    steps = run_worked(preset)[0]
    assert steps[END]["dirty_log"] == []  # the final GET: nothing was written after round 2
    after_enable = {s["index"]: s["tlb_flushes"] for s in steps[ENABLE + 1 :] if s["tlb_flushes"]}
    assert after_enable == expected
    if preset == "modern":
        assert [e["caller"] for e in events(preset, END, "kvm_flush_remote_tlbs")] == [
            "kvm_mmu_recover_huge_pages"
        ]
    # Plus the unconditional one when logging is enabled (§3.5).
    assert steps[ENABLE]["tlb_flushes"] == 1
    assert run_worked(preset)[2]["final"]["stats"]["remote_tlb_flush"] == 1 + sum(expected.values())


# --- acceptance: the verdicts -------------------------------------------------------------------------------

# §7.2 step 9, last paragraph: the destination gets stale data for every page written from step 5 on
# (0x250, 0x260, 0x2c0, 0x250 again, 0x300), except gfn 0x200, whose bit happened to be set.
BUGGY_LOST = [0x250, 0x260, 0x2C0, 0x300]


def test_lazy_buggy_ends_with_lost_writes() -> None:
    # Acceptance: lazy-buggy ends with a written_not_logged violation and a lost page in the verdict.
    final = run_worked("lazy-buggy")[2]["final"]
    assert final["migration"]["lost"] == BUGGY_LOST
    not_logged = {v["gfn"] for v in final["violations"] if v["invariant"] == "written_not_logged"}
    assert not_logged == set(BUGGY_LOST)


def test_lazy_buggy_reports_the_writable_large_spte_when_it_appears() -> None:
    # §3.13 invariant 2 (first part) breaks at spec step 5, when the fast path makes the 2M spte writable;
    # the engine reports it instead of hiding it.
    found = {(v["invariant"], v["gfn"]) for v in step("lazy-buggy", WRITE_0X250)["violations"]}
    assert ("no_writable_large_while_logging", 0x200) in found
    for index in range(WRITE_0X250):
        assert step("lazy-buggy", index)["violations"] == []


@pytest.mark.parametrize("preset", ["zap", "lazy", "modern"])  # lazy-buggy must violate them: tests above
def test_no_violation_and_nothing_lost(preset: str) -> None:
    # Acceptance: zap and lazy end with no lost page, and the §3.13 invariants hold after every step.
    steps, _, result, full_checks = run_worked(preset)
    assert result["final"]["migration"]["lost"] == []
    assert result["final"]["violations"] == []
    for s, checked in zip(steps, full_checks, strict=True):
        assert s["violations"] == [], s["index"]
        assert checked == [], s["index"]


@pytest.mark.parametrize("detail", ["full", "summary"])
def test_result_json_is_byte_identical(preset: str, detail: str) -> None:
    # Acceptance: same scenario, same policy, byte-identical result JSON.
    first = dumps(run_scenario("worked-example", preset, detail=detail)[2])
    second = dumps(run_scenario("worked-example", preset, detail=detail)[2])
    assert first == second


# --- the spec's literal steps: enable_dirty_log / get_dirty_log instead of a migration ----------------------


def literal_steps() -> list[dict[str, Any]]:
    """§7.2's steps 1–9 as written: KVM ioctls on slot 1 rather than a migration loop."""
    steps: list[dict[str, Any]] = spec_example()["steps"]
    return steps


@pytest.mark.parametrize(
    ("preset", "logs"),
    # §7.2 steps 7 and 9.
    per_preset(
        {
            "zap": [[0x250, 0x260, 0x2C0], [0x250, 0x300]],
            "lazy-buggy": [[0x200], []],
            "lazy": [[0x250, 0x260, 0x2C0], [0x250, 0x300]],
            "modern": [[0x250, 0x260, 0x2C0], [0x250, 0x300]],  # as test_step7/test_step9 above
        }
    ),
)
def test_literal_ioctls_give_the_same_dirty_logs(preset: str, logs: Sequence[list[int]]) -> None:
    data = scenario_dict("worked-example")
    data["steps"] = literal_steps()
    _, _, result = run_scenario(data, preset)
    got = [s["dirty_log"] for s in result["steps"] if s["op"]["op"] == "get_dirty_log"]
    assert got == list(logs)
    not_logged = {v["gfn"] for v in result["final"]["violations"] if v["invariant"] == "written_not_logged"}
    if preset == "lazy-buggy":
        # Every page written after logging began, except 0x200 (§7.2 step 7 "lost", step 9).
        assert not_logged == set(BUGGY_LOST)
    else:
        assert result["final"]["violations"] == []
    assert result["final"]["migration"] is None  # no migration ran (contract §4)
    # The state after each literal step is the migration run's state after the same step: migrate_begin
    # is enable_dirty_log plus a copy, migrate_round is get_dirty_log plus a copy (contract §1).
    assert result["final"]["sptes"] == state(preset, ROUND_2)["sptes"]
