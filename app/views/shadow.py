"""The shadow-paging panel's data: the guest's page tables of one vCPU's address space beside the shadow
tables KVM built for them, the step's GVA → GPA → HPA walk through both, and the roots, indirect pages
and write-protected gfns.

Under shadow paging the TDP tree's premise, that an entry's gfn follows from its position, no longer
holds: an indirect shadow page is named by the guest table it shadows and each leaf maps a guest-virtual
page to whatever gfn the guest PTE said. So this panel draws its own two trees, folded by the same rule
as the TDP tree (small tables whole, alike runs of big ones on one line, the step's changes and walk
always drawn), and reads everything through engine.shadow_query, which changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from app.replay import Shown
from app.views.text import hx, plural
from engine.guest_pt import GuestPageTables, GuestPaging, gpte_to_gfn_lvl, is_last_gpte
from engine.kvm import Kvm
from engine.ops.access import ReadStep, WriteStep
from engine.ops.guest_paging import InvlpgStep, SetCr3Step, WriteGpteStep
from engine.policy import Policy, inert_under_shadow
from engine.shadow_cpu import shadow_leaf
from engine.shadow_mmu import gva_of_entry
from engine.shadow_page import ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK, KvmMmuPage, kvm_mmu_page_get_gfn
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
    PT64_LEVEL_BITS,
    PT64_NX_MASK,
    PT64_ROOT_LEVEL,
    PT_ACCESSED_MASK,
    PT_DIRTY_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_USER_MASK,
    PT_WRITABLE_MASK,
    flag_word,
    is_shadow_present_pte,
    level_name,
    pages_per_hpage,
    spte_to_pfn,
)
from engine.trace_shadow import ShadowGuestAccess

# A table with at most this many present entries is drawn whole (budget permitting); a bigger one shows
# the entries that matter this step and folds the rest into runs.
SMALL_TABLE = 16
# Entries drawn one by one in each tree: a 4 GiB identity map must not become a page of 2 000 rows.
DRAW_CAP = 120
# Folded lines per table, the last summing up the rest.
MAX_RUNS = 8
# PS among the contract's flags (engine.spte.flag_word).
FLAG_PS = dict(FLAG_BITS)["PS"]
# The indirect pages listed in the legend.
PAGES_LISTED = 24

GUEST_LEVEL_NAMES = {4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}
# The bits entries of one folded run share.
RUN_BITS = PT_WRITABLE_MASK | PT_USER_MASK | PT_ACCESSED_MASK | PT_DIRTY_MASK
RUN_BITS |= PT_PAGE_SIZE_MASK | PT64_NX_MASK
GUEST_BITS = (
    ("P", PT_PRESENT_MASK),
    ("W", PT_WRITABLE_MASK),
    ("U", PT_USER_MASK),
    ("A", PT_ACCESSED_MASK),
    ("D", PT_DIRTY_MASK),
    ("PS", PT_PAGE_SIZE_MASK),
    ("NX", PT64_NX_MASK),
)


def guest_bits(pte: int) -> list[tuple[str, bool]]:
    """The guest PTE's bits in the order the page shows them: P W U A D PS NX, each set or clear."""
    return [(name, bool(pte & mask)) for name, mask in GUEST_BITS]


def rights_text(access: int) -> str:
    """mmu.h's ACC_* rights as letters: R always (a present entry reads), W, U, X where granted."""
    out = "R"
    out += "W" if access & ACC_WRITE_MASK else "-"
    out += "U" if access & ACC_USER_MASK else "-"
    out += "X" if access & ACC_EXEC_MASK else "-"
    return out


def _span_bytes(level: int) -> int:
    return 1 << (PAGE_SHIFT + PT64_LEVEL_BITS * (level - 1))


# --- the guest's tables ----------------------------------------------------------------------------------


@dataclass(slots=True)
class FoldedRun:
    """Alike entries of one table on one line."""

    first: int
    last: int
    count: int
    text: str
    changed: bool = False


@dataclass(slots=True)
class GuestEntry:
    level: int
    index: int
    pte: int
    leaf: bool
    target: int  # the table's gfn, or the first gfn of the page
    gva: int  # the first guest-virtual address the entry translates
    bits: list[tuple[str, bool]]
    walk: bool = False
    changed: bool = False
    child: GuestTable | None = None
    child_note: str = ""

    @property
    def size(self) -> str:
        return level_name(self.level)


@dataclass(slots=True)
class GuestTable:
    level: int
    gfn: int
    gva: int
    present: int
    mark: str  # "protected" (shadowed, write-protected), "unsync", or ""
    items: list[GuestEntry | FoldedRun] = field(default_factory=list)

    @property
    def name(self) -> str:
        return GUEST_LEVEL_NAMES[self.level]


