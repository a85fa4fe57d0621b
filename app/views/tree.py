"""The page-table tree: which sptes are drawn one by one within the drawing budget, and how the rest
are summarised."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress, groupby
from typing import NamedTuple

from app.views.text import Location, hx, plural
from app.views.tree_fold import CollapsedView, RunView, SpteView, collapse, spte_kind
from engine.kvm import Kvm
from engine.ops.registry import op_spec
from engine.result import FLAG_MASK
from engine.shadow_page import KvmMmuPage
from engine.simulation import StepResult
from engine.spte import (
    PT64_ENT_PER_PAGE,
    PT_DIRECTORY_LEVEL,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    flag_word,
    is_large_pte,
    is_last_spte,
    is_shadow_present_pte,
    is_writable_pte,
    level_name,
    pages_per_hpage,
    spte_flags,
    spte_index,
)
from engine.tdp_iter import find_shadow_page, for_each_shadow_entry, for_each_tdp_pte, spte_to_child_sp

# A table with at most this many present entries is drawn entry by entry (budget permitting).
SMALL_TABLE = 64


@dataclass(slots=True)
class WalkHop:
    """One level of an address walk: the index the gfn selects there, and what the walk found."""

    level: int
    index: int
    # "table" (a pointer followed down), "leaf" (the walk ends at a present leaf), "absent" (the entry
    # is not present: the walk ends, a fault), "beyond" (below where the walk ended: the index only).
    state: str

    @property
    def name(self) -> str:
        """`L2[1]`, `L1[0x50]`: an index below ten reads the same in hex and in decimal."""
        return f"L{self.level}[{self.index if self.index < 10 else hx(self.index)}]"


@dataclass(slots=True)
class WalkView:
    """The step's gfn split into its per-level indices, root first, and where the walk ended."""

    gfn: int
    hops: list[WalkHop]

    @property
    def end(self) -> str:
        for hop in self.hops:
            if hop.state == "leaf":
                return f"{level_name(hop.level)} leaf {hop.name} maps it"
            if hop.state == "absent":
                return f"{hop.name} is not present: nothing maps it"
        return "no table maps it"


@dataclass(slots=True)
class TableView:
    level: int
    gfn: int
    span: int  # pages the whole table covers
    present: int
    summary: str
    items: list[SpteView | RunView] = field(default_factory=list)
    root: bool = False
    orphan: bool = False
    freed: bool = False
    changed: bool = False
    # `items` as the page draws them: runs of alike entries collapsed (the SVG export draws `items`).
    shown: list[SpteView | RunView | CollapsedView] = field(default_factory=list)

    @property
    def last_gfn(self) -> int:
        return self.gfn + self.span - 1


# Freed tables drawn as ghosts, the rest counted: no page is bigger because the step freed more.
FREED_TABLES_DRAWN = 8


@dataclass(slots=True)
class TreeView:
    root: TableView
    orphans: list[TableView]
    freed: list[TableView]
    drawn: int
    tables: int
    present: int
    large: int
    changed: int
    # Tables the step freed beyond the ones drawn (a recovery or zap can free hundreds at once).
    freed_hidden: int = 0
    walk: WalkView | None = None  # the step's address walk, for a guest access


def walk_gfn(result: StepResult | None) -> int | None:
    """The gfn whose walk a step shows: its first fault's, else a guest access's (its first page); None
    for a step that accesses no guest memory."""
    if result is None:
        return None
    if result.faults:
        return result.faults[0].gfn
    access = op_spec(result.op).access(result.op)
    if access is not None:
        return access.gfn
    return None


def _removed_what(kind: str, level: int, count: int) -> str:
    """What a run of entries removed this step had been, by the kind of their old value."""
    if kind == "ptr":
        return f"{'pointer' if count == 1 else 'pointers'} to L{level - 1} tables"
    return f"{level_name(level)} {'leaf' if count == 1 else 'leaves'}"


