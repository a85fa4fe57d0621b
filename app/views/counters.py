"""The statistics as the preset's kernel names them."""

from __future__ import annotations

from dataclasses import dataclass

from engine.kvm import Kvm
from engine.spte import (
    ERA_6X,
)

# The counters kvm_stat shows per vCPU (the model sums them over the vCPUs); the others are the VM's.
VCPU_STATS = frozenset({"exits", "pf_fixed", "pf_taken", "pf_fast", "pf_spurious"})


@dataclass(slots=True)
class KernelStatsView:
    """The statistics as the preset's kernel names them, VM and vCPU apart, and where kvm_stat reads
    them: every name shown is one a kvm_stat user knows from that kernel. The result's `lpages` (the
    present large leaves, contract §4) is no kernel name, so it is not among them."""

    source: str
    vm: list[tuple[str, int]]
    vcpu: list[tuple[str, int]]
    note: str


def kernel_stats_view(kvm: Kvm) -> KernelStatsView:
    stats = {name: value for name, value in kvm.stats().items() if name != "lpages"}
    era6 = kvm.masks.era == ERA_6X
    source = "binary stats (KVM_GET_STATS_FD) of Linux 6.x" if era6 else "debugfs kvm/ of Linux 3.x"
    note = ""
    drift = kvm.stat.lpages_uncounted
    if not era6 and drift:
        note = (
            f"largepages counts {drift} more than the {kvm.stat.large_leaves} large sptes present:"
            " 3.14/3.16's mmu-notifier path drops a large spte without counting it down."
        )
    return KernelStatsView(
        source,
        [(name, value) for name, value in stats.items() if name not in VCPU_STATS],
        [(name, value) for name, value in stats.items() if name in VCPU_STATS],
        note,
    )
