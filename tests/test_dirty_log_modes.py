"""The later dirty-log modes (`dirty_log_mode`) and their ops, clear_dirty_log and reset_dirty_ring.

Expectations come from the spec (§5.4 manual protect, CLEAR and INITIALLY_SET, §5.5 the dirty ring) and the
kernel rules it describes, worked out by hand on the spec's example slot: gfns 0x200-0x3ff, one 2 MiB host
page, mapped by the level-2 spte at index 1 of the sp of gfn 0 until a 4K table replaces it (sp gfn 0x200).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from conftest import make_scenario, run_scenario, spec_example, spte_at

from app.explain.events import EXPLAINERS
from app.explain.kernel_files import KERNEL_SOURCES
from engine import trace
from engine.estimate import estimate_work
from engine.invariants import check_all
from engine.kvm import DIRTY_RING_RSVD_ENTRIES, DIRTY_RING_SIZE
from engine.policy import NOT_IMPLEMENTED, PRESETS, make_policy
from engine.result import present_sptes, result_json
from engine.scenario import ScenarioError, parse_scenario
from engine.simulation import Simulation, StepResult

SLOT = {"id": 1, "base_gfn": "0x200", "npages": 512, "host_page": "2M", "base_pfn": "0x80000"}
LARGE = (2, 0, 1)  # the 2M spte of gfns 0x200-0x3ff


def l1(gfn: int) -> tuple[int, int, int]:
    return (1, 0x200, gfn - 0x200)


def run(
    steps: list[dict[str, Any]], mode: str, variant: str = "lazy", vcpus: int = 1, **overrides: Any
) -> tuple[Simulation, list[StepResult], dict[str, Any]]:
    """Run `steps` on the example slot, checking every invariant after every step."""
    scenario = make_scenario([SLOT], steps, vcpus=vcpus)
    sim = Simulation(scenario, make_policy(variant, {"dirty_log_mode": mode, **overrides}))
    results = []
    for _ in scenario.steps:
        step = sim.step()
        assert step.violations == [], (step.index, step.violations)
        assert check_all(sim.kvm, step.index) == [], step.index
        results.append(step)
    return sim, results, result_json(sim, results)


def spte(sim: Simulation, where: tuple[int, int, int]) -> dict[str, Any] | None:
    found = spte_at(present_sptes(sim.kvm), *where)
    return None if found is None else dict(found)


def events(step: StepResult, name: str) -> list[Any]:
    return [e for e in step.events or [] if e.name == name]


WRITE_250_LOGGED: list[dict[str, Any]] = [
    {"op": "write", "gfn": "0x210"},  # a writable 2M spte before logging
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "write", "gfn": "0x250"},  # slow path: the large spte goes, a writable 4K spte, bit set
]


# --- manual protect (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) -------------------------------------------------


def test_manual_clear_get_only_copies_the_bitmap() -> None:
    sim, steps, _ = run(
        [*WRITE_250_LOGGED, {"op": "get_dirty_log", "slot": 1}, {"op": "get_dirty_log", "slot": 1}],
        "manual_clear",
    )
    first, second = steps[3], steps[4]
    assert first.dirty_log == [0x250]
    assert second.dirty_log == [0x250]  # nothing was cleared
    assert first.tlb_flushes == second.tlb_flushes == 0
    assert first.spte_changes == second.spte_changes == []
    written = spte(sim, l1(0x250))
    assert written is not None and written["writable"]  # nothing was write-protected


def test_manual_clear_reprotects_only_the_set_bits_then_logs_again_by_the_fast_path() -> None:
    _sim, steps, result = run(
        [
            *WRITE_250_LOGGED,
            {"op": "write", "gfn": "0x260"},
            {"op": "get_dirty_log", "slot": 1},
            {"op": "clear_dirty_log", "slot": 1, "first": "0x40", "num": 64},  # pages 0x240-0x27f
            {"op": "clear_dirty_log", "slot": 1, "first": "0x40", "num": 64},  # nothing set any more
            {"op": "write", "gfn": "0x250"},
            {"op": "get_dirty_log", "slot": 1},
        ],
        "manual_clear",
    )
    clear, again, rewrite, get = steps[5], steps[6], steps[7], steps[8]
    assert clear.dirty_log is None and clear.error is None
    (protect,) = events(clear, "kvm_clear_dirty_log_protect")
    assert protect.gfns == (0x250, 0x260)
    (masked,) = events(clear, "kvm_arch_mmu_enable_log_dirty_pt_masked")
    assert (masked.gfn_offset, masked.mask) == (0x40, hex(1 << 0x10 | 1 << 0x20))
    assert clear.tlb_flushes == 1
    assert again.tlb_flushes == 0 and events(again, "kvm_clear_dirty_log_protect")[0].gfns == ()
    assert result["steps"][5]["dirty_log"] is None
    # The re-protected page keeps MW, so the next write is fixed by the fast path and logged again.
    assert rewrite.fault_counts == {"fast": 1, "slow": 0}
    assert rewrite.marked_dirty == [0x250]
    assert get.dirty_log == [0x250]


def test_clear_works_without_manual_protect_and_reprotects_writes_since_the_get() -> None:
    sim, steps, _ = run(
        [
            *WRITE_250_LOGGED,
            {"op": "get_dirty_log", "slot": 1},  # 3.x GET: returns, clears and protects 0x250
            {"op": "write", "gfn": "0x250"},  # fast path: writable again, bit set again
            {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 512},
        ],
        "bitmap",
    )
    assert steps[3].dirty_log == [0x250]
    assert steps[4].fault_counts == {"fast": 1, "slow": 0}
    assert steps[5].tlb_flushes == 1
    written = spte(sim, l1(0x250))
    assert written is not None and not written["writable"] and written["mmu_writable"]
    assert sim.kvm.memslots.by_id[1].dirty_gfns() == []


# --- INITIALLY_SET ---------------------------------------------------------------------------------------


def test_initially_set_enables_all_ones_and_touches_no_spte() -> None:
    sim, steps, result = run(
        [
            {"op": "write", "gfn": "0x210"},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
        ],
        "initially_set",
    )
    enable, write = steps[1], steps[2]
    assert enable.spte_changes == [] and enable.tlb_flushes == 0
    large = spte(sim, LARGE)
    assert large is not None and large["large"] and large["writable"]
    # Nothing faults: the 2M spte still allows the store, and every page is already dirty.
    assert write.fault_counts == {"fast": 0, "slow": 0} and write.marked_dirty == []
    assert result["final"]["dirty_bitmaps"] == {"1": list(range(0x200, 0x400))}


def test_initially_set_clear_write_protects_the_huge_page_over_the_range() -> None:
    sim, steps, _ = run(
        [
            {"op": "write", "gfn": "0x210"},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "get_dirty_log", "slot": 1},
            {"op": "clear_dirty_log", "slot": 1, "first": "0x40", "num": 64},
            {"op": "write", "gfn": "0x250"},
        ],
        "initially_set",
    )
    assert steps[2].dirty_log == list(range(0x200, 0x400))
    table = spte(sim, LARGE)
    assert table is not None and not table["leaf"]  # the write fault below dropped it for a 4K table
    clear = steps[3]
    assert [(c.level, c.sp_gfn, c.index) for c in clear.spte_changes or []] == [LARGE]
    change = (clear.spte_changes or [])[0]
    assert change.old & 2 and not change.new & 2  # W cleared, still present and large
    assert clear.tlb_flushes == 1
    bitmap = sim.kvm.memslots.by_id[1].dirty_gfns()
    assert 0x250 in bitmap  # set again by the write's fault
    assert [g for g in range(0x240, 0x280) if g in bitmap] == [0x250]
    assert steps[4].fault_counts["slow"] == 1 and steps[4].marked_dirty == [0x250]


@pytest.mark.skipif(("eager_split", True) in NOT_IMPLEMENTED, reason="eager splitting is not modelled")
def test_initially_set_clear_splits_the_overlap_with_eager_split() -> None:
    sim, _, result = run(
        [
            {"op": "write", "gfn": "0x210"},
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "clear_dirty_log", "slot": 1, "first": "0x40", "num": 64},
        ],
        "initially_set",
        eager_split="true",
    )
    assert result["final"]["stats"]["lpages"] == 0
    for gfn in (0x240, 0x27F):
        leaf = spte(sim, l1(gfn))
        assert leaf is not None and not leaf["writable"]
    for gfn in (0x200, 0x23F, 0x280, 0x3FF):  # split from the writable 2M spte, bits still set
        leaf = spte(sim, l1(gfn))
        assert leaf is not None and leaf["writable"]


# --- the dirty ring --------------------------------------------------------------------------------------


def test_ring_entries_per_vcpu_in_order_with_repeats() -> None:
    _sim, steps, result = run(
        [
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
            {"op": "write", "gfn": "0x300", "vcpu": 1},
            {"op": "write", "gfn": "0x260"},
            {"op": "zap_all"},  # the sptes go, so the next write faults and pushes again
            {"op": "write", "gfn": "0x250"},
            {"op": "get_dirty_log", "slot": 1},
            {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 512},
        ],
        "ring",
        vcpus=2,
    )
    assert result["final"]["dirty_rings"] == {"0": [0x250, 0x260, 0x250], "1": [0x300]}
    assert result["final"]["dirty_bitmaps"] == {}
    get, clear = steps[6], steps[7]
    assert get.dirty_log is None and get.error == "KVM_GET_DIRTY_LOG: ENXIO"
    assert clear.error == "KVM_CLEAR_DIRTY_LOG: ENXIO"
    assert result["steps"][6]["error"] == "KVM_GET_DIRTY_LOG: ENXIO"
    assert [e.ioctl for s in (get, clear) for e in events(s, "kvm_vm_ioctl")] == [
        "KVM_GET_DIRTY_LOG",
        "KVM_CLEAR_DIRTY_LOG",
    ]


def test_ring_reset_reports_and_reprotects() -> None:
    sim, steps, result = run(
        [
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": "0x250"},
            {"op": "write", "gfn": "0x300", "vcpu": 1},
            {"op": "write", "gfn": "0x250", "vcpu": 1},  # already writable: no fault, no entry
            {"op": "reset_dirty_ring"},
            {"op": "reset_dirty_ring"},
            {"op": "write", "gfn": "0x250", "vcpu": 1},
        ],
        "ring",
        vcpus=2,
    )
    reset, empty, rewrite = steps[4], steps[5], steps[6]
    assert reset.dirty_log == [0x250, 0x300] and reset.tlb_flushes == 1
    assert empty.dirty_log == [] and empty.tlb_flushes == 0
    lost_w = {(c.level, c.sp_gfn, c.index) for c in reset.spte_changes or [] if c.old & ~c.new & 2}
    assert lost_w == {l1(0x250), l1(0x300)}
    leaf = spte(sim, l1(0x300))
    assert leaf is not None and not leaf["writable"] and leaf["mmu_writable"]
    assert rewrite.fault_counts == {"fast": 1, "slow": 0}
    assert result["final"]["dirty_rings"] == {"0": [], "1": [0x250]}


def test_reset_outside_ring_mode_fails_with_einval() -> None:
    _, steps, result = run([{"op": "reset_dirty_ring"}], "bitmap")
    assert steps[0].dirty_log is None and steps[0].error == "KVM_RESET_DIRTY_RINGS: EINVAL"
    assert "dirty_rings" not in result["final"]


def test_a_soft_full_ring_keeps_the_vcpu_out_until_reset() -> None:
    soft_limit = DIRTY_RING_SIZE - DIRTY_RING_RSVD_ENTRIES
    big = {"id": 1, "base_gfn": 0, "npages": 2 * DIRTY_RING_SIZE}
    scenario = make_scenario(
        [big],
        [
            {"op": "enable_dirty_log", "slot": 1},
            {"op": "write", "gfn": 0, "count": soft_limit + 100},
            {"op": "write", "gfn": 0x1F00},
            {"op": "reset_dirty_ring"},
            {"op": "write", "gfn": 0x1F00},
        ],
    )
    sim = Simulation(scenario, make_policy("lazy", {"dirty_log_mode": "ring"}))
    steps = sim.run()
    assert all(step.violations == [] for step in steps)
    storm, blocked, reset, after = steps[1:]
    # The fault of access soft_limit - 1 pushes the entry that fills the ring to its soft limit: the vCPU
    # exits before it retries that store.
    (full,) = events(storm, "kvm_dirty_ring_check_request")
    assert (full.gfn, full.used, full.skipped) == (soft_limit - 1, soft_limit, 101)
    slot = sim.kvm.memslots.by_id[1]
    assert slot.content[soft_limit - 2] == 1 and slot.content[soft_limit - 1] == 0
    (again,) = events(blocked, "kvm_dirty_ring_check_request")
    assert again.skipped == 1 and blocked.fault_counts == {"fast": 0, "slow": 0}
    assert reset.dirty_log is not None and len(reset.dirty_log) == soft_limit
    assert after.marked_dirty == [0x1F00] and slot.content[0x1F00] == 1


# --- migration under each mode ---------------------------------------------------------------------------

MODERN = ["modern"] if "modern" in PRESETS else []


@pytest.mark.parametrize("variant", ["lazy", *MODERN])
@pytest.mark.parametrize("mode", ["bitmap", "manual_clear", "initially_set", "ring"])
def test_migration_loses_nothing(variant: str, mode: str) -> None:
    scenario = spec_example()
    steps = [s for s in scenario["steps"] if s["op"] not in ("enable_dirty_log", "get_dirty_log")]
    scenario["steps"] = [
        steps[0],
        steps[1],
        {"op": "migrate_begin"},
        *steps[2:6],
        {"op": "migrate_round"},
        *steps[6:],
        {"op": "write", "gfn": "0x3ff"},
        {"op": "migrate_end"},
    ]
    sim, results, result = run_scenario(scenario, variant, {"dirty_log_mode": mode})
    assert [v for r in results for v in r.violations] == []
    assert result["final"]["migration"]["lost"] == []
    assert check_all(sim.kvm, len(results) - 1) == []
    # The final round sees the last writes, whatever the mode.
    assert {0x250, 0x300, 0x3FF} <= set(results[-1].dirty_log or [])


# --- validation ------------------------------------------------------------------------------------------


def _clear(first: Any, num: Any, *, enable: bool = True, npages: int = 512) -> dict[str, Any]:
    steps: list[dict[str, Any]] = (
        [{"op": "enable_dirty_log", "slot": 1}] if enable else [{"op": "note", "text": ""}]
    )
    steps.append({"op": "clear_dirty_log", "slot": 1, "first": first, "num": num})
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "memslots": [{**SLOT, "npages": npages}],
        "steps": steps,
    }


@pytest.mark.parametrize(
    ("scenario", "words"),
    [
        (_clear("0x10", 64), ["step 1 (clear_dirty_log)", "first 0x10", "multiple of 64"]),
        (_clear(0, 100), ["step 1 (clear_dirty_log)", "num 100", "multiple of 64"]),
        (_clear("0x1c0", 128), ["step 1 (clear_dirty_log)", "num 128", "past the end"]),
        (_clear("0x240", 0), ["step 1 (clear_dirty_log)", "first 0x240", "past the end"]),
        (_clear(0, 64, enable=False), ["step 1 (clear_dirty_log)", "slot 1 is not dirty-logged"]),
        (_clear(0, "64"), ["step 1 (clear_dirty_log)", "num"]),
    ],
)
def test_clear_dirty_log_refusals(scenario: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ScenarioError) as error:
        parse_scenario(scenario)
    for word in words:
        assert word in str(error.value)


def test_clear_dirty_log_may_end_short_at_the_end_of_the_slot() -> None:
    parse_scenario(_clear("0x200", 1, npages=0x201))
    parse_scenario(_clear(0, 0))
    parse_scenario(_clear("0x200", 0))


def test_new_ops_are_priced_and_in_the_result_op() -> None:
    scenario = parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            "memslots": [SLOT],
            "steps": [
                {"op": "write", "gfn": "0x200"},
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 512},
                {"op": "reset_dirty_ring"},
            ],
        }
    )
    before = estimate_work(scenario, 2).total
    assert estimate_work(scenario, 3).total > before + 1
    _, _, result = run_scenario(scenario, "lazy", {"dirty_log_mode": "manual_clear"})
    assert result["steps"][2]["op"] == {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 512}
    assert result["steps"][3]["op"] == {"op": "reset_dirty_ring"}


# --- every mode keeps the invariants on the spec's example -------------------------------------------------


@pytest.mark.parametrize("mode", ["bitmap", "manual_clear", "initially_set", "ring"])
def test_spec_example_keeps_the_invariants(mode: str) -> None:
    scenario = spec_example()
    scenario["steps"] += [
        {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 512},
        {"op": "reset_dirty_ring"},
        {"op": "write", "gfn": "0x2c1"},
    ]
    sim, results, _ = run_scenario(scenario, "lazy", {"dirty_log_mode": mode})
    for step in results:
        assert step.violations == [], (mode, step.index, step.violations)
    assert check_all(sim.kvm, len(results) - 1) == []


# --- the trace vocabulary -------------------------------------------------------------------------------


def test_every_trace_event_is_explained_with_its_kernel_source() -> None:
    names = [
        cls.name
        for cls in vars(trace).values()
        if isinstance(cls, type) and issubclass(cls, trace.Event) and cls is not trace.Event
    ]
    assert dataclasses.is_dataclass(trace.DirtyRingPush)
    for name in names:
        assert name in EXPLAINERS, name
        assert KERNEL_SOURCES.get(name), name
