"""Plain-language lines for the trace panel: one function per trace event, named after the event.

Each function takes the event as `engine.trace.event_json` writes it and the `Context` of the step so
far (what the current fault is), and returns one sentence. `KERNEL_SOURCES` names where the function
lives in the kernel, so the panel can say which code acted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.spte import (
    EPT_SPTE_HOST_WRITABLE,
    EPT_SPTE_MMU_WRITABLE,
    ERA_3X,
    ERA_6X,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    SPTE_HOST_WRITEABLE,
    SPTE_MMU_PRESENT_MASK,
    SPTE_MMU_WRITEABLE,
    SPTE_TDP_AD_DISABLED,
    VMX_EPT_ACCESS_BIT,
    VMX_EPT_DIRTY_BIT,
    VMX_EPT_EXECUTABLE_MASK,
    VMX_EPT_IPAT_BIT,
    VMX_EPT_SUPPRESS_VE_BIT,
    SpteMasks,
    level_name,
    pages_per_hpage,
    spte_flags,
)

Event = Mapping[str, Any]

# Which tree each preset's code comes from (engine/policy.py PRESET_DESCRIPTIONS): 3.14; caf6900f, on an
# early-2013 tree of the 3.9 cycle, reverted before v3.9; 3.16; upstream 6.13 and later.
KERNEL_VERSIONS = {"zap": "3.14", "lazy-buggy": "caf6900f, 3.9-era", "lazy": "3.16", "modern": "6.13+"}
# A run whose switches match no preset is named by its generation (policy.era).
ERA_VERSIONS = {ERA_3X: "3.14–3.16", ERA_6X: KERNEL_VERSIONS["modern"]}

_MMU = "arch/x86/kvm/mmu.c"
_KVM_MAIN = "virt/kvm/kvm_main.c"
_CPU = "the CPU (Intel SDM, EPT)"
KERNEL_SOURCES: dict[str, str] = {
    "guest_access": _CPU,
    "ept_ad_update": _CPU,
    "handle_ept_violation": "arch/x86/kvm/vmx.c",
    "tdp_page_fault": _MMU,
    "mapping_level": _MMU,
    "fast_page_fault": _MMU,
    "fast_pf_fix_direct_spte": _MMU,
    "gfn_to_pfn": f"{_KVM_MAIN} (hva_to_pfn)",
    "__direct_map": _MMU,
    "kvm_mmu_get_page": _MMU,
    "link_shadow_page": _MMU,
    "drop_large_spte": _MMU,
    "drop_parent_pte": _MMU,
    "mmu_set_spte": _MMU,
    "direct_pte_prefetch": _MMU,
    "mark_page_dirty": _KVM_MAIN,
    "drop_spte": _MMU,
    "spte_write_protect": _MMU,
    "__rmap_write_protect": _MMU,
    "__kvm_set_memory_region": _KVM_MAIN,
    "kvm_mmu_slot_remove_write_access": _MMU,
    "kvm_vm_ioctl_get_dirty_log": "arch/x86/kvm/x86.c",
    "kvm_mmu_write_protect_pt_masked": _MMU,
    "kvm_flush_remote_tlbs": _KVM_MAIN,
    "kvm_mmu_zap_all": _MMU,
    "kvm_mmu_prepare_zap_page": _MMU,
    "kvm_mmu_load": _MMU,
    "tdp_mmu_split_huge_page": "arch/x86/kvm/mmu/tdp_mmu.c",
    "kvm_mmu_slot_try_split_huge_pages": "arch/x86/kvm/mmu/mmu.c",
    "make_spte": "arch/x86/kvm/mmu/spte.c",
    "zap_collapsible_spte_range": "arch/x86/kvm/mmu/tdp_mmu.c",
    "kvm_mmu_zap_collapsible_sptes": "arch/x86/kvm/mmu/mmu.c",
    "tdp_mmu_make_huge_spte": "arch/x86/kvm/mmu/tdp_mmu.c",
    "kvm_mmu_recover_huge_pages": "arch/x86/kvm/mmu/mmu.c",
    "kvm_mmu_notifier_invalidate_range_start": f"{_KVM_MAIN} and {_MMU} (kvm_unmap_hva_range)",
    "mmu_notifier_retry": f"{_MMU} (tdp_page_fault)",
    "kvm_mmu_invalidate_zap_all_pages": _MMU,
    "mmu_free_roots": _MMU,
    "migrate_copy": "QEMU (userspace migration loop)",
    "migrate_verdict": "QEMU (userspace migration loop)",
    "kvm_vm_ioctl": _KVM_MAIN,
    "kvm_vm_ioctl_clear_dirty_log": _KVM_MAIN,
    "kvm_clear_dirty_log_protect": _KVM_MAIN,
    "kvm_arch_mmu_enable_log_dirty_pt_masked": "arch/x86/kvm/mmu/mmu.c",
    "kvm_dirty_ring_push": "virt/kvm/dirty_ring.c",
    "kvm_dirty_ring_check_request": "virt/kvm/dirty_ring.c",
    "dirty_ring_harvest": "QEMU (userspace, kvm_dirty_ring_reap)",
    "kvm_dirty_ring_reset": "virt/kvm/dirty_ring.c",
    "kvm_vm_ioctl_reset_dirty_pages": _KVM_MAIN,
    "pml_log": "the CPU (Intel SDM, page-modification logging)",
    "vmx_flush_pml_buffer": "arch/x86/kvm/vmx/vmx.c",
    "vmx_update_cpu_dirty_logging": "arch/x86/kvm/vmx/vmx.c",
    "kvm_mmu_slot_leaf_clear_dirty": "arch/x86/kvm/mmu/mmu.c",
    "kvm_mmu_clear_dirty_pt_masked": "arch/x86/kvm/mmu/mmu.c",
}

# The dirty-log modes after 3.16 (policy.dirty_log_mode): their functions are quoted from later trees.
LATER_DIRTY_LOG_EVENTS = frozenset(
    {
        "kvm_vm_ioctl",
        "kvm_vm_ioctl_clear_dirty_log",
        "kvm_clear_dirty_log_protect",
        "kvm_dirty_ring_push",
        "kvm_dirty_ring_check_request",
        "kvm_dirty_ring_reset",
        "kvm_vm_ioctl_reset_dirty_pages",
        "vmx_flush_pml_buffer",
        "vmx_update_cpu_dirty_logging",
    }
)
# Later functions that 6.13 no longer has: 6.12's zap-and-refault recovery (huge_page_recovery=
# zap_collapsible), replaced by kvm_mmu_recover_huge_pages in 6.13 (spec §5.7).
UNTIL_6_12 = frozenset({"zap_collapsible_spte_range", "kvm_mmu_zap_collapsible_sptes"})
# Where a 3.x source moved by 6.13: mmu.c and vmx.c into their directories, and what the file names.
_MOVED_IN_6X = (
    ("arch/x86/kvm/mmu.c", "arch/x86/kvm/mmu/mmu.c"),
    ("arch/x86/kvm/vmx.c", "arch/x86/kvm/vmx/vmx.c"),
)
SOURCES_6X: dict[str, str] = {
    "kvm_mmu_notifier_invalidate_range_start": (
        f"{_KVM_MAIN} and arch/x86/kvm/mmu/mmu.c (kvm_unmap_gfn_range)"
    ),
    "mmu_notifier_retry": "arch/x86/kvm/mmu/mmu.c (is_page_fault_stale)",
    "kvm_vm_ioctl_get_dirty_log": _KVM_MAIN,
}


def kernel_source(name: str, variant: str | None, era: str | None = None) -> str:
    """`arch/x86/kvm/mmu.c (3.16)`: the file, with the tree it is quoted from when it is kernel code.

    `variant` is the run's preset; a run whose switches match none (a what-if) is named by its generation,
    `era`. Under 6.13+ the file is where 6.13 has it. A function only later kernels have is quoted from
    6.13+ whatever the preset, except 6.12's recovery, which 6.13 replaced."""
    later = KERNEL_VERSIONS["modern"]
    version = KERNEL_VERSIONS.get(variant or "") or ERA_VERSIONS.get(era or "", ERA_VERSIONS[ERA_3X])
    where = KERNEL_SOURCES.get(name, "")
    if version == later:
        where = SOURCES_6X.get(name, where)
        for old, new in _MOVED_IN_6X:
            where = where.replace(old, new)
    if not where or not (where.startswith("arch/") or where.startswith("virt/")):
        return where
    if name in UNTIL_6_12:
        return f"{where} (up to 6.12)"
    if where.startswith("arch/x86/kvm/mmu/") or name in LATER_DIRTY_LOG_EVENTS:
        # the mmu/ directory, KVM_CLEAR_DIRTY_LOG and the dirty ring exist only in later kernels
        return f"{where} ({later})"
    return f"{where} ({version})"


