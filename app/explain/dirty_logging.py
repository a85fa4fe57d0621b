"""The sentences of write protection and dirty logging (KVM_GET_DIRTY_LOG and the later modes: CLEAR,
the dirty ring, Intel PML), of huge pages split and recovered in later kernels and of the mmu notifier
and migration, one function per trace event, named after it."""

from __future__ import annotations

from typing import Any

from app.explain.context import Context, Event, _flags, _hex, _int, _size, _where
from engine.spte import (
    PT_PAGE_SIZE_MASK,
)

# --- write protection and dirty logging ------------------------------------------------------------------


def spte_write_protect(ev: Event, ctx: Context) -> str:
    action = ev.get("action")
    old = _int(ev.get("old"))
    where = f"{_where(ev)} (gfn {_hex(ev.get('gfn'))})"
    flush = " A TLB flush is needed." if ev.get("flush") else ""
    if action == "zap":
        return (
            f"Before the patch, write protection zaps the large spte {where}: the next touch of any page in"
            f" its {_size(ev.get('level'))} range faults, reads included.{flush}"
        )
    if action == "none":
        return f"{where} is already read-only: nothing to do."
    mmu_writable = ctx.masks.mmu_writable_mask
    if old & mmu_writable and not _int(ev.get("new")) & mmu_writable:
        # pt_protect: the gfn holds a guest table KVM now shadows.
        if old & PT_PAGE_SIZE_MASK:
            return (
                f"The large spte {where} loses W and MW: its range holds a guest table KVM now shadows, so"
                f" nothing may make it writable again; reads go on, a store faults.{flush}"
            )
        return (
            f"{where} loses W and MW: the page is a guest table KVM now shadows; a store to it faults, to be"
            f" emulated or to unsync the shadow.{flush}"
        )
    if old & PT_PAGE_SIZE_MASK:
        return (
            f"The large spte {where} loses W but stays: reads of the range go on without faults. HW and MW"
            f" stay set, so only the fast path's level guard keeps it read-only.{flush}"
        )
    return f"{where} loses W; HW and MW stay, so the next write can be fixed by the fast path.{flush}"


def rmap_write_protect(ev: Event, ctx: Context) -> str:
    count = ev.get("sptes")
    return (
        f"Walks the level-{ev.get('level')} rmap of gfn {_hex(ev.get('gfn'))} in slot {ev.get('slot')}:"
        f" {count} spte{'s' if count != 1 else ''}."
    )


def kvm_set_memory_region(ev: Event, ctx: Context) -> str:
    slot = ev.get("slot")
    if ev.get("change") == "none":
        return f"Slot {slot}'s flags do not change: nothing happens."
    if ev.get("log_dirty_pages"):
        return f"Userspace sets KVM_MEM_LOG_DIRTY_PAGES on slot {slot}: a zeroed dirty bitmap is allocated."
    return f"Userspace clears KVM_MEM_LOG_DIRTY_PAGES on slot {slot}: the bitmap is freed, the sptes stay."


def kvm_mmu_slot_remove_write_access(ev: Event, ctx: Context) -> str:
    return (
        f"Dirty logging is on: every writable spte of slot {ev.get('slot')}, at every level, is"
        f" write-protected ({ev.get('rmaps')} rmap heads walked; before the patch a writable large spte is"
        " zapped instead), then one TLB flush."
    )


def kvm_vm_ioctl_get_dirty_log(ev: Event, ctx: Context) -> str:
    gfns = list(ev.get("gfns") or [])
    shown = " ".join(_hex(g) for g in gfns[:16]) + (" …" if len(gfns) > 16 else "")
    if gfns and not ev.get("flush"):  # only manual protection reports pages without flushing
        return (
            f"KVM_GET_DIRTY_LOG on slot {ev.get('slot')} copies the bitmap ({len(gfns)} page"
            f"{'s' if len(gfns) != 1 else ''}: {shown}) without clearing it or protecting anything:"
            " with manual protection that is KVM_CLEAR_DIRTY_LOG's job."
        )
    if not gfns:
        return f"KVM_GET_DIRTY_LOG on slot {ev.get('slot')} returns nothing: no bit was set, so no flush."
    return (
        f"KVM_GET_DIRTY_LOG on slot {ev.get('slot')} returns {len(gfns)} page{'s' if len(gfns) != 1 else ''}"
        f" ({shown}) and clears their bits; some bit was set, so the TLBs are flushed."
    )


def kvm_mmu_write_protect_pt_masked(ev: Event, ctx: Context) -> str:
    return (
        f"Write-protects the 4K sptes of the pages just reported (bitmap word at page offset"
        f" {_hex(ev.get('gfn_offset'))}, mask {ev.get('mask')}); only level-1 rmaps are looked at."
    )


