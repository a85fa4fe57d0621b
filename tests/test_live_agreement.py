"""The live kernel's dirty-log ioctls against the engine's emulated guest: random scenarios, the same
dirty log at every step, in every dirty-log mode.

This machine's kernel runs the live backend's guest (32-bit, paging off) in its instruction emulator: no
spte is built and no fault is taken, every emulated store marks its page and no load does
(`live.execution` decides this from the kernel's statistics, per run). What such a run checks is the
kernel's dirty-log plumbing: the bitmap, GET and CLEAR in each mode, the ring and its reset, enabling and
disabling logging, migration rounds. The oracle is the engine's own dirty-log code driven by the emulated
guest (`engine.emulate`); no preset's MMU is involved, and nothing here is evidence about one.

Scenarios are drawn within what the live backend expresses: one or two small slots below 4 GiB, one or
two vCPUs, reads and writes with counts and strides, the dirty-log ioctls, migrations. Skipped where the
KVM device cannot be opened, or where its MMU runs the guest (an EPT/NPT host): there the emulated guest
is not the kernel's behaviour.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from livecases import probe

from engine.scenario import parse_scenario
from live.backend import refusal, run_with_stats
from live.execution import judge
from live.report import availability, oracle_dirty_logs
from live.vm import DIRTY_LOG_MODES

UNAVAILABLE = availability()
if UNAVAILABLE is not None:
    pytest.skip(f"no usable KVM device: {UNAVAILABLE}", allow_module_level=True)


NOT_EMULATED = probe("emulated", "emulated")
if NOT_EMULATED is not None:
    pytest.skip(f"this kernel does not emulate the live guest: {NOT_EMULATED}", allow_module_level=True)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    vcpus = draw(st.integers(1, 2))
    slot_count = draw(st.integers(1, 2))
    slots: list[dict[str, Any]] = []
    base = draw(st.sampled_from([0, 0x200, 0x1F0, 0x40000]))
    for position in range(slot_count):
        npages = draw(st.sampled_from([1, 3, 64, 100, 512, 600]))
        slots.append(
            {
                "id": position + draw(st.sampled_from([0, 1, 5])) * position + 1,
                "base_gfn": base,
                "npages": npages,
                "host_page": draw(st.sampled_from(["4K", "2M"])),
            }
        )
        base += npages + draw(st.sampled_from([0, 1, 0x1FF]))
    logged: set[int] = set()
    began: set[int] = set()
    migrating = False
    steps: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 14))):
        kinds = ["access", "access", "access", "enable", "disable"]
        if logged:
            kinds += ["get", "get", "clear"]
        kinds += ["round", "end"] if migrating else ["begin"]
        kinds.append("reset")
        kind = draw(st.sampled_from(kinds))
        slot = draw(st.sampled_from(slots))
        if kind == "access":
            count = draw(st.integers(1, 6))
            stride = draw(st.integers(0, 3))
            reach = (count - 1) * stride
            if reach >= slot["npages"]:
                stride, reach = 0, 0
            start = draw(st.integers(0, slot["npages"] - 1 - reach))
            steps.append(
                {
                    "op": draw(st.sampled_from(["read", "write", "write"])),
                    "gfn": slot["base_gfn"] + start,
                    "count": count,
                    "stride": stride,
                    "vcpu": draw(st.integers(0, vcpus - 1)),
                }
            )
        elif kind == "enable":
            steps.append({"op": "enable_dirty_log", "slot": slot["id"]})
            logged.add(slot["id"])
        elif kind == "disable":
            steps.append({"op": "disable_dirty_log", "slot": slot["id"]})
            logged.discard(slot["id"])
        elif kind in ("get", "clear"):
            chosen = draw(st.sampled_from(sorted(logged)))
            if kind == "get":
                steps.append({"op": "get_dirty_log", "slot": chosen})
            else:
                npages = next(s["npages"] for s in slots if s["id"] == chosen)
                first = draw(st.sampled_from(list(range(0, npages, 64))))
                num = draw(st.sampled_from(sorted({npages - first, *range(0, npages - first, 64)})))
                steps.append({"op": "clear_dirty_log", "slot": chosen, "first": first, "num": num})
        elif kind == "begin":
            steps.append({"op": "migrate_begin"})
            began = {s["id"] for s in slots} - logged
            logged |= began
            migrating = True
        elif kind == "round":
            steps.append({"op": "migrate_round"})
        elif kind == "end":
            steps.append({"op": "migrate_end"})
            logged -= began
            migrating = False
        else:
            steps.append({"op": "reset_dirty_ring"})
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "vm": {"vcpus": vcpus},
        "memslots": slots,
        "steps": steps,
    }


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=scenarios(), mode=st.sampled_from(DIRTY_LOG_MODES))
def test_the_kernels_dirty_log_is_the_emulated_guests(data: dict[str, Any], mode: str) -> None:
    scenario = parse_scenario(data)
    assert refusal(scenario, mode) is None
    run = run_with_stats(scenario, mode)
    verdict = judge(run.totals, run.guest_accesses, run.pages_touched, run.stats_missing)
    assert verdict.execution in ("emulated", "none"), verdict.reason
    assert verdict.page_faults == 0
    oracle = oracle_dirty_logs(scenario, mode)
    for index, (ours, theirs) in enumerate(zip(run.logs, oracle, strict=True)):
        note(f"step {index} {data['steps'][index]}: kernel {ours}, emulated guest {theirs}")
    assert run.logs == oracle
