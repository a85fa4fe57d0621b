"""`struct kvm` and `struct kvm_vcpu` for the simulated VM: the state every mmu.c function works on.

Holds the memslots, the shadow pages and their gfn hash, the vCPUs with their TLBs, the statistics, and the
one function that stores an spte (with its twins for many sptes of one table). Mirrors the parts of
kvm_host.h (arch/x86 and generic) that 3.14/3.16's TDP MMU touches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Literal

from engine.memslot import KvmMemorySlot, Memslots
from engine.policy import Policy
from engine.shadow_page import KvmMmuPage, as_range, entries_at
from engine.spte import (
    ERA_6X,
    PT64_LEVEL_BITS,
    PT64_ROOT_LEVEL,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    SpteMasks,
    count_leaves,
)
from engine.tlb import Tlb
from engine.trace import Trace

if TYPE_CHECKING:
    from engine.guest_pt import GuestPageTables, GuestPaging

# How the VM's memory is virtualised: TDP (EPT/NPT: the CPU walks the guest's tables, KVM maps gfns), or
# shadow paging (KVM walks the guest's tables itself and maps guest-virtual addresses to host pages).
MmuMode = Literal["tdp", "shadow"]

# Non-leaf sptes point at tables the engine allocates from here: deterministic, well away from guest RAM.
TABLE_PFN_BASE = 0x1000


@dataclass(slots=True)
class KvmStat:
    """The VM and vCPU statistics the model keeps, under the kernel's names, and what each generation shows.

    `lpages` is 3.x's `stat.lpages` (debugfs `largepages`), kept by the very calls that keep it in the
    kernel, so that it drifts where the kernel's does: 3.14/3.16's mmu-notifier path drops a large spte
    without counting it down (`lpages_uncounted` records how often). `pages` is the present leaves per
    level (4K, 2M, 1G), kept at the spte choke point as 6.x's `kvm_update_page_stats` keeps `pages_4k`,
    `pages_2m` and `pages_1g`. The fault counters follow the era's rules: 3.x counts `pf_fixed` where
    `__direct_map` installs a leaf; 6.x counts every fault in `pf_taken`, and `pf_fixed`, `pf_spurious`
    and `pf_fast` by how it ended. Counters summed over the vCPUs (vCPU stats in the kernel) are summed
    here too.
    """

    pf_fixed: int = 0
    pf_taken: int = 0
    pf_fast: int = 0
    pf_spurious: int = 0
    lpages: int = 0
    lpages_uncounted: int = 0
    remote_tlb_flush: int = 0
    mmu_shadow_zapped: int = 0
    mmu_cache_miss: int = 0
    exits: int = 0
    pages: list[int] = field(default_factory=lambda: [0, 0, 0])
    # Shadow paging only: unsync pages now, emulated page faults, emulated writes to shadowed guest
    # tables (and those that zapped a flooded page), INVLPGs handled, #PFs injected into the guest.
    mmu_unsync: int = 0
    pf_emulate: int = 0
    mmu_pte_write: int = 0
    mmu_flooded: int = 0
    invlpg: int = 0
    pf_guest: int = 0

    @property
    def large_leaves(self) -> int:
        """Present large leaf sptes: what contract §4 calls `lpages`, whatever the kernel's own count."""
        return self.pages[1] + self.pages[2]

    def as_json(self, era: str, shadow: bool = False) -> dict[str, int]:
        """The counters `kvm_stat` shows for this generation (debugfs in 3.x, the binary stats in 6.x),
        plus contract §4's `lpages`: the present large leaves; under shadow paging the shadow MMU's own."""
        counts = self._as_json(era)
        if shadow:
            counts.update(
                invlpg=self.invlpg,
                mmu_flooded=self.mmu_flooded,
                mmu_pte_write=self.mmu_pte_write,
                mmu_unsync=self.mmu_unsync,
                pf_emulate=self.pf_emulate,
                pf_guest=self.pf_guest,
            )
            counts = dict(sorted(counts.items()))
        return counts

    def _as_json(self, era: str) -> dict[str, int]:
        if era == ERA_6X:
            return {
                "exits": self.exits,
                "lpages": self.large_leaves,
                "pages_1g": self.pages[2],
                "pages_2m": self.pages[1],
                "pages_4k": self.pages[0],
                "pf_fast": self.pf_fast,
                "pf_fixed": self.pf_fixed,
                "pf_spurious": self.pf_spurious,
                "pf_taken": self.pf_taken,
                "remote_tlb_flush": self.remote_tlb_flush,
            }
        return {
            "exits": self.exits,
            "largepages": self.lpages,
            "lpages": self.large_leaves,
            "mmu_cache_miss": self.mmu_cache_miss,
            "mmu_shadow_zapped": self.mmu_shadow_zapped,
            "pf_fixed": self.pf_fixed,
            "remote_tlb_flush": self.remote_tlb_flush,
        }


