"""Shadow paging, scenario by scenario of shadow-mmu.md §4 (S1 to S5), per preset, as the spec's table
states the outcomes: what happens to the large spte over a newly shadowed guest table, which reads are
logged, the page-directory page in the dirty log, the stale shadow the flush rule prevents, and sync
reporting pages nobody wrote. Every expected value below is read off the spec, not off a run.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import load_scenario

from engine.canonical import dumps
from engine.codec import decode_code, encode_scenario
from engine.policy import make_policy
from engine.result import result_json
from engine.scenario import ScenarioError, parse_scenario, under_mmu
from engine.simulation import Simulation, StepResult
from engine.spte import PT_PAGE_SIZE_MASK, PT_PRESENT_MASK, PT_WRITABLE_MASK

PRESETS = ("zap", "lazy-buggy", "lazy", "modern")
# Linux 3.14 zaps; caf6900f and 3.16 keep the large spte read-only; 6.18's shadow MMU is measured as 3.16.
ZAPS = {"zap": True, "lazy-buggy": False, "lazy": False, "modern": False}

# One slot of two 2M host pages (gfns 0x200-0x5ff), identity-mapped by the guest with 2M pages; its page
# tables from 0x200: the PML4 at 0x200, the PDPT at 0x201, the page directory at 0x202.
SLOT = {"id": 1, "base_gfn": "0x200", "npages": "0x400", "host_page": "2M"}
PD = 0x202


def shadow(*steps: dict[str, Any], guest: dict[str, Any] | None = None, **vm: Any) -> dict[str, Any]:
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "vm": {"mmu": "shadow", **vm},
        "memslots": [SLOT],
        "guest": guest or {"tables_at": "0x200"},
        "steps": list(steps),
    }


def run(data: dict[str, Any], preset: str, **switches: str) -> tuple[Simulation, list[StepResult]]:
    """The scenario under the preset (with switches changed), traced."""
    sim = Simulation(parse_scenario(data), make_policy(preset, switches), detail="full")
    return sim, sim.run()


def large_spte(sim: Simulation) -> int | None:
    """The present 2M leaf mapping gfns 0x400-0x5ff (the PD's entry 2), if any."""
    for sp in sim.kvm.active_mmu_pages.values():
        if sp.level == 2 and not sp.direct and sp.gfn == PD:
            spte = sp.spt[2]
            if spte & PT_PRESENT_MASK and spte & PT_PAGE_SIZE_MASK:
                return spte
    return None


def flushed(result: StepResult) -> bool:
    return result.tlb_flushes > 0


# --- S1: a large spte over a newly shadowed guest page table -----------------------------------------------

S1 = shadow(
    {"op": "write", "gfn": "0x410"},  # the guest 2M page, mapped by a host 2M spte, written
    # The guest links gfn 0x480 (inside that 2M page) as the page table of gva 0x600000 and fills it.
    {"op": "write_gpte", "table": "0x202", "index": 3, "pte": "0x480027"},
    {"op": "write_gpte", "table": "0x480", "index": 0, "pte": "0x500067"},
    {"op": "read", "gva": "0x600000"},  # accesses through it: KVM shadows 0x480
    {"op": "read", "gfn": "0x420"},  # another page of the range
    {"op": "write", "gfn": "0x430"},  # a write to one
    {"op": "write", "gfn": "0x480"},  # a write to the page table itself
)


@pytest.mark.parametrize("preset", PRESETS)
def test_s1_large_spte_over_a_shadowed_page_table(preset: str) -> None:
    sim, steps = run(S1, preset)
    masks = sim.kvm.masks
    assert all(not step.violations for step in steps)
    shadowing, read, write, table_write = steps[3], steps[4], steps[5], steps[6]
    assert flushed(shadowing)  # zapped (3.14) or write-protected with the HW∧MW rule (3.16): a flush
    if ZAPS[preset]:
        # 3.14: the 2M spte is zapped at shadowing; the read faults and maps 4K; so does the write.
        assert read.fault_counts["slow"] == 1
        assert write.fault_counts["slow"] == 1
    else:
        # 3.16: the 2M spte is kept read-only, MMU-writable cleared, host-writable kept...
        spte_after_shadowing = _spte_at(S1, preset, 4)
        assert spte_after_shadowing is not None
        assert not spte_after_shadowing & PT_WRITABLE_MASK
        assert not spte_after_shadowing & masks.mmu_writable_mask
        assert spte_after_shadowing & masks.host_writable_mask
        # ... the read of another page is free; the write faults and drops it (with a flush).
        assert read.fault_counts == {"fast": 0, "slow": 0}
        assert write.fault_counts["slow"] == 1
        assert flushed(write)
    assert large_spte(sim) is None  # either way, 4K from then on
    assert sim.kvm.stat.pages[1] == 0
    # The write to the page table unsyncs its level-1 shadow page.
    assert table_write.fault_counts["slow"] == 1
    assert sim.kvm.stat.mmu_unsync == 1


def _spte_at(data: dict[str, Any], preset: str, steps: int) -> int | None:
    """The 2M spte after the first `steps` steps."""
    sim = Simulation(parse_scenario(data), make_policy(preset), detail="summary")
    for _ in range(steps):
        sim.step()
    return large_spte(sim)


# --- S2: the read logged through a dirty guest PDE ---------------------------------------------------------

S2 = shadow(
    {"op": "write", "gfn": "0x410"},
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "read", "gfn": "0x420"},
    {"op": "write", "gfn": "0x450"},
    {"op": "read", "gfn": "0x460"},
    {"op": "get_dirty_log", "slot": 1},
)


