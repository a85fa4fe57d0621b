"""The native guest on this machine's shadow MMU: random scenarios, and at every step the kernel facts of
spec live-kernel.md §3 that a run can check directly.

No preset models a shadow MMU yet, so nothing here compares the kernel with a preset. What is asserted is
what the spec measured the kernel to do, checked on scenarios Hypothesis draws (one slot on 2M host pages
holding two 2M regions, one or two vCPUs, reads and writes with counts and strides, logging switched on
and off, GET_DIRTY_LOG):

1. enabling dirty logging neither splits nor zaps: `pages_2m` and `pages_4k` do not move, and the
   kernel sets no spte and zaps no table of the slot;
2. a harvest never loses a write: every page the guest wrote since logging was enabled or last
   harvested is in the log;
3. a harvest logs nothing the guest did not touch since then (a read may be logged: through a dirty
   guest PDE the kernel maps a read fault writable and logs it);
4. a read of a page whose region a 2M spte maps takes no fault;
5. the first write into a region whose 2M spte logging has write-protected drops it: `pages_2m` falls by
   one, and (traced) the kernel sets one writable level-1 spte for the written gfn in a new direct table.

The run must first show it went through the MMU (the probe below: faults taken, sptes counted), else the
module skips with the reason; facts that need the kernel's tracepoints are checked where they can be read.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from livecases import BASE, PAGES, REGION, native_scenarios, probe

from engine.scenario import parse_scenario
from live.backend import KernelRun, run_with_stats
from live.host import host_mmu
from live.report import availability
from live.tracefs import unavailable

UNAVAILABLE = availability()
if UNAVAILABLE is not None:
    pytest.skip(f"no usable KVM device: {UNAVAILABLE}", allow_module_level=True)
if host_mmu() != "shadow":
    pytest.skip("this host runs guests on the TDP MMU, not a shadow MMU", allow_module_level=True)

NO_TRACE = unavailable()
NOT_NATIVE = probe("native", "mmu")
if NOT_NATIVE is not None:
    pytest.skip(f"the native guest did not run through the MMU: {NOT_NATIVE}", allow_module_level=True)


def _pages(step: dict[str, Any]) -> list[int]:
    gfn, count, stride = int(step["gfn"], 16), step["count"], step["stride"]
    return [gfn + k * stride for k in range(count)]


def _vm(run: KernelRun, index: int, name: str) -> int:
    return run.step_stats[index].vm.get(name, 0)


def _vcpus(run: KernelRun, index: int, name: str) -> int:
    return sum(counters.get(name, 0) for counters in run.step_stats[index].vcpus)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(native_scenarios(huge_first=True))
def test_the_shadow_mmu_does_what_the_spec_measured(data: dict[str, Any]) -> None:
    scenario = parse_scenario(data)
    run = run_with_stats(scenario, guest="native", trace=NO_TRACE is None)
    note(f"logs {run.logs}")
    logging = False
    written: set[int] = set()
    touched: set[int] = set()
    huge: set[int] = set()  # the regions a 2M spte maps now, as the trace and counters show
    for index, step in enumerate(data["steps"]):
        op = step["op"]
        trace = run.traces[index] if run.traces is not None else None
        slot_sptes = [s for s in trace.sptes_set if BASE <= s.gfn < BASE + PAGES] if trace else []
        if op == "enable_dirty_log":
            assert (_vm(run, index, "pages_2m"), _vm(run, index, "pages_4k")) == (0, 0), "fact 1"
            if trace is not None:
                assert slot_sptes == [] and trace.tables_zapped == (), "fact 1"
            logging, written, touched = True, set(), set()
        elif op == "disable_dirty_log":
            logging = False  # the 4K sptes of dropped regions are zapped; the 2M ones stay
        elif op == "get_dirty_log":
            log = set(run.logs[index] or ())
            assert written <= log, f"fact 2: written {sorted(written - log)} not logged"
            assert log <= touched, f"fact 3: logged {sorted(log - touched)} never touched"
            written, touched = set(), set()
        else:
            pages = _pages(step)
            regions = {(page - BASE) // REGION for page in pages}
            if op == "read" and len(pages) == 1 and regions <= huge:
                assert _vcpus(run, index, "pf_taken") == 0, "fact 4"
            if op == "write" and logging and len(pages) == 1 and regions <= huge:
                assert _vm(run, index, "pages_2m") == -1, "fact 5"
                if trace is not None:
                    (page,) = pages
                    assert [(s.gfn, s.level, bool(s.spte & 0x2)) for s in slot_sptes] == [(page, 1, True)]
                    # ... in a direct table linked under the region: new, or one kept from an earlier
                    # logging period of the same region.
                    # (A vCPU's first run also links its root: an indirect table, not counted here.)
                    linked = [(t.level, t.gfn) for t in trace.tables_linked if t.direct]
                    assert linked == [(1, BASE + (page - BASE) // REGION * REGION)], "fact 5"
            touched.update(pages)
            if op == "write":
                written.update(pages)
            # Which regions a 2M spte maps after the step: set at level 2, or gone under a new table.
            if trace is not None:
                for spte in slot_sptes:
                    if spte.level == 2:
                        huge.add((spte.gfn - BASE) // REGION)
                for table in trace.tables_linked:
                    if table.direct and table.level == 1 and BASE <= table.gfn < BASE + PAGES:
                        huge.discard((table.gfn - BASE) // REGION)
            elif _vm(run, index, "pages_2m") != 0:
                huge = set()  # without the trace, which region changed is not known: claim nothing
