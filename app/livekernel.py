"""Running a scenario on this machine's kernel for the web app: whether it can, the budget, a result cache.

The scenario's guest accesses run as guest code on a real VM through /dev/kvm (package `live`), and what
the live kernel's dirty log returned at each harvesting step is set beside the engine's emulated guest's
and each preset's (contract §3, with the `live` object saying whether the kernel's MMU ran the guest).
It is offered only where the server can open the device (`Settings.live_kernel`, `Settings.kvm_device`);
elsewhere the routes answer 503 with the reason and the player shows no button.

A live run is cheap (milliseconds of VM setup, then the guest runs, emulated or not, in microseconds
per access), but it is real work on a shared machine: runs are taken one at a time, bounded by the same
budget as the engine's (one run per compared preset, the emulated guest's and the kernel's), and their
results are kept in a small LRU, since the same scenario on the same kernel returns the same logs.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from app.budget_bytes import Lru, weigh_any
from app.errors import AppError
from app.query import resolve_policy
from app.run_budget import check_budget
from app.settings import Settings
from engine.estimate import estimate_work
from engine.policy import PRESETS
from engine.scenario import Scenario
from live.backend import Guest
from live.report import RealRefusalError, availability, real_result

# The page sets every preset beside the kernel, newest first: the live kernel is today's, and the 3.x
# presets show what changed since. The API's default is contract §3's.
PAGE_PRESETS = ("modern", *[name for name in PRESETS if name != "modern"])
API_PRESETS = ("modern",)

REFUSAL_HINT = (
    "The live backend runs guest accesses, the dirty-logging ioctls and migrations; the engine alone plays"
    " the rest: open the scenario in the player."
)

_lock = threading.Lock()
# Results by run; their bytes count in the app's byte budget (the Store attaches it).
live_results: Lru[tuple[str, str, tuple[str, ...], tuple[tuple[str, str], ...], str], dict[str, Any]] = Lru(
    32, weigh=weigh_any
)
_availability: dict[str, str | None] = {}


def kernel_unavailable(settings: Settings) -> str | None:
    """Why this server cannot run scenarios on its kernel (None when it can); asked once per device."""
    if not settings.live_kernel:
        return "running scenarios on the kernel is switched off on this server (SPTELAB_LIVE_KERNEL)"
    device = settings.kvm_device
    if device not in _availability:
        _availability[device] = availability(device)
    return _availability[device]


def require_kernel(settings: Settings) -> None:
    reason = kernel_unavailable(settings)
    if reason is not None:
        raise AppError(
            503,
            f"this server cannot run scenarios on its kernel: {reason}",
            hint="Run it on a Linux machine with KVM (sptelab real FILE), or start the Docker image with"
            " --device /dev/kvm.",
        )


def checked_overrides(overrides: Mapping[str, str | bool], presets: list[str]) -> dict[str, str]:
    """Switches set on every compared preset (and choosing the live VM's dirty-log mode), each checked."""
    text = {name: str(value).lower() for name, value in overrides.items()}
    for name in presets:
        resolve_policy(name, text)  # 400 naming an unknown switch or value
    return text


def live_result(
    settings: Settings,
    key: str,
    scenario: Scenario,
    presets: list[str],
    overrides: dict[str, str],
    guest: Guest = "native",
) -> dict[str, Any]:
    """Contract §3's result, from the cache or from a live run now (refused first if over the budget).
    `guest` chooses the live VM's guest (live.backend.Guest); a native run reads the kernel's tracepoints
    where this process can."""
    require_kernel(settings)
    cache_key = (settings.kvm_device, key, tuple(presets), tuple(sorted(overrides.items())), guest)
    hit = live_results.get(cache_key)
    if hit is not None:
        return hit
    steps = len(scenario.steps)
    work = estimate_work(scenario, steps).total
    check_budget(settings, scenario, work, steps=steps, runs=len(presets) + 2, doing="a live-kernel run")
    with _lock:
        try:
            result = real_result(
                scenario, presets, overrides=overrides, device=settings.kvm_device, guest=guest, trace=True
            )
        except RealRefusalError as refusal:  # what the live backend cannot express, or the device refused
            raise AppError(422, str(refusal), hint=REFUSAL_HINT) from None
    live_results.put(cache_key, result)
    return result
