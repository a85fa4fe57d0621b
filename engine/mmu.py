"""The 3.14/3.16 TDP fault path of arch/x86/kvm/mmu.c: the lockless fast path, `__direct_map` and the
leaf it installs.

Function names are the kernel's, in snake_case (`__direct_map` is `direct_map`). Where 3.14, caf6900f
and 3.16 differ, the code reads a `Policy` switch at exactly that spot; nothing else varies by preset.
The 6.x TDP MMU's own fault path (`kvm_tdp_mmu_map`) is in engine/tdp_mmu.py, and the fault entry that
chooses between them in engine/page_fault.py.
"""

from __future__ import annotations

from enum import StrEnum

from engine.kvm import Kvm, Vcpu
from engine.kvm_main import kvm_flush_remote_tlbs, mark_page_dirty
from engine.memslot import KvmMemorySlot
from engine.mmu_spte import (
    drop_large_spte,
    drop_parent_pte,
    drop_spte,
    make_nonleaf_spte,
    mmu_spte_set,
    mmu_spte_update,
)
from engine.rmap import rmap_add
from engine.shadow_page import (
    ACC_ALL,
    ACC_EXEC_MASK,
    ACC_USER_MASK,
    ACC_WRITE_MASK,
    KvmMmuPage,
    kvm_mmu_page_get_gfn,
)
from engine.spte import (
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    is_large_pte,
    is_last_spte,
    is_shadow_present_pte,
    is_writable_pte,
    pages_per_hpage,
    spte_is_locklessly_modifiable,
    spte_to_pfn,
)
from engine.tdp_iter import find_shadow_page, for_each_shadow_entry, spte_to_child_sp
from engine.trace import (
    DirectMap,
    DirectPtePrefetch,
    FastPageFault,
    FastPfFixDirectSpte,
    KvmMmuGetPage,
    LinkShadowPage,
    MakeSpteReadOnly,
    MappingLevel,
    MmuSetSpte,
    traced,
)
from engine.unsync import mmu_need_write_protect
from engine.zap import handle_removed_pt

PFERR_PRESENT_MASK = 1 << 0
PFERR_WRITE_MASK = 1 << 1
PTE_PREFETCH_NUM = 8


class RetPf(StrEnum):
    """How a fault ended, as the kernel's RET_PF_* values (mmu_internal.h) name it: a leaf installed or
    made writable, nothing to do (the spte already allowed the access), or nothing done so that the
    guest faults again. The values are the words the result JSON has always carried."""

    RET_PF_FIXED = "fixed"
    RET_PF_SPURIOUS = "spurious"
    RET_PF_RETRY = "retry"
    RET_PF_EMULATE = "emulate"  # shadow paging: the store goes through the instruction emulator


RET_PF_FIXED = RetPf.RET_PF_FIXED
RET_PF_SPURIOUS = RetPf.RET_PF_SPURIOUS
RET_PF_RETRY = RetPf.RET_PF_RETRY
RET_PF_EMULATE = RetPf.RET_PF_EMULATE


class FastPfResult(StrEnum):
    """Why fast_page_fault stopped, as its tracepoint prints it (and the result's `fast_result`)."""

    FIXED = "fixed"  # W put back by the compare-and-swap
    SPURIOUS = "spurious"  # the spte is already writable
    RETRY = "retry"  # 3.x: nothing present, let the guest fault again
    NOT_PRESENT = "not_present"  # 6.x: nothing present, take the slow path
    NOT_LAST_SPTE = "not_last_spte"
    NOT_LOCKLESSLY_MODIFIABLE = "not_locklessly_modifiable"
    BAIL_LARGE = "bail_large"  # the large-page guard
    CAS_LOST = "cas_lost"  # the spte changed under the lockless walk


class SetSpteResult(StrEnum):
    """What set_spte did: stored the leaf, or refused a large one over a write-tracked page
    (mmu_need_write_protect's "wrprotected page", the guest refaults)."""

    SET = "set"
    WRPROTECTED_PAGE = "wrprotected_page"
    WRPROTECTED = "wrprotected"  # shadow paging: built read-only over a shadowed guest table