def _table_leaf_counts(kvm: Kvm, sp: KvmMmuPage) -> tuple[int, int]:
    """(present, writable) of a level-1 table, counted in bulk: every non-present spte holds the same
    value, and the 512 entries are the inner loop, read as raw W bits."""
    present = len(sp.spt) - sp.spt.count(kvm.masks.nonpresent)
    return present, len([s for s in sp.spt if s & PT_WRITABLE_MASK])  # the inner loop: raw W


class LeafCounts(NamedTuple):
    """What lies in and below a table: the tables, its large and 4K leaves, and how many of each are
    writable."""

    tables: int
    large: int
    small: int
    writable_large: int
    writable_small: int

    @property
    def writable(self) -> int:
        return self.writable_large + self.writable_small


def leaf_counts(kvm: Kvm, sp: KvmMmuPage) -> LeafCounts:
    """The leaves in and below `sp`: a walk down to 2M, each 4K table under it counted whole."""
    if sp.level == PT_PAGE_TABLE_LEVEL:
        present, writable = _table_leaf_counts(kvm, sp)
        return LeafCounts(1, 0, present, 0, writable)
    tables, large, small, writable_large, writable_small = 1, 0, 0, 0, 0
    end = sp.gfn + PT64_ENT_PER_PAGE * pages_per_hpage(sp.level)
    for it in for_each_tdp_pte(kvm, sp, sp.gfn, end, PT_DIRECTORY_LEVEL):
        spte = it.old_spte
        if is_large_pte(spte):
            large += 1
            writable_large += is_writable_pte(spte)
        elif it.level == PT_DIRECTORY_LEVEL:
            present, w = _table_leaf_counts(kvm, spte_to_child_sp(kvm, spte))
            tables, small, writable_small = tables + 1, small + present, writable_small + w
        else:
            tables += 1  # a table the walk goes down into
    return LeafCounts(tables, large, small, writable_large, writable_small)


def _leaves_text(large: int, small: int, writable: int, large_level: int = 2) -> str:
    parts = []
    if small:
        parts.append(plural(small, "× 4K leaf", "× 4K leaves").replace("1 ×", "1 ×"))
    if large:
        parts.append(plural(large, "× large leaf", "× large leaves"))
    total = small + large
    if not total:
        return "no leaves"
    text = ", ".join(parts)
    readonly = total - writable
    text += f"; {readonly} read-only, {writable} writable"
    return text


