"""The live kernel's dirty logs beside the engine's: contract §3's `sptelab real` result, and availability.

`real_result` runs the scenario once on the kernel (`live.backend`) and once per named preset on the
engine (summary detail), and compares the dirty log of every step: a difference is a step where the two
sets differ, listed as the gfns only the kernel returned and those only the engine returned. The switches
given as overrides apply to every preset, and `dirty_log_mode` among them also chooses the live VM's mode.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from engine.policy import Policy, make_policy
from engine.scenario import Scenario
from engine.simulation import Simulation
from live.backend import UnsupportedScenarioError, refusal, run_on_kernel
from live.vm import GuestExitError, KvmError, probe

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


def kernel_dirty_logs(
    scenario: Scenario, dirty_log_mode: str = "bitmap", *, device: str | None = None
) -> list[list[int] | None]:
    """run_on_kernel, with every way it can fail turned into a RealRefusalError."""
    try:
        return run_on_kernel(scenario, dirty_log_mode, device=device)
    except UnsupportedScenarioError as error:
        raise RealRefusalError(str(error)) from None
    except (KvmError, GuestExitError) as error:
        raise RealRefusalError(f"the live kernel failed: {error}") from None


def engine_dirty_logs(
    scenario: Scenario, preset: str, overrides: Mapping[str, str | bool] | None = None
) -> list[list[int] | None]:
    """The engine's dirty_log per step under a preset and overrides (summary detail: no trace kept)."""
    return _engine_logs(scenario, make_policy(preset, overrides))


def _engine_logs(scenario: Scenario, policy: Policy) -> list[list[int] | None]:
    sim = Simulation(scenario, policy, detail="summary")
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


def real_result(
    scenario: Scenario,
    presets: Sequence[str],
    dirty_log_mode: str | None = None,
    *,
    overrides: Mapping[str, str | bool] | None = None,
    device: str | None = None,
) -> dict[str, object]:
    """Contract §3's JSON: the kernel's dirty log per step, and per preset where the engine's differs.

    The mode is `dirty_log_mode` if given, else the overrides' `dirty_log_mode`, else bitmap. The presets
    are checked (PolicyError) and the scenario refused (RealRefusalError) before the VM is created.
    """
    mode = dirty_log_mode if dirty_log_mode is not None else dirty_log_mode_of(overrides)
    policies = {name: make_policy(name, overrides) for name in presets}  # refuse a bad preset first
    reason = refusal(scenario, mode)
    if reason is not None:
        raise RealRefusalError(reason)
    kernel = kernel_dirty_logs(scenario, mode, device=device)
    compare: dict[str, object] = {}
    for name, policy in policies.items():
        compare[name] = compare_logs(kernel, _engine_logs(scenario, policy))
    return {
        "format": REAL_FORMAT,
        "version": REAL_VERSION,
        "kernel": kernel_release(),
        "steps": [{"index": index, "dirty_log": log} for index, log in enumerate(kernel)],
        "compare": compare,
    }