@dataclass(slots=True)
class FaultRecord:
    """One EPT violation and how it was resolved: the rows of a fault card."""

    vcpu: int
    gfn: int
    write: bool
    error_code: int
    path: str  # "fast" if fast_page_fault handled it, else "slow"
    fast_tried: bool
    fast_result: str | None
    level: int | None  # level of the leaf mapping the gfn afterwards; None when nothing maps it


@dataclass(slots=True)
class StepLog:
    """What one step did, gathered as it happens; the result, the trace and the invariants read it."""

    # Every spte the step wrote, with its value before the step (what the invariants need) ...
    touched: dict[tuple[KvmMmuPage, int], int] = field(default_factory=dict)
    # ... and, while tracing, every single write in order (what the full result shows).
    spte_changes: list[tuple[KvmMmuPage, int, int, int]] = field(default_factory=list)
    fast_faults: int = 0
    slow_faults: int = 0
    faults: list[FaultRecord] = field(default_factory=list)  # filled only while tracing
    marked_dirty: dict[int, None] = field(default_factory=dict)
    tlb_flushes: int = 0
    dirty_log: list[int] | None = None
    # (gfn, slot id) of every store that landed in a dirty-logged slot while its bit was clear.
    unlogged_writes: list[tuple[int, int]] = field(default_factory=list)
    # gfns a harvest reported to userspace during the step (GET_DIRTY_LOG, a ring harvest), and the slots
    # it covered: a store pending on one of those slots must be among them.
    harvested: list[int] = field(default_factory=list)
    harvested_slots: list[int] = field(default_factory=list)
    # gfns whose dirty bit (or ring entry) was cleared with their 4K sptes re-protected during the step:
    # none of them may keep a writable 4K spte.
    reprotected: list[int] = field(default_factory=list)
    # gfns whose bit KVM_CLEAR_DIRTY_LOG cleared: userspace discarded whatever was logged there, reported
    # by a GET or not (a CLEAR without the GET before it is userspace's mistake, not the kernel's).
    discarded: list[int] = field(default_factory=list)
    # The ioctl of the step that failed, as "KVM_GET_DIRTY_LOG: ENXIO", or None.
    ioctl_error: str | None = None
    # slots whose logging was switched on during the step.
    logging_enabled: list[int] = field(default_factory=list)
    livelocks: list[tuple[int, int, bool]] = field(default_factory=list)  # (vcpu, gfn, write)


def store_landed(log: StepLog, slot: KvmMemorySlot, gfn: int) -> None:
    """A guest store reached gfn's page, however it got there (the CPU through an spte, or the
    emulator): the page's contents change, and a store to a logged page whose bit is still clear is
    handed to the checker, which follows it up to the next harvest (or the write is lost)."""
    offset = gfn - slot.base_gfn
    slot.content[offset] += 1
    bitmap = slot.dirty_bitmap
    if bitmap is not None and not bitmap[offset >> 3] >> (offset & 7) & 1:
        log.unlogged_writes.append((gfn, slot.id))