@dataclass(slots=True)
class Context:
    """What the step has done so far, for the events whose meaning depends on it, and the spte layout
    of the run's kernel generation, to read the values the events carry."""

    masks: SpteMasks
    fault_gfn: int | None = None
    fault_write: bool | None = None
    # What the fast path of the fault in hand marked, and whether the slot was logged (mark_page_dirty
    # runs before the fast_page_fault tracepoint that sums the fault up).
    fast_marked: int | None = None
    fast_logged: bool | None = None


def _hex(value: object) -> str:
    return f"{value:#x}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value, 16) if value.startswith("0x") else int(value)
    return 0


def _where(ev: Event) -> str:
    return f"L{ev.get('level')}[{_hex(ev.get('index'))}]"


def _flags(value: object, ctx: Context) -> str:
    return " ".join(spte_flags(_int(value), ctx.masks)) or "not present"


def _size(level: object) -> str:
    return level_name(level) if isinstance(level, int) and 1 <= level <= 4 else f"level {level}"


def _access(write: object) -> str:
    return "store" if write else "load"


# --- the guest and the CPU -----------------------------------------------------------------------------


def guest_access(ev: Event, ctx: Context) -> str:
    who = f"vCPU {ev.get('vcpu')}'s {_access(ev.get('write'))} of gfn {_hex(ev.get('gfn'))}"
    via = ev.get("via")
    if via == "tlb":
        return f"{who} is translated by the TLB: no exit, the sptes are not even looked at."
    if via == "walk":
        return f"{who} is translated by an EPT walk: no exit."
    if via == "livelock":
        return f"{who} still faults after {ev.get('faults')} faults: no progress, the guest would hang."
    faults = ev.get("faults")
    return f"{who} completes after {faults} fault{'s' if faults != 1 else ''}."


