"""The x86 emulator's guest memory: kvm_vcpu_read_guest/kvm_vcpu_write_guest → mark_page_dirty_in_slot.

When KVM runs a guest instruction in its instruction emulator instead of on the CPU (x86_emulate_instruction:
a host without EPT/NPT whose vendor module emulates a guest that has paging off, an MMIO access, ...), the
instruction's loads and stores reach guest memory through the memslot's host mapping, never through an
spte: there is no TLB lookup, no walk, no EPT violation, no fault, and no spte is built. A store is copied
in with `kvm_vcpu_write_guest`, which marks its page dirty in its slot every time it writes, so under the
dirty ring every store takes an entry of its own (the same page again and again), and in a bitmap it sets
the page's bit; a load is copied out with `kvm_vcpu_read_guest` and marks nothing.

This is the model of such a guest: `engine.simulation.Simulation(..., guest_execution="emulated")` runs a
read or write step through `emulated_accesses` instead of `engine.cpu.guest_accesses`. Everything else a
scenario does (enabling and disabling logging, GET_DIRTY_LOG, CLEAR_DIRTY_LOG, the ring's harvest and
reset, migration) is the engine's own code, unchanged: what an emulated run checks is exactly that
dirty-log plumbing.
"""

from __future__ import annotations

from engine.kvm import Kvm, Vcpu, store_landed
from engine.kvm_main import mark_page_dirty
from engine.trace import DirtyRingFull

# The caller `mark_page_dirty` names in its trace event: the generic write of guest memory the emulator's
# stores end in.
WRITE_GUEST = "kvm_vcpu_write_guest"


def emulated_accesses(kvm: Kvm, vcpu: Vcpu, gfn: int, count: int, stride: int, write: bool) -> None:
    """`count` emulated loads or stores at `gfn + k × stride`, in order.

    A store bumps its page's content counter and marks the page dirty (one mark per store); a load
    changes nothing. With the dirty ring, a vCPU whose ring is soft full does not run its next
    instruction until userspace resets the rings (kvm_dirty_ring_check_request): it is checked before the
    step's first access and after every store, and the accesses left are not run in this step.
    """
    ring = vcpu.dirty_ring if kvm.policy.dirty_log_mode == "ring" else None
    log = kvm.log
    kvm.running_vcpu = vcpu
    try:
        for done in range(count):
            if ring is not None and ring.soft_full():
                if kvm.tp.on:
                    kvm.tp.emit(DirtyRingFull(vcpu.id, gfn, len(ring), count - done))
                return
            if write:
                slot = kvm.gfn_to_memslot(gfn)
                if slot is not None:
                    # The emulator's store marks the page itself, so it never lands unmarked (the
                    # invariant would say so if it did).
                    mark_page_dirty(kvm, gfn, WRITE_GUEST)
                    store_landed(log, slot, gfn)
            gfn += stride
    finally:
        kvm.running_vcpu = None