class MmuSetSpteResult(StrEnum):
    """What mmu_set_spte found at the entry, as its trace event tells it."""

    CREATED = "created"
    REPLACED_TABLE = "replaced_table"
    UPDATED = "updated"
    WRPROTECTED_PAGE = "wrprotected_page"


# --- building sptes (slow path) --------------------------------------------------------------------------


def set_spte(
    kvm: Kvm,
    sp: KvmMmuPage,
    index: int,
    level: int,
    gfn: int,
    pfn: int,
    speculative: bool,
    host_writable: bool,
    write_fault: bool,
    pte_access: int = ACC_ALL,
    can_unsync: bool = True,
) -> SetSpteResult:
    """Build a leaf for `pfn` with the rights `pte_access` and store it. Under TDP the access is always
    ACC_ALL, so a read fault gets a writable spte too, and marks the page dirty, whenever the host page
    is writable.

    Later kernels (`read_fault_marks_dirty = false`) make an exception for a read of a dirty-logged page:
    the spte is built read-only but keeps HW and MW, and nothing is marked, so only a real write reports
    the page, through the fast path, which may set W on such a 4K spte.

    Under shadow paging the rights are the guest's (its PTEs' W, U and NX, W taken away on a read
    through a clean PTE), and a writable spte for a gfn holding a shadowed guest table is built
    read-only unless its level-1 shadow pages can be unsynced (mmu_need_write_protect): then
    WRPROTECTED tells a write fault to emulate the store.
    """
    masks = kvm.masks
    spte = PT_PRESENT_MASK | masks.present_mask | masks.mt_mask
    spte |= masks.x_mask if pte_access & ACC_EXEC_MASK else masks.nx_mask
    if pte_access & ACC_USER_MASK:
        spte |= masks.user_mask
    if not speculative:
        spte |= masks.accessed_mask
    if level > PT_PAGE_TABLE_LEVEL:
        spte |= PT_PAGE_SIZE_MASK
    write_access = bool(pte_access & ACC_WRITE_MASK)
    if host_writable:
        spte |= masks.host_writable_mask
    else:
        write_access = False
    spte |= pfn << 12
    result = SetSpteResult.SET
    if write_access:
        # Another vCPU may have made the range ineligible since mapping_level(): let the guest refault.
        if level > PT_PAGE_TABLE_LEVEL:
            slot = kvm.gfn_to_memslot(gfn)
            if slot is None or slot.has_wrprotected_page(gfn, level):
                return SetSpteResult.WRPROTECTED_PAGE
        logged: KvmMemorySlot | None = None
        if not write_fault and not kvm.policy.read_fault_marks_dirty and not kvm.shadow:
            logged = kvm.gfn_to_memslot(gfn)
            if logged is not None and logged.dirty_bitmap is None:
                logged = None
        old = sp.spt[index]
        if logged is not None:
            spte |= masks.mmu_writable_mask  # read-only, yet the fast path may make it writable
            if kvm.tp.on:
                kvm.tp.emit(MakeSpteReadOnly(sp.level, sp.gfn, index, gfn, logged.id, spte))
        elif (kvm.era6 or not can_unsync) and is_writable_pte(old) and is_last_spte(old, level):
            # A writable leaf stays writable without asking about unsync: write protection is
            # kvm_mmu_get_page's business (3.x: only on a sync, which marks nothing; 6.x: always, and it
            # marks the page again, the spte built dirty as every writable one).
            spte |= PT_WRITABLE_MASK | masks.mmu_writable_mask | (masks.dirty_mask if kvm.era6 else 0)
            if kvm.era6:
                mark_page_dirty(kvm, gfn, "set_spte")
        elif kvm.indirect_shadow_pages and mmu_need_write_protect(kvm, gfn, can_unsync, speculative):
            result = SetSpteResult.WRPROTECTED
        else:
            spte |= PT_WRITABLE_MASK | masks.mmu_writable_mask
            if kvm.era6:
                # 6.13+ make_spte builds every writable spte dirty, so that a fault racing another to the
                # same leaf finds it as it would build it, and ends spurious.
                spte |= masks.dirty_mask
            elif kvm.cpu_dirty_log_size and _slot_logged(kvm, gfn):
                # With PML, as later kernels' make_spte: a writable spte is built dirty, and the page
                # is marked here, so the store that faulted is not logged a second time by the CPU.
                spte |= masks.dirty_mask
            mark_page_dirty(kvm, gfn, "set_spte")
    if mmu_spte_update(kvm, sp, index, spte):
        kvm_flush_remote_tlbs(kvm, "set_spte", under_mmu_lock=True)
    return result