@pytest.mark.parametrize("preset", PRESETS)
def test_s2_a_read_through_a_dirty_pde_is_logged(preset: str) -> None:
    _, steps = run(S2, preset)
    assert all(not step.violations for step in steps)
    if ZAPS[preset]:
        # 2M zapped at enable; three faults, each read mapping W through the dirty PDE, and marked.
        assert large_spte(_at(S2, preset, 2)) is None
        assert [steps[i].fault_counts["slow"] for i in (2, 3, 4)] == [1, 1, 1]
        assert steps[5].dirty_log == [0x420, 0x450, 0x460]
    else:
        # The read is free, the write drops the 2M spte, the read after it maps W and is marked. No loss
        # under caf6900f: a paging guest never takes the fast path.
        assert steps[2].fault_counts == {"fast": 0, "slow": 0}
        assert steps[4].marked_dirty == [0x460]
        assert steps[5].dirty_log == [0x450, 0x460]
    assert sum(step.fault_counts["fast"] for step in steps) == 0


def test_s2_on_todays_shadow_mmu_the_2m_spte_goes_at_the_write_not_at_enable() -> None:
    sim = Simulation(parse_scenario(S2), make_policy("modern"), detail="summary")
    pages_2m = []
    for _ in S2["steps"]:
        sim.step()
        pages_2m.append(sim.kvm.stats()["pages_2m"])
    assert pages_2m == [1, 1, 1, 0, 0, 0]
    assert sim.kvm.stats()["pf_fast"] == 0


def _at(data: dict[str, Any], preset: str, steps: int) -> Simulation:
    sim = Simulation(parse_scenario(data), make_policy(preset), detail="summary")
    for _ in range(steps):
        sim.step()
    return sim


# --- S2b: the page-directory page in the dirty log ---------------------------------------------------------

S2B = shadow(
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "read", "gfn": "0x4c0"},
    {"op": "write", "gfn": "0x450"},
    {"op": "write", "gfn": "0x470"},
    {"op": "get_dirty_log", "slot": 1},
    guest={
        "tables_at": "0x200",
        "spaces": [
            {
                "maps": [
                    {"gfn": "0x200", "npages": 512, "page": "2M"},
                    {"gfn": "0x400", "npages": 512, "page": "2M", "dirty": False},  # the PDE's D clear
                ]
            }
        ],
    },
)


@pytest.mark.parametrize("preset", PRESETS)
def test_s2b_the_page_directory_page_is_logged(preset: str) -> None:
    _, steps = run(S2B, preset)
    assert all(not step.violations for step in steps)
    # The read maps read-only through the clean PDE and is not marked.
    assert steps[1].fault_counts["slow"] == 1
    assert steps[1].marked_dirty == []
    # The write sets D in the PDE: the page-directory page is logged with the page written.
    assert steps[2].marked_dirty == [PD, 0x450]
    assert steps[4].dirty_log == [PD, 0x450, 0x470]


