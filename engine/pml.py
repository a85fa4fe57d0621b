"""Intel PML (page-modification logging): dirty logging by the CPU instead of by write-protection faults.

Mirrors later kernels' vmx.c (`vmx_flush_pml_buffer`, the PML-full exit, `vmx_update_cpu_dirty_logging`)
and x86.c (`kvm_mmu_update_cpu_dirty_logging`, `kvm_arch_sync_dirty_log`). With PML, logging clears the D
bit of 4K leaves instead of W; a store through a writable leaf whose D is clear makes the CPU set D and
append the page to the vCPU's 512-entry log, with no exit. The log reaches the dirty bitmap (or ring) only
when KVM flushes it: on every exit of that vCPU, when it is full, and when userspace is about to read the
dirty log (every vCPU is kicked out of the guest first, so nothing logged is missing from what it reads).

`vm.ept_ad: false` makes `pml` inert: the kernel turns PML off without EPT A/D bits, and logging stays
write-protection based (`Kvm.cpu_dirty_log_size` is 0).
"""

from __future__ import annotations

from engine.kvm import Kvm, Vcpu
from engine.kvm_main import mark_page_dirty
from engine.memslot import KvmMemorySlot
from engine.trace import FlushPmlBuffer, PmlLog, UpdateCpuDirtyLogging, traced


def pml_log(kvm: Kvm, vcpu: Vcpu, gfn: int) -> None:
    """The CPU logs a store that set D: the page goes into the next free entry of the vCPU's log.

    The caller has made room first (a full log makes a PML-full exit instead, see engine.cpu)."""
    pml = vcpu.pml
    index = pml.pml_index
    pml.log(gfn)
    if kvm.tp.on:
        kvm.tp.emit(PmlLog(vcpu.id, gfn, index))


def handle_pml_full(kvm: Kvm, vcpu: Vcpu) -> None:
    """A store found the log full: the CPU exits before the store; the exit flushes the log, and the guest
    re-executes the store on the next entry."""
    kvm.stat.exits += 1
    vmx_flush_pml_buffer(kvm, vcpu, "pml_full")


@traced(FlushPmlBuffer)
def vmx_flush_pml_buffer(kvm: Kvm, vcpu: Vcpu, reason: str) -> None:
    """Hand every logged page to mark_page_dirty as that vCPU (its dirty ring receives them), oldest
    first, and reset the log. Pages of slots no longer logged are dropped by mark_page_dirty."""
    if not vcpu.pml.entries:
        return
    gfns = vcpu.pml.take()
    if kvm.tp.on:
        kvm.tp.emit(FlushPmlBuffer(vcpu.id, reason, tuple(gfns)))
    running = kvm.running_vcpu
    kvm.running_vcpu = vcpu
    try:
        for gfn in gfns:
            mark_page_dirty(kvm, gfn, "vmx_flush_pml_buffer")
    finally:
        kvm.running_vcpu = running


def kvm_arch_sync_dirty_log(kvm: Kvm) -> None:
    """Kick every vCPU out of the guest so that its exit flushes its log: called before the dirty log is
    read or re-armed, so that the bitmap (or ring) holds every store the CPUs logged so far."""
    if not kvm.cpu_dirty_log_size:
        return
    for vcpu in kvm.vcpus:
        vmx_flush_pml_buffer(kvm, vcpu, "kick")


@traced(UpdateCpuDirtyLogging)
def kvm_mmu_update_cpu_dirty_logging(kvm: Kvm, slot: KvmMemorySlot, enable: bool) -> None:
    """Logging was switched on or off for `slot`: count the logged slots, and have every vCPU enable PML
    while any slot is logged. The request kicks every vCPU, and the exit flushes its log; turning PML off
    leaves the D bits as they are.

    Without EPT A/D bits the kernel runs without PML (`cpu_dirty_log_size` 0): the event says so, and
    dirty logging write-protects as it would with `pml` off.
    """
    if not kvm.policy.pml:
        return
    inert = not kvm.cpu_dirty_log_size
    if not inert:
        kvm.cpu_dirty_logging_count += 1 if enable else -1
        kvm.pml_enabled = kvm.cpu_dirty_logging_count > 0
    if kvm.tp.on:
        kvm.tp.emit(
            UpdateCpuDirtyLogging(slot.id, enable, kvm.cpu_dirty_logging_count, kvm.pml_enabled, inert)
        )
    if not inert:
        for vcpu in kvm.vcpus:
            vmx_flush_pml_buffer(kvm, vcpu, "kick")


def pml_holds(kvm: Kvm, gfn: int) -> bool:
    """Whether some vCPU's log holds `gfn`: a store logged there is flushed before any harvest."""
    return any(gfn in vcpu.pml.gfns for vcpu in kvm.vcpus)