def ept_ad_update(ev: Event, ctx: Context) -> str:
    old, new = _int(ev.get("old")), _int(ev.get("new"))
    added = [flag for flag in spte_flags(new, ctx.masks) if flag not in spte_flags(old, ctx.masks)]
    what = " and ".join({"A": "accessed (A)", "D": "dirty (D)"}.get(flag, flag) for flag in added) or "A/D"
    return f"The CPU sets the {what} flag of {_where(ev)} as it walks: hardware writes the spte, no exit."


def handle_ept_violation(ev: Event, ctx: Context) -> str:
    ctx.fault_gfn = _int(ev.get("gfn"))
    ctx.fault_write = bool(ev.get("write"))
    why = "the translation is present but read-only" if ev.get("present") else "no spte maps it"
    stale = " (the TLB held a read-only entry, so no walk was needed)" if ev.get("stale_tlb") else ""
    code = (
        "PRESENT|WRITE"
        if ev.get("present") and ev.get("write")
        else "WRITE"
        if ev.get("write")
        else ("PRESENT" if ev.get("present") else "0")
    )
    return (
        f"EPT violation: a {_access(ev.get('write'))} of gfn {_hex(ev.get('gfn'))} exits because"
        f" {why}{stale}; error code {code}."
    )


# --- the fault path ------------------------------------------------------------------------------------


def tdp_page_fault(ev: Event, ctx: Context) -> str:
    ctx.fault_gfn = _int(ev.get("gfn"))
    ctx.fault_write = bool(_int(ev.get("error_code")) & 2)
    ctx.fast_marked = ctx.fast_logged = None
    parts = [f"Page fault on gfn {_hex(ev.get('gfn'))}"]
    if ev.get("force_pt_level"):
        parts.append("the slot is dirty-logged, so only a 4K mapping may be built (force_pt_level)")
    else:
        parts.append(f"it may be mapped {_size(ev.get('level'))}")
    if ev.get("can_be_fast"):
        parts.append("a write to a present spte, so the lockless fast path is tried first")
    else:
        parts.append("not a write to a present spte, so straight to the slow path")
    return "; ".join(parts) + "."


def mapping_level(ev: Event, ctx: Context) -> str:
    host = _size(ev.get("host_level"))
    level = _size(ev.get("level"))
    if ev.get("level") == ev.get("max_level"):
        return f"The host page is {host}; the largest mapping allowed here is {level}."
    return f"The host page is {host}, but lpage_info forbids larger mappings here: {level}."


