"""Which MMU this host's KVM runs a guest's page tables with: the TDP MMU (EPT or NPT) or the shadow MMU.

A native guest's accesses go through one or the other, and which preset can stand for the host's MMU
follows: `modern` models today's TDP MMU, and, for a shadow-paging scenario (`vm.mmu: "shadow"`, whose
guest runs on its own page tables), today's shadow MMU; a TDP scenario's identity-mapped native guest on
a shadow MMU is modelled by none. The answer is read from what
the host says of itself: the CPU's `vmx` or `svm` flag, and the vendor module's `ept` or `npt` parameter.
A host with neither flag (the development machines' `kvm_pvm`, which runs guests under a switcher) has no
two-dimensional paging, so its MMU is the shadow MMU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

HostMmu = Literal["tdp", "shadow"]

# The preset that models each host MMU, or None with the reason.
PRESET_FOR: dict[HostMmu, str | None] = {"tdp": "modern", "shadow": None}
NO_PRESET: dict[HostMmu, str] = {
    "tdp": "",
    "shadow": "no preset models a shadow MMU yet: the presets' logs are set beside the kernel's as data",
}

_TDP_PARAMETERS = {"vmx": "/sys/module/kvm_intel/parameters/ept", "svm": "/sys/module/kvm_amd/parameters/npt"}


def cpu_flags(cpuinfo: str) -> set[str]:
    """The `flags` of /proc/cpuinfo's first processor."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def mmu_of(flags: set[str], parameter: Callable[[str], str | None]) -> HostMmu:
    """"tdp" when the CPU has VMX or SVM and `parameter(path)` (the vendor module's ept or npt, None when
    unreadable) is on; else "shadow"."""
    for flag, path in _TDP_PARAMETERS.items():
        if flag in flags:
            value = parameter(path)
            return "tdp" if value is not None and value.strip() in ("Y", "y", "1") else "shadow"
    return "shadow"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def host_mmu() -> HostMmu:
    """This host's answer (mmu_of over /proc/cpuinfo and /sys/module)."""
    return mmu_of(cpu_flags(_read("/proc/cpuinfo") or ""), _read)


# A shadow-paging scenario (`vm.mmu: "shadow"`) runs its guest on its own page tables: on a host without
# EPT/NPT KVM shadows them, as `modern` models under shadow paging; on a host with EPT/NPT the TDP MMU
# maps the guest's memory and never shadows its tables, which no preset models for such a scenario.
SHADOW_SCENARIO_PRESET: dict[HostMmu, str | None] = {"tdp": None, "shadow": "modern"}
SHADOW_SCENARIO_NO_PRESET: dict[HostMmu, str] = {
    "tdp": "this host has EPT/NPT: its KVM runs a shadow-paging scenario's guest on the TDP MMU, which"
    " never shadows the guest's tables, and no preset models that for such a scenario",
    "shadow": "",
}


def preset_for(host: HostMmu, scenario_mmu: str) -> tuple[str | None, str]:
    """(the preset that models this host's MMU for a scenario of `scenario_mmu`, or None; why none)."""
    if scenario_mmu == "shadow":
        return SHADOW_SCENARIO_PRESET[host], SHADOW_SCENARIO_NO_PRESET[host]
    return PRESET_FOR[host], NO_PRESET[host]
