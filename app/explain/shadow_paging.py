"""The sentences of shadow paging's events (engine/trace_shadow.py): the guest's walk, the #PF exit and
FNAME(fetch), indirect shadow pages, unsync and sync, the emulated stores to guest tables, MOV CR3 and
INVLPG. One function per event, named after it; `guest_access` and `kvm_mmu_get_page` share their
names with the TDP events and are told here when the event carries a guest-virtual address."""

from __future__ import annotations

from app.explain.context import Context, Event, _access, _hex, _int, _size
from engine.shadow_page import ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK

_GUEST_LEVEL = {4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}


def _rights(access: int) -> str:
    out = ["read"]
    if access & ACC_WRITE_MASK:
        out.append("write")
    if access & ACC_USER_MASK:
        out.append("user")
    if access & ACC_EXEC_MASK:
        out.append("execute")
    return ", ".join(out)


def _table(level: object) -> str:
    return _GUEST_LEVEL.get(_int(level), f"level-{level}")


def shadow_guest_access(ev: Event, ctx: Context) -> str:
    gfn = ev.get("gfn")
    to = f" (gfn {_hex(gfn)})" if gfn is not None else ""
    who = f"vCPU {ev.get('vcpu')}'s {_access(ev.get('write'))} of gva {_hex(ev.get('gva'))}{to}"
    via = ev.get("via")
    faults = _int(ev.get("faults"))
    after = f" after {faults} #PF exit{'s' if faults != 1 else ''}" if faults else ""
    return {
        "tlb": f"{who} is translated by the TLB: no exit.",
        "walk": f"{who} is translated by the CPU's walk of the shadow tables, which it takes for the guest's:"
        " no exit.",
        "fault": f"{who} completes{after}.",
        "emulated": f"{who} is done by KVM's emulator{after}: the page is a write-protected guest table.",
        "guest_pf": f"{who} ends in a #PF for the guest{after}: its own tables do not allow it.",
        "mmio": f"{who} leaves every memslot: emulated as MMIO{after}.",
        "livelock": f"{who} still faults{after}: no progress, the guest would hang.",
    }.get(str(via), f"{who} ends: {via}.")


def walk_addr_generic(ev: Event, ctx: Context) -> str:
    gva = _hex(ev.get("gva"))
    if ev.get("fault") is not None:
        return (
            f"KVM walks the guest's tables for gva {gva} and the walk fails at the {_table(ev.get('level'))}"
            f" (error code {_hex(ev.get('fault'))}): the guest's own mapping does not allow the access."
        )
    stores = _int(ev.get("ad_stores"))
    ad = (
        f"; it sets A/D in {stores} guest PTE{'s' if stores != 1 else ''}, stores to guest memory that mark"
        " those table pages dirty"
        if stores
        else "; every A/D bit it needs is already set"
    )
    return (
        f"KVM walks the guest's tables for gva {gva} in software: a {_size(ev.get('level'))} guest page,"
        f" gfn {_hex(ev.get('gfn'))}, the guest allowing {_rights(_int(ev.get('pte_access')))}{ad}."
    )


def paging64_page_fault(ev: Event, ctx: Context) -> str:
    ctx.fault_gfn = _int(ev.get("gfn")) if ev.get("gfn") is not None else None
    code = _int(ev.get("error_code"))
    why = "a present spte refused a store" if code & 1 else "no shadow spte maps it"
    head = f"#PF exit for gva {_hex(ev.get('gva'))} ({why})"
    if ev.get("gfn") is None:
        return f"{head}: the guest's walk fails, so there is nothing for KVM to map."
    level = _size(ev.get("level"))
    guest = _size(ev.get("guest_level"))
    if ev.get("self_change"):
        reason = ", because the guest page holds a guest table of this very walk"
    elif ev.get("force_pt_level"):
        reason = ", forced small (a logged slot, or a shadowed table in the range)"
    elif level != guest:
        reason = f", smaller than the guest's {guest} page"
    else:
        reason = ""
    gfn = _hex(ev.get("gfn"))
    return f"{head}: the guest maps it {guest}; KVM maps gfn {gfn} with a {level} spte{reason}."


def inject_page_fault(ev: Event, ctx: Context) -> str:
    return (
        f"KVM injects a #PF for gva {_hex(ev.get('gva'))} (error code {_hex(ev.get('error_code'))}) into vCPU"
        f" {ev.get('vcpu')}: the guest must fix its own tables; KVM builds nothing."
    )


def paging64_fetch(ev: Event, ctx: Context) -> str:
    tail = (
        "; the store must be emulated (it writes a guest table KVM shadows)"
        if ev.get("emulate")
        else ""
    )
    return (
        f"FNAME(fetch) goes down the shadow tables for gva {_hex(ev.get('gva'))}, one indirect page per guest"
        f" table, and sets a {_size(ev.get('level'))} leaf for gfn {_hex(ev.get('gfn'))}{tail}."
    )