@traced(MmuSetSpte)
def mmu_set_spte(
    kvm: Kvm,
    sp: KvmMmuPage,
    index: int,
    write_fault: bool,
    level: int,
    gfn: int,
    pfn: int,
    speculative: bool,
    host_writable: bool,
    pte_access: int = ACC_ALL,
) -> tuple[bool, bool]:
    """Install the leaf for `pfn` at (sp, index) with the rights `pte_access`; returns whether the spte
    changed (6.x calls a fault whose new spte equals the old one spurious) and whether the write that
    faulted must be emulated (shadow paging: the gfn holds a write-protected guest table)."""
    was_rmapped = False
    old = sp.spt[index]
    result = MmuSetSpteResult.CREATED
    replaced: KvmMmuPage | None = None
    if is_shadow_present_pte(old):
        if not is_last_spte(old, level):
            result = MmuSetSpteResult.REPLACED_TABLE
            if kvm.era6 and not kvm.shadow:
                # The TDP MMU stores the leaf over the pointer and zaps the table it replaced, with
                # everything under it (handle_removed_pt), then flushes.
                replaced = spte_to_child_sp(kvm, old)
                replaced.parent_ptes.remove((sp, index))
            else:
                # A large mapping replaces a table: unlink the now unreachable child (it lingers, orphaned).
                drop_parent_pte(kvm, spte_to_child_sp(kvm, old), sp, index)
                kvm_flush_remote_tlbs(kvm, "mmu_set_spte", under_mmu_lock=True)
        elif pfn != spte_to_pfn(old) or (sp.gfns is not None and sp.gfns[index] != gfn):
            # (An indirect entry whose guest PTE now names another gfn is another mapping too: two slots
            # may share host pages in a scenario.)
            drop_spte(kvm, sp, index)
            kvm_flush_remote_tlbs(kvm, "mmu_set_spte", under_mmu_lock=True)
        else:
            was_rmapped = True
            result = MmuSetSpteResult.UPDATED
    if sp.gfns is not None:
        sp.gfns[index] = gfn  # kvm_mmu_page_set_gfn
    built = set_spte(kvm, sp, index, level, gfn, pfn, speculative, host_writable, write_fault, pte_access)
    emulate = False
    if built is SetSpteResult.WRPROTECTED_PAGE:
        result = MmuSetSpteResult.WRPROTECTED_PAGE
    elif built is SetSpteResult.WRPROTECTED:
        emulate = write_fault
        vcpu = kvm.running_vcpu
        if vcpu is not None:  # kvm_mmu_flush_tlb: this vCPU's own TLB
            vcpu.tlb.flush()
    new = sp.spt[index]
    if not was_rmapped and is_shadow_present_pte(new):
        if is_large_pte(new):
            kvm.stat.lpages += 1
        rmap_add(kvm, sp, index, gfn)
    if replaced is not None:
        removed: list[KvmMmuPage] = []
        handle_removed_pt(kvm, replaced, removed)
        kvm_flush_remote_tlbs(kvm, "tdp_mmu_map_handle_target_level", under_mmu_lock=True)
        for table in removed:
            kvm.free_mmu_page(table)
    if kvm.tp.on:
        kvm.tp.emit(MmuSetSpte(sp.level, sp.gfn, index, gfn, pfn, write_fault, speculative, old, new, result))
    return new != old, emulate