# KVM_CAP_DIRTY_LOG_RING: the ring size the model gives every vCPU (entries, a power of two as the kernel
# demands), and the entries kept back from it (KVM_DIRTY_RING_RSVD_ENTRIES without PML): once the ring
# holds size - reserved entries it is "soft full" and the vCPU exits to userspace before its next entry.
DIRTY_RING_SIZE = 4096
DIRTY_RING_RSVD_ENTRIES = 64

# Intel PML: the entries of a vCPU's page-modification log (one 4 KiB page of 8-byte guest-physical
# addresses), which is also the VM's `cpu_dirty_log_size` when PML is in use.
PML_ENTITY_NUM = 512


class KvmDirtyRing:
    """`struct kvm_dirty_ring` of one vCPU: the entries published and not yet reset, oldest first.

    An entry is (slot id, page offset in the slot), as the kernel's `struct kvm_dirty_gfn`. Userspace
    harvests every published entry and resets them all in the same op, so the entries the kernel
    distinguishes as "dirty" and "collected" never coexist here.
    """

    __slots__ = ("entries", "size", "soft_limit")

    def __init__(self, size: int = DIRTY_RING_SIZE, cpu_dirty_log_size: int = 0) -> None:
        self.size = size
        # With PML one exit can flush a whole PML buffer onto the ring before the vCPU notices the ring is
        # soft full, so the kernel keeps that many more entries back.
        self.soft_limit = size - DIRTY_RING_RSVD_ENTRIES - cpu_dirty_log_size
        self.entries: list[tuple[int, int]] = []

    def soft_full(self) -> bool:
        """kvm_dirty_ring_soft_full: the vCPU must not enter the guest until userspace resets the ring."""
        return len(self.entries) >= self.soft_limit

    def __len__(self) -> int:
        return len(self.entries)


class PmlBuffer:
    """One vCPU's page-modification log (Intel PML): the guest-physical pages the CPU logged, oldest first.

    The CPU writes entry 511 first and counts GUEST_PML_INDEX down, so `pml_index` is the next slot it
    writes; a store that finds no free slot (index 0 already used) makes a PML-full VM exit instead of
    logging. `gfns` answers "is this page waiting in the log" without a scan; a page is logged again
    only after its D bit was cleared, which harvesting does after draining every buffer, so the two
    forget their contents together.
    """

    __slots__ = ("entries", "gfns")

    def __init__(self) -> None:
        self.entries: list[int] = []
        self.gfns: set[int] = set()

    @property
    def pml_index(self) -> int:
        return PML_ENTITY_NUM - 1 - len(self.entries)

    def full(self) -> bool:
        return len(self.entries) >= PML_ENTITY_NUM

    def log(self, gfn: int) -> None:
        self.entries.append(gfn)
        self.gfns.add(gfn)

    def take(self) -> list[int]:
        """Empty the log (GUEST_PML_INDEX back to 511); returns what it held, oldest first."""
        entries = self.entries
        self.entries = []
        self.gfns = set()
        return entries

    def __len__(self) -> int:
        return len(self.entries)


class Vcpu:
    __slots__ = ("dirty_ring", "id", "paging", "pml", "root", "space", "tlb")

    def __init__(self, vcpu_id: int, cpu_dirty_log_size: int = 0) -> None:
        self.id = vcpu_id
        self.tlb = Tlb()
        self.dirty_ring = KvmDirtyRing(cpu_dirty_log_size=cpu_dirty_log_size)
        self.pml = PmlBuffer()
        # Shadow paging only: the guest's CR3 and paging bits, which of the scenario's address spaces
        # CR3 points at, and the shadow root built for it (vcpu->arch.mmu->root_hpa).
        self.paging: GuestPaging | None = None
        self.space = 0
        self.root: KvmMmuPage | None = None