_FAST_RESULTS: dict[str, str] = {
    "retry": "the spte is no longer present (it changed under the lockless walk): the vCPU just faults again",
    "not_last_spte": "the walk stopped on an entry that is not a leaf at the level it asks about: the fast"
    " path gives up and the slow path maps the page",
    "spurious": "the spte is already writable (only a stale TLB entry faulted): nothing to fix",
    "not_locklessly_modifiable": "the spte lacks HW or MW (the host page is copy-on-write): only the slow"
    " path may make it writable",
    "bail_large": "the fast path refuses: the spte is large and this patch forbids fixing it locklessly (it"
    " would log only the first 4K page)",
    "cas_lost": "the compare-and-swap lost a race: the vCPU retries",
}


def fast_page_fault(ev: Event, ctx: Context) -> str:
    result = str(ev.get("result"))
    sp_level = _int(ev.get("sp_level"))
    gfn = _int(ev.get("gfn"))
    seen = f"The lockless walk ends on a {_size(sp_level)} spte ({_flags(ev.get('old'), ctx)})"
    if result != "fixed":
        return f"{seen}: {_FAST_RESULTS.get(result, result)}."
    # What fast_pf_fix_direct_spte marked, read off the step's own events; without them, the 3.x rule.
    marked = ctx.fast_marked if ctx.fast_marked is not None else gfn & ~(pages_per_hpage(sp_level) - 1)
    if ctx.fast_logged is False:
        whole = f" on the whole {_size(sp_level)} spte" if sp_level > 1 else ""
        return (
            f"{seen}: fixed locklessly, W set by compare-and-swap{whole}. The slot is not dirty-logged, so"
            " nothing is marked and nothing can be missed."
        )
    if sp_level == 1:
        return f"{seen}: fixed locklessly: W set by compare-and-swap and gfn {marked:#x} marked dirty."
    which = (
        f"gfn {marked:#x} marked dirty, the page written"
        if marked == gfn
        else f"gfn {marked:#x} marked dirty, not gfn {gfn:#x}"
    )
    return (
        f"{seen}: fixed locklessly, W set by compare-and-swap on the whole {_size(sp_level)} spte and"
        f" {which}: every other page of the range is now written without a fault and without a dirty bit."
    )


def fast_pf_fix_direct_spte(ev: Event, ctx: Context) -> str:
    level = _int(ev.get("level"))
    gfn = _int(ev.get("gfn"))
    ctx.fast_marked = gfn
    text = f"Compare-and-swap sets W on {_where(ev)}: {ev.get('old')} → {ev.get('new')}; it marks gfn"
    text += f" {gfn:#x}"
    if ctx.fault_gfn is not None and gfn == ctx.fault_gfn:
        if level > 1:
            return text + ", the faulting gfn (6.x), not the first page of the range (3.x)."
        return text + ", the page written."
    if level > 1:
        return text + f", the first page of the {_size(level)} range (3.x), whichever page the guest wrote."
    return text + "."


def gfn_to_pfn(ev: Event, ctx: Context) -> str:
    text = f"gfn {_hex(ev.get('gfn'))} is backed by host pfn {_hex(ev.get('pfn'))}"
    if ev.get("cow_broken") and ev.get("copied"):
        return (
            text + ": the write breaks the copy-on-write sharing: the host copies the page, and its"
            " page-table change fires the mmu notifier before this fault goes on."
        )
    if ev.get("cow_broken"):
        return (
            text + ": the host page was read-only but the process owns it alone, so the host makes it"
            " writable in place: no copy, no notifier."
        )
    if ev.get("map_writable"):
        return text + ", writable on the host."
    return text + ", read-only on the host (copy-on-write): the spte gets no HW bit and no W."


def direct_map(ev: Event, ctx: Context) -> str:
    size = _size(ev.get("level"))
    if not ev.get("mapped"):
        return (
            f"__direct_map stops at a large leaf above the {size} level without mapping anything: the guest"
            " will fault again."
        )
    return (
        f"__direct_map walks down from the root and installs a {size} leaf: gfn {_hex(ev.get('gfn'))} →"
        f" pfn {_hex(ev.get('pfn'))}."
    )


