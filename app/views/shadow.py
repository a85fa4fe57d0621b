"""The shadow-paging panel's data: the guest's page tables of one vCPU's address space beside the shadow
tables KVM built for them, the step's GVA → GPA → HPA walk through both, and the roots, indirect pages
and write-protected gfns.

Under shadow paging the TDP tree's premise, that an entry's gfn follows from its position, no longer
holds: an indirect shadow page is named by the guest table it shadows and each leaf maps a guest-virtual
page to whatever gfn the guest PTE said. So this panel draws its own two trees, folded by the same rule
as the TDP tree (small tables whole, alike runs of big ones on one line, the step's changes and walk
always drawn), and reads everything through engine.shadow_query, which changes nothing. The guest's
side is app.views.guest_tables, the walk strip app.views.shadow_walk; this module holds the shadow tables
and puts the panel together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from app.replay import Shown
from app.views.guest_tables import (
    DRAW_CAP,
    GUEST_LEVEL_NAMES,
    SMALL_TABLE,
    FoldedRun,
    GuestTable,
    GuestTree,
    cap_runs,
    span_bytes,
)
from app.views.shadow_walk import WalkStrip, step_address, walk_strip
from app.views.text import hx, plural
from engine.guest_pt import GuestPaging
from engine.kvm import Kvm
from engine.ops.access import ReadStep, WriteStep
from engine.ops.guest_paging import InvlpgStep, SetCr3Step, WriteGpteStep
from engine.policy import Policy, inert_under_shadow
from engine.shadow_mmu import gva_of_entry
from engine.shadow_page import KvmMmuPage, kvm_mmu_page_get_gfn
from engine.shadow_query import (
    GuestPeek,
    indirect_pages,
    peek_guest_walk,
    shadow_roots,
    shadowed_gfns,
    vcpu_root,
)
from engine.simulation import StepResult
from engine.spte import (
    FLAG_BITS,
    PAGE_SHIFT,
    PT64_BASE_ADDR_MASK,
    PT64_ROOT_LEVEL,
    PT_PAGE_SIZE_MASK,
    flag_word,
    is_shadow_present_pte,
    level_name,
    pages_per_hpage,
    spte_to_pfn,
)
from engine.tdp_iter import for_each_shadow_entry

# PS among the contract's flags (engine.spte.flag_word).
FLAG_PS = dict(FLAG_BITS)["PS"]
# The indirect pages listed in the legend.
PAGES_LISTED = 24


# --- the shadow tables -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ShadowEntry:
    level: int
    index: int
    spte: int
    kind: str  # "ptr", "4k", "large"
    gva: int
    gfn: int
    pfn: int
    word: int  # the contract's eight flags (engine.spte.flag_word)
    user: bool
    old: int | None = None  # the value before the step, for an entry the step changed
    old_word: int | None = None
    ghost: bool = False  # removed this step
    walk: bool = False
    child: ShadowTable | None = None
    child_note: str = ""

    @property
    def changed(self) -> bool:
        return self.old is not None

    @property
    def size(self) -> str:
        return level_name(self.level)

    @property
    def target(self) -> str:
        last = self.gva + span_bytes(self.level) - 1
        if self.kind == "ptr":
            return f"gva {hx(self.gva)}–{hx(last)} → L{self.level - 1} table"
        if self.kind == "large":
            span = pages_per_hpage(self.level)
            return (
                f"gva {hx(self.gva)}–{hx(last)} → gfns {hx(self.gfn)}–{hx(self.gfn + span - 1)}"
                f" → pfn {hx(self.pfn)}"
            )
        return f"gva {hx(self.gva)} → gfn {hx(self.gfn)} → pfn {hx(self.pfn)}"


@dataclass(slots=True)
class ShadowTable:
    level: int
    gfn: int
    direct: bool
    gva: int
    present: int
    unsync: bool
    unsync_children: int
    access: int
    serial: int
    items: list[ShadowEntry | FoldedRun] = field(default_factory=list)
    root: bool = False

    @property
    def label(self) -> str:
        if self.direct:
            span = pages_per_hpage(self.level + 1)
            return f"direct · gfns {hx(self.gfn)}–{hx(self.gfn + span - 1)}"
        return f"shadows guest {GUEST_LEVEL_NAMES[self.level]} {hx(self.gfn)}"


class _ShadowTree:
    def __init__(
        self, kvm: Kvm, touched: Mapping[tuple[KvmMmuPage, int], int], walk: set[tuple[int, int]]
    ) -> None:
        self.kvm = kvm
        self.walk = walk
        self.changes: dict[int, dict[int, int]] = {}
        self.freed = 0
        for (sp, index), old in touched.items():
            if sp.invalid or sp.serial not in kvm.active_mmu_pages:
                continue
            if sp.spt[index] != old:
                self.changes.setdefault(sp.serial, {})[index] = old
        self.changed = sum(len(v) for v in self.changes.values())
        self.need: dict[int, set[int]] = {}
        for serial, entries in self.changes.items():
            self._need(kvm.active_mmu_pages[serial], set(entries))
        self.drawn = 0

    def _need(self, sp: KvmMmuPage, indices: set[int]) -> None:
        stack = [(sp, indices)]
        seen: set[int] = set()
        while stack:
            page, wanted = stack.pop()
            self.need.setdefault(page.serial, set()).update(wanted)
            if page.serial in seen:
                continue
            seen.add(page.serial)
            stack.extend((parent, {index}) for parent, index in page.parent_ptes)

    def table(self, sp: KvmMmuPage) -> ShadowTable:
        masks = self.kvm.masks
        nonpresent = masks.nonpresent
        spt = sp.spt
        present = [i for i, s in enumerate(spt) if s != nonpresent]
        changes = self.changes.get(sp.serial, {})
        removed = [i for i, old in changes.items() if is_shadow_present_pte(old) and spt[i] == nonpresent]
        view = ShadowTable(
            sp.level, sp.gfn, sp.direct, sp.gva, len(present), sp.unsync, len(sp.unsync_children or ()),
            sp.access, sp.serial,
        )  # fmt: skip
        must = self.need.get(sp.serial, set())
        whole = len(present) <= SMALL_TABLE and self.drawn + len(present) <= DRAW_CAP
        pending: list[int] = []
        for index in sorted(set(present) | set(removed)):
            # The walk always; the step's changes, the pointers down to them and what it removed while the
            # budget lasts (a step can rewrite thousands); the rest of a big table folded.
            walk = (sp.serial, index) in self.walk
            forced = walk or (index in must and self.drawn < DRAW_CAP)
            if forced or whole or (index in removed and self.drawn < DRAW_CAP):
                if pending:
                    view.items.extend(self._fold(sp, pending, changes))
                    pending = []
                view.items.append(self._entry(sp, index, changes.get(index), forced))
            else:
                pending.append(index)
        if pending:
            view.items.extend(self._fold(sp, pending, changes))
        return view

    def _entry(self, sp: KvmMmuPage, index: int, old: int | None, forced: bool) -> ShadowEntry:
        kvm = self.kvm
        spte = sp.spt[index]
        ghost = not is_shadow_present_pte(spte)
        value = old if ghost and old is not None else spte
        kind = "4k" if sp.level == 1 else "large" if value & PT_PAGE_SIZE_MASK else "ptr"
        entry = ShadowEntry(
            sp.level, index, value, kind, gva_of_entry(sp, index), kvm_mmu_page_get_gfn(sp, index),
            spte_to_pfn(value), flag_word(value, kvm.masks), bool(value & kvm.masks.user_mask),
            old=old, ghost=ghost, walk=(sp.serial, index) in self.walk,
        )  # fmt: skip
        if old is not None and is_shadow_present_pte(old) and not ghost:
            entry.old_word = flag_word(old, kvm.masks)
        self.drawn += 1
        if kind == "ptr" and not ghost:
            child = kvm.sp_by_pfn.get((spte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT)
            if child is not None and (forced or self.drawn < DRAW_CAP):
                entry.child = self.table(child)
            elif child is not None:
                present = sum(1 for s in child.spt if s != kvm.masks.nonpresent)
                entry.child_note = f"L{child.level} table: {present} present, not drawn"
        return entry

    def _fold(self, sp: KvmMmuPage, indices: list[int], changes: Mapping[int, int]) -> list[FoldedRun]:
        """Consecutive entries alike (same kind and flags, changed or removed this step or not) as one line
        each; at most MAX_RUNS lines per table, the rest summed up in one."""
        masks = self.kvm.masks
        spt = sp.spt

        def key(i: int) -> tuple[int, bool, bool]:
            gone = i in changes and not is_shadow_present_pte(spt[i])
            value = changes[i] if gone else spt[i]
            return flag_word(value, masks), i in changes, gone

        runs: list[FoldedRun] = []
        start = 0
        for k in range(1, len(indices) + 1):
            if k < len(indices):
                a, b = indices[k - 1], indices[k]
                if b == a + 1 and key(a) == key(b):
                    continue
            group = indices[start:k]
            start = k
            first, last = group[0], group[-1]
            word, changed, gone = key(first)
            lo = gva_of_entry(sp, first)
            hi = gva_of_entry(sp, last) + span_bytes(sp.level) - 1
            count = len(group)
            if gone:
                text = f"{count} removed this step, gva {hx(lo)}–{hx(hi)}"
            elif sp.level > 1 and not word & FLAG_PS:
                text = f"{plural(count, 'pointer')} to L{sp.level - 1} tables, gva {hx(lo)}–{hx(hi)}"
            else:
                what = "leaf" if count == 1 else "leaves"
                flags = " ".join(_flag_names(word))
                text = f"{count} × {level_name(sp.level)} {what}, gva {hx(lo)}–{hx(hi)}, all {flags}"
            if changed and not gone:
                text += " (changed this step)"
            runs.append(FoldedRun(first, last, count, text, changed))
        return cap_runs(runs)


def _flag_names(word: int) -> list[str]:
    return [name for name, bit in FLAG_BITS if word & bit]



# --- the panel -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RootRow:
    cr3: int
    vcpus: str
    root_count: int
    current: bool


@dataclass(slots=True)
class PageRow:
    level: int
    gfn: int
    direct: bool
    unsync: bool
    unsync_children: int
    gva: int


@dataclass(slots=True)
class ShadowView:
    vcpu: int
    cr3: int
    space: int
    guest: GuestTable | None
    shadow: ShadowTable | None
    walk: WalkStrip | None
    roots: list[RootRow]
    pages: list[PageRow]
    pages_more: int
    protected: list[int]
    unsync: list[int]
    inert: list[tuple[str, str]]
    shadow_pages: int
    changed: int
    guest_entries: int
    cr0_wp: bool
    efer_nx: bool


@dataclass(slots=True)
class PagingOffView:
    """A guest with paging off on a shadow host: the direct MMU, whose tree is the TDP one."""

    inert: list[tuple[str, str]]


def _vcpu_of(result: StepResult | None) -> int:
    if result is None:
        return 0
    op = result.op
    if isinstance(op, ReadStep | WriteStep | WriteGpteStep | InvlpgStep | SetCr3Step):
        return op.vcpu
    return 0


def shadow_view(shown: Shown, policy: Policy) -> ShadowView | PagingOffView | None:
    """The panel for a shadow-paging run (None under TDP)."""
    sim = shown.sim
    kvm = sim.kvm
    if kvm.mmu != "shadow":
        return None
    if not kvm.shadow:
        return PagingOffView(sorted(inert_under_shadow(policy, False).items()))
    tables = kvm.guest
    vcpu_id = _vcpu_of(shown.result)
    vcpu = kvm.vcpus[vcpu_id]
    paging: GuestPaging | None = vcpu.paging
    shadowed = shadowed_gfns(kvm)
    address = step_address(shown.result.op) if shown.result is not None else None
    peek: GuestPeek | None = None
    strip: WalkStrip | None = None
    if address is not None and paging is not None and tables is not None:
        what, _, gva, write = address
        peek = peek_guest_walk(kvm, tables, paging, gva, write=write)
        strip = walk_strip(kvm, what, vcpu_id, gva, write, peek)
    guest_walk = {(hop.table_gfn, hop.index) for hop in peek.hops} if peek is not None else set()
    changed: set[tuple[int, int]] = set()
    if shown.result is not None and isinstance(shown.result.op, WriteGpteStep):
        changed.add((shown.result.op.table, shown.result.op.index))
    guest_view: GuestTable | None = None
    entries = 0
    if paging is not None and tables is not None:
        builder = GuestTree(kvm, tables, shadowed, guest_walk, changed)
        guest_view = builder.table(paging.cr3, PT64_ROOT_LEVEL, 0, frozenset())
        entries = builder.entries
    root = vcpu_root(kvm, vcpu_id)
    shadow_walk: set[tuple[int, int]] = set()
    if address is not None and root is not None:
        shadow_walk = _shadow_path(kvm, root, address[2] >> PAGE_SHIFT)
    tree = _ShadowTree(kvm, shown.touched, shadow_walk)
    shadow_table = tree.table(root) if root is not None else None
    if shadow_table is not None:
        shadow_table.root = True
    pages = indirect_pages(kvm)
    directs = sorted(
        (sp for sp in kvm.active_mmu_pages.values() if sp.direct and not sp.invalid), key=lambda sp: sp.gfn
    )
    listed = [*pages, *directs]
    return ShadowView(
        vcpu=vcpu_id,
        cr3=paging.cr3 if paging is not None else 0,
        space=vcpu.space,
        guest=guest_view,
        shadow=shadow_table,
        walk=strip,
        roots=[
            RootRow(r.cr3, ", ".join(str(v) for v in r.vcpus), r.root_count, vcpu_id in r.vcpus)
            for r in shadow_roots(kvm)
        ],
        pages=[
            PageRow(sp.level, sp.gfn, sp.direct, sp.unsync, len(sp.unsync_children or ()), sp.gva)
            for sp in listed[:PAGES_LISTED]
        ],
        pages_more=max(0, len(listed) - PAGES_LISTED),
        protected=sorted(g for g, state in shadowed.items() if state == "protected"),
        unsync=sorted(g for g, state in shadowed.items() if state == "unsync"),
        inert=sorted(inert_under_shadow(policy, True).items()),
        shadow_pages=len(kvm.active_mmu_pages),
        changed=tree.changed,
        guest_entries=entries,
        cr0_wp=paging.cr0_wp if paging is not None else True,
        efer_nx=paging.efer_nx if paging is not None else True,
    )


def _shadow_path(kvm: Kvm, root: KvmMmuPage, vfn: int) -> set[tuple[int, int]]:
    """(serial, index) of each shadow entry the CPU reads for guest-virtual page `vfn`, root first, down
    to the leaf or the first entry not present."""
    return {(sp.serial, index) for _, sp, index, _ in for_each_shadow_entry(kvm, vfn, root)}