class TreeBuilder:
    """Walks the tables from the root and decides, entry by entry, what to draw."""

    def __init__(
        self,
        kvm: Kvm,
        touched: Mapping[tuple[KvmMmuPage, int], int],
        selected: Location | None,
        cap: int,
        walk: int | None = None,
    ) -> None:
        self.kvm = kvm
        self.cap = cap
        self.drawn = 0
        self.changed_count = 0
        self.selected = selected
        # Entries this step changed (old value), per live table.
        self.changes: dict[int, dict[int, int]] = {}
        self.freed_pages: dict[int, KvmMmuPage] = {}
        for (sp, index), old in touched.items():
            if sp.invalid or sp.serial not in kvm.active_mmu_pages:
                if is_shadow_present_pte(old):
                    self.freed_pages[sp.serial] = sp
                    self.changes.setdefault(sp.serial, {})[index] = old
                continue
            if sp.spt[index] != old:
                self.changes.setdefault(sp.serial, {})[index] = old
        self.changed_count = sum(len(v) for s, v in self.changes.items() if s not in self.freed_pages)
        # Entries that must be drawn: changed ones, and the pointers leading to them, while the budget
        # lasts; the selected one and its path always.
        self.must: dict[int, set[int]] = {}
        self.always: dict[int, set[int]] = {}
        for serial, entries in self.changes.items():
            if serial in self.freed_pages:
                continue
            sp = kvm.active_mmu_pages[serial]
            self._need(self.must, sp, set(entries))
        if selected is not None:
            table = self.find(selected[0], selected[1])
            if table is not None:
                self._need(self.always, table, {selected[2]})
        # The walk's entries are always drawn, as the selected one is: at most one per level.
        self.walk: WalkView | None = None
        self.walk_marks: set[Location] = set()
        if walk is not None:
            self.walk = self._walk(walk)

    def _walk(self, gfn: int) -> WalkView:
        """The walk the MMU makes for `gfn` from the root (as __direct_map and fast_page_fault's
        walk_shadow_page_lockless do): one index per level, down to the leaf or the entry not present."""
        hops: list[WalkHop] = []
        for level, sp, index, spte in for_each_shadow_entry(self.kvm, gfn):
            self.walk_marks.add((sp.level, sp.gfn, index))
            if not is_shadow_present_pte(spte):
                hops.append(WalkHop(level, index, "absent"))
            elif is_last_spte(spte, level):
                hops.append(WalkHop(level, index, "leaf"))
            else:
                hops.append(WalkHop(level, index, "table"))
        for beyond in range(level - 1, 0, -1):
            hops.append(WalkHop(beyond, spte_index(gfn, beyond), "beyond"))
        self._need(self.always, sp, {index})
        return WalkView(gfn, hops)

    def find(self, level: int, gfn: int) -> KvmMmuPage | None:
        return find_shadow_page(self.kvm, gfn, level)

    @staticmethod
    def _need(into: dict[int, set[int]], sp: KvmMmuPage, indices: set[int]) -> None:
        seen: set[int] = set()
        stack = [(sp, indices)]
        while stack:
            page, wanted = stack.pop()
            into.setdefault(page.serial, set()).update(wanted)
            if page.serial in seen:
                continue
            seen.add(page.serial)
            for parent, index in page.parent_ptes:
                stack.append((parent, {index}))

    def build(self) -> TreeView:
        kvm = self.kvm
        root = self.table(kvm.root)
        root.root = True
        orphans = [
            self.table(sp, orphan=True)
            for sp in kvm.active_mmu_pages.values()
            if sp is not kvm.root and not sp.parent_ptes and not sp.invalid
        ]
        gone = list(self.freed_pages.values())
        freed = [self.freed_table(sp) for sp in gone[:FREED_TABLES_DRAWN]]
        # Every non-present spte holds the same value (no MMIO sptes), so counting is list.count's job;
        # the present large leaves are counted at the spte choke point, which the invariants check.
        nonpresent = kvm.masks.nonpresent
        present = sum(len(sp.spt) - sp.spt.count(nonpresent) for sp in kvm.active_mmu_pages.values())
        large = kvm.stat.large_leaves
        return TreeView(
            root,
            orphans,
            freed,
            self.drawn,
            len(kvm.active_mmu_pages),
            present,
            large,
            self.changed_count,
            len(gone) - len(freed),
            self.walk,
        )

    def _entry(
        self, sp: KvmMmuPage, index: int, value: int, old: int | None, ghost: bool = False
    ) -> SpteView:
        span = pages_per_hpage(sp.level)
        view = SpteView(
            level=sp.level,
            sp_gfn=sp.gfn,
            index=index,
            value=value,
            word=flag_word(value, self.kvm.masks),
            kind=spte_kind(value, sp.level),
            gfn=sp.gfn + index * span,
            span=span,
            old=old,
            ghost=ghost,
            selected=self.selected == (sp.level, sp.gfn, index),
            walk=not ghost and (sp.level, sp.gfn, index) in self.walk_marks,
        )
        same_kind = old is not None and is_shadow_present_pte(old) and spte_kind(old, sp.level) == view.kind
        if old is not None and same_kind and not ghost:
            view.old_word = flag_word(old, self.kvm.masks)
        if view.kind == "large" and is_writable_pte(value) and not ghost:
            slot = self.kvm.gfn_to_memslot(view.gfn)
            if slot is not None and slot.dirty_bitmap is not None:
                view.warning = (
                    f"writable while slot {slot.id} is dirty-logged: stores anywhere in"
                    f" {hx(view.gfn)}–{hx(view.gfn + view.span - 1)} set no dirty bit"
                )
        if view.old_word is not None:
            self._judge_change(view)
        self.drawn += 1
        return view

    def _judge_change(self, view: SpteView) -> None:
        """Mark a change that leaves a leaf writable where the invariants forbid it (engine/invariants.py):
        W without both HW and MW, or a store that could go unlogged on a dirty-logged slot (a writable
        large spte, or a writable 4K spte whose page's dirty bit is clear). The bit blamed is W when the
        step set it, else the first flag it changed."""
        value = view.value
        if view.kind == "ptr" or not is_writable_pte(value):
            return
        changes = view.bit_changes
        if not changes:
            return
        kvm = self.kvm
        danger = ""
        lockless = kvm.masks.lockless_mask
        slot = kvm.gfn_to_memslot(view.gfn)
        if value & lockless != lockless:
            danger = "w_implies_hw_mw"
        elif slot is not None and slot.dirty_bitmap is not None:
            if view.kind == "large":
                if not slot.all_dirty(view.gfn, view.span):
                    danger = "no_writable_large_while_logging"
            elif not kvm.cpu_dirty_log_size:
                offset = view.gfn - slot.base_gfn
                if not slot.dirty_bitmap[offset >> 3] >> (offset & 7) & 1:
                    danger = "writable_implies_dirty_bit"
        if danger:
            view.danger = danger
            names = [name for name, _, _ in changes]
            view.danger_bit = "W" if "W" in names else names[0]

    def table(self, sp: KvmMmuPage, orphan: bool = False) -> TableView:
        kvm = self.kvm
        spt = sp.spt
        nonpresent = kvm.masks.nonpresent
        present = list(compress(range(len(spt)), map(nonpresent.__ne__, spt)))
        changes = self.changes.get(sp.serial, {})
        must = self.must.get(sp.serial, set())
        always = self.always.get(sp.serial, set())
        span = pages_per_hpage(sp.level) * 512
        view = TableView(sp.level, sp.gfn, span, len(present), "", orphan=orphan, changed=bool(must))
        if sp.level == 1:
            writable = sum(1 for i in present if spt[i] & PT_WRITABLE_MASK)  # the inner loop: raw W
            view.summary = _leaves_text(0, len(present), writable) if present else "empty"
        else:
            view.summary = f"{len(present)} of 512 entries present" if present else "empty"
        indices = sorted(set(present) | {i for i, old in changes.items() if is_shadow_present_pte(old)})
        whole = len(present) <= SMALL_TABLE and self.drawn + len(present) <= self.cap
        if not whole and not changes and not must and not always:
            view.items.extend(self.fold(sp, indices))  # nothing in it to draw one by one
            view.shown = collapse(view.items, always, sp.level, sp.gfn)
            return view
        pending: list[int] = []
        for index in indices:
            spte = spt[index]
            old = changes.get(index)
            ghost = not is_shadow_present_pte(spte)
            forced = index in always or (index in must and self.drawn < self.cap)
            if forced or (whole and old is None) or (ghost and self.drawn < self.cap):
                if pending:
                    view.items.extend(self.fold(sp, pending))
                    pending = []
                entry = self._entry(sp, index, old if ghost and old is not None else spte, old, ghost)
                if entry.kind == "ptr" and not ghost:
                    child = spte_to_child_sp(kvm, spte)
                    if forced or self.drawn < self.cap:
                        entry.child = self.table(child)
                    else:
                        entry.child_note = self._below(child)
                view.items.append(entry)
            else:
                pending.append(index)
        if pending:
            view.items.extend(self.fold(sp, pending))
        view.shown = collapse(view.items, always, sp.level, sp.gfn)
        return view

    def _selected(self, sp: KvmMmuPage, index: int) -> bool:
        return self.selected == (sp.level, sp.gfn, index)

    def _below(self, child: KvmMmuPage) -> str:
        counts = leaf_counts(self.kvm, child)
        tables, large, small, writable = counts.tables, counts.large, counts.small, counts.writable
        return f"{plural(tables, 'table')} below: {_leaves_text(large, small, writable)}"

    def fold(self, sp: KvmMmuPage, indices: list[int]) -> list[RunView]:
        """Runs of consecutive entries with the same kind and flags, each one line. Within one table the
        kind follows from the low twelve bits, so those and "changed this step" are the run's key."""
        spt = sp.spt
        changes = self.changes.get(sp.serial, {})
        must = self.must.get(sp.serial, set())
        runs: list[RunView] = []

        # An entry removed this step is non-present now: it folds with the others removed, named by the
        # kind it had (a leaf zapped is not a pointer, whatever its empty value's bits say).
        # The key is the inner loop over a table's entries: it reads R as a raw bit.
        def key(i: int) -> tuple[int, bool, str, bool]:
            gone = not spt[i] & PT_PRESENT_MASK
            return (
                spt[i] & FLAG_MASK,
                i in changes,
                spte_kind(changes[i], sp.level) if gone and i in changes else "",
                i in changes and not changes[i] & PT_PRESENT_MASK,
            )

        for (_, changed, was, new), members in groupby(indices, key=key):
            group = list(members)
            kind = "gone" if was else spte_kind(spt[group[0]], sp.level)
            run = self._run(sp, group, kind, changed or any(i in must for i in group), was)
            if kind != "ptr" and group[-1] - group[0] + 1 == len(group):
                change = "gone" if was else ("new" if new else "was") if changed else ""
                words = {flag_word(changes[i] if was else spt[i], self.kvm.masks) for i in group[:2]}
                if was:  # the removed values were not grouped by their flags
                    words = {flag_word(changes[i], self.kvm.masks) for i in group}
                if len(words) == 1:
                    run.alike = (was or kind, change, words.pop())
            runs.append(run)
        return runs

    def _run(self, sp: KvmMmuPage, group: list[int], kind: str, changed: bool, was: str = "") -> RunView:
        spt = sp.spt
        first, last = group[0], group[-1]
        span = pages_per_hpage(sp.level)
        gfns = f"gfns {hx(sp.gfn + first * span)}–{hx(sp.gfn + (last + 1) * span - 1)}"
        flags = " ".join(spte_flags(spt[first], self.kvm.masks))
        count = len(group)
        if kind == "gone":
            return RunView(
                first,
                last,
                count,
                f"{count} × {_removed_what(was, sp.level, count)} removed this step, {gfns}",
                True,
            )
        if kind == "ptr":
            tables = large = small = writable = 0
            for index in group:
                c = leaf_counts(self.kvm, spte_to_child_sp(self.kvm, spt[index]))
                t, lg, sm, w = c.tables, c.large, c.small, c.writable
                tables, large, small, writable = tables + t, large + lg, small + sm, writable + w
            text = (
                f"{plural(count, 'pointer')} to L{sp.level - 1} tables, {gfns}; below:"
                f" {plural(tables, 'table')}, {_leaves_text(large, small, writable)}"
            )
        else:
            size = level_name(sp.level)
            text = f"{count} × {size} {'leaf' if count == 1 else 'leaves'}, {gfns}, all {flags}"
        if changed:
            text += " (changed this step)" if kind != "ptr" else " (changes below this step)"
        return RunView(first, last, count, text, changed)

    def freed_table(self, sp: KvmMmuPage) -> TableView:
        changes = self.changes.get(sp.serial, {})
        span = pages_per_hpage(sp.level) * 512
        view = TableView(sp.level, sp.gfn, span, 0, "freed this step", freed=True, changed=True)
        for index in sorted(changes)[: max(0, self.cap - self.drawn)]:
            old = changes[index]
            view.items.append(self._entry(sp, index, old, old, ghost=True))
        if len(changes) > len(view.items):
            view.items.append(
                RunView(
                    0, 511, len(changes) - len(view.items), f"{len(changes) - len(view.items)} more removed"
                )
            )
        view.shown = collapse(view.items, set(), sp.level, sp.gfn)
        return view