def kvm_mmu_get_page(ev: Event, ctx: Context) -> str:
    level, gfn = _int(ev.get("level")), _int(ev.get("gfn"))
    span = pages_per_hpage(level + 1)
    what = f"level-{level} table for gfns {gfn:#x}–{gfn + span - 1:#x}"
    if ev.get("created"):
        return f"A new, empty {what} is allocated."
    return f"The existing {what} is reused (it was still in the hash, possibly orphaned)."


def link_shadow_page(ev: Event, ctx: Context) -> str:
    return (
        f"{_where(ev)} is set to point at the level-{ev.get('child_level')} table of gfn"
        f" {_hex(ev.get('child_gfn'))}."
    )


def drop_large_spte(ev: Event, ctx: Context) -> str:
    return (
        f"The large spte {_where(ev)} ({ev.get('old')}, gfn {_hex(ev.get('gfn'))}) is dropped so a table can"
        " be linked in its place: cleared, removed from its rmap, lpages goes down, and the TLBs are flushed."
    )


def drop_parent_pte(ev: Event, ctx: Context) -> str:
    return (
        f"{_where(ev)} is cleared: it pointed at the table of gfn {_hex(ev.get('child_gfn'))}, which is now"
        " unlinked."
    )


def mmu_set_spte(ev: Event, ctx: Context) -> str:
    new = _int(ev.get("new"))
    result = ev.get("result")
    size = "large " + _size(ev.get("level")) if new & PT_PAGE_SIZE_MASK else "4K"
    head = (
        f"{_where(ev)} = {ev.get('new')} ({_flags(new, ctx)}): a {size} leaf for gfn {_hex(ev.get('gfn'))} →"
        f" pfn {_hex(ev.get('pfn'))}"
    )
    if ev.get("speculative"):
        return head + ", prefetched (no A bit) next to the faulting page."
    notes = []
    if result == "replaced_table":
        notes.append("it replaces a table, which is unlinked but not freed (orphaned)")
    elif result == "wrprotected_page":
        notes.append("write access was refused: the range became ineligible for a writable large page")
    if new & PT_WRITABLE_MASK and not ev.get("write_fault"):
        notes.append(
            "writable although this was a read: under TDP a writable host page is always mapped writable"
        )
    return head + ("; " + "; ".join(notes) if notes else "") + "."


def direct_pte_prefetch(ev: Event, ctx: Context) -> str:
    gfns = ev.get("gfns") or []
    if gfns:
        shown = " ".join(_hex(g) for g in gfns)
        return f"Prefetch maps the empty neighbours {shown} as well (read-only use counted, no A bit)."
    skipped = ev.get("skipped")
    if skipped:
        return f"No prefetch: {skipped}."
    return "No prefetch: no run of empty neighbours ends at a present entry or at the fault."


def mark_page_dirty(ev: Event, ctx: Context) -> str:
    gfn = _int(ev.get("gfn"))
    if ev.get("caller") == "fast_pf_fix_direct_spte":
        ctx.fast_logged = bool(ev.get("logged"))
    if not ev.get("logged"):
        return f"mark_page_dirty({gfn:#x}) is a no-op: the slot is not dirty-logged."
    slot = ev.get("slot")
    caller = ev.get("caller")
    if caller == "fast_pf_fix_direct_spte":
        if ctx.fault_gfn is not None and ctx.fault_gfn != gfn:
            return (
                f"gfn {gfn:#x} is marked dirty in slot {slot}'s bitmap: the first page of the large spte,"
                f" not gfn {ctx.fault_gfn:#x}, which the guest wrote."
            )
        return f"gfn {gfn:#x} is marked dirty in slot {slot}'s bitmap: the write will be logged."
    if caller == "vmx_flush_pml_buffer":
        return f"gfn {gfn:#x}, logged by the CPU in a PML buffer, is marked dirty in slot {slot}'s log."
    if caller == "set_spte" and ctx.fault_write is False:
        return (
            f"A read fault maps the page writable and marks it dirty, as every TDP kernel does when the host"
            f" page is writable (3.x set_spte, 6.x make_spte): gfn {gfn:#x} is in the dirty log although the"
            " guest only read it."
        )
    return f"gfn {gfn:#x} was mapped writable, so it is marked dirty in slot {slot}'s bitmap."


def drop_spte(ev: Event, ctx: Context) -> str:
    tail = " The host page is marked dirty (D was set)." if ev.get("pfn_dirty") else ""
    gfn = _hex(ev.get("gfn"))
    return f"{_where(ev)} ({ev.get('old')}) is cleared and removed from the rmap of gfn {gfn}.{tail}"


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


