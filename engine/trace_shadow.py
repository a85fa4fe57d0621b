"""Trace events of shadow paging (paging_tmpl.h and the shadow half of mmu.c): the guest walk, the
shadow fault, indirect shadow pages and their unsync state, the emulated writes to guest page tables,
and the guest's own paging operations (MOV CR3, INVLPG). Typed values like every event of
engine.trace, whose `Event` they extend; named after the kernel function or tracepoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.trace import Event


@dataclass(frozen=True, slots=True)
class ShadowGuestAccess(Event):
    """One guest load or store of a guest-virtual address under shadow paging, and how it ended: from
    the TLB, by a walk of the shadow tables, after faults, emulated, or with a #PF the guest must handle."""

    name: ClassVar[str] = "guest_access"
    vcpu: int
    gva: int
    gfn: int | None
    write: bool
    via: str  # "tlb" | "walk" | "fault" | "emulated" | "guest_pf" | "livelock"
    faults: int = 0


@dataclass(frozen=True, slots=True)
class WalkAddr(Event):
    """FNAME(walk_addr_generic), as the kvm_mmu_pagetable_walk tracepoints tell it: the guest's tables
    walked for `gva`, the gfn and level found (or the #PF error code), and the A/D bits it stored."""

    name: ClassVar[str] = "walk_addr_generic"
    vcpu: int
    gva: int
    write: bool
    gfn: int | None
    level: int
    pte_access: int
    fault: int | None
    ad_stores: int


@dataclass(frozen=True, slots=True)
class ShadowPageFault(Event):
    """FNAME(page_fault): the guest's walk, then the level (the guest's, capped by mapping_level, 4K on
    a logged slot or a self-changing mapping), then FNAME(fetch)."""

    name: ClassVar[str] = "paging64_page_fault"
    vcpu: int
    gva: int
    error_code: int
    gfn: int | None
    guest_level: int
    level: int
    force_pt_level: bool
    self_change: bool
    result: str


@dataclass(frozen=True, slots=True)
class InjectPageFault(Event):
    """The guest's own walk failed: KVM hands the #PF to the guest, which must fix its tables."""

    name: ClassVar[str] = "inject_page_fault"
    vcpu: int
    gva: int
    error_code: int


@dataclass(frozen=True, slots=True)
class FetchShadow(Event):
    """FNAME(fetch): down the shadow tables for `gva`, indirect pages for the guest's tables, direct
    ones under a guest huge page mapped small, then the leaf; `emulate` when the write must be emulated."""

    name: ClassVar[str] = "paging64_fetch"
    gva: int
    gfn: int
    level: int
    emulate: bool


@dataclass(frozen=True, slots=True)
class ShadowGetPage(Event):
    """kvm_mmu_get_page for shadow paging: a page with this gfn and role found in the hash, or created
    (an indirect one write-protects and accounts its gfn)."""

    name: ClassVar[str] = "kvm_mmu_get_page"
    level: int
    gfn: int
    created: bool
    direct: bool
    access: int
    gva: int


@dataclass(frozen=True, slots=True)
class AccountShadowed(Event):
    """account_shadowed / unaccount_shadowed: the gfn's 2M and 1G ranges may (no longer) be mapped huge."""

    name: ClassVar[str] = "account_shadowed"
    gfn: int
    delta: int
    write_count_2m: int


@dataclass(frozen=True, slots=True)
class UnsyncPage(Event):
    """kvm_mmu_unsync_page: a level-1 shadow page left writable, to be synced at the next CR3 load or
    INVLPG, instead of emulating every write to its guest table."""

    name: ClassVar[str] = "kvm_mmu_unsync_page"
    level: int
    gfn: int


@dataclass(frozen=True, slots=True)
class SyncPage(Event):
    """kvm_mmu_sync_page (FNAME(sync_page)): an unsync page brought back in line with its guest table;
    `zapped` when nothing was left present and the page was zapped instead."""

    name: ClassVar[str] = "kvm_mmu_sync_page"
    level: int
    gfn: int
    kept: int
    dropped: int
    zapped: bool


@dataclass(frozen=True, slots=True)
class PrefetchGptes(Event):
    """FNAME(pte_prefetch): the neighbours of a 4K fault mapped speculatively from their guest PTEs."""

    name: ClassVar[str] = "paging64_pte_prefetch"
    sp_gfn: int
    gfns: tuple[int, ...]
    skipped: str = ""


@dataclass(frozen=True, slots=True)
class ValidateDirectSpte(Event):
    """validate_direct_spte: a direct page built for other rights (the guest PDE's D bit changed) is
    unlinked, and the walk links one built for the new rights."""

    name: ClassVar[str] = "validate_direct_spte"
    level: int
    sp_gfn: int
    index: int
    old_access: int
    new_access: int


@dataclass(frozen=True, slots=True)
class EmulateWrite(Event):
    """x86_emulate_instruction for a store to a write-protected guest table: the store goes to guest
    memory through the emulator, which marks the page dirty and tells the shadow MMU (kvm_mmu_pte_write)."""

    name: ClassVar[str] = "x86_emulate_instruction"
    vcpu: int
    gva: int
    gfn: int


@dataclass(frozen=True, slots=True)
class MmuPteWrite(Event):
    """kvm_mmu_pte_write: an emulated store to a shadowed guest table; each shadow page of that gfn
    drops the spte of the entry written (a level-1 one rebuilds it from the new PTE), or, written too
    often, is zapped (write flooding)."""

    name: ClassVar[str] = "kvm_mmu_pte_write"
    gfn: int
    index: int
    old: int
    new: int
    pages: int
    flooded: int


@dataclass(frozen=True, slots=True)
class SetCr3(Event):
    """MOV CR3 (kvm_set_cr3, kvm_mmu_new_cr3): the vCPU switches to the shadow root of the new CR3,
    found in the hash or built, then syncs the unsync pages under it and flushes its TLB."""

    name: ClassVar[str] = "kvm_set_cr3"
    vcpu: int
    cr3: int
    created: bool


@dataclass(frozen=True, slots=True)
class SyncRoots(Event):
    """kvm_mmu_sync_roots: every unsync page reachable from the vCPU's root, write-protected and synced."""

    name: ClassVar[str] = "kvm_mmu_sync_roots"
    vcpu: int
    synced: int


@dataclass(frozen=True, slots=True)
class Invlpg(Event):
    """INVLPG (kvm_mmu_invlpg, FNAME(invlpg)): an unsync leaf for `gva` is rebuilt from its guest PTE."""

    name: ClassVar[str] = "kvm_mmu_invlpg"
    vcpu: int
    gva: int
    updated: bool


@dataclass(frozen=True, slots=True)
class ZapCollapsibleRmap(Event):
    """kvm_mmu_zap_collapsible_sptes over the rmaps (the shadow MMU): 4K sptes of direct pages whose
    range may be mapped huge again, zapped so that the next fault maps it huge."""

    name: ClassVar[str] = "kvm_mmu_zap_collapsible_sptes"
    slot: int
    zapped: int
