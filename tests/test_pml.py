"""Intel PML (`pml=true`), spec §5.6, with expectations worked out by hand.

With PML, enabling logging clears D on 4K leaves instead of W (huge leaves are still write-protected); a
store that sets D is logged by the CPU in the vCPU's 512-entry buffer (entry 511 first) without a fault;
the buffer reaches the dirty log at the vCPU's next exit, when it is full, or when userspace reads the log
(every vCPU is kicked first); harvesting clears D, not W, then flushes. Without EPT A/D bits it is inert.

The 4K slot: gfns 0x200-0x5ff on 4K host pages, so every leaf is a 4K spte in the sp of gfn 0x200 or
0x400. The 2M slot: gfns 0x800-0x9ff on one 2 MiB host page, a single 2M leaf until logging splits it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import make_scenario, run_scenario, spec_example
from fastapi.testclient import TestClient

from app.main import create_app
from engine.invariants import check_all
from engine.kvm import PML_ENTITY_NUM
from engine.policy import make_policy
from engine.result import result_json
from engine.scenario import Scenario
from engine.simulation import Simulation, StepResult
from engine.spte import (
    PT_PAGE_SIZE_MASK,
    PT_WRITABLE_MASK,
    SPTE_HOST_WRITEABLE,
    SPTE_MMU_WRITEABLE,
    VMX_EPT_ACCESS_BIT,
    VMX_EPT_DIRTY_BIT,
)
from engine.tdp_iter import walk_spte
from engine.trace import DirtyRingPush, PmlLog
from scenarios import builtin_names

SLOT_4K = {"id": 1, "base_gfn": "0x200", "npages": 1024, "host_page": "4K", "base_pfn": "0x80000"}
SLOT_2M = {"id": 2, "base_gfn": "0x800", "npages": 512, "host_page": "2M", "base_pfn": "0xa0000"}
W, D, A = PT_WRITABLE_MASK, VMX_EPT_DIRTY_BIT, VMX_EPT_ACCESS_BIT


def write(gfn: int, count: int = 1, vcpu: int = 0) -> dict[str, Any]:
    step: dict[str, Any] = {"op": "write", "gfn": hex(gfn), "vcpu": vcpu}
    if count > 1:
        step.update(count=count, stride=1)
    return step


def stepper(
    steps: list[dict[str, Any]], variant: str = "lazy", vcpus: int = 1, ept_ad: bool = True, **overrides: Any
) -> tuple[Simulation, list[StepResult]]:
    """Run every step, asserting that no step reports a violation and that the whole state is sound."""
    scenario: Scenario = make_scenario([SLOT_4K, SLOT_2M], steps, vcpus=vcpus, ept_ad=ept_ad)
    sim = Simulation(scenario, make_policy(variant, {"pml": True, **overrides}))
    results = []
    for _ in scenario.steps:
        result = sim.step()
        assert result.violations == [], (result.index, result.violations)
        assert check_all(sim.kvm, result.index) == [], result.index
        results.append(result)
    return sim, results


def leaf(sim: Simulation, gfn: int) -> int:
    found = walk_spte(sim.kvm, gfn)
    assert found is not None, hex(gfn)
    return found[2]


def names(step: StepResult) -> list[str]:
    return [e.name for e in step.events or []]


def event(step: StepResult, name: str) -> Any:
    (found,) = [e for e in step.events or [] if e.name == name]
    return found


# 0x200-0x203 and the 2M page written (writable, D set), then both slots logged.
ENABLED = [
    write(0x200, 4),
    write(0x800),
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "enable_dirty_log", "slot": 2},
]


def test_enabling_logging_clears_d_on_4k_leaves_and_w_on_large_ones() -> None:
    sim, steps = stepper(ENABLED)
    for gfn in range(0x200, 0x204):
        spte = leaf(sim, gfn)
        assert spte & W and spte & A and not spte & D  # still writable, D cleared
        assert spte & SPTE_HOST_WRITEABLE and spte & SPTE_MMU_WRITEABLE
    large = leaf(sim, 0x800)
    assert large & PT_PAGE_SIZE_MASK and not large & W and large & D  # write-protected, D left alone
    assert large & SPTE_MMU_WRITEABLE
    enable_4k, enable_2m = steps[2], steps[3]
    assert event(enable_4k, "kvm_mmu_slot_leaf_clear_dirty").cleared == 4
    assert event(enable_2m, "kvm_mmu_slot_leaf_clear_dirty").cleared == 0
    update = event(enable_4k, "vmx_update_cpu_dirty_logging")
    assert (update.enable, update.logged_slots, update.pml, update.inert) == (True, 1, True, False)
    # One unconditional flush per enable, as without PML: it drops the TLB entries that cached D.
    assert (enable_4k.tlb_flushes, enable_2m.tlb_flushes) == (1, 1)
    assert not sim.kvm.vcpus[0].tlb.entries()


def test_a_store_is_logged_by_the_cpu_without_a_fault() -> None:
    sim, steps = stepper([*ENABLED, write(0x201), write(0x201), write(0x203)])
    first, again, other = steps[4:]
    assert first.fault_counts == {"fast": 0, "slow": 0}
    assert leaf(sim, 0x201) & D and leaf(sim, 0x201) & W
    assert event(first, "pml_log").index == PML_ENTITY_NUM - 1  # entry 511 is written first
    assert first.marked_dirty == [] and not sim.kvm.memslots.by_id[1].test_dirty(0x201)
    # The second store goes through the TLB entry that cached D: nothing is logged again.
    assert "pml_log" not in names(again) and again.fault_counts == {"fast": 0, "slow": 0}
    assert event(other, "pml_log").index == PML_ENTITY_NUM - 2
    assert sim.kvm.vcpus[0].pml.entries == [0x201, 0x203]
    final: Any = result_json(sim, steps)["final"]
    assert final["pml_buffers"] == {"0": [0x201, 0x203]}
    assert final["dirty_bitmaps"]["1"] == []  # not in the bitmap until a flush


def test_get_dirty_log_flushes_the_buffers_first_then_clears_d() -> None:
    steps_in = [*ENABLED, write(0x201), write(0x203), {"op": "get_dirty_log", "slot": 1}, write(0x201)]
    sim, steps = stepper(steps_in)
    get, rewrite = steps[6], steps[7]
    assert get.dirty_log == [0x201, 0x203]
    flushed = event(get, "vmx_flush_pml_buffer")
    assert (flushed.reason, flushed.gfns) == ("kick", (0x201, 0x203))
    assert get.marked_dirty == [0x201, 0x203]
    assert "kvm_mmu_clear_dirty_pt_masked" in names(get)
    assert "kvm_mmu_write_protect_pt_masked" not in names(get)
    assert get.tlb_flushes == 1
    for gfn in (0x201, 0x203):
        assert leaf(sim, gfn) & W  # write protection is never used for 4K pages
    # 0x201 was written again after the GET: D set again, logged again, still no fault.
    assert rewrite.fault_counts == {"fast": 0, "slow": 0}
    assert "pml_log" in names(rewrite)
    assert not leaf(sim, 0x203) & D
    assert sim.kvm.vcpus[0].pml.entries == [0x201]


def test_any_exit_flushes_the_buffer() -> None:
    sim, steps = stepper([*ENABLED, write(0x201), write(0x250)])
    fault = steps[5]
    assert fault.fault_counts == {"fast": 0, "slow": 1}  # 0x250 was never mapped: an EPT violation
    assert event(fault, "vmx_flush_pml_buffer").reason == "exit"
    assert fault.marked_dirty == [0x201, 0x250]
    # The slow path builds the writable 4K spte dirty and marks it: the CPU has nothing more to log.
    assert leaf(sim, 0x250) & D and "pml_log" not in names(fault)
    assert sim.kvm.vcpus[0].pml.entries == []


def test_a_full_buffer_makes_a_pml_full_exit_and_the_store_is_logged_after_it() -> None:
    sim, steps = stepper([write(0x200, 513), {"op": "enable_dirty_log", "slot": 1}, write(0x200, 513)])
    storm = steps[2]
    assert storm.fault_counts == {"fast": 0, "slow": 0}
    flushed = event(storm, "vmx_flush_pml_buffer")
    assert flushed.reason == "pml_full" and flushed.gfns == tuple(range(0x200, 0x200 + 512))
    assert sorted(storm.marked_dirty) == list(range(0x200, 0x200 + 512))
    assert sim.kvm.vcpus[0].pml.entries == [0x200 + 512]  # the 513th store, logged after the exit
    assert sim.kvm.stat.exits == 513 + 1  # the first-touch faults before logging, and one PML-full exit
    assert [e.index for e in storm.events or [] if isinstance(e, PmlLog)][-1] == PML_ENTITY_NUM - 1


def test_disabling_logging_stops_pml_once_no_slot_is_logged_and_leaves_d_alone() -> None:
    steps_in = [*ENABLED, write(0x201), {"op": "get_dirty_log", "slot": 1},
                {"op": "disable_dirty_log", "slot": 1}, write(0x201),
                {"op": "disable_dirty_log", "slot": 2}, write(0x202)]
    sim, steps = stepper(steps_in)
    off_1, store_1, off_2, store_2 = steps[6:]
    update = event(off_1, "vmx_update_cpu_dirty_logging")
    assert (update.enable, update.logged_slots, update.pml) == (False, 1, True)  # slot 2 is still logged
    # PML is a vCPU's state, not a slot's: the store is logged, and dropped when flushed.
    assert "pml_log" in names(store_1)
    update = event(off_2, "vmx_update_cpu_dirty_logging")
    assert (update.enable, update.logged_slots, update.pml) == (False, 0, False)
    assert event(off_2, "vmx_flush_pml_buffer").gfns == (0x201,)
    assert event(off_2, "mark_page_dirty").logged is False and off_2.marked_dirty == []
    assert "pml_log" not in names(store_2) and sim.kvm.vcpus[0].pml.entries == []
    assert leaf(sim, 0x202) & D  # the CPU still sets D, it just logs nothing
    assert not leaf(sim, 0x203) & D and leaf(sim, 0x203) & W  # disabling leaves the D bits as they are


def test_ring_mode_flushes_into_the_ring_of_the_vcpu_that_logged() -> None:
    steps_in = [write(0x200), write(0x201), {"op": "enable_dirty_log", "slot": 1}, write(0x201, vcpu=1),
                write(0x200, vcpu=0), {"op": "reset_dirty_ring"}]
    sim, steps = stepper(steps_in, variant="modern", vcpus=2, dirty_log_mode="ring")
    reset = steps[5]
    assert reset.dirty_log == [0x200, 0x201]
    pushes = [(e.vcpu, e.gfn) for e in reset.events or [] if isinstance(e, DirtyRingPush)]
    assert pushes == [(0, 0x200), (1, 0x201)]  # each vCPU's buffer onto its own ring
    assert not leaf(sim, 0x200) & D and not leaf(sim, 0x201) & D
    assert all(not vcpu.pml.entries for vcpu in sim.kvm.vcpus)


def test_ept_ad_off_makes_pml_inert() -> None:
    steps_in = [write(0x200), write(0x800), {"op": "enable_dirty_log", "slot": 1},
                {"op": "enable_dirty_log", "slot": 2}, write(0x200), write(0x801),
                {"op": "get_dirty_log", "slot": 1}, {"op": "get_dirty_log", "slot": 2}]
    _, steps = stepper(steps_in, ept_ad=False)
    update = event(steps[2], "vmx_update_cpu_dirty_logging")
    assert (update.inert, update.pml) == (True, False)
    assert "kvm_mmu_slot_leaf_clear_dirty" not in names(steps[2])
    assert steps[4].fault_counts == {"fast": 1, "slow": 0}  # write protection, as without PML
    scenario = make_scenario([SLOT_4K, SLOT_2M], steps_in, ept_ad=False)
    _, plain, plain_json = run_scenario(scenario, "lazy")
    _, _, pml_json = run_scenario(scenario, "lazy", {"pml": True})
    assert pml_json["final"] == plain_json["final"]
    for ours, theirs in zip(pml_json["steps"], plain_json["steps"], strict=True):
        assert {k: v for k, v in ours.items() if k != "events"} == {
            k: v for k, v in theirs.items() if k != "events"
        }
    assert [s.dirty_log for s in steps] == [s.dirty_log for s in plain]


@pytest.mark.parametrize("variant", ["zap", "lazy", "modern"])
def test_the_worked_example_reports_the_same_dirty_logs_with_pml(variant: str) -> None:
    """What userspace sees does not depend on how the kernel gathered it (§5.6: only the latency)."""
    _, plain, _ = run_scenario(spec_example(), variant)
    _, with_pml, result = run_scenario(spec_example(), variant, {"pml": True})
    assert [s.dirty_log for s in with_pml] == [s.dirty_log for s in plain]
    assert result["final"]["violations"] == []
    if variant == "modern":
        # Eager splitting left 4K leaves only; every one of them is still writable.
        leaves = [s for s in result["final"]["sptes"] if s["level"] == 1 and s["gfn"] >= 0x200]
        assert leaves and all(s["writable"] for s in leaves)


@pytest.mark.parametrize("mode", ["bitmap", "manual_clear", "initially_set", "ring"])
@pytest.mark.parametrize("variant", ["lazy", "modern"])
@pytest.mark.parametrize("name", builtin_names())
def test_invariants_hold_on_every_builtin_scenario_with_pml(name: str, variant: str, mode: str) -> None:
    sim, plain, _ = run_scenario(name, variant, {"dirty_log_mode": mode}, detail="summary")
    policy = make_policy(variant, {"dirty_log_mode": mode, "pml": True})
    sim = Simulation(sim.scenario, policy, detail="summary")
    for expected in plain:
        step = sim.step()
        assert step.violations == [], (step.index, step.violations)
        assert step.dirty_log == expected.dirty_log, step.index
    assert check_all(sim.kvm, sim.index - 1) == []
    if sim.migrated:
        assert sim.migration.lost == []


def test_the_invariants_still_catch_a_dirty_spte_that_nothing_reports() -> None:
    sim, _ = stepper([*ENABLED, write(0x201), {"op": "get_dirty_log", "slot": 1}, write(0x201)])
    kvm = sim.kvm
    found = walk_spte(kvm, 0x203 - 2)
    assert found is not None
    # A TLB entry that cached D over an spte whose D is cleared without a flush: stores are not logged.
    sp, index, spte = found
    kvm.write_spte(sp, index, spte & ~D)
    assert {v.invariant for v in check_all(kvm, 9)} == {"tlb_more_permissive_than_spte"}
    # A dirty writable 4K spte whose page is neither in the bitmap nor in a PML buffer.
    kvm.vcpus[0].tlb.flush()
    kvm.vcpus[0].pml.take()
    kvm.write_spte(sp, index, spte | D)
    assert {v.invariant for v in check_all(kvm, 9)} == {"writable_implies_dirty_bit"}


def test_a_store_waiting_in_a_pml_buffer_is_not_lost_at_the_end() -> None:
    sim, steps = stepper([*ENABLED, write(0x202)])
    assert sim.kvm.vcpus[0].pml.entries == [0x202]
    # The last step's check includes the end of the scenario: the store in the buffer is not lost.
    assert steps[-1].violations == [] and sim.violations == []


@pytest.mark.parametrize("pml", [False, True])
def test_a_clear_without_a_get_is_userspaces_choice_with_or_without_pml(pml: bool) -> None:
    # KVM_CLEAR_DIRTY_LOG needs no GET before it (spec §5.4; kvm_clear_dirty_log_protect does not ask for
    # manual protection): clearing a bit nobody read drops what was logged there. Without PML the fault
    # marked the page at the store; with PML the kick before the CLEAR drains the buffer into that very
    # bit. Either way it is userspace that dropped the store, and the kernel's invariants say nothing.
    slot = {"id": 0, "base_gfn": 0, "npages": 1}
    steps = [
        {"op": "write", "gfn": 0},
        {"op": "enable_dirty_log", "slot": 0},
        {"op": "write", "gfn": 0},
        {"op": "clear_dirty_log", "slot": 0, "first": 0, "num": 1},
        {"op": "get_dirty_log", "slot": 0},
    ]
    for preset in ("lazy", "modern"):
        sim, _, result = run_scenario(make_scenario([slot], steps), preset, {"pml": pml})
        clear, get = result["steps"][3], result["steps"][4]
        assert clear["marked_dirty"] == ([0] if pml else [])
        assert get["dirty_log"] == []
        assert sim.violations == []


def test_the_result_lists_pml_buffers_only_when_one_holds_something() -> None:
    steps_in = [*ENABLED, write(0x201)]
    _, _, plain = run_scenario(make_scenario([SLOT_4K, SLOT_2M], steps_in), "lazy")
    assert "pml_buffers" not in plain["final"]
    harvested = make_scenario([SLOT_4K, SLOT_2M], [*steps_in, {"op": "get_dirty_log", "slot": 1}])
    _, _, drained = run_scenario(harvested, "lazy", {"pml": True})
    assert "pml_buffers" not in drained["final"]


def test_the_player_shows_each_vcpus_pml_buffer() -> None:
    client = TestClient(create_app())
    base = "/play?scenario=worked-example&variant=modern"
    shown = client.get(f"{base}&policy=pml=true&step=4").text
    assert 'data-pml-vcpu="0"' in shown and "data-pml-entries=" in shown
    assert "data-pml-vcpu" not in client.get(f"{base}&step=4").text


@pytest.mark.parametrize(
    ("query", "says", "never"),
    [
        ("variant=modern&policy=pml=true", "every 4K spte loses D", "every spte loses W"),
        ("variant=lazy&policy=pml=true", "every 4K spte loses D", "every spte loses W"),
        ("variant=modern", "every spte loses W", "loses D"),
    ],
)
def test_the_step_that_enables_logging_says_which_bit_the_sptes_lose(
    query: str, says: str, never: str
) -> None:
    """§5.6: with PML, logging clears D on 4K leaves (W stays) and W only on large ones; without it, W."""
    page = TestClient(create_app()).get(f"/play?scenario=todays-kernel&{query}&step=4")
    assert page.status_code == 200
    narration = re.search(r"Dirty logging is switched on for slot 1[^<]*", page.text)
    assert narration is not None
    assert says in narration.group(0) and never not in narration.group(0)