EXPLAINERS: dict[str, Callable[[Event, Context], str]] = {
    "tdp_mmu_make_huge_spte": tdp_mmu_make_huge_spte,
    "kvm_mmu_recover_huge_pages": kvm_mmu_recover_huge_pages,
    "kvm_mmu_notifier_invalidate_range_start": kvm_mmu_notifier_invalidate_range_start,
    "mmu_notifier_retry": mmu_notifier_retry,
    "kvm_mmu_invalidate_zap_all_pages": kvm_mmu_invalidate_zap_all_pages,
    "mmu_free_roots": mmu_free_roots,
    "guest_access": guest_access,
    "ept_ad_update": ept_ad_update,
    "handle_ept_violation": handle_ept_violation,
    "tdp_page_fault": tdp_page_fault,
    "mapping_level": mapping_level,
    "fast_page_fault": fast_page_fault,
    "fast_pf_fix_direct_spte": fast_pf_fix_direct_spte,
    "gfn_to_pfn": gfn_to_pfn,
    "__direct_map": direct_map,
    "kvm_mmu_get_page": kvm_mmu_get_page,
    "link_shadow_page": link_shadow_page,
    "drop_large_spte": drop_large_spte,
    "drop_parent_pte": drop_parent_pte,
    "mmu_set_spte": mmu_set_spte,
    "direct_pte_prefetch": direct_pte_prefetch,
    "mark_page_dirty": mark_page_dirty,
    "drop_spte": drop_spte,
    "spte_write_protect": spte_write_protect,
    "__rmap_write_protect": rmap_write_protect,
    "__kvm_set_memory_region": kvm_set_memory_region,
    "kvm_mmu_slot_remove_write_access": kvm_mmu_slot_remove_write_access,
    "kvm_vm_ioctl_get_dirty_log": kvm_vm_ioctl_get_dirty_log,
    "kvm_mmu_write_protect_pt_masked": kvm_mmu_write_protect_pt_masked,
    "kvm_flush_remote_tlbs": kvm_flush_remote_tlbs,
    "kvm_mmu_zap_all": kvm_mmu_zap_all,
    "kvm_mmu_prepare_zap_page": kvm_mmu_prepare_zap_page,
    "kvm_mmu_load": kvm_mmu_load,
    "tdp_mmu_split_huge_page": tdp_mmu_split_huge_page,
    "kvm_mmu_slot_try_split_huge_pages": kvm_mmu_slot_try_split_huge_pages,
    "make_spte": make_spte,
    "zap_collapsible_spte_range": zap_collapsible_spte_range,
    "kvm_mmu_zap_collapsible_sptes": kvm_mmu_zap_collapsible_sptes,
    "migrate_copy": migrate_copy,
    "migrate_verdict": migrate_verdict,
    "kvm_vm_ioctl": kvm_vm_ioctl,
    "kvm_vm_ioctl_clear_dirty_log": kvm_vm_ioctl_clear_dirty_log,
    "kvm_clear_dirty_log_protect": kvm_clear_dirty_log_protect,
    "kvm_arch_mmu_enable_log_dirty_pt_masked": kvm_arch_mmu_enable_log_dirty_pt_masked,
    "kvm_dirty_ring_push": kvm_dirty_ring_push,
    "kvm_dirty_ring_check_request": kvm_dirty_ring_check_request,
    "dirty_ring_harvest": dirty_ring_harvest,
    "kvm_dirty_ring_reset": kvm_dirty_ring_reset,
    "kvm_vm_ioctl_reset_dirty_pages": kvm_vm_ioctl_reset_dirty_pages,
    "pml_log": pml_log,
    "vmx_flush_pml_buffer": vmx_flush_pml_buffer,
    "vmx_update_cpu_dirty_logging": vmx_update_cpu_dirty_logging,
    "kvm_mmu_slot_leaf_clear_dirty": kvm_mmu_slot_leaf_clear_dirty,
    "kvm_mmu_clear_dirty_pt_masked": kvm_mmu_clear_dirty_pt_masked,
}


def explain(ev: Event, ctx: Context) -> str:
    """One sentence for `ev`; an event this module does not know yet is named, not guessed at."""
    explainer = EXPLAINERS.get(str(ev.get("name")))
    if explainer is None:
        return f"{ev.get('name')} acted."
    return explainer(ev, ctx)


