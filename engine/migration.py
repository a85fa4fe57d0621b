"""Live migration as QEMU drives it: log everything, copy everything, re-copy what the dirty log reports.

Not kernel code: the userspace loop that makes a dirty-log bug lose data. The destination keeps, per page,
the write counter the page had when it was copied; after the final round a page whose counter differs
from the source's is lost: the destination would run with stale memory there.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from engine.dirty_log import kvm_set_dirty_logging, kvm_vm_ioctl_clear_dirty_log, kvm_vm_ioctl_get_dirty_log
from engine.dirty_ring import harvest_and_reset
from engine.kvm import Kvm
from engine.memslot import BITS_PER_LONG, KvmMemorySlot
from engine.trace import MigrateCopy, MigrateVerdict, traced


@dataclass(slots=True)
class Migration:
    enabled_slots: list[int] = field(default_factory=list)
    destination: dict[int, array[int]] = field(default_factory=dict)
    rounds: int = 0
    pages_sent: int = 0
    lost: list[int] | None = None
    running: bool = False

    def as_json(self) -> dict[str, object]:
        return {"rounds": self.rounds, "pages_sent": self.pages_sent, "lost": self.lost or []}


@traced(MigrateCopy)
def migrate_begin(kvm: Kvm, mig: Migration) -> None:
    """Start logging on every slot not yet logged, then send every page once (the bulk stage)."""
    mig.running = True
    mig.lost = None
    mig.enabled_slots = []
    for slot in kvm.memslots:
        if slot.dirty_bitmap is None:
            kvm_set_dirty_logging(kvm, slot, True)
            mig.enabled_slots.append(slot.id)
    sent = 0
    for slot in kvm.memslots:
        mig.destination[slot.id] = array("Q", slot.content)
        sent += slot.npages
    mig.pages_sent += sent
    if kvm.tp.on:
        kvm.tp.emit(MigrateCopy("begin", sent))


@traced(MigrateCopy)
def migrate_round(kvm: Kvm, mig: Migration, phase: str = "round") -> list[int]:
    """One pre-copy pass: ask the dirty log what changed, re-send those pages.

    As QEMU does per mode: GET_DIRTY_LOG on every logged slot; with manual protection, GET and then
    CLEAR_DIRTY_LOG of exactly what GET returned, before the pages are copied (a write after the CLEAR
    is then either in the copy or logged again); with the dirty ring, harvest every vCPU's ring and
    reset them.
    """
    returned: list[int] = []
    mode = kvm.policy.dirty_log_mode
    if mode == "ring":
        for gfn in harvest_and_reset(kvm) or []:
            slot = kvm.gfn_to_memslot(gfn)
            if slot is not None:
                mig.destination[slot.id][gfn - slot.base_gfn] = slot.content[gfn - slot.base_gfn]
                returned.append(gfn)
    else:
        for slot in kvm.memslots:
            if slot.dirty_bitmap is None:
                continue
            gfns = kvm_vm_ioctl_get_dirty_log(kvm, slot) or []
            if mode != "bitmap" and gfns:
                kvm_vm_ioctl_clear_dirty_log(kvm, slot, 0, slot.npages, _bitmap_words(slot, gfns))
            dest = mig.destination[slot.id]
            for gfn in gfns:
                dest[gfn - slot.base_gfn] = slot.content[gfn - slot.base_gfn]
                returned.append(gfn)
    mig.rounds += 1
    mig.pages_sent += len(returned)
    if kvm.tp.on:
        kvm.tp.emit(MigrateCopy(phase, len(returned)))
    return sorted(returned)


def _bitmap_words(slot: KvmMemorySlot, gfns: list[int]) -> dict[int, int]:
    """The slot's gfns as bitmap longs by index: the user mask of a CLEAR of exactly those pages."""
    words: dict[int, int] = {}
    for gfn in gfns:
        offset = gfn - slot.base_gfn
        words[offset // BITS_PER_LONG] = words.get(offset // BITS_PER_LONG, 0) | 1 << offset % BITS_PER_LONG
    return words


def migrate_end(kvm: Kvm, mig: Migration) -> list[int]:
    """Stop the vCPUs, run the final round, compare both sides, and stop the logging begin started."""
    returned = migrate_round(kvm, mig, "end")
    lost: list[int] = []
    for slot in kvm.memslots:
        src, dest = slot.content, mig.destination[slot.id]
        if src != dest:
            lost.extend(slot.base_gfn + i for i, (a, b) in enumerate(zip(src, dest, strict=True)) if a != b)
    mig.lost = sorted(lost)
    for slot_id in mig.enabled_slots:
        kvm_set_dirty_logging(kvm, kvm.memslots.by_id[slot_id], False)
    mig.running = False
    if kvm.tp.on:
        kvm.tp.emit(MigrateVerdict(tuple(mig.lost)))
    return returned
