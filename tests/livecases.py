"""What the live kernel's randomised tests share: the probe that shows how the kernel ran a guest before a
test trusts it as an oracle, and the native scenarios drawn over one slot on 2M host pages."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from engine.scenario import parse_scenario
from live.backend import Guest, run_with_stats
from live.execution import Execution, judge

BASE = 0x200  # the slot: gfns 0x200-0x5ff, two 2M regions on 2M host pages
PAGES = 1024
REGION = 512


def probe(guest: Guest, expected: Execution) -> str | None:
    """None when 16 first-touch writes on `guest` ran as `expected` (the run's statistics decide), else
    why not: a test that checks one way of running must first see the kernel run that way."""
    scenario = parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            "memslots": [{"id": 1, "base_gfn": "0x200", "npages": 16}],
            "steps": [{"op": "write", "gfn": "0x200", "count": 16}],
        }
    )
    run = run_with_stats(scenario, guest=guest)
    verdict = judge(run.totals, run.guest_accesses, run.pages_touched, run.stats_missing)
    return None if verdict.execution == expected else verdict.reason


@st.composite
def native_scenarios(draw: st.DrawFn, *, huge_first: bool = False) -> dict[str, Any]:
    """One or two vCPUs over the slot: reads and writes with counts and strides, logging switched on and
    off, GET_DIRTY_LOG while logged, a last GET if logging is still on. `huge_first`: half the time, a
    write into each 2M region and then logging, before the rest (where the shadow MMU's facts bite)."""
    vcpus = draw(st.integers(1, 2))
    steps: list[dict[str, Any]] = []
    logged = False
    if huge_first and draw(st.booleans()):
        for region in range(PAGES // REGION):
            gfn = BASE + region * REGION + draw(st.integers(0, REGION - 1))
            steps.append({"op": "write", "gfn": hex(gfn), "count": 1, "stride": 1})
        steps.append({"op": "enable_dirty_log", "slot": 1})
        logged = True
    for _ in range(draw(st.integers(3, 14))):
        kind = draw(st.sampled_from(["write", "read", "write", "read", "log", "get"]))
        if kind in ("write", "read"):
            count = draw(st.integers(1, 4))
            stride = draw(st.sampled_from([1, 7, 64, 200]))
            first = draw(st.integers(0, PAGES - 1 - (count - 1) * stride))
            step: dict[str, Any] = {"op": kind, "gfn": hex(BASE + first), "count": count, "stride": stride}
            step["vcpu"] = draw(st.integers(0, vcpus - 1))
            steps.append(step)
        elif kind == "log":
            steps.append({"op": "disable_dirty_log" if logged else "enable_dirty_log", "slot": 1})
            logged = not logged
        elif logged:
            steps.append({"op": "get_dirty_log", "slot": 1})
    if logged:
        steps.append({"op": "get_dirty_log", "slot": 1})
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "vm": {"vcpus": vcpus},
        "memslots": [{"id": 1, "base_gfn": hex(BASE), "npages": PAGES, "host_page": "2M"}],
        "steps": steps,
    }