def kvm_flush_remote_tlbs(ev: Event, ctx: Context) -> str:
    where = "inside mmu_lock" if ev.get("under_mmu_lock") else "after mmu_lock is dropped"
    dropped = ev.get("entries_dropped")
    return (
        f"Every vCPU's TLB is flushed ({dropped} cached translation{'s' if dropped != 1 else ''} dropped),"
        f" called from {ev.get('caller')}, {where}."
    )


def kvm_mmu_zap_all(ev: Event, ctx: Context) -> str:
    return f"All {ev.get('pages')} shadow pages are zapped, as on a memslot change; every spte is gone."


def kvm_mmu_prepare_zap_page(ev: Event, ctx: Context) -> str:
    return (
        f"The level-{ev.get('level')} table of gfn {_hex(ev.get('gfn'))} is unlinked and its sptes dropped."
    )


def kvm_mmu_load(ev: Event, ctx: Context) -> str:
    return "A new, empty root table is allocated; the vCPUs load it before they next enter the guest."


# --- huge pages in later kernels ------------------------------------------------------------------------


def tdp_mmu_split_huge_page(ev: Event, ctx: Context) -> str:
    level = _int(ev.get("level"))
    child = _int(ev.get("child_level"))
    how = (
        "when logging starts (eager page splitting)"
        if ev.get("caller") == "tdp_mmu_split_huge_pages_root"
        else "on the way down to the faulting page, instead of dropping it"
    )
    what = f"The {_size(level)} spte {_where(ev)} ({_flags(ev.get('old'), ctx)}, gfn {_hex(ev.get('gfn'))})"
    return (
        f"{what} is split in place {how}: a new table of 512 {_size(child)} sptes with the same permissions"
        " replaces it, so every page stays mapped; no TLB flush, since every translation is unchanged."
    )


def kvm_mmu_slot_try_split_huge_pages(ev: Event, ctx: Context) -> str:
    split = _int(ev.get("split"))
    what = f"{split} huge spte{'s' if split != 1 else ''} of slot {ev.get('slot')}"
    return (
        f"Eager page splitting: {what} split to 4K before write protection, so the first write to any page"
        " is a fast-path fault on a 4K spte."
    )


def make_spte(ev: Event, ctx: Context) -> str:
    spte = f"{_where(ev)} = {ev.get('new')} ({_flags(ev.get('new'), ctx)})"
    return (
        f"{spte}: a read of gfn {_hex(ev.get('gfn'))} in dirty-logged slot {ev.get('slot')} is mapped"
        " read-only and not marked dirty (the what-if read_fault_marks_dirty=false; every TDP kernel maps"
        " it writable and marks it). HW and MW stay, so the first write is fixed by the fast path and"
        " logged then."
    )


def zap_collapsible_spte_range(ev: Event, ctx: Context) -> str:
    size = _size(_int(ev.get("level")))
    return (
        f"Logging is off, so a {size} page could map gfn {_hex(ev.get('gfn'))} onwards again: the table"
        f" pointer {_where(ev)} is zapped with everything under it, and the TLBs flushed. The next fault"
        f" there builds a {size} spte."
    )


def kvm_mmu_zap_collapsible_sptes(ev: Event, ctx: Context) -> str:
    zapped = _int(ev.get("zapped"))
    if not zapped:
        return f"Huge page recovery for slot {ev.get('slot')}: no table could be replaced by a huge page."
    return (
        f"Huge page recovery for slot {ev.get('slot')}, as 4.1 to 6.12 do it: {zapped} table"
        f" pointer{'s' if zapped != 1 else ''} zapped, so huge pages come back at the next faults (3.x leaves"
        " the 4K tables in place; 6.13 replaces them by huge leaves at once)."
    )


def tdp_mmu_make_huge_spte(ev: Event, ctx: Context) -> str:
    size = _size(_int(ev.get("level")))
    return (
        f"Logging is off, so a {size} page can map gfn {_hex(ev.get('gfn'))} onwards again: the first"
        f" present leaf under the table ({_flags(ev.get('child'), ctx)}) becomes a {size} leaf"
        f" {ev.get('new')} ({_flags(ev.get('new'), ctx)}), stored over the pointer {_where(ev)} in one write;"
        " the table and every spte under it are freed. No flush yet: one for the whole slot at the end."
    )


def kvm_mmu_recover_huge_pages(ev: Event, ctx: Context) -> str:
    recovered = _int(ev.get("recovered"))
    if not recovered:
        return f"Huge page recovery for slot {ev.get('slot')}: no table could be replaced by a huge page."
    return (
        f"Huge page recovery for slot {ev.get('slot')} (6.13 and later): {recovered} table"
        f"{'s' if recovered != 1 else ''} replaced in place by huge leaves, then one TLB flush for the"
        " memslot. The huge pages are back at once, with the bits of the leaf they were built from: after"
        " a GET_DIRTY_LOG read-only but MMU-writable, so the next write is a fast fault."
    )


