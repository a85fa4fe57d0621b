"""The guest's side under shadow paging: a load or store of a guest-virtual address goes through the
vCPU's TLB, then the CPU's walk of the shadow tables (which it takes for the guest's), then a #PF exit
that KVM handles (engine.paging_tmpl) by fixing the shadow tables, emulating the store, or handing
the #PF to the guest.

The TLB is the same `Tlb` as under TDP, keyed by guest-virtual page instead of gfn; each entry keeps the
first gfn of its range (the shadow spte maps the guest page's host page, and the store's page is what
the model counts). A store to a page that holds a guest page table can carry a new PTE value
(`write_gpte`): once the store happens, by the CPU through a writable spte or by the emulator, the
guest's table holds it; only the emulator tells KVM (kvm_mmu_pte_write), which is why an unsync page
goes stale until it is synced.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from engine.guest_pt import walk_addr_generic
from engine.kvm import FaultRecord, Kvm, Vcpu, store_landed
from engine.kvm_main import mark_page_dirty
from engine.mmu import PFERR_PRESENT_MASK, PFERR_WRITE_MASK, RET_PF_EMULATE, RET_PF_FIXED, RET_PF_SPURIOUS
from engine.paging_tmpl import GUEST_PF, MMIO, invlpg, page_fault
from engine.shadow_mmu import kvm_mmu_load, kvm_mmu_new_cr3, kvm_mmu_pte_write, kvm_mmu_sync_roots, vfn_of
from engine.shadow_page import KvmMmuPage, kvm_mmu_page_get_gfn
from engine.spte import (
    PAGE_SHIFT,
    PT64_BASE_ADDR_MASK,
    PT64_LEVEL_BITS,
    PT64_ROOT_LEVEL,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
)
from engine.tdp_iter import walk_spte
from engine.tlb import TlbEntry
from engine.trace_shadow import EmulateWrite, ShadowGuestAccess

# More faults than this on one access means no progress: the guest would loop forever.
MAX_FAULTS_PER_ACCESS = 4

# The guest's accesses run in kernel mode (CPL 0): no U/S check, and CR0.WP decides writes to read-only pages.
SUPERVISOR = 0


class GptStore(NamedTuple):
    """A guest store of a new PTE value into entry `entry` of the page it writes (a guest page table)."""

    entry: int
    value: int


def shadow_walk(kvm: Kvm, vcpu: Vcpu, vfn: int, write: bool) -> tuple[int | None, int]:
    """The CPU's walk of the vCPU's shadow tables for guest-virtual page `vfn`: on success set A (and D
    for a store), fill the TLB and return (None, gfn); else (#PF error code, 0)."""
    root = vcpu.root
    if root is None:
        return (PFERR_WRITE_MASK if write else 0), 0
    accessed = kvm.masks.accessed_mask
    dirty = kvm.masks.dirty_mask
    # The level-1 table this root routes the 2M range to, if a walk went there since a pointer last
    # changed (Kvm.l1_tables, keyed here by root and range): every pointer on the way is present and
    # accessed (link_shadow_page sets A), so the walk may start there, as the CPU's paging-structure
    # cache would.
    shortcut = (root.serial << 32) | (vfn >> PT64_LEVEL_BITS)
    l1 = kvm.l1_tables.get(shortcut)
    if l1 is not None:
        sp, level, index = l1, 1, vfn & 511
        spte = sp.spt[index]
        if not spte & PT_PRESENT_MASK:
            return (PFERR_WRITE_MASK if write else 0), 0
    else:
        sp, level = root, PT64_ROOT_LEVEL
        while True:
            index = (vfn >> (PT64_LEVEL_BITS * (level - 1))) & 511
            spte = sp.spt[index]
            if not spte & PT_PRESENT_MASK:
                return (PFERR_WRITE_MASK if write else 0), 0
            if level == 1 or spte & PT_PAGE_SIZE_MASK:
                break
            if not spte & accessed:
                kvm.write_spte(sp, index, spte | accessed)
            sp = kvm.sp_by_pfn[(spte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT]
            level -= 1
            if level == 1:
                kvm.l1_tables[shortcut] = sp
    if write and not spte & PT_WRITABLE_MASK:
        return PFERR_PRESENT_MASK | PFERR_WRITE_MASK, 0
    new = spte | accessed | (dirty if write else 0)
    if new != spte:
        kvm.write_spte(sp, index, new)
        spte = new
    shift = PT64_LEVEL_BITS * (level - 1)
    first_gfn = kvm_mmu_page_get_gfn(sp, index)
    vcpu.tlb.by_level[level - 1][vfn >> shift] = TlbEntry(
        level, first_gfn, (spte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT, bool(spte & PT_WRITABLE_MASK),
        bool(spte & dirty),
    )
    return None, first_gfn + (vfn & ((1 << shift) - 1))


def shadow_leaf(kvm: Kvm, vcpu: Vcpu, vfn: int) -> tuple[KvmMmuPage, int, int] | None:
    """The present leaf (sp, index, spte) the vCPU's root maps guest-virtual page `vfn` with, or None."""
    return walk_spte(kvm, vfn, vcpu.root) if vcpu.root is not None else None


def _tlb_lookup(vcpu: Vcpu, vfn: int) -> tuple[TlbEntry | None, int]:
    """The vCPU's cached translation of guest-virtual page `vfn` and the gfn it gives, smallest pages
    first (this runs for every access)."""
    l1, l2, l3 = vcpu.tlb.by_level
    entry = l1.get(vfn)
    if entry is not None:
        return entry, entry.gfn
    entry = l2.get(vfn >> PT64_LEVEL_BITS)
    if entry is not None:
        return entry, entry.gfn + (vfn & 511)
    entry = l3.get(vfn >> (2 * PT64_LEVEL_BITS))
    if entry is not None:
        return entry, entry.gfn + (vfn & 0x3FFFF)
    return None, 0


def enter_guest(kvm: Kvm, vcpu: Vcpu) -> None:
    """What vcpu_enter_guest does first: load a root if the vCPU has none (after a zap), and sync the
    root if KVM_REQ_MMU_SYNC is pending."""
    if vcpu.root is None:
        kvm_mmu_load(kvm, vcpu)
    elif vcpu.id in kvm.mmu_sync_requests:
        kvm_mmu_sync_roots(kvm, vcpu)


def shadow_accesses(
    kvm: Kvm, vcpu: Vcpu, gva: int, count: int, stride: int, write: bool, gpt: GptStore | None = None
) -> None:
    """`count` guest loads or stores at `gva + k × stride` pages, in order, each retried after every
    fault until it completes, is emulated, or ends in a #PF the guest must handle."""
    tracing = kvm.tp.on
    kvm.running_vcpu = vcpu
    try:
        for _ in range(count):
            enter_guest(kvm, vcpu)
            _one_access(kvm, vcpu, gva, write, gpt, tracing)
            gva += stride << PAGE_SHIFT
    finally:
        kvm.running_vcpu = None


def _one_access(kvm: Kvm, vcpu: Vcpu, gva: int, write: bool, gpt: GptStore | None, tracing: bool) -> None:
    vfn = vfn_of(gva)
    faults = 0
    via = "tlb"
    gfn: int | None = None
    while True:
        entry, gfn = _tlb_lookup(vcpu, vfn)
        if entry is not None and (not write or (entry.writable and entry.dirty)):
            break
        if entry is not None and write and not entry.writable:
            error_code = PFERR_PRESENT_MASK | PFERR_WRITE_MASK
        else:
            walk_error, gfn = shadow_walk(kvm, vcpu, vfn, write)
            if walk_error is None:
                via = "walk" if not faults else "fault"
                break
            error_code = walk_error
        if faults == MAX_FAULTS_PER_ACCESS:
            kvm.log.livelocks.append((vcpu.id, vfn, write))
            via, gfn = "livelock", None
            break
        faults += 1
        via = "fault"
        ret = handle_shadow_fault(kvm, vcpu, gva, write, error_code)
        if ret in (GUEST_PF, MMIO):
            via, gfn = ret, None
            break
        if ret == RET_PF_EMULATE:
            gfn = _emulate_store(kvm, vcpu, gva, gpt)
            via = "emulated"
            if tracing:
                kvm.tp.emit(ShadowGuestAccess(vcpu.id, gva, gfn, write, via, faults))
            return
        enter_guest(kvm, vcpu)
    if tracing:
        kvm.tp.emit(ShadowGuestAccess(vcpu.id, gva, gfn, write, via, faults))
    if write and gfn is not None:
        slot = kvm.gfn_to_memslot(gfn)
        if slot is not None:
            _store(kvm, gfn, gpt)
            store_landed(kvm.log, slot, gfn)


def _store(kvm: Kvm, gfn: int, gpt: GptStore | None) -> tuple[int, int]:
    """The store's effect on a guest table: the PTE it writes (entry 0 rewritten as it was, for a plain
    store to a table page, which the model does not give contents); returns (index, old PTE)."""
    tables = kvm.guest
    if tables is None:
        return 0, 0
    index = gpt.entry if gpt is not None else 0
    old = tables.read_gpte(gfn, index)
    if gpt is not None:
        tables.write_gpte(gfn, index, gpt.value)
    return index, old


def _emulate_store(kvm: Kvm, vcpu: Vcpu, gva: int, gpt: GptStore | None) -> int | None:
    """x86_emulate_instruction for a store to a write-protected guest table: the emulator translates
    the address with the guest's tables, writes guest memory (kvm_write_guest: marked dirty, content
    changed), and tells the shadow MMU what was written (kvm_mmu_pte_write)."""
    kvm.stat.pf_emulate += 1
    paging, tables = vcpu.paging, kvm.guest
    if paging is None or tables is None:
        return None
    walker = walk_addr_generic(kvm, tables, paging, gva, write=True)
    gfn = walker.gfn
    if gfn is None:
        return None
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:
        return None
    if kvm.tp.on:
        kvm.tp.emit(EmulateWrite(vcpu.id, gva, gfn))
    mark_page_dirty(kvm, gfn, "kvm_vcpu_write_guest")
    index, old = _store(kvm, gfn, gpt)
    store_landed(kvm.log, slot, gfn)
    kvm_mmu_pte_write(kvm, vcpu, gfn, index, old, tables.read_gpte(gfn, index))
    return gfn


def handle_shadow_fault(kvm: Kvm, vcpu: Vcpu, gva: int, write: bool, error_code: int) -> str:
    """The #PF VM exit: kvm_mmu_page_fault into FNAME(page_fault), with the counters of the generation."""
    kvm.stat.exits += 1
    vfn = vfn_of(gva)
    vcpu.tlb.invalidate_gfn(vfn)
    ret = page_fault(kvm, vcpu, gva, error_code | SUPERVISOR)
    log = kvm.log
    log.slow_faults += 1
    if kvm.era6:
        stat = kvm.stat
        stat.pf_taken += 1
        if ret == RET_PF_FIXED:
            stat.pf_fixed += 1
        elif ret == RET_PF_SPURIOUS:
            stat.pf_spurious += 1
    if kvm.tp.on:
        leaf = shadow_leaf(kvm, vcpu, vfn)
        log.faults.append(
            FaultRecord(vcpu=vcpu.id, gfn=vfn, write=write, error_code=error_code, path="slow",
                        fast_tried=False, fast_result=None, level=leaf[0].level if leaf else None)
        )
    return str(ret)


def guest_invlpg(kvm: Kvm, vcpu: Vcpu, gva: int) -> None:
    """INVLPG: the shadow MMU's invlpg, then the vCPU's TLB flushed (kvm_mmu_invlpg)."""
    enter_guest(kvm, vcpu)
    kvm.running_vcpu = vcpu
    try:
        invlpg(kvm, vcpu, gva)
    finally:
        kvm.running_vcpu = None
    kvm.stat.invlpg += 1
    vcpu.tlb.flush()


def guest_set_cr3(kvm: Kvm, vcpu: Vcpu, cr3: int, space: int) -> None:
    """MOV CR3: the vCPU's paging state takes the new root gfn, and the shadow MMU switches roots."""
    paging = vcpu.paging
    if paging is None:
        raise AssertionError("MOV CR3 on a vCPU without guest paging")
    kvm.running_vcpu = vcpu
    try:
        enter_guest(kvm, vcpu)  # the guest runs, on its old root, to execute the MOV
        vcpu.paging = replace(paging, cr3=cr3)
        vcpu.space = space
        kvm_mmu_new_cr3(kvm, vcpu)
    finally:
        kvm.running_vcpu = None
