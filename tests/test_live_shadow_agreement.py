"""Shadow-paging scenarios on this machine's shadow MMU against `modern`, which under `vm.mmu: "shadow"`
models today's legacy shadow MMU: at every step they must agree.

The live guest runs on the scenario's own page tables (`live.shadow_guest`), so the kernel shadows,
write-protects and logs the pages the model does. Compared at every step (`live.shadow_compare`, which
says exactly what, everything of the live VM's own system slot left out): the dirty logs, the leaves
per level, the W bit of every leaf the kernel set, the faults, and the change of `pf_emulate`,
`pf_spurious` and `mmu_unsync`.

Before trusting the kernel as an oracle the run must show it went through the MMU: faults taken and,
traced, sptes set. S1 of tests/test_shadow_paging.py is the case where the presets part: `zap` zaps the
2M spte when the guest table inside it is shadowed and faults on the next read; the kernel, like `modern`,
keeps it, and the read takes no fault.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from livecases import shadow_scenarios

from engine.scenario import parse_scenario
from live.backend import KernelRun, run_with_stats
from live.host import host_mmu
from live.report import availability
from live.shadow_compare import PVM_TOP_LEVEL, compare_run, kernel_count
from live.tracefs import unavailable

UNAVAILABLE = availability()
if UNAVAILABLE is not None:
    pytest.skip(f"no usable KVM device: {UNAVAILABLE}", allow_module_level=True)
if host_mmu() != "shadow":
    pytest.skip(
        "this host has EPT/NPT: its KVM runs a shadow-paging scenario's guest on the TDP MMU, not on the"
        " shadow MMU these scenarios model",
        allow_module_level=True,
    )

NO_TRACE = unavailable()
# Counters both generations' models keep under shadow paging, compared by their change in each step.


def _kernel(run: KernelRun, index: int, name: str) -> int:
    return kernel_count(run, index, name)


def compare(data: dict[str, Any], preset: str = "modern", run: KernelRun | None = None) -> list[str]:
    """Every difference between the kernel's run of the scenario and the preset's, step by step."""
    scenario = parse_scenario(data)
    if run is None:
        run = run_with_stats(scenario, guest="native", trace=NO_TRACE is None)
    return [difference.text for difference in compare_run(scenario, run, preset) if not difference.tolerated]


def _touched_the_mmu(run: KernelRun) -> None:
    assert run.huge_missing is None, f"the host did not back the 2M slot with huge pages: {run.huge_missing}"
    faults = sum(_kernel(run, index, "pf_taken") for index in range(len(run.logs)))
    assert faults > 0, "the kernel took no fault: its MMU did not run the guest"
    if run.traces is not None:
        assert any(step.sptes_set for step in run.traces), "the kernel set no spte"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shadow_scenarios())
def test_modern_agrees_with_the_kernel_s_shadow_mmu_at_every_step(data: dict[str, Any]) -> None:
    note(f"scenario {data}")
    scenario = parse_scenario(data)
    run = run_with_stats(scenario, guest="native", trace=NO_TRACE is None)
    if any(op["op"] in ("read", "write") for op in data["steps"]):
        _touched_the_mmu(run)
    assert compare(data, run=run) == []


# S2 of tests/test_shadow_paging.py (logging over a guest 2M page whose PDE is dirty: a read after the
# write that drops the 2M spte is logged), harvested in each dirty-log mode the live VM has: the bitmap,
# GET then CLEAR of the whole slot and one more write, and the dirty ring.
S2_STEPS: list[dict[str, Any]] = [
    {"op": "write", "gfn": "0x410"},
    {"op": "enable_dirty_log", "slot": 1},
    {"op": "read", "gfn": "0x420"},
    {"op": "write", "gfn": "0x450"},
    {"op": "read", "gfn": "0x460"},
]
HARVESTS: dict[str, list[dict[str, Any]]] = {
    "bitmap": [{"op": "get_dirty_log", "slot": 1}],
    "manual_clear": [
        {"op": "get_dirty_log", "slot": 1},
        {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 1024},
        {"op": "write", "gfn": "0x450"},
        {"op": "get_dirty_log", "slot": 1},
    ],
    "ring": [{"op": "reset_dirty_ring"}, {"op": "write", "gfn": "0x470"}, {"op": "reset_dirty_ring"}],
}


@pytest.mark.parametrize("mode", sorted(HARVESTS))
def test_modern_agrees_with_the_kernel_in_each_dirty_log_mode(mode: str) -> None:
    data = {
        "format": "sptelab-scenario",
        "version": 1,
        "vm": {"mmu": "shadow"},
        "memslots": [{"id": 1, "base_gfn": "0x200", "npages": "0x400", "host_page": "2M"}],
        "guest": {"tables_at": "0x200"},
        "steps": S2_STEPS + HARVESTS[mode],
    }
    scenario = parse_scenario(data)
    run = run_with_stats(scenario, mode, guest="native", trace=NO_TRACE is None)
    _touched_the_mmu(run)
    assert next(log for log in run.logs if log is not None) == [0x450, 0x460]
    assert [d.text for d in compare_run(scenario, run, "modern", mode) if not d.tolerated] == []


# S1 of tests/test_shadow_paging.py: a guest 2M page (host 2M) written; the guest links gfn 0x480
# inside it as a page table and accesses through it; then reads another page of the range, writes one,
# and writes the page table.
S1: dict[str, Any] = {
    "format": "sptelab-scenario",
    "version": 1,
    "vm": {"mmu": "shadow"},
    "memslots": [{"id": 1, "base_gfn": "0x200", "npages": "0x400", "host_page": "2M"}],
    "guest": {"tables_at": "0x200"},
    "steps": [
        {"op": "write", "gfn": "0x410"},
        {"op": "write_gpte", "table": "0x202", "index": 3, "pte": "0x480027"},
        {"op": "write_gpte", "table": "0x480", "index": 0, "pte": "0x500067"},
        {"op": "read", "gva": "0x600000"},
        {"op": "read", "gfn": "0x420"},
        {"op": "write", "gfn": "0x430"},
        {"op": "write", "gfn": "0x480"},
    ],
}


def test_the_kernel_keeps_the_large_spte_over_a_shadowed_table_as_modern_does_and_zap_does_not() -> None:
    run = run_with_stats(parse_scenario(S1), guest="native", trace=NO_TRACE is None)
    _touched_the_mmu(run)
    # On the kernel: shadowing 0x480 (step 3) keeps the 2M spte; the read of 0x420 takes no fault; the
    # write of 0x430 drops the 2M spte; the write of the page table unsyncs it.
    assert _kernel(run, 3, "pages_2m") == 0
    assert _kernel(run, 4, "pf_taken") == 0
    assert _kernel(run, 5, "pages_2m") == -1
    assert _kernel(run, 6, "mmu_unsync") == 1
    assert compare(S1, "modern", run) == []
    zap = compare(S1, "zap", run)
    assert "step 3 (read): 1 level-2 leaves on the kernel, 0 in zap" in zap
    assert "step 4 (read): 1 level-2 leaves on the kernel, 0 in zap" in zap
    if run.system_faults is not None:
        assert "step 4 (read): 0 faults on the kernel, 1 in zap" in zap
    # lazy (3.16) keeps the 2M spte too: it parts from the kernel only in how many sptes a fault
    # prefetches, never in the large leaf or the faults.
    lazy = compare(S1, "lazy", run)
    assert not [line for line in lazy if "level-2" in line or "faults" in line], lazy


# Three behaviours this kernel showed, and upstream's 6.12 sources confirm, that the model once lacked;
# each is checked here by itself. The first: a guest executes its MOV CR3 on the root of the CR3 it
# booted with, which KVM loads on its way into the guest (kvm_mmu_reload), so a vCPU whose first step is
# set_cr3 has shadowed its first space's PML4. Measured: after set_cr3 to space 1, a write to gfn 0x200
# (space 0's PML4, still shadowed through the previous root) is emulated on the kernel (pf_emulate +1,
# the leaf for 0x200 read-only), and in modern.
FIRST_STEP_CR3: dict[str, Any] = {
    "format": "sptelab-scenario",
    "version": 1,
    "vm": {"mmu": "shadow"},
    "memslots": [{"id": 1, "base_gfn": "0x200", "npages": "0x400", "host_page": "2M"}],
    "guest": {"tables_at": "0x200", "spaces": [{}, {}]},
    "steps": [{"op": "set_cr3", "space": 1}, {"op": "write", "gfn": "0x200"}],
}


def test_after_an_access_mov_cr3_and_a_write_to_the_old_pml4_agree() -> None:
    entered = {**FIRST_STEP_CR3, "steps": [{"op": "read", "gfn": "0x450"}, *FIRST_STEP_CR3["steps"]]}
    assert compare(entered) == []


def test_a_first_step_mov_cr3_runs_on_the_boot_root() -> None:
    assert compare(FIRST_STEP_CR3) == []


# The second: a fault whose leaf is already in place. A store into the guest's PML4 is emulated and
# zaps the root's link to the PDPT's shadow page (mmu_pde_zapped +1); the shadow pages below and their
# leaves stay. The next fault through there links them again and finds its leaf as it would build it:
# upstream's FNAME(fetch) (6.12 paging_tmpl.h) returns RET_PF_SPURIOUS then, without prefetching, and
# the kernel counts pf_spurious, as modern does. Measured on this kernel, 20 runs: 19 spurious
# (pages_4k +0), 1 fixed with six prefetched (pages_4k +6): something outside the VM had dropped the
# leaf in that one, so the agreement is asked of up to three runs.
SPURIOUS: dict[str, Any] = {
    "format": "sptelab-scenario",
    "version": 1,
    "vm": {"mmu": "shadow"},
    "memslots": [{"id": 1, "base_gfn": "0x200", "npages": "0x400", "host_page": "2M"}],
    "guest": {"tables_at": "0x200"},
    "steps": [
        {"op": "write", "gfn": "0x200"},
        {"op": "write", "gfn": "0x200"},
        {"op": "read", "gfn": "0x200"},
    ],
}


def test_a_fault_that_finds_its_leaf_in_place_is_spurious_on_the_kernel() -> None:
    run = run_with_stats(parse_scenario(SPURIOUS), guest="native", trace=NO_TRACE is None)
    assert _kernel(run, 0, "pf_emulate") == 1
    assert _kernel(run, 0, "mmu_pde_zapped") == 1
    spurious = [_kernel(run, index, "pf_spurious") for index in range(3)]
    assert spurious in ([0, 0, 1], [0, 0, 0]), spurious  # [0, 0, 0]: a leaf dropped from outside


def test_modern_agrees_on_a_fault_that_finds_its_leaf_in_place() -> None:
    runs = []
    for _ in range(3):
        runs.append(compare(SPURIOUS))
        if not runs[-1]:
            break
    assert not runs[-1], runs


# The third: a store into an upper-level guest table whose leaf is present. Upstream 6.x write-tracks
# the gfn of every shadowed table above level 1 (account_shadowed), and FNAME(page_fault) hands a present
# write fault on a tracked gfn straight to the emulator (page_fault_handle_page_track): no fetch, no
# prefetch. Measured (5 runs of 5, the same each time): the second store into the page directory, after
# logging is switched off, changes pages_4k by 0 on the kernel, with no kvm_mmu_spte_requested; so does
# modern (before the model had write tracking, it prefetched 7).
WRITE_TRACKED: dict[str, Any] = {
    "format": "sptelab-scenario",
    "version": 1,
    "vm": {"mmu": "shadow"},
    "memslots": [{"id": 1, "base_gfn": "0x200", "npages": "0x400", "host_page": "2M"}],
    "guest": {"tables_at": "0x200"},
    "steps": [
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write_gpte", "table": "0x202", "index": 2, "pte": "0x4000e7"},
        {"op": "disable_dirty_log", "slot": 1},
        {"op": "write_gpte", "table": "0x202", "index": 2, "pte": "0x4000e7"},
    ],
}


def test_a_store_into_a_write_tracked_table_is_emulated_at_once_on_the_kernel() -> None:
    run = run_with_stats(parse_scenario(WRITE_TRACKED), guest="native", trace=NO_TRACE is None)
    assert [_kernel(run, index, "pf_emulate") for index in range(4)] == [0, 1, 0, 1]
    assert _kernel(run, 3, "pages_4k") == 0
    if run.traces is not None:
        assert run.traces[3].spte_requested == ()


def test_modern_agrees_on_a_store_into_a_write_tracked_table() -> None:
    assert compare(WRITE_TRACKED) == []


# The one measured difference of this kernel (kvm_pvm) from upstream that the comparison tolerates, by
# name (live.shadow_compare.PVM_TOP_LEVEL): vCPU 0's fault links the root's entry 0 and maps gfn 0x209;
# vCPU 1's first access under that entry, to the same page, faults once on the kernel and finds the
# spte in place; under upstream both vCPUs share the root and vCPU 1 takes no fault, as in the model.
TWO_VCPUS: dict[str, Any] = {
    "format": "sptelab-scenario",
    "version": 1,
    "vm": {"mmu": "shadow", "vcpus": 2},
    "memslots": [{"id": 1, "base_gfn": "0x200", "npages": "0x400", "host_page": "2M"}],
    "guest": {"tables_at": "0x200"},
    "steps": [
        {"op": "read", "gfn": "0x209", "vcpu": 0},
        {"op": "read", "gfn": "0x209", "vcpu": 1},
        {"op": "read", "gfn": "0x20a", "vcpu": 1},
    ],
}


def test_the_kernel_s_refault_under_another_vcpu_s_top_level_entry_is_tolerated_by_name() -> None:
    scenario = parse_scenario(TWO_VCPUS)
    run = run_with_stats(scenario, guest="native", trace=NO_TRACE is None)
    assert [_kernel(run, index, "pf_taken") for index in range(3)] == [1, 1, 0]
    assert _kernel(run, 1, "pages_4k") == 0  # nothing mapped anew
    differences = compare_run(scenario, run)
    assert all(difference.tolerated == PVM_TOP_LEVEL for difference in differences), differences
    if run.system_faults is not None:
        assert [d.text for d in differences if d.what == "faults"] == [
            "step 1 (read): 1 faults on the kernel, 0 in modern"
        ]
