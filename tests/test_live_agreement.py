"""The `modern` preset against the live kernel: random scenarios, the same dirty log at every step.

Scenarios are drawn within what the live backend expresses: one or two small slots below 4 GiB, one or
two vCPUs, reads and writes with counts and strides, the dirty-log ioctls, migrations, and each dirty-log
mode the engine implements. Skipped only where the KVM device cannot be opened.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from engine.policy import make_policy
from engine.scenario import parse_scenario
from live.backend import refusal, run_on_kernel
from live.report import availability, engine_dirty_logs
from live.vm import DIRTY_LOG_MODES

UNAVAILABLE = availability()
if UNAVAILABLE is not None:
    pytest.skip(f"no usable KVM device: {UNAVAILABLE}", allow_module_level=True)

PRESET = "modern"


# Every mode the live VM runs is a mode of the engine (make_policy refuses what it does not model).
MODES = [mode for mode in DIRTY_LOG_MODES if make_policy(PRESET, {"dirty_log_mode": mode})]


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
@given(data=scenarios(), mode=st.sampled_from(MODES), pml=st.booleans())
def test_modern_agrees_with_the_live_kernel(data: dict[str, Any], mode: str, pml: bool) -> None:
    # PML changes how the dirty log is gathered, not what userspace reads: either way the engine must
    # agree with this machine's kernel (whether or not it uses PML).
    scenario = parse_scenario(data)
    assert refusal(scenario, mode) is None
    kernel = run_on_kernel(scenario, mode)
    engine = engine_dirty_logs(scenario, PRESET, {"dirty_log_mode": mode, "pml": pml})
    for index, (ours, theirs) in enumerate(zip(kernel, engine, strict=True)):
        note(f"step {index} {data['steps'][index]}: kernel {ours}, engine {theirs}")
    assert kernel == engine
