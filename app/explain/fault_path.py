"""The sentences of the guest's and the CPU's events and of the fault path, one function per trace event,
named after it: each takes the event as `engine.trace.event_json` writes it and the step's `Context`."""

from __future__ import annotations

from app.explain.context import Context, Event, _access, _flags, _hex, _int, _size, _where
from engine.spte import (
    PT_PAGE_SIZE_MASK,
    PT_WRITABLE_MASK,
    pages_per_hpage,
    spte_flags,
)

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
        why = (
            "the host page is writable and the guest's PTE, if any, is dirty: nothing waits for a first store"
            if ctx.masks.shadow
            else "under TDP a writable host page is always mapped writable"
        )
        notes.append(f"writable although this was a read: {why}")
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