def test_s2b_todays_shadow_mmu_prefetches_eight_read_only_sptes() -> None:
    """6.18 measured `pages_4k` +8 at the read: the spte and the 7 after it in its group, read-only."""
    sim = _at(S2B, "modern", 1)
    before = sim.kvm.stats()["pages_4k"]
    sim.step()
    assert sim.kvm.stats()["pages_4k"] - before == 8


# --- S3: the stale shadow the flush rule prevents ----------------------------------------------------------

S3 = shadow(
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "write_gpte", "table": "0x480", "index": 0, "pte": "0x500067", "vcpu": 1},  # v1 writes G
    {"op": "get_dirty_log", "slot": 1, "split": True},  # the first half write-protects G, no flush yet
    {"op": "write_gpte", "table": "0x202", "index": 3, "pte": "0x480027"},  # v0's guest makes G a table
    {"op": "read", "gva": "0x600000"},  # and touches through it: rmap_write_protect(G, pt_protect)
    {"op": "write_gpte", "table": "0x480", "index": 1, "pte": "0x501067", "vcpu": 1},  # v1 writes G again
    {"op": "get_dirty_log_end", "slot": 1},  # the second half
    vcpus=2,
)


@pytest.mark.parametrize("preset", PRESETS)
def test_s3_every_preset_is_safe(preset: str) -> None:
    """3.14 flushes inside mmu_lock; 3.16 flushes in kvm_mmu_get_page because G's spte is HW∧MW."""
    _, steps = run(S3, preset)
    assert [v.invariant for step in steps for v in step.violations] == []
    assert steps[5].fault_counts["slow"] == 1  # v1's write to G faults: KVM sees it


def test_s3_flush_after_unlock_with_the_old_flush_rule_leaves_a_stale_shadow() -> None:
    _, steps = run(S3, "lazy", flush_rule="old_w", flush_after_unlock="true")
    assert steps[5].fault_counts == {"fast": 0, "slow": 0}  # v1's write went through its stale TLB entry
    found = {v.invariant for step in steps[4:6] for v in step.violations}
    assert "shadowed_gfn_writable" in found


# --- S4: sync reports pages nobody wrote -------------------------------------------------------------------

S4: dict[str, Any] = {
    "format": "sptelab-scenario",
    "version": 1,
    "vm": {"mmu": "shadow"},
    "memslots": [{"id": 1, "base_gfn": "0x200", "npages": "0x200"}],
    "guest": {
        "tables_at": "0x200",
        "spaces": [
            {
                "maps": [
                    {"gfn": "0x200", "npages": 512, "page": "2M"},
                    {"gva": "0x40000000", "gfn": "0x300", "npages": 8},  # its page table P is at 0x204
                ]
            }
        ],
    },
    "steps": [
        {"op": "write", "gva": "0x40000000", "count": 8},  # dirty data pages
        {"op": "write_gpte", "table": "0x204", "index": 8, "pte": "0x308067"},  # P unsync
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "get_dirty_log", "slot": 1},  # the sptes read-only
        {"op": "set_cr3", "space": 0},  # the guest reloads CR3, writing nothing
        {"op": "get_dirty_log", "slot": 1},
    ],
}


@pytest.mark.parametrize("preset", PRESETS)
def test_s4_sync_reports_pages_nobody_wrote(preset: str) -> None:
    sim, steps = run(S4, preset)
    assert all(not step.violations for step in steps)
    assert steps[1].fault_counts["slow"] == 1 and sim.kvm.stat.mmu_unsync == 0  # unsynced, then synced
    assert steps[3].dirty_log == []
    assert steps[5].dirty_log == list(range(0x300, 0x308))


def test_s4_invlpg_syncs_one_entry_and_reports_its_page() -> None:
    steps4: list[dict[str, Any]] = S4["steps"]
    data = {**S4, "steps": [*steps4[:4], {"op": "invlpg", "gva": "0x40003000"},
                            {"op": "get_dirty_log", "slot": 1}]}  # fmt: skip
    _, steps = run(data, "lazy")
    assert steps[5].dirty_log == [0x303]