def kvm_mmu_notifier_invalidate_range_start(ev: Event, ctx: Context) -> str:
    start, end = _int(ev.get("gfn_start")), _int(ev.get("gfn_end"))
    dropped = _int(ev.get("dropped"))
    what = (
        f"{dropped} spte{'s' if dropped != 1 else ''} mapping it dropped, and the TLBs flushed"
        if dropped
        else "nothing mapped it, so nothing is dropped and nothing flushed"
    )
    return (
        f"The host copied the shared page behind gfns {_hex(start)}–{_hex(end - 1)} and told KVM first"
        f" (mmu notifier): {what}. The invalidation sequence moves on."
    )


def mmu_notifier_retry(ev: Event, ctx: Context) -> str:
    return (
        f"The fault on gfn {_hex(ev.get('gfn'))} saw an invalidation run while it looked the host page up:"
        " it maps nothing, and the guest faults again (the retried fault finds the new, writable page)."
    )


def kvm_mmu_invalidate_zap_all_pages(ev: Event, ctx: Context) -> str:
    return (
        f"A memslot change: the valid generation becomes {ev.get('mmu_valid_gen')}, every vCPU must reload"
        f" its root, and the {ev.get('pages')} shadow pages of the old generation are zapped, oldest first,"
        " then committed with one flush. A root still loaded is only marked invalid."
    )


def mmu_free_roots(ev: Event, ctx: Context) -> str:
    if ev.get("freed"):
        return (
            f"vCPU {ev.get('vcpu')} drops the old root before its next entry; it was the last user, so the"
            " invalid root is zapped once more and freed, with another flush."
        )
    return f"vCPU {ev.get('vcpu')} drops the old root before its next entry ({ev.get('root_count')} left)."


def migrate_copy(ev: Event, ctx: Context) -> str:
    phase = ev.get("phase")
    pages = ev.get("pages")
    if phase == "begin":
        return f"Migration: every page ({pages}) is copied to the destination once."
    if phase == "end":
        return f"Stop-and-copy: the vCPUs are stopped and the last {pages} reported pages are copied."
    return f"Pre-copy round: the {pages} pages the dirty log reported are copied again."


def migrate_verdict(ev: Event, ctx: Context) -> str:
    lost = list(ev.get("lost") or [])
    if not lost:
        return "Verdict: the destination matches the source; no page is lost."
    shown = " ".join(_hex(g) for g in lost[:16]) + (" …" if len(lost) > 16 else "")
    return (
        f"Verdict: {len(lost)} page{'s' if len(lost) != 1 else ''} LOST ({shown}): the destination holds"
        " stale data there, because no dirty log ever reported the last write."
    )


# --- the later dirty-log modes (KVM_CLEAR_DIRTY_LOG, INITIALLY_SET, the dirty ring) ---------------------


def _gfns_text(gfns: list[Any], limit: int = 16) -> str:
    return " ".join(_hex(g) for g in gfns[:limit]) + (" …" if len(gfns) > limit else "")


def kvm_vm_ioctl(ev: Event, ctx: Context) -> str:
    return (
        f"{ev.get('ioctl')} fails with -{ev.get('errno')}: {ev.get('reason')}. Userspace gets an error and"
        " nothing changes."
    )


def kvm_vm_ioctl_clear_dirty_log(ev: Event, ctx: Context) -> str:
    first = _int(ev.get("first"))
    num = _int(ev.get("num"))
    return (
        f"Userspace calls KVM_CLEAR_DIRTY_LOG on slot {ev.get('slot')} for pages {_hex(first)} to"
        f" {_hex(first + num - 1)} of the slot ({num} pages), every bit of its mask set."
    )


def kvm_clear_dirty_log_protect(ev: Event, ctx: Context) -> str:
    gfns = list(ev.get("gfns") or [])
    if not gfns:
        return (
            f"No bit of the range was set in slot {ev.get('slot')}'s bitmap: nothing is re-protected and"
            " there is no flush."
        )
    return (
        f"Clears the {len(gfns)} bit{'s' if len(gfns) != 1 else ''} of the range that were set"
        f" ({_gfns_text(gfns)}), re-protecting only those pages, then flushes the TLBs once."
    )


def kvm_arch_mmu_enable_log_dirty_pt_masked(ev: Event, ctx: Context) -> str:
    where = f"bitmap word at page offset {_hex(ev.get('gfn_offset'))}, mask {ev.get('mask')}"
    if ev.get("huge_first"):
        return (
            f"Re-arms logging for the pages of the mask ({where}). Logging started all-set, so huge pages"
            " may still map them writable: the huge pages holding the first and last page are split (with"
            " eager splitting) and write-protected first, then the 4K sptes."
        )
    return (
        f"Re-arms logging for the pages of the mask ({where}): their 4K sptes lose W (with PML, D instead)."
    )