def _consecutive(indexes: range | list[int]) -> range | list[int]:
    """Entry indexes as a range of step 1 when they are consecutive (one slice stores them), else a list."""
    if isinstance(indexes, range) and indexes.step == 1:
        return indexes
    return as_range(list(indexes))


def _any_table_pointer(sptes: Sequence[int]) -> bool:
    """Whether any of `sptes`, entries of a table above level 1, points at a table."""
    return any(spte & PT_PRESENT_MASK and not spte & PT_PAGE_SIZE_MASK for spte in sptes)


class Kvm:
    """The VM: its memslots, its MMU pages and the vCPUs. `write_spte` is the only spte store (with
    `write_sptes` and `clear_spte_bits`, the same store for many sptes of one table at once)."""

    def __init__(
        self,
        policy: Policy,
        slots: list[KvmMemorySlot],
        vcpus: int,
        max_level: int,
        ept_ad: bool,
        trace: bool,
        mmu: MmuMode = "tdp",
        guest_paging: bool = True,
    ) -> None:
        self.policy = policy
        self.mmu: MmuMode = mmu
        # Shadow paging of a guest with paging on: the shadow MMU proper (engine.paging_tmpl). A guest
        # with paging off on a shadow host has nothing to shadow: KVM maps gfns directly
        # (nonpaging_map), with the direct MMU's paths, the fast one included, in the shadow spte format,
        # at most 2M (its tables are PAE-shaped: the model keeps its 4-level root, which changes nothing
        # it shows).
        self.shadow = mmu == "shadow" and guest_paging
        on_shadow_host = mmu == "shadow"
        if on_shadow_host and not guest_paging:
            max_level = min(max_level, PT_PAGE_TABLE_LEVEL + 1)
        self.masks = (
            SpteMasks.for_shadow(policy.era) if on_shadow_host else SpteMasks.for_ept(ept_ad, policy.era)
        )
        self.era6 = policy.era == ERA_6X
        # kvm->arch.cpu_dirty_log_size: PML_ENTITY_NUM when dirty logging clears D and lets the CPU log
        # stores (PML), 0 when it write-protects. The kernel turns PML off without EPT A/D bits, so
        # `pml` is inert then, and under shadow paging, which has no EPT.
        self.cpu_dirty_log_size = PML_ENTITY_NUM if policy.pml and ept_ad and not on_shadow_host else 0
        # kvm->arch.cpu_dirty_logging_count: dirty-logged slots. While it is non-zero every vCPU runs
        # with PML enabled in its VMCS (vmx_update_cpu_dirty_logging).
        self.cpu_dirty_logging_count = 0
        self.pml_enabled = False
        self.max_level = max_level  # kvm_x86_ops->get_lpage_level(), or 1 with large pages disabled
        self.memslots = Memslots(slots)
        self.gfn_to_memslot: Callable[[int], KvmMemorySlot | None] = self.memslots.gfn_to_memslot
        self.vcpus = [Vcpu(i, self.cpu_dirty_log_size) for i in range(vcpus)]
        # kvm_get_running_vcpu(): the vCPU whose access is being handled, None outside guest accesses.
        self.running_vcpu: Vcpu | None = None
        # kvm->mmu_notifier_seq: moved on by every invalidation; a fault that saw it move maps nothing.
        self.mmu_notifier_seq = 0
        # kvm->arch.mmu_valid_gen: the generation of shadow pages 3.14/3.16's memslot zap keeps.
        self.mmu_valid_gen = 0
        self.stat = KvmStat()
        self.tp = Trace(on=trace)
        self.log = StepLog()
        self.mmu_page_hash: dict[tuple[int, int], list[KvmMmuPage]] = {}
        self.active_mmu_pages: dict[int, KvmMmuPage] = {}  # serial -> sp, in creation order
        self.sp_by_pfn: dict[int, KvmMmuPage] = {}
        self.l1_tables: dict[int, KvmMmuPage] = {}  # gfn >> 9 -> level-1 sp, see l1_table()
        self._next_serial = 0
        # Shadow paging: the guest's page tables in its memory, and kvm->arch.indirect_shadow_pages.
        self.guest: GuestPageTables | None = None
        self.indirect_shadow_pages = 0
        # gfn -> its live indirect shadow pages, kept with indirect_shadow_pages (account_shadowed): the
        # one-lookup answer to "is this gfn a shadowed guest table", which every writable spte asks.
        self.shadowed_gfns: dict[int, int] = {}
        # vCPUs with KVM_REQ_MMU_SYNC pending: they sync their root before they next enter the guest.
        self.mmu_sync_requests: set[int] = set()
        # Slots whose split GET_DIRTY_LOG has not returned: the pages it reported, and whether it owes
        # the flush it makes after dropping mmu_lock.
        self.split_gets: dict[int, tuple[list[int], bool]] = {}
        # struct kvm_mmu's guest-paging hooks (engine.shadow_mmu.PagingOps), set up with the guest's tables.
        self.paging_ops: object | None = None
        # The VM's root. Under shadow paging each vCPU has its own, one per CR3 (Vcpu.root): this is then
        # vCPU 0's, kept in step by the shadow MMU (engine.shadow_mmu), and built with the guest's tables.
        # Until then it is a placeholder no walk reaches.
        self.root: KvmMmuPage = KvmMmuPage(0, PT64_ROOT_LEVEL, 0, -1) if self.shadow else self.alloc_root()

    # --- the choke point --------------------------------------------------------------------------

    def write_spte(self, sp: KvmMmuPage, index: int, new: int) -> int:
        """Store `new` at (sp, index) and record (old, new): the web diff, trace and stats all read this."""
        spt = sp.spt
        old = spt[index]
        spt[index] = new
        log = self.log
        log.touched.setdefault((sp, index), old)
        if self.tp.on:
            log.spte_changes.append((sp, index, old, new))
        level = sp.level
        # The choke point runs for every spte written: its bit tests are raw, as in the inner loops.
        if (old ^ new) & (PT_PRESENT_MASK | PT_PAGE_SIZE_MASK) and level <= 3:
            # A leaf appeared or went away (kvm_update_page_stats): count present leaves by level.
            pages = self.stat.pages
            if old & PT_PRESENT_MASK and (level == PT_PAGE_TABLE_LEVEL or old & PT_PAGE_SIZE_MASK):
                pages[level - 1] -= 1
            if new & PT_PRESENT_MASK and (level == PT_PAGE_TABLE_LEVEL or new & PT_PAGE_SIZE_MASK):
                pages[level - 1] += 1
        # A change to a table pointer may re-route walks: forget the shortcuts to level-1 tables. (A
        # pointer replaced by a huge leaf in one store, as 6.x recovery does, is such a change too.)
        if level > 1 and self.l1_tables and (
            (old & PT_PRESENT_MASK and not old & PT_PAGE_SIZE_MASK)
            or (new & PT_PRESENT_MASK and not new & PT_PAGE_SIZE_MASK)
        ):
            self.l1_tables.clear()
        return old

    def write_sptes(self, sp: KvmMmuPage, indexes: range | list[int], values: Sequence[int]) -> list[int]:
        """Store values[k] at (sp, indexes[k]) for every k, in that order, and record each store exactly as
        `write_spte` does; returns the old values. The indexes are distinct.

        Splitting a huge page, zapping a table and write-protecting a slot rewrite up to 512 sptes of one
        table at a time, and a slot switched in and out of dirty logging does that for every table of
        it. One pass per table leaves what a write_spte per entry would (the same touched entries in the
        same order, the same spte_changes, page counts and walk shortcuts) at a fraction of the cost.
        """
        if len(indexes) != len(values):
            raise ValueError(f"{len(indexes)} indexes for {len(values)} values")
        indexes = _consecutive(indexes)
        olds = entries_at(sp, indexes)
        self._store_sptes(sp, indexes, olds, values)
        level = sp.level
        if level <= 3:
            self.stat.pages[level - 1] += count_leaves(values, level) - count_leaves(olds, level)
        if level > 1 and self.l1_tables and (_any_table_pointer(olds) or _any_table_pointer(values)):
            self.l1_tables.clear()
        return olds

    def clear_spte_bits(self, sp: KvmMmuPage, indexes: range | list[int], mask: int) -> list[int]:
        """write_sptes of each spte at `indexes` without the bits of `mask` (the TDP MMU's
        tdp_mmu_clear_spte_bits over a run); returns the old values. `mask` holds neither R nor PS, so
        every present leaf stays one and the page counts need no look."""
        if mask & (PT_PRESENT_MASK | PT_PAGE_SIZE_MASK):
            raise ValueError(f"clear_spte_bits cannot clear R or PS (mask {mask:#x})")
        indexes = _consecutive(indexes)
        olds = entries_at(sp, indexes)
        self._store_sptes(sp, indexes, olds, [old & ~mask for old in olds])
        if sp.level > 1 and self.l1_tables and _any_table_pointer(olds):
            self.l1_tables.clear()
        return olds

    def _store_sptes(
        self, sp: KvmMmuPage, indexes: range | list[int], olds: list[int], values: Sequence[int]
    ) -> None:
        """The stores of write_sptes and their records (touched, and spte_changes while tracing)."""
        if isinstance(indexes, range):
            sp.spt[indexes.start : indexes.stop] = values
        else:
            spt = sp.spt
            for index, new in zip(indexes, values, strict=True):
                spt[index] = new
        log = self.log
        record = log.touched.setdefault
        for index, old in zip(indexes, olds, strict=True):
            record((sp, index), old)
        if self.tp.on:
            log.spte_changes.extend(zip(repeat(sp), indexes, olds, values))

    def l1_table(self, gfn: int) -> KvmMmuPage | None:
        """The level-1 table the root currently routes `gfn` to, if a walk has been there since the last
        table pointer changed. A shortcut for the engine's own walks (the CPU's paging-structure cache
        does the same for real walks); it never changes what a walk finds."""
        return self.l1_tables.get(gfn >> PT64_LEVEL_BITS)

    # --- shadow page allocation -------------------------------------------------------------------

    def alloc_mmu_page(self, gfn: int, level: int) -> KvmMmuPage:
        """kvm_mmu_alloc_page + hash insertion: a zeroed table (init_shadow_page_table)."""
        serial = self._next_serial
        self._next_serial += 1
        sp = KvmMmuPage(gfn, level, TABLE_PFN_BASE + serial, serial, self.masks.nonpresent)
        self.mmu_page_hash.setdefault((gfn, level), []).append(sp)
        self.active_mmu_pages[serial] = sp
        self.sp_by_pfn[sp.pfn] = sp
        return sp

    def free_mmu_page(self, sp: KvmMmuPage) -> None:
        """kvm_mmu_free_page, after a zap has emptied and unlinked `sp`."""
        bucket = self.mmu_page_hash[(sp.gfn, sp.level)]
        bucket.remove(sp)
        if not bucket:
            del self.mmu_page_hash[(sp.gfn, sp.level)]
        del self.active_mmu_pages[sp.serial]
        del self.sp_by_pfn[sp.pfn]

    def alloc_root(self) -> KvmMmuPage:
        """mmu_alloc_direct_roots: one level-4 root shared by every vCPU (same role, same hash entry)."""
        root = self.alloc_mmu_page(0, PT64_ROOT_LEVEL)
        root.root_count = len(self.vcpus)
        return root

    def stats(self) -> dict[str, int]:
        """The statistics under the names of the policy's kernel generation (KvmStat.as_json)."""
        return self.stat.as_json(self.policy.era, self.mmu == "shadow")

    def new_step(self) -> StepLog:
        self.log = StepLog()
        self.tp.new_step()
        return self.log