@traced(DirectPtePrefetch)
def direct_pte_prefetch(kvm: Kvm, sp: KvmMmuPage, index: int) -> None:
    """Map the still-empty neighbours of a 4K fault speculatively (no A bit), in its aligned group of 8.

    3.14/3.16 fill only runs of empty entries that end at a present entry or at the faulting one, so
    entries after the fault stay empty; later kernels (`era=6.x`, the rmap-based MMU of 6.x) also fill
    the run left open at the end of the group. The helper insists on a slot without a dirty bitmap,
    because a direct mapping includes write access: under logging every touch maps exactly one page.
    """
    if not kvm.masks.accessed_mask:
        skipped = "EPT A/D bits are off"
    elif sp.level > PT_PAGE_TABLE_LEVEL:
        skipped = f"sp level {sp.level}"
    else:
        # Under shadow paging a direct page may carry read-only rights (a guest huge page read through a
        # clean PDE): its neighbours may be prefetched read-only on a logged slot.
        logged = _group_in_logged_slot(kvm, sp, index) if sp.access & ACC_WRITE_MASK else None
        if logged is not None:  # every 4K fault under logging: answered before any walk of the group
            if kvm.tp.on:
                kvm.tp.emit(DirectPtePrefetch(sp.gfn, (), f"slot {logged.id} is dirty-logged"))
            return
        skipped = ""
    done: list[int] = []
    if not skipped:
        first = index & ~(PTE_PREFETCH_NUM - 1)
        start: int | None = None
        spt = sp.spt
        for i in range(first, first + PTE_PREFETCH_NUM):
            if is_shadow_present_pte(spt[i]) or i == index:
                if start is None:
                    continue
                got, reason = direct_pte_prefetch_many(kvm, sp, start, i)
                done.extend(got)
                if reason:
                    skipped = reason
                    break
                start = None
            elif start is None:
                start = i
        else:
            if start is not None and kvm.era6:
                got, skipped = direct_pte_prefetch_many(kvm, sp, start, first + PTE_PREFETCH_NUM)
                done.extend(got)
    if kvm.tp.on:
        kvm.tp.emit(DirectPtePrefetch(sp.gfn, tuple(done), skipped))


def _group_in_logged_slot(kvm: Kvm, sp: KvmMmuPage, index: int) -> KvmMemorySlot | None:
    """The logged slot every run of the group would meet first, if any: known without walking the group."""
    first = sp.gfn + (index & ~(PTE_PREFETCH_NUM - 1))  # a level-1 sp: one gfn per entry
    slot = kvm.gfn_to_memslot(first)
    if slot is None or slot.dirty_bitmap is None or first + PTE_PREFETCH_NUM > slot.base_gfn + slot.npages:
        return None
    return slot


def direct_pte_prefetch_many(kvm: Kvm, sp: KvmMmuPage, start: int, end: int) -> tuple[list[int], str]:
    gfn = kvm_mmu_page_get_gfn(sp, start)
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:
        return [], "no memslot"
    if slot.dirty_bitmap is not None and sp.access & ACC_WRITE_MASK:
        return [], f"slot {slot.id} is dirty-logged"
    if gfn + (end - start) - 1 > slot.last_gfn:  # gfn_to_page_many_atomic refuses to cross the slot end
        return [], "range crosses the slot end"
    done: list[int] = []
    for i in range(start, end):
        pfn = slot.gfn_to_pfn(gfn)
        # __get_user_pages_fast(write=1) stops at the first host page that is not writable.
        if not slot.host_page_writable(pfn):
            break
        mmu_set_spte(kvm, sp, i, False, sp.level, gfn, pfn, True, True, sp.access)
        done.append(gfn)
        gfn += 1
    return done, "" if done else "host page not writable"


def kvm_mmu_get_page(kvm: Kvm, gfn: int, level: int, parent: tuple[KvmMmuPage, int]) -> KvmMmuPage:
    """Reuse the sp with this gfn and role if the hash has one (even an orphaned one), else create it."""
    sp = find_shadow_page(kvm, gfn, level)
    created = sp is None
    if sp is None:
        sp = kvm.alloc_mmu_page(gfn, level)
        kvm.stat.mmu_cache_miss += 1
    sp.parent_ptes.append(parent)
    if kvm.tp.on:
        kvm.tp.emit(KvmMmuGetPage(level, gfn, created))
    return sp


def link_shadow_page(kvm: Kvm, sp: KvmMmuPage, index: int, child: KvmMmuPage) -> None:
    mmu_spte_set(kvm, sp, index, make_nonleaf_spte(kvm, child))
    if kvm.tp.on:
        kvm.tp.emit(LinkShadowPage(sp.level, sp.gfn, index, child.level, child.gfn))