def kvm_dirty_ring_push(ev: Event, ctx: Context) -> str:
    return (
        f"gfn {_hex(ev.get('gfn'))} (slot {ev.get('slot')}, offset {_hex(ev.get('offset'))}) goes onto"
        f" vCPU {ev.get('vcpu')}'s dirty ring, entry {ev.get('used')}; entries are never merged, so a page"
        " can appear again."
    )


def kvm_dirty_ring_check_request(ev: Event, ctx: Context) -> str:
    skipped = _int(ev.get("skipped"))
    return (
        f"vCPU {ev.get('vcpu')}'s dirty ring is soft full ({ev.get('used')} entries): it exits with"
        f" KVM_EXIT_DIRTY_RING_FULL instead of entering the guest, so the access to gfn {_hex(ev.get('gfn'))}"
        f" and the rest of the step ({skipped} access{'es' if skipped != 1 else ''} in all) do not happen"
        " until the rings are reset."
    )


def dirty_ring_harvest(ev: Event, ctx: Context) -> str:
    gfns = list(ev.get("gfns") or [])
    if not gfns:
        return f"Userspace reads vCPU {ev.get('vcpu')}'s dirty ring: nothing was published."
    return (
        f"Userspace reads vCPU {ev.get('vcpu')}'s dirty ring in order: {_gfns_text(gfns)}, and flags the"
        f" {len(gfns)} entr{'ies' if len(gfns) != 1 else 'y'} collected."
    )


def kvm_dirty_ring_reset(ev: Event, ctx: Context) -> str:
    return (
        f"KVM walks vCPU {ev.get('vcpu')}'s {ev.get('entries')} collected entries, re-protects their pages"
        " (neighbouring pages of a slot in one 64-bit mask) and recycles the entries."
    )


def kvm_vm_ioctl_reset_dirty_pages(ev: Event, ctx: Context) -> str:
    if not ev.get("flush"):
        return "KVM_RESET_DIRTY_RINGS finds no collected entry: nothing to re-protect, no flush."
    return f"KVM_RESET_DIRTY_RINGS reset {ev.get('cleared')} entries in all, then flushes the TLBs once."


# --- Intel PML ----------------------------------------------------------------------------------------------


def pml_log(ev: Event, ctx: Context) -> str:
    return (
        f"vCPU {ev.get('vcpu')}'s store to gfn {_hex(ev.get('gfn'))} sets D, so the CPU logs the page in its"
        f" PML buffer (entry {ev.get('index')}; 511 is written first): no exit, and the dirty log does not"
        " show the page until the buffer is flushed."
    )


def vmx_flush_pml_buffer(ev: Event, ctx: Context) -> str:
    gfns = list(ev.get("gfns") or [])
    why = {
        "exit": "Any VM exit flushes the vCPU's PML buffer first",
        "pml_full": "The buffer was full, so the store made a PML-full exit instead of logging; the exit"
        " flushes the buffer and the store is retried",
        "kick": "The vCPU is kicked out of the guest (the dirty log is about to be read or re-armed, or"
        " logging changed), and its exit flushes its PML buffer",
    }.get(str(ev.get("reason")), "The PML buffer is flushed")
    return (
        f"{why}: {len(gfns)} page{'s' if len(gfns) != 1 else ''} of vCPU {ev.get('vcpu')}"
        f" ({_gfns_text(gfns)}) go to mark_page_dirty, oldest first."
    )


def vmx_update_cpu_dirty_logging(ev: Event, ctx: Context) -> str:
    if ev.get("inert"):
        return (
            "pml is set, but EPT A/D bits are off (vm.ept_ad false): the kernel then runs without PML, so"
            " dirty logging write-protects sptes as it does without PML."
        )
    state = "on" if ev.get("pml") else "off"
    return (
        f"Logging {'starts' if ev.get('enable') else 'stops'} on slot {ev.get('slot')};"
        f" {ev.get('logged_slots')} slot(s) logged, so every vCPU runs with PML {state}. D bits are left as"
        " they are."
    )


def kvm_mmu_slot_leaf_clear_dirty(ev: Event, ctx: Context) -> str:
    return (
        f"With PML, the 4K sptes of slot {ev.get('slot')} lose D instead of W ({ev.get('cleared')} had it):"
        " the next store to each sets D and is logged by the CPU without a fault. Only the huge sptes are"
        " write-protected next, so that a write splits them."
    )


def kvm_mmu_clear_dirty_pt_masked(ev: Event, ctx: Context) -> str:
    return (
        f"With PML, the reported pages (page offset {_hex(ev.get('gfn_offset'))}, mask {ev.get('mask')}) are"
        f" re-armed by clearing D on their 4K sptes ({ev.get('cleared')} had it); W stays set."
    )