class _GuestTree:
    def __init__(
        self,
        kvm: Kvm,
        tables: GuestPageTables,
        shadowed: Mapping[int, str],
        walk: set[tuple[int, int]],
        changed: set[tuple[int, int]],
    ) -> None:
        self.kvm = kvm
        self.tables = tables
        self.shadowed = shadowed
        self.walk = walk
        self.changed = changed
        self.drawn = 0
        self.entries = 0
        # The walk's and the step's entries are always drawn; so are the pointers down to a table KVM
        # shadows or the step wrote (while the budget lasts), so that its mark is on screen.
        self.forced: set[tuple[int, int]] = set(walk) | set(changed)
        self.wanted = self._ancestors(set(shadowed) | {table for table, _ in changed})

    def _ancestors(self, targets: set[int]) -> set[int]:
        """`targets` and every guest table that points (through any chain) at one of them."""
        parents: dict[int, set[int]] = {}
        for gfn, ptes in self.tables.tables.items():
            for pte in ptes:
                if pte & PT_PRESENT_MASK and not pte & PT_PAGE_SIZE_MASK:
                    parents.setdefault(gpte_to_gfn_lvl(pte, 1), set()).add(gfn)
        out: set[int] = set()
        stack = list(targets)
        while stack:
            gfn = stack.pop()
            if gfn in out:
                continue
            out.add(gfn)
            stack.extend(parents.get(gfn, ()))
        return out

    def table(self, gfn: int, level: int, gva: int, seen: frozenset[int]) -> GuestTable:
        ptes = self.tables.tables.get(gfn)
        present = [i for i, pte in enumerate(ptes) if pte & PT_PRESENT_MASK] if ptes else []
        self.entries += len(present)
        view = GuestTable(level, gfn, gva, len(present), self.shadowed.get(gfn, ""))
        whole = len(present) <= SMALL_TABLE and self.drawn + len(present) <= DRAW_CAP
        pending: list[int] = []
        for index in present:
            pte = ptes[index] if ptes else 0
            key = (gfn, index)
            forced = key in self.forced or self._leads_to_wanted(pte, level, seen)
            if forced or whole:
                if pending:
                    view.items.extend(self._fold(gfn, level, gva, ptes or [], pending))
                    pending = []
                view.items.append(self._entry(gfn, level, gva, index, pte, seen | {gfn}, forced))
            else:
                pending.append(index)
        if pending:
            view.items.extend(self._fold(gfn, level, gva, ptes or [], pending))
        return view

    def _leads_to_wanted(self, pte: int, level: int, seen: frozenset[int]) -> bool:
        """Whether a pointer leads to a table KVM shadows or the step wrote (within the budget)."""
        if level == 1 or is_last_gpte(level, pte):
            return False
        child = gpte_to_gfn_lvl(pte, 1)
        return child in self.wanted and child not in seen and self.drawn < DRAW_CAP

    def _entry(
        self, gfn: int, level: int, gva: int, index: int, pte: int, seen: frozenset[int], forced: bool
    ) -> GuestEntry:
        leaf = level == 1 or is_last_gpte(level, pte)
        entry_gva = gva + index * _span_bytes(level)
        entry = GuestEntry(
            level, index, pte, leaf, gpte_to_gfn_lvl(pte, level if leaf else 1), entry_gva, guest_bits(pte),
            walk=(gfn, index) in self.walk, changed=(gfn, index) in self.changed,
        )  # fmt: skip
        self.drawn += 1
        if not leaf:
            child = entry.target
            if child in seen:
                entry.child_note = f"table {hx(child)} again (a loop in the guest's tables)"
            elif forced or self.drawn < DRAW_CAP:
                entry.child = self.table(child, level - 1, entry_gva, seen)
            else:
                ptes = self.tables.tables.get(child)
                count = sum(1 for p in ptes if p & PT_PRESENT_MASK) if ptes else 0
                entry.child_note = f"{GUEST_LEVEL_NAMES[level - 1]} {hx(child)}: {count} present, not drawn"
        return entry

    def _fold(self, gfn: int, level: int, gva: int, ptes: list[int], indices: list[int]) -> list[FoldedRun]:
        """Consecutive entries of the same kind and bits, leaves mapping consecutive pages, as one line."""
        runs: list[FoldedRun] = []
        start = 0
        for k in range(1, len(indices) + 1):
            if k < len(indices) and self._continues(level, ptes, indices[k - 1], indices[k]):
                continue
            group = indices[start:k]
            runs.append(self._run_text(level, gva, ptes, group))
            start = k
        return _cap_runs(runs)

    @staticmethod
    def _continues(level: int, ptes: list[int], a: int, b: int) -> bool:
        if b != a + 1:
            return False
        pa, pb = ptes[a], ptes[b]
        if (pa ^ pb) & RUN_BITS:
            return False
        leaf = level == 1 or is_last_gpte(level, pa)
        if not leaf:
            return True
        return gpte_to_gfn_lvl(pb, level) - gpte_to_gfn_lvl(pa, level) == pages_per_hpage(level)

    @staticmethod
    def _run_text(level: int, gva: int, ptes: list[int], group: list[int]) -> FoldedRun:
        first, last = group[0], group[-1]
        pte = ptes[first]
        leaf = level == 1 or is_last_gpte(level, pte)
        span = _span_bytes(level)
        lo, hi = gva + first * span, gva + (last + 1) * span - 1
        bits = " ".join(name for name, on in guest_bits(pte) if on)
        count = len(group)
        if leaf:
            g0 = gpte_to_gfn_lvl(pte, level)
            g1 = gpte_to_gfn_lvl(ptes[last], level) + pages_per_hpage(level) - 1
            what = "leaf" if count == 1 else "leaves"
            text = f"{count} × {level_name(level)} {what}, gva {hx(lo)}–{hx(hi)}"
            text += f" → gfns {hx(g0)}–{hx(g1)}, {bits}"
        else:
            below = GUEST_LEVEL_NAMES[level - 1]
            text = f"{plural(count, 'pointer')} to {below} tables, gva {hx(lo)}–{hx(hi)}, {bits}"
        return FoldedRun(first, last, count, text)


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
        last = self.gva + _span_bytes(self.level) - 1
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
            hi = gva_of_entry(sp, last) + _span_bytes(sp.level) - 1
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
        return _cap_runs(runs)


