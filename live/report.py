"""The live kernel's dirty logs beside the engine's: contract §3's `sptelab real` result, and availability.

`real_result` runs the scenario once on the kernel (`live.backend.run_with_stats`, its statistics read
around every step), once on the engine's emulated guest (`engine.emulate`: the oracle of the kernel's
dirty-log ioctls, in the live VM's dirty-log mode) and once per named preset on the engine (summary
detail), and compares the dirty log of every step: a difference is a step where the two sets differ,
listed as the gfns only the kernel returned and those only the engine returned. The switches given as
overrides apply to every preset, and `dirty_log_mode` among them also chooses the live VM's mode.

What the comparison means depends on how the kernel ran the guest, which `live.execution.judge` decides
from the statistics and the result says in its `live` object: when the kernel emulated the guest (no
spte, no fault), the kernel's logs are checked against the emulated guest, and the presets' logs are
what each preset's MMU would log, not a check of the kernel's MMU; when its MMU ran the guest, the
presets are compared with the kernel's MMU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from engine.kvm import KvmDirtyRing
from engine.policy import Policy, make_policy
from engine.scenario import Scenario
from engine.simulation import GuestExecution, Simulation
from live.backend import Guest, KernelRun, UnsupportedScenarioError, refusal, run_with_stats
from live.execution import SHADOW_HEADLINE, Verdict, judge
from live.host import host_mmu, preset_for
from live.shadow_compare import COMPARED, TOLERATED, compare_run
from live.syscalls import KvmError
from live.vm import RING_ENTRIES, GuestExitError, probe

REAL_FORMAT = "sptelab-real"
REAL_VERSION = 1


class RealRefusalError(ValueError):
    """The live kernel cannot answer: the scenario is not expressible, or the device or the guest failed.
    str() is one line saying what."""


def kernel_release() -> str:
    return os.uname().release


def availability(device: str | None = None) -> str | None:
    """None when the KVM device opens read-write and creates a VM; else the reason, in one line."""
    return probe(device)


def dirty_log_mode_of(overrides: Mapping[str, str | bool] | None, default: str = "bitmap") -> str:
    """The live VM's mode: the `dirty_log_mode` switch among the overrides, else `default`."""
    value = (overrides or {}).get("dirty_log_mode", default)
    return str(value).strip().lower()


def kernel_run(
    scenario: Scenario,
    dirty_log_mode: str = "bitmap",
    *,
    device: str | None = None,
    guest: Guest = "emulated",
    trace: bool = False,
) -> KernelRun:
    """run_with_stats, with every way it can fail turned into a RealRefusalError."""
    try:
        return run_with_stats(scenario, dirty_log_mode, device=device, guest=guest, trace=trace)
    except UnsupportedScenarioError as error:
        raise RealRefusalError(str(error)) from None
    except (KvmError, GuestExitError) as error:
        raise RealRefusalError(f"the live kernel failed: {error}") from None


def kernel_dirty_logs(
    scenario: Scenario, dirty_log_mode: str = "bitmap", *, device: str | None = None
) -> list[list[int] | None]:
    """The kernel's dirty log per step (kernel_run's logs)."""
    return kernel_run(scenario, dirty_log_mode, device=device).logs


def engine_dirty_logs(
    scenario: Scenario, preset: str, overrides: Mapping[str, str | bool] | None = None
) -> list[list[int] | None]:
    """The engine's dirty_log per step under a preset and overrides (summary detail: no trace kept)."""
    return _engine_logs(scenario, make_policy(preset, overrides))


SHADOW_NO_ORACLE = (
    "a shadow-paging guest runs on its own page tables, never in the instruction emulator: the emulated"
    " guest is no oracle for it"
)

# The preset whose dirty-log code the oracle runs: today's kernel. Under an emulated guest no spte exists,
# so none of the MMU's switches can change what it logs; only the dirty-log mode matters.
ORACLE_PRESET = "modern"


def oracle_dirty_logs(scenario: Scenario, dirty_log_mode: str = "bitmap") -> list[list[int] | None]:
    """The engine's emulated guest per step, in the live VM's dirty-log mode and with its ring size.

    The live VM's dirty rings hold RING_ENTRIES entries where the engine's hold DIRTY_RING_SIZE: the
    oracle's vCPUs get rings of the live size, so that a vCPU stops at the same soft limit on both sides.
    """
    sim = _simulation(scenario, make_policy(ORACLE_PRESET, {"dirty_log_mode": dirty_log_mode}), "emulated")
    for vcpu in sim.kvm.vcpus:
        vcpu.dirty_ring = KvmDirtyRing(size=RING_ENTRIES, cpu_dirty_log_size=sim.kvm.cpu_dirty_log_size)
    return _logs(sim)


def _simulation(scenario: Scenario, policy: Policy, execution: GuestExecution = "mmu") -> Simulation:
    return Simulation(scenario, policy, detail="summary", guest_execution=execution)


def _engine_logs(scenario: Scenario, policy: Policy) -> list[list[int] | None]:
    return _logs(_simulation(scenario, policy))


def _logs(sim: Simulation) -> list[list[int] | None]:
    logs: list[list[int] | None] = []
    while not sim.done:
        log = sim.step().dirty_log
        logs.append(sorted(log) if log is not None else None)
    return logs


