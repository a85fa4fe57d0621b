"""The native guest on a host with EPT or NPT, whose TDP MMU `modern` models: random scenarios, and at every
step the kernel against `modern`, as the spec asks of an oracle that can fail.

Asserted per step: the dirty log each harvest returns; and, where the kernel's tracepoints are read, that
every leaf the kernel set for a gfn of the scenario's slots in the step is, after the step, a leaf of
`modern` for the same gfn at the same level with the same W bit. (The kernel's leaf counters also count
the live VM's own code and table pages, so the leaves are compared through the trace.) On a host
without EPT/NPT (the development machines: a shadow MMU, which `test_live_shadow_facts.py` checks)
this module skips with the reason. Forced to run on such a host, it fails at the first read fault:
the shadow MMU maps it read-only where `modern` maps it writable.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from livecases import BASE, PAGES, native_scenarios

from engine.policy import make_policy
from engine.scenario import parse_scenario
from engine.simulation import Simulation
from engine.spte import is_writable_pte
from engine.tdp_iter import walk_spte
from live.backend import run_with_stats
from live.execution import judge
from live.host import host_mmu
from live.report import availability
from live.tracefs import unavailable

UNAVAILABLE = availability()
if UNAVAILABLE is not None:
    pytest.skip(f"no usable KVM device: {UNAVAILABLE}", allow_module_level=True)
if host_mmu() != "tdp":
    pytest.skip(
        "this host has no EPT/NPT: its MMU is a shadow MMU, which no preset models (see"
        " test_live_shadow_facts.py)",
        allow_module_level=True,
    )

NO_TRACE = unavailable()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(native_scenarios())
def test_modern_agrees_with_the_kernel_s_tdp_mmu_at_every_step(data: dict[str, Any]) -> None:
    scenario = parse_scenario(data)
    run = run_with_stats(scenario, guest="native", trace=NO_TRACE is None)
    verdict = judge(run.totals, run.guest_accesses, run.pages_touched, run.stats_missing)
    assert verdict.mmu_exercised, verdict.reason
    sim = Simulation(scenario, make_policy("modern"), detail="summary")
    for index, kernel_log in enumerate(run.logs):
        result = sim.step()
        model_log = sorted(result.dirty_log) if result.dirty_log is not None else None
        note(f"step {index}: kernel {kernel_log}, modern {model_log}")
        assert kernel_log == model_log, f"step {index}: the dirty logs differ"
        if run.traces is None:
            continue
        for spte in run.traces[index].sptes_set:
            if not BASE <= spte.gfn < BASE + PAGES:
                continue  # the live VM's own pages: no scenario slot holds them
            found = walk_spte(sim.kvm, spte.gfn)
            assert found is not None, f"step {index}: modern maps nothing at gfn {spte.gfn:#x}"
            sp, _, value = found
            assert sp.level == spte.level, f"step {index}: gfn {spte.gfn:#x} at another level"
            assert is_writable_pte(value) == bool(spte.spte & 0x2), f"step {index}: W of {spte.gfn:#x}"