def _cap_runs(runs: list[FoldedRun]) -> list[FoldedRun]:
    """The first MAX_RUNS - 1 runs, and one line for the rest: a table whose entries differ one from the
    next (A and D bits vary with every access) would otherwise be a line per entry."""
    if len(runs) <= MAX_RUNS:
        return runs
    rest = runs[MAX_RUNS - 1 :]
    count = sum(run.count for run in rest)
    changed = sum(run.count for run in rest if run.changed)
    text = f"{count} more entries, in {len(rest)} runs of differing flags"
    if changed:
        text += f" ({changed} changed this step)"
    return [*runs[: MAX_RUNS - 1], FoldedRun(rest[0].first, rest[-1].last, count, text, bool(changed))]


def _flag_names(word: int) -> list[str]:
    return [name for name, bit in FLAG_BITS if word & bit]


# --- the walk strip --------------------------------------------------------------------------------------


@dataclass(slots=True)
class StripHop:
    level: int
    name: str  # PML4, PDPT, PD, PT
    table_gfn: int
    index: int
    pte: int
    bits: list[tuple[str, bool]]
    leaf: bool
    state: str  # "table", "leaf", "absent", "no memory"


@dataclass(slots=True)
class WalkStrip:
    """The step's access through both translations: the guest's walk, the gfn and its memslot, the host
    page, and the shadow spte that maps the address now (or why none does)."""

    what: str  # "read", "write", "store of a guest PTE", "invlpg"
    vcpu: int
    gva: int
    hops: list[StripHop]
    gfn: int | None
    slot: int | None
    rights: str
    fault: str  # why the guest walk fails ("" when it succeeds)
    pfn: int | None
    spte_text: str
    spte_word: int | None
    spte_user: bool
    spte_level: int | None


def step_address(op: object) -> tuple[str, int, int, bool] | None:
    """(what, vcpu, gva, write) of a step that touches one guest-virtual address, else None."""
    if isinstance(op, WriteStep | ReadStep):
        write = isinstance(op, WriteStep)
        return ("write" if write else "read"), op.vcpu, op.address, write
    if isinstance(op, WriteGpteStep):
        return "store of a guest PTE", op.vcpu, (op.table << PAGE_SHIFT) + op.index * 8, True
    if isinstance(op, InvlpgStep):
        return "invlpg", op.vcpu, op.gva, False
    return None