def compare_logs(kernel: Sequence[list[int] | None], engine: Sequence[list[int] | None]) -> dict[str, object]:
    """`{"agrees": bool, "differences": [{"step", "kernel_only", "engine_only"}]}` over the steps where
    either side returned a log and the two sets differ (a missing log counts as the empty set)."""
    differences: list[dict[str, object]] = []
    for index, (ours, theirs) in enumerate(zip(kernel, engine, strict=True)):
        if ours is None and theirs is None:
            continue
        kernel_set, engine_set = set(ours or ()), set(theirs or ())
        if kernel_set != engine_set or (ours is None) != (theirs is None):
            differences.append(
                {
                    "step": index,
                    "kernel_only": sorted(kernel_set - engine_set),
                    "engine_only": sorted(engine_set - kernel_set),
                }
            )
    return {"agrees": not differences, "differences": differences}


def live_json(
    verdict: Verdict,
    oracle: dict[str, object],
    run: KernelRun,
    scenario: Scenario | None = None,
    dirty_log_mode: str = "bitmap",
) -> dict[str, object]:
    """The result's `live` object: which guest ran, how the kernel ran it, which MMU the host has and the
    preset that models it, what was checked, the run's stats, and whether its tracepoints were read.
    For a shadow-paging scenario also what was compared with the host's preset (`compared`) and the
    differences found, step by step (`host_check`)."""
    mmu = host_mmu()
    scenario_mmu = scenario.vm.mmu if scenario is not None else "tdp"
    preset, missing = preset_for(mmu, scenario_mmu)
    checked, headline = verdict.for_host(mmu, preset)
    shadow: dict[str, object] = {}
    if scenario is not None and scenario_mmu == "shadow":
        shadow = {"compared": list(COMPARED), "host_check": None, "huge_missing": run.huge_missing}
        if preset is not None and checked == "mmu":
            headline = SHADOW_HEADLINE.format(preset=preset)
            differences = compare_run(scenario, run, preset, dirty_log_mode)
            tolerated = {d.tolerated for d in differences if d.tolerated is not None}
            shadow["host_check"] = {
                "preset": preset,
                "agrees": all(difference.tolerated is not None for difference in differences),
                "differences": [difference.to_json() for difference in differences],
                "tolerated": {name: TOLERATED[name] for name in sorted(tolerated)},
            }
    return {
        "scenario_mmu": scenario_mmu,
        **shadow,
        "guest": run.guest,
        "execution": verdict.execution,
        "mmu_exercised": verdict.mmu_exercised,
        "host_mmu": mmu,
        "host_preset": preset,
        "host_preset_missing": missing,
        "emulated_instructions": verdict.emulated_instructions,
        "page_faults": verdict.page_faults,
        "guest_accesses": verdict.guest_accesses,
        "pages_touched": verdict.pages_touched,
        "reason": verdict.reason,
        "checked": checked,
        "headline": headline,
        "oracle": oracle,
        "stats": run.totals.to_json(),
        "stats_missing": run.stats_missing,
        "traced": run.traces is not None,
        "trace_missing": run.trace_missing,
    }


def step_live_json(run: KernelRun, index: int) -> dict[str, object]:
    """A step's `live`: the counters that changed, and when traced what the kernel's MMU reported."""
    entry: dict[str, object] = {"stats": run.step_stats[index].to_json()}
    if run.traces is not None:
        entry.update(run.traces[index].to_json())
    return entry


def real_result(
    scenario: Scenario,
    presets: Sequence[str],
    dirty_log_mode: str | None = None,
    *,
    overrides: Mapping[str, str | bool] | None = None,
    device: str | None = None,
    guest: Guest = "native",
    trace: bool = True,
) -> dict[str, object]:
    """Contract §3's JSON: the kernel's dirty log per step, and per preset where the engine's differs;
    extended by `live` (which guest ran, how the kernel ran it, the host's MMU and the preset that models
    it, and the emulated-guest oracle's verdict) and each step's `live` (the counters that changed during
    it and, when traced, the sptes the kernel set and the tables it created and zapped).

    The mode is `dirty_log_mode` if given, else the overrides' `dirty_log_mode`, else bitmap. The presets
    are checked (PolicyError) and the scenario refused (RealRefusalError) before the VM is created.
    """
    mode = dirty_log_mode if dirty_log_mode is not None else dirty_log_mode_of(overrides)
    policies = {name: make_policy(name, overrides) for name in presets}  # refuse a bad preset first
    reason = refusal(scenario, mode)
    if reason is not None:
        raise RealRefusalError(reason)
    run = kernel_run(scenario, mode, device=device, guest=guest, trace=trace)
    kernel = run.logs
    verdict = judge(run.totals, run.guest_accesses, run.pages_touched, run.stats_missing)
    if scenario.vm.mmu == "shadow":
        # The emulated guest has no page tables: a shadow-paging guest is never run in the emulator.
        oracle: dict[str, object] = {"agrees": True, "differences": [], "not_run": SHADOW_NO_ORACLE}
    else:
        oracle = compare_logs(kernel, oracle_dirty_logs(scenario, mode))
    compare: dict[str, object] = {}
    for name, policy in policies.items():
        compare[name] = compare_logs(kernel, _engine_logs(scenario, policy))
    return {
        "format": REAL_FORMAT,
        "version": REAL_VERSION,
        "kernel": kernel_release(),
        "steps": [
            {"index": index, "dirty_log": log, "live": step_live_json(run, index)}
            for index, log in enumerate(kernel)
        ],
        "compare": compare,
        "live": live_json(verdict, oracle, run, scenario, mode),
    }