def shadow_get_page(ev: Event, ctx: Context) -> str:
    level, gfn = _int(ev.get("level")), _int(ev.get("gfn"))
    if ev.get("direct"):
        what = f"direct level-{level} page from gfn {gfn:#x} (under a guest huge page mapped smaller)"
    else:
        what = f"level-{level} shadow of the guest {_table(level)} at gfn {gfn:#x}"
    if not ev.get("created"):
        return f"The existing {what} is found in the hash and reused."
    if ev.get("direct"):
        return f"A new, empty {what} is allocated."
    return (
        f"A new, empty {what} is allocated: KVM write-protects gfn {gfn:#x} wherever it is mapped, so the"
        " guest's stores to its table fault."
    )


def account_shadowed(ev: Event, ctx: Context) -> str:
    gfn = _hex(ev.get("gfn"))
    if _int(ev.get("delta")) > 0:
        return f"gfn {gfn} holds a shadowed table: no huge spte may map its 2M or 1G range from now on."
    return f"gfn {gfn} no longer holds a shadowed table: its range may be mapped huge again."


def kvm_mmu_unsync_page(ev: Event, ctx: Context) -> str:
    return (
        f"The level-{ev.get('level')} shadow of guest table {_hex(ev.get('gfn'))} goes unsync: the guest may"
        " write its table without faulting, and KVM syncs the shadow at the next CR3 load or INVLPG."
    )


def kvm_mmu_sync_page(ev: Event, ctx: Context) -> str:
    head = f"The unsync shadow of guest table {_hex(ev.get('gfn'))} is synced with it"
    if ev.get("zapped"):
        return f"{head}: nothing in it was still valid, so it is zapped."
    kept, dropped = ev.get("kept"), ev.get("dropped")
    return f"{head}: {kept} sptes kept, {dropped} dropped, and the gfn write-protected again."


def paging64_pte_prefetch(ev: Event, ctx: Context) -> str:
    gfns = ev.get("gfns") or []
    if gfns:
        shown = " ".join(_hex(g) for g in gfns)
        return f"Prefetch maps neighbours the guest maps too, from their guest PTEs: {shown} (no A bit)."
    skipped = ev.get("skipped")
    return f"Prefetch maps nothing more ({skipped})." if skipped else "Prefetch maps nothing more."


def validate_direct_spte(ev: Event, ctx: Context) -> str:
    return (
        f"L{ev.get('level')}[{_hex(ev.get('index'))}] points at a direct page built for other rights (the"
        " guest's huge PTE changed): it is unlinked, and one built for the new rights is linked instead."
    )


def x86_emulate_instruction(ev: Event, ctx: Context) -> str:
    return (
        f"The emulator performs the store to gva {_hex(ev.get('gva'))} (gfn {_hex(ev.get('gfn'))}, a guest"
        " table KVM write-protects): guest memory changes, the page is marked dirty, and the shadow MMU is"
        " told what was written."
    )


def kvm_mmu_pte_write(ev: Event, ctx: Context) -> str:
    head = f"Entry {_hex(ev.get('index'))} of guest table {_hex(ev.get('gfn'))} is now {_hex(ev.get('new'))}"
    pages = _int(ev.get("pages"))
    flooded = _int(ev.get("flooded"))
    text = f"{head}: {pages} shadow page{'s' if pages != 1 else ''} of it bring that entry up to date"
    if flooded:
        text += f"; {flooded} written too often without a fault through it (write flooding) is zapped"
    return text + "."


def kvm_set_cr3(ev: Event, ctx: Context) -> str:
    how = "built" if ev.get("created") else "found in the hash"
    return (
        f"vCPU {ev.get('vcpu')} loads CR3 {_hex(ev.get('cr3'))}: its shadow root for that PML4 is {how}, the"
        " unsync pages under it are synced, and its TLB is flushed."
    )


def kvm_mmu_sync_roots(ev: Event, ctx: Context) -> str:
    synced = _int(ev.get("synced"))
    pages = f"{synced} page{'s' if synced != 1 else ''}"
    return (
        f"vCPU {ev.get('vcpu')} syncs the unsync pages under its root: {pages}"
        " brought in line with the guest's tables and write-protected again."
    )


def kvm_mmu_invlpg(ev: Event, ctx: Context) -> str:
    done = (
        "an unsync leaf for it is rebuilt from its guest PTE"
        if ev.get("updated")
        else "no unsync leaf maps it, nothing to rebuild"
    )
    return f"vCPU {ev.get('vcpu')} runs INVLPG {_hex(ev.get('gva'))}: {done}; the vCPU's TLB is flushed."


def kvm_mmu_zap_collapsible_sptes_rmap(ev: Event, ctx: Context) -> str:
    zapped = _int(ev.get("zapped"))
    if not zapped:
        return f"Huge page recovery for slot {ev.get('slot')}: no 4K spte could give way to a huge page."
    sptes = f"{zapped} 4K spte{'s' if zapped != 1 else ''}"
    return (
        f"Huge page recovery for slot {ev.get('slot')} over the rmaps: {sptes}"
        " of direct pages zapped, so the next faults map their range huge again."
    )