# --- S5: caf6900f with a paging-off guest on a shadow host -------------------------------------------------

S5: dict[str, Any] = {
    "format": "sptelab-scenario",
    "version": 1,
    "vm": {"mmu": "shadow"},
    "memslots": [{"id": 1, "base_gfn": "0x200", "npages": 512, "host_page": "2M"}],
    "guest": {"paging": False},
    "steps": [
        {"op": "write", "gfn": "0x210"},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x250"},
        {"op": "write", "gfn": "0x260"},
        {"op": "get_dirty_log", "slot": 1},
    ],
}


@pytest.mark.parametrize("preset", PRESETS)
def test_s5_only_caf6900f_loses_pages_with_a_paging_off_guest(preset: str) -> None:
    _, steps = run(S5, preset)
    lost = sorted(v.gfn or 0 for s in steps for v in s.violations if v.invariant == "written_not_logged")
    if preset == "lazy-buggy":
        assert lost == [0x250, 0x260]  # logged as 0x200, the first page of the 2M spte
        assert steps[4].dirty_log == [0x200]
    else:
        assert lost == []
        assert steps[4].dirty_log == [0x250, 0x260]


def test_a_paging_off_guest_maps_at_most_2m() -> None:
    data = {**S5, "vm": {"mmu": "shadow", "max_page_level": "1G"}, "steps": [{"op": "read", "gfn": "0x210"}]}
    sim, _ = run(data, "lazy")
    assert sim.kvm.max_level == 2


# --- the same scenario under both MMUs ----------------------------------------------------------------------


def test_under_tdp_the_guests_tables_change_nothing() -> None:
    """A TDP scenario may carry the guest's tables for under_mmu; the engine does not walk them under TDP,
    so the result is the one without them."""
    lesson = load_scenario("tdp-vs-shadow")
    assert lesson.vm.mmu == "tdp" and lesson.guest is not None
    without = parse_scenario({**lesson.canonical(), "guest": None})
    for preset in PRESETS:
        results = []
        for scenario in (lesson, without):
            sim = Simulation(scenario, make_policy(preset), detail="full")
            results.append(dumps(result_json(sim, sim.run())))
        assert results[0] == results[1], preset


def test_the_side_by_side_lesson_parts_where_the_spec_says() -> None:
    """caf6900f loses pages under TDP and not under shadow paging (the fast path never runs for a paging
    guest); modern's read after the write is logged under shadow paging only (no eager split there)."""
    tdp = load_scenario("tdp-vs-shadow")
    shadowed = under_mmu(tdp, "shadow")
    assert shadowed.vm.mmu == "shadow" and under_mmu(shadowed, "tdp").vm.mmu == "tdp"

    def log(scenario: Any, preset: str) -> tuple[list[int], set[str]]:
        sim = Simulation(scenario, make_policy(preset), detail="summary")
        steps = sim.run()
        got = next(step.dirty_log for step in steps if step.op.op == "get_dirty_log")
        return got or [], {v.invariant for step in steps for v in step.violations}

    assert log(tdp, "lazy-buggy") == ([0x400], {"written_not_logged", "no_writable_large_while_logging"})
    assert log(shadowed, "lazy-buggy") == ([0x450, 0x460, 0x470], set())
    assert log(tdp, "modern") == ([0x450, 0x470], set())
    assert log(shadowed, "modern") == ([0x450, 0x460, 0x470], set())
    for preset in ("zap", "lazy"):
        assert log(tdp, preset) == log(shadowed, preset)


def test_under_shadow_paging_a_scenario_needs_the_guests_tables() -> None:
    with pytest.raises(ScenarioError, match=re.escape("guest's page tables")):
        under_mmu(load_scenario("worked-example"), "shadow")
    with pytest.raises(ScenarioError, match=re.escape('needs vm.mmu "shadow"')):
        under_mmu(parse_scenario(S4), "tdp")


@pytest.mark.parametrize("data", [S1, S2B, S3, S4, S5], ids=["S1", "S2b", "S3", "S4", "S5"])
def test_a_shadow_scenario_survives_its_share_code(data: dict[str, Any]) -> None:
    scenario = parse_scenario(data)
    assert parse_scenario(decode_code(encode_scenario(scenario))) == scenario
