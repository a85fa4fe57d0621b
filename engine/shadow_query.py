"""Questions a viewer asks of a shadow-paging VM, answered without changing it.

The shadow MMU's own functions are writers: the guest walk (engine.guest_pt.walk_addr_generic) sets the
Accessed and Dirty bits of the PTEs it uses and marks their pages dirty, and the shadow walk of the CPU
fills the TLB. A page that shows the state after a step must not move it on, so the walk here reads the
same PTEs by the same rules and stores nothing; the other queries read the gfn hash, the vCPUs' roots
and the indirect pages' unsync state as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.guest_pt import (
    GuestPageTables,
    GuestPaging,
    gpte_access,
    gpte_to_gfn_lvl,
    is_last_gpte,
    is_present_gpte,
    permission_fault,
    pt_index,
)
from engine.kvm import Kvm, Vcpu
from engine.shadow_page import ACC_ALL, KvmMmuPage
from engine.spte import PAGE_SHIFT, PT64_LEVEL_BITS, PT64_ROOT_LEVEL, PT_PAGE_TABLE_LEVEL


@dataclass(frozen=True, slots=True)
class GuestHop:
    """One level of a guest walk: the table read, the entry's index in it and the PTE found there."""

    level: int
    table_gfn: int
    index: int
    pte: int
    in_memory: bool  # the table lies in a memslot (a walk cannot read one that does not)


@dataclass(slots=True)
class GuestPeek:
    """A guest walk as the CPU or KVM would make it for `gva`, with nothing stored.

    `gfn` is the page reached (None when the walk fails); `access` the rights the levels allow together
    (mmu.h's ACC_* bits); `fault` the #PF error code a failed walk hands the guest: not present at the
    last hop, or a present PTE whose rights deny the access."""

    gva: int
    write: bool
    hops: list[GuestHop] = field(default_factory=list)
    leaf_level: int = 0
    gfn: int | None = None
    access: int = ACC_ALL
    fault: str = ""  # "", "not present", "no memory", "rights"

    @property
    def ok(self) -> bool:
        return self.gfn is not None


def peek_guest_walk(
    kvm: Kvm, tables: GuestPageTables, paging: GuestPaging, gva: int, *, write: bool = False
) -> GuestPeek:
    """The guest's translation of `gva` under `paging` (a supervisor access, as every shadow-paging access
    of the model is), read-only: the same levels, rights and faults as FNAME(walk_addr_generic), but no
    A/D store and no dirty mark."""
    peek = GuestPeek(gva, write)
    table_gfn = paging.cr3
    access = ACC_ALL
    for level in range(PT64_ROOT_LEVEL, PT_PAGE_TABLE_LEVEL - 1, -1):
        index = pt_index(gva, level)
        in_memory = kvm.gfn_to_memslot(table_gfn) is not None
        pte = tables.read_gpte(table_gfn, index) if in_memory else 0
        peek.hops.append(GuestHop(level, table_gfn, index, pte, in_memory))
        peek.leaf_level = level
        if not in_memory:
            peek.fault = "no memory"
            return peek
        if not is_present_gpte(pte):
            peek.fault = "not present"
            return peek
        access &= gpte_access(pte, paging.efer_nx)
        if is_last_gpte(level, pte):
            peek.access = access
            if permission_fault(access, paging, write=write, user=False, fetch=False):
                peek.fault = "rights"
                return peek
            offset = (gva >> PAGE_SHIFT) & ((1 << (PT64_LEVEL_BITS * (level - 1))) - 1)
            peek.gfn = gpte_to_gfn_lvl(pte, level) + offset
            return peek
        table_gfn = gpte_to_gfn_lvl(pte, PT_PAGE_TABLE_LEVEL)
    return peek  # not reached: level 1 always ends the walk


@dataclass(frozen=True, slots=True)
class RootInfo:
    """One shadow root: the guest PML4 it shadows (the CR3), the vCPUs on it and its root_count."""

    sp: KvmMmuPage
    cr3: int
    vcpus: tuple[int, ...]
    root_count: int


def shadow_roots(kvm: Kvm) -> list[RootInfo]:
    """The roots the vCPUs hold, one per CR3 in use, in the order of their first vCPU."""
    by_serial: dict[int, list[Vcpu]] = {}
    roots: dict[int, KvmMmuPage] = {}
    for vcpu in kvm.vcpus:
        if vcpu.root is not None:
            roots[vcpu.root.serial] = vcpu.root
            by_serial.setdefault(vcpu.root.serial, []).append(vcpu)
    return [
        RootInfo(sp, sp.gfn, tuple(v.id for v in by_serial[serial]), sp.root_count)
        for serial, sp in roots.items()
    ]


def indirect_pages(kvm: Kvm) -> list[KvmMmuPage]:
    """The live indirect shadow pages (each shadowing one guest table), top level first, then by gfn."""
    pages = [sp for sp in kvm.active_mmu_pages.values() if not sp.direct and not sp.invalid]
    pages.sort(key=lambda sp: (-sp.level, sp.gfn, sp.serial))
    return pages


def shadowed_gfns(kvm: Kvm) -> dict[int, str]:
    """Each guest table gfn a live indirect shadow page shadows: "protected" when one of them is in sync
    (the gfn is write-protected: a guest store to it faults), else "unsync" (every shadow of it is an
    unsync level-1 page, and the guest writes it freely until the next sync)."""
    out: dict[int, str] = {}
    for sp in kvm.active_mmu_pages.values():
        if sp.direct or sp.invalid:
            continue
        if not sp.unsync:
            out[sp.gfn] = "protected"
        else:
            out.setdefault(sp.gfn, "unsync")
    return out


def vcpu_root(kvm: Kvm, vcpu_id: int) -> KvmMmuPage | None:
    """The shadow root vCPU `vcpu_id` runs on now (None before it first entered the guest or after a zap
    took it away)."""
    for vcpu in kvm.vcpus:
        if vcpu.id == vcpu_id:
            return vcpu.root
    return None
