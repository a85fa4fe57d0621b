"""How the live kernel ran the guest's accesses, decided from its statistics: through its MMU, or emulated.

A check against the kernel must first prove it touched what it claims to check. KVM runs a guest
instruction one of two ways: on the CPU, where a first touch of a page faults into the MMU (the vCPU
stat `pf_taken` grows: `kvm_mmu_page_fault`) and builds an spte; or in its instruction emulator
(`x86_emulate_instruction`, stat `insn_emulation`), whose loads and stores reach guest memory without
any spte. Which one happens is the host's choice: a host without EPT/NPT whose vendor module emulates a
guest with paging off runs this backend's guest entirely in the emulator; a host with EPT or NPT runs it
on the CPU.

The decision is made per run, from the totals of the vCPUs' counters over the run and the guest's own
accesses (every page the guest touches is touched for the first time: the VM is fresh):

- `emulated`: `pf_taken` stayed 0 although the guest touched memory, and `insn_emulation` grew by at least
  as many instructions as the guest made accesses;
- `mmu`: `pf_taken` grew: the MMU handled faults of the guest;
- `none`: the scenario makes no guest access (only dirty-log ioctls ran);
- `unknown`: the kernel has no statistics, or lacks one of the two, or they say neither (no fault, and
  fewer instructions emulated than accesses). The reason names what was missing.

What a run can check follows: an emulated run (or one without accesses) checks the kernel's dirty-log
ioctls against the engine's emulated guest, never its MMU; a run through the MMU compares the presets
with the kernel's MMU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from live.stats import Snapshot

Execution = Literal["emulated", "mmu", "none", "unknown"]
Checked = Literal["dirty_log_ioctls", "mmu", "mmu_unmodelled", "nothing"]

# The vCPU statistics the decision reads (kernel names).
PAGE_FAULTS_STAT = "pf_taken"
EMULATED_STAT = "insn_emulation"

# What a run of each kind checked, in the words every shell shows.
HEADLINES: dict[Execution, str] = {
    "emulated": "the kernel emulated these accesses: its dirty-log ioctls were checked, its MMU was not",
    "mmu": "the kernel's MMU ran these accesses: the presets' dirty logs were compared with the kernel's MMU",
    "none": "the guest made no access: the kernel's dirty-log ioctls were checked, its MMU was not",
    "unknown": "it cannot be told whether the kernel's MMU ran these accesses: nothing was checked"
    " against its MMU",
}

# A run through an MMU no preset models (a shadow MMU, until one does): the kernel's own logs, counters
# and sptes are shown, and the presets' logs set beside them as data, not as a check.
UNMODELLED_HEADLINE = (
    "the kernel's {mmu} MMU ran these accesses, and no preset models it yet: the presets' dirty logs are"
    " set beside the kernel's as data, not checked against it"
)

# A shadow-paging scenario's run through this host's shadow MMU, which the preset models step by step.
SHADOW_HEADLINE = (
    "the kernel's shadow MMU ran the guest on the scenario's own page tables: {preset} was compared with it"
    " step by step (dirty logs, leaves per level, the W bit of each leaf set, faults, emulated stores,"
    " unsync pages)"
)

CHECKED: dict[Execution, Checked] = {
    "emulated": "dirty_log_ioctls",
    "mmu": "mmu",
    "none": "dirty_log_ioctls",
    "unknown": "nothing",
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """How the kernel ran the guest's accesses, with the numbers it was decided from."""

    execution: Execution
    emulated_instructions: int  # the vCPUs' insn_emulation over the run (0 when unknown)
    page_faults: int  # the vCPUs' pf_taken over the run (0 when unknown)
    guest_accesses: int
    pages_touched: int
    reason: str

    @property
    def mmu_exercised(self) -> bool:
        return self.execution == "mmu"

    @property
    def checked(self) -> Checked:
        return CHECKED[self.execution]

    @property
    def headline(self) -> str:
        return HEADLINES[self.execution]

    def for_host(self, host_mmu: str, preset: str | None) -> tuple[Checked, str]:
        """(what the run checked, its headline) on a host whose MMU is `host_mmu`, modelled by `preset`
        (None when no preset models it): a run through an unmodelled MMU checks no preset."""
        if self.mmu_exercised and preset is None:
            return "mmu_unmodelled", UNMODELLED_HEADLINE.format(mmu=host_mmu)
        return self.checked, self.headline


def _pages(count: int) -> str:
    return f"{count} page{'s' * (count != 1)}"


def judge(totals: Snapshot, guest_accesses: int, pages_touched: int, missing: str | None) -> Verdict:
    """Decide from the run's counter totals (`live.backend.KernelRun.totals`) and the guest's accesses."""

    def verdict(execution: Execution, reason: str, emulated: int = 0, faults: int = 0) -> Verdict:
        return Verdict(execution, emulated, faults, guest_accesses, pages_touched, reason)

    if missing is not None:
        return verdict("unknown", f"{missing}, so how the guest ran cannot be told")
    faults = totals.vcpu_total(PAGE_FAULTS_STAT)
    emulated = totals.vcpu_total(EMULATED_STAT)
    if faults is None or emulated is None:
        pairs = ((PAGE_FAULTS_STAT, faults), (EMULATED_STAT, emulated))
        names = " and ".join(name for name, value in pairs if value is None)
        return verdict(
            "unknown",
            f"this kernel's vCPU statistics have no {names}, so whether its MMU or its emulator ran the"
            f" {guest_accesses} guest accesses cannot be told",
            emulated or 0,
            faults or 0,
        )
    counts = f"insn_emulation grew by {emulated} for {guest_accesses} guest accesses"
    if guest_accesses == 0:
        return verdict(
            "none",
            f"the scenario makes no guest access, so only the dirty-log ioctls ran (insn_emulation"
            f" {emulated}, pf_taken {faults})",
            emulated,
            faults,
        )
    if faults > 0:
        return verdict(
            "mmu",
            f"pf_taken grew by {faults} as the guest touched {_pages(pages_touched)} for the first time:"
            f" its MMU handled the guest's faults ({counts})",
            emulated,
            faults,
        )
    if emulated >= guest_accesses:
        return verdict(
            "emulated",
            f"pf_taken stayed 0 although the guest touched {_pages(pages_touched)} for the first time,"
            f" and {counts}: the emulator ran them",
            emulated,
            faults,
        )
    return verdict(
        "unknown",
        f"pf_taken stayed 0 although the guest touched {_pages(pages_touched)} for the first time, yet"
        f" {counts}: neither its MMU nor its emulator is seen running them all",
        emulated,
        faults,
    )