def direct_map_link(kvm: Kvm, sp: KvmMmuPage, index: int, level: int, gfn: int) -> None:
    """The walk met an empty entry above the target level: get (or reuse) the table for its range and
    link it, so the walk goes on down through it."""
    base_gfn = gfn & ~(pages_per_hpage(level) - 1)
    child = kvm_mmu_get_page(kvm, base_gfn, level - 1, (sp, index))
    link_shadow_page(kvm, sp, index, child)


def direct_map_target_level(
    kvm: Kvm, sp: KvmMmuPage, index: int, level: int, write: bool, map_writable: bool, gfn: int, pfn: int
) -> RetPf:
    """The walk reached the target level: install the leaf (and prefetch around it where the policy
    says), count it as the generation does, and say how the fault ended."""
    changed, _ = mmu_set_spte(kvm, sp, index, write, level, gfn, pfn, False, map_writable)
    if kvm.policy.pte_prefetch:
        direct_pte_prefetch(kvm, sp, index)
    if not kvm.era6:
        kvm.stat.pf_fixed += 1  # 3.x counts every leaf __direct_map installs
    return RET_PF_FIXED if changed or not kvm.era6 else RET_PF_SPURIOUS


def direct_map_start(kvm: Kvm, gfn: int, level: int) -> KvmMmuPage | None:
    """Where a walk for a 4K mapping may begin: the level-1 table the root already routes `gfn` to, as
    the walk would only follow present pointers down to it; None (the root) otherwise."""
    return kvm.l1_table(gfn) if level == PT_PAGE_TABLE_LEVEL else None


@traced(DirectMap)
def direct_map(
    kvm: Kvm, vcpu: Vcpu, write: bool, map_writable: bool, level: int, gfn: int, pfn: int
) -> RetPf:
    """`__direct_map`: walk down from the root, building tables, and install the leaf at `level`.

    Returns RET_PF_FIXED, RET_PF_SPURIOUS when the leaf it built is the one already there, or RET_PF_RETRY
    when the walk ended on a leaf above `level` without mapping anything: what a tree without 404381c5
    does with a read-only large spte, so the guest refaults forever. A large leaf above `level` is
    dropped (404381c5, `direct_map_drops_large`) and the walk goes on down through a new table.
    """
    ret = RET_PF_RETRY
    drops_large = kvm.policy.direct_map_drops_large
    for cur, sp, index, spte in for_each_shadow_entry(kvm, gfn, direct_map_start(kvm, gfn, level)):
        if cur == level:
            ret = direct_map_target_level(kvm, sp, index, level, write, map_writable, gfn, pfn)
            break
        if drops_large and is_large_pte(spte):
            drop_large_spte(kvm, sp, index)
        if not is_shadow_present_pte(sp.spt[index]):
            direct_map_link(kvm, sp, index, cur, gfn)
        # A large leaf left in place ends the walk (is_last_spte above level 1): nothing is mapped.
    if kvm.tp.on:
        kvm.tp.emit(DirectMap(gfn, level, pfn, write, map_writable, ret != RET_PF_RETRY))
    return ret


# --- the fault path --------------------------------------------------------------------------------------


def kvm_mmu_max_mapping_level(kvm: Kvm, slot: KvmMemorySlot, gfn: int) -> int:
    """The largest level the host page, the VM and lpage_info allow for `gfn`, a gfn of `slot` (no dirty
    bitmap assumed): mapping_level's rule, which later kernels also ask when recovering huge pages."""
    host_level = slot.host_level  # host_mapping_level: the hugetlbfs page size behind the hva
    if host_level == PT_PAGE_TABLE_LEVEL:
        return PT_PAGE_TABLE_LEVEL
    max_level = min(kvm.max_level, host_level)
    for candidate in range(2, max_level + 1):
        if slot.has_wrprotected_page(gfn, candidate):
            return candidate - 1
    return max_level


def mapping_level(kvm: Kvm, slot: KvmMemorySlot, gfn: int) -> int:
    """The largest level the host page and lpage_info allow for `gfn` (no dirty bitmap assumed)."""
    level = kvm_mmu_max_mapping_level(kvm, slot, gfn)
    if kvm.tp.on:
        kvm.tp.emit(MappingLevel(gfn, slot.host_level, min(kvm.max_level, slot.host_level), level))
    return level