def _strip(kvm: Kvm, what: str, vcpu: int, gva: int, write: bool, peek: GuestPeek) -> WalkStrip:
    hops = []
    for hop in peek.hops:
        reached = peek.ok and hop is peek.hops[-1]
        if not hop.in_memory:
            state = "no memory"
        elif not hop.pte & PT_PRESENT_MASK:
            state = "absent"
        else:
            state = "leaf" if reached or (hop is peek.hops[-1] and peek.fault == "rights") else "table"
        name = GUEST_LEVEL_NAMES[hop.level]
        bits = guest_bits(hop.pte)
        leafy = state == "leaf"
        hops.append(StripHop(hop.level, name, hop.table_gfn, hop.index, hop.pte, bits, leafy, state))
    slot = kvm.gfn_to_memslot(peek.gfn) if peek.gfn is not None else None
    at = GUEST_LEVEL_NAMES[peek.leaf_level]
    fault = {
        "not present": f"the guest's {at} entry is not present: the guest takes a #PF",
        "no memory": f"the guest's {at} at {hx(peek.hops[-1].table_gfn)} is outside every memslot:"
        " the walk cannot read it",
        "rights": "the guest's PTEs deny the write (W clear, CR0.WP set): the guest takes a #PF",
        "": "",
    }[peek.fault]
    if peek.ok and slot is None:
        fault = f"gfn {hx(peek.gfn or 0)} is in no memslot: the access is emulated as MMIO"
    leaf = shadow_leaf(kvm, kvm.vcpus[vcpu], gva >> PAGE_SHIFT)
    pfn: int | None = None
    spte_word: int | None = None
    spte_user = False
    spte_level: int | None = None
    if leaf is not None:
        sp, index, spte = leaf
        offset = (gva >> PAGE_SHIFT) & (pages_per_hpage(sp.level) - 1)
        pfn = spte_to_pfn(spte) + offset
        spte_word = flag_word(spte, kvm.masks)
        spte_user = bool(spte & kvm.masks.user_mask)
        spte_level = sp.level
        owner = f"direct table {hx(sp.gfn)}" if sp.direct else f"the shadow of guest table {hx(sp.gfn)}"
        spte_text = f"L{sp.level}[{hx(index)}] of {owner}: {level_name(sp.level)} spte {hx(spte)}"
    else:
        spte_text = "no shadow spte maps it: the next access takes a #PF exit"
        if slot is not None and peek.gfn is not None:
            pfn = slot.gfn_to_pfn(peek.gfn)
    return WalkStrip(
        what, vcpu, gva, hops, peek.gfn, slot.id if slot is not None else None,
        rights_text(peek.access) if peek.ok or peek.fault == "rights" else "", fault, pfn, spte_text,
        spte_word, spte_user, spte_level,
    )  # fmt: skip


# --- how a step's accesses ended -------------------------------------------------------------------------

# How one access ended (ShadowGuestAccess.via) as an answer key; the worst of several wins.
_BY_VIA = {"tlb": "none", "walk": "none", "fault": "fixed", "emulated": "emulated", "guest_pf": "guest_pf"}
_RANK = ("none", "fixed", "emulated", "mmio", "guest_pf", "livelock")

def shadow_outcome(result: StepResult) -> str:
    """The answer key: from the step's guest_access events when it was traced, else from its fault count
    (which cannot tell an emulated store from a fixed fault, nor a #PF handed to the guest)."""
    if result.events is None:
        return "fixed" if result.fault_counts.get("slow", 0) else "none"
    outcomes = {_BY_VIA.get(e.via, e.via) for e in result.events if isinstance(e, ShadowGuestAccess)}
    return max(outcomes, key=_RANK.index, default="none") if outcomes <= set(_RANK) else "fixed"


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
        strip = _strip(kvm, what, vcpu_id, gva, write, peek)
    guest_walk = {(hop.table_gfn, hop.index) for hop in peek.hops} if peek is not None else set()
    changed: set[tuple[int, int]] = set()
    if shown.result is not None and isinstance(shown.result.op, WriteGpteStep):
        changed.add((shown.result.op.table, shown.result.op.index))
    guest_view: GuestTable | None = None
    entries = 0
    if paging is not None and tables is not None:
        builder = _GuestTree(kvm, tables, shadowed, guest_walk, changed)
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
    out: set[tuple[int, int]] = set()
    sp: KvmMmuPage | None = root
    level = PT64_ROOT_LEVEL
    while sp is not None:
        index = (vfn >> (PT64_LEVEL_BITS * (level - 1))) & 511
        out.add((sp.serial, index))
        spte = sp.spt[index]
        if not is_shadow_present_pte(spte) or level == 1 or spte & PT_PAGE_SIZE_MASK:
            break
        sp = kvm.sp_by_pfn.get(spte_to_pfn(spte))
        level -= 1
    return out