# --- the invariants ---------------------------------------------------------------------------------------

INVARIANT_TEXT: dict[str, str] = {
    "rmap_consistency": "Every present leaf spte must be in exactly one rmap, the one of its level and gfn,"
    " and nothing else may be.",
    "w_implies_hw_mw": "A writable spte must have both software bits, HW and MW.",
    "lpages_count": "The large-page statistics must count the present large leaf sptes: 6.x pages_2m and"
    " pages_1g exactly, 3.x largepages too, but for the large sptes 3.14/3.16's mmu-notifier path dropped"
    " without counting them down.",
    "no_writable_large_while_logging": "While a slot is dirty-logged no large spte may be writable: stores"
    " anywhere in its range take no fault and set no dirty bit.",
    "writable_implies_dirty_bit": "While a slot is logged, a writable 4K spte must have its page's dirty bit"
    " set, or stores to it go unreported. With PML only a writable spte with D set needs it (or its page"
    " waiting in a PML buffer): a store that sets D is logged by the CPU.",
    "tlb_more_permissive_than_spte": "At a step boundary no TLB entry may allow more than its spte does: a"
    " flush is missing.",
    "written_not_logged": "A store to a logged page that no GET_DIRTY_LOG reported: a migration would lose"
    " it.",
    "fault_livelock": "An access faulted again and again without progress: the guest would hang.",
}

# What each spte bit means, for the inspector: (bits, name, meaning, mask). The mask is the bit to read,
# or None for a field the inspector reads on its own (memory type, pfn). 3.x (spec section 1.1):
_COMMON_LOW_BITS: list[tuple[str, str, str, int | None]] = [
    ("0", "R", "readable; KVM treats it as present", PT_PRESENT_MASK),
    ("1", "W", "writable: a store through it needs no exit", PT_WRITABLE_MASK),
    ("2", "X", "executable", VMX_EPT_EXECUTABLE_MASK),
    ("3–5", "MT", "EPT memory type (6 = write-back)", None),
    ("6", "IPAT", "ignore the guest's PAT memory type", VMX_EPT_IPAT_BIT),
    ("7", "PS", "page size: this leaf maps 2M (level 2) or 1G (level 3) at once", PT_PAGE_SIZE_MASK),
    ("8", "A", "accessed: the CPU set it on a walk (EPT A/D bits)", VMX_EPT_ACCESS_BIT),
    ("9", "D", "dirty: the CPU set it on a store", VMX_EPT_DIRTY_BIT),
]
_HW = "host writable: the host page was writable when the spte was built"
_MW = "MMU writable: KVM's MMU allows writes; with HW, the fast path may set W again locklessly"
_PFN = ("12–51", "pfn", "host page frame (leaf) or the child table's page (non-leaf)", None)
BIT_MEANINGS_3X: list[tuple[str, str, str, int | None]] = [
    *_COMMON_LOW_BITS,
    ("10", "HW", _HW, SPTE_HOST_WRITEABLE),
    ("11", "MW", _MW, SPTE_MMU_WRITEABLE),
    _PFN,
]
# 6.x (mmu/spte.h): the software bits moved up, and two bits every present spte carries were added.
BIT_MEANINGS_6X: list[tuple[str, str, str, int | None]] = [
    *_COMMON_LOW_BITS,
    ("11", "MMU-present", "set in every present spte, whatever its permissions (SPTE_MMU_PRESENT_MASK)",
     SPTE_MMU_PRESENT_MASK),
    _PFN,
    ("52", "AD-disabled", "A/D bits disabled: set in every spte when EPT A/D bits are off",
     SPTE_TDP_AD_DISABLED),
    ("57", "HW", _HW, EPT_SPTE_HOST_WRITABLE),
    ("58", "MW", _MW, EPT_SPTE_MMU_WRITABLE),
    ("63", "SVE", "suppress #VE: set in every spte, present or not; a non-present spte is this bit alone",
     VMX_EPT_SUPPRESS_VE_BIT),
]


def bit_meanings(masks: SpteMasks) -> list[tuple[str, str, str, int | None]]:
    """The inspector's rows for the layout of the run's kernel generation, lowest bit first."""
    return BIT_MEANINGS_6X if masks.era == ERA_6X else BIT_MEANINGS_3X