def page_fault_can_be_fast(error_code: int) -> bool:
    """Only a write to a present spte can be fixed without mmu_lock (dirty-log write protection)."""
    mask = PFERR_PRESENT_MASK | PFERR_WRITE_MASK
    return error_code & mask == mask


@traced(FastPageFault)
def fast_page_fault(kvm: Kvm, vcpu: Vcpu, gfn: int, level: int, error_code: int) -> tuple[bool, FastPfResult]:
    """The lockless path: walk without mmu_lock and, if only dirty logging took W away, put it back.

    Returns (handled, result). The result names why it stopped, as the tracepoint prints it.
    """
    # for_each_shadow_entry_lockless: the walk stops by itself on a leaf or at level 1.
    for entry in for_each_shadow_entry(kvm, gfn, kvm.l1_table(gfn)):
        if not is_shadow_present_pte(entry[3]) or entry[0] < level:
            break
    _, sp, index, spte = entry
    handled, result = _fast_page_fault_decide(kvm, sp, index, spte, gfn, level)
    if kvm.tp.on:
        new = sp.spt[index]
        kvm.tp.emit(FastPageFault(vcpu.id, gfn, error_code, level, sp.level, spte, new, result))
    return handled, result


def _fast_page_fault_decide(
    kvm: Kvm, sp: KvmMmuPage, index: int, spte: int, gfn: int, level: int
) -> tuple[bool, FastPfResult]:
    policy = kvm.policy
    if not is_shadow_present_pte(spte):
        # The mapping changed under us. 3.x lets the vCPU fault again; 6.x takes the slow path at once.
        return (False, FastPfResult.NOT_PRESENT) if kvm.era6 else (True, FastPfResult.RETRY)
    # 3.14 asks about the requested level, which is 1 whenever the slot is logged, so a large spte
    # passes; 3.16 asks about the level of the sp the spte really lives in.
    check_level = level if policy.last_spte_check == "requested_level" else sp.level
    if not is_last_spte(spte, check_level):
        return False, FastPfResult.NOT_LAST_SPTE
    if is_writable_pte(spte):
        return True, FastPfResult.SPURIOUS
    if not spte_is_locklessly_modifiable(spte, kvm.masks):
        return False, FastPfResult.NOT_LOCKLESSLY_MODIFIABLE
    # The seed's guard: fast_pf_fix_direct_spte would log only the first 4K page of a large spte.
    guard = policy.fast_pf_level_guard
    if sp.level > PT_PAGE_TABLE_LEVEL and (
        guard == "any_large" or (guard == "large_if_dirty_logged" and _slot_logged(kvm, gfn))
    ):
        return False, FastPfResult.BAIL_LARGE
    fixed = fast_pf_fix_direct_spte(kvm, sp, index, spte, gfn)
    return True, FastPfResult.FIXED if fixed else FastPfResult.CAS_LOST


def _slot_logged(kvm: Kvm, gfn: int) -> bool:
    slot = kvm.gfn_to_memslot(gfn)
    return slot is not None and slot.dirty_bitmap is not None


@traced(FastPfFixDirectSpte)
def fast_pf_fix_direct_spte(kvm: Kvm, sp: KvmMmuPage, index: int, spte: int, fault_gfn: int) -> bool:
    """Set W with a compare-and-swap and mark a gfn dirty: in 3.x the one the spte's *position* maps,
    which for a large spte is the first gfn of its range whichever page the guest wrote; in 6.x
    (`fast_pf_dirty_gfn = fault_gfn`) the faulting gfn."""
    gfn = kvm_mmu_page_get_gfn(sp, index)
    if kvm.policy.fast_pf_dirty_gfn == "fault_gfn":
        gfn = fault_gfn
    if sp.spt[index] != spte:
        return False
    new = spte | PT_WRITABLE_MASK
    kvm.write_spte(sp, index, new)
    if kvm.tp.on:
        kvm.tp.emit(FastPfFixDirectSpte(sp.level, sp.gfn, index, gfn, spte, new))
    mark_page_dirty(kvm, gfn, "fast_pf_fix_direct_spte")
    return True
