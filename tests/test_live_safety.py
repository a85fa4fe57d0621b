"""Nothing a live run opens outlives it, whatever happens: over 200 runs on both guests, in every dirty-log
mode, traced or not, ending normally, failing half way, or stopped by the watchdog, the process keeps the
same file descriptors, mappings and threads, no tracefs instance or mount is left, and the host's huge
page reservation is untouched.

The runs need a KVM device and skip with the reason without one; the traced ones need root and tracefs,
and run untraced (saying so in `trace_missing`) without them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

import live.vm
from engine.scenario import Scenario, parse_scenario
from live.backend import Guest, _Run, run_with_stats
from live.report import availability
from live.vm import DIRTY_LOG_MODES, GuestTimeoutError

UNAVAILABLE = availability()
needs_kvm = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no usable KVM device: {UNAVAILABLE}")

RUNS = 200


def scenario(mode: str, writes: int = 4) -> Scenario:
    """Two slots (one on 2M host pages), two vCPUs, logging, a harvest fitting the dirty-log mode; the
    first step writes `writes` 4K pages, each faulted in on its own."""
    harvest = {"op": "reset_dirty_ring"} if mode == "ring" else {"op": "get_dirty_log", "slot": 1}
    return parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            "vm": {"vcpus": 2},
            "memslots": [
                {"id": 1, "base_gfn": "0x200", "npages": 1024, "host_page": "2M"},
                {"id": 2, "base_gfn": "0x8000", "npages": 16384},
            ],
            "steps": [
                {"op": "write", "gfn": "0x8000", "count": writes},
                {"op": "read", "gfn": "0x200", "count": 8, "vcpu": 1},
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "write", "gfn": "0x250", "vcpu": 1},
                harvest,
                {"op": "disable_dirty_log", "slot": 1},
            ],
        }
    )


def footprint() -> dict[str, Any]:
    """What this process holds and what it may have left in the system."""
    instances: list[str] = []
    mounts = Path("/proc/mounts").read_text().splitlines()
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "tracefs":
            folder = Path(fields[1]) / "instances"
            if folder.is_dir():
                instances += [name for name in os.listdir(folder) if name.startswith("sptelab-")]
    return {
        "fds": sorted(os.listdir("/proc/self/fd")),
        "maps": len(Path("/proc/self/maps").read_text().splitlines()),
        "threads": threading.active_count(),
        "tracefs_mounts": sum(" tracefs " in line for line in mounts),
        "instances": instances,
        "nr_hugepages": Path("/proc/sys/vm/nr_hugepages").read_text(),
    }


@needs_kvm
def test_no_run_leaves_anything_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    run_with_stats(scenario("bitmap"), guest="native", trace=True)  # first-use allocations happen here
    before = footprint()
    outcomes = {"ended": 0, "failed": 0, "stopped": 0}
    real_step = _Run.step
    for index in range(RUNS):
        mode = DIRTY_LOG_MODES[index % len(DIRTY_LOG_MODES)]
        guest: Guest = "native" if index % 3 else "emulated"
        trace = index % 10 == 0
        kind = index % 7
        if kind == 3:  # fails half way: an error in the fourth step
            calls = {"n": 0}

            def failing(self: _Run, step: Any, calls: dict[str, int] = calls) -> list[int] | None:
                calls["n"] += 1
                if calls["n"] == 4:
                    raise RuntimeError("injected")
                return real_step(self, step)

            monkeypatch.setattr(_Run, "step", failing)
            with pytest.raises(RuntimeError, match="injected"):
                run_with_stats(scenario(mode), guest=guest, trace=trace)
            monkeypatch.setattr(_Run, "step", real_step)
            outcomes["failed"] += 1
        elif kind == 5:  # a guest still running when its budget ends: stopped by the watchdog
            monkeypatch.setattr(live.vm, "RUN_TIMEOUT_S", 0.0002)
            with pytest.raises(GuestTimeoutError):
                run_with_stats(scenario(mode, writes=16384), guest=guest, trace=trace)
            monkeypatch.setattr(live.vm, "RUN_TIMEOUT_S", 20.0)
            outcomes["stopped"] += 1
        else:
            run = run_with_stats(scenario(mode), guest=guest, trace=trace)
            assert len(run.logs) == 6
            outcomes["ended"] += 1
    assert footprint() == before
    assert outcomes["failed"] >= 25 and outcomes["stopped"] >= 25 and sum(outcomes.values()) == RUNS
