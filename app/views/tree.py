"""The page-table tree: which sptes are drawn one by one within the drawing budget, and how the rest
are summarised."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress, groupby

from app.views.text import Location, bit_changes, bits_text, flags_text, hx, location_param, plural
from engine.kvm import Kvm
from engine.ops.registry import op_spec
from engine.result import FLAG_MASK
from engine.shadow_page import KvmMmuPage
from engine.simulation import StepResult
from engine.spte import (
    PT64_BASE_ADDR_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    flag_word,
    level_name,
    pages_per_hpage,
    spte_flags,
    spte_index,
    spte_to_pfn,
)

# A table with at most this many present entries is drawn entry by entry (budget permitting).
SMALL_TABLE = 64


@dataclass(slots=True)
class SpteView:
    level: int
    sp_gfn: int
    index: int
    value: int
    word: int  # the value's flags at fixed positions (engine.spte.flag_word), whatever the layout
    kind: str  # "ptr" | "large" | "4k"
    gfn: int
    span: int
    old: int | None = None  # the value before this step, when the step changed it
    ghost: bool = False
    selected: bool = False
    child: TableView | None = None
    child_note: str = ""
    warning: str = ""
    # The flag word of the value before the step, when the step rewrote a present spte and left it the
    # same kind (not one it created, removed, or turned from a leaf into a pointer or back, whose every
    # bit means something else): the per-bit changes are read from it.
    old_word: int | None = None
    # The invariant the step's change breaks (engine/invariants.py's name), and the bit whose change did.
    danger: str = ""
    danger_bit: str = ""
    walk: bool = False  # on the path the step's access walked (TreeView.walk)

    @property
    def changed(self) -> bool:
        return self.old is not None

    @property
    def bit_changes(self) -> tuple[tuple[str, bool, bool], ...]:
        """Each flag the step changed: (name, was set, is set), e.g. ("W", False, True)."""
        return () if self.old_word is None else bit_changes(self.old_word, self.word)

    @property
    def old_kind(self) -> str:
        """What the spte was before the step, when it was something else: "2M leaf", "table pointer"."""
        if self.old is None or not self.old & PT_PRESENT_MASK:
            return ""
        was = spte_kind(self.old, self.level)
        if was == self.kind and not self.ghost:
            return ""
        return {"large": f"{level_name(self.level)} leaf", "4k": "4K leaf"}.get(was, "table pointer")

    @property
    def flags(self) -> str:
        return flags_text(self.word)

    @property
    def bits(self) -> str:
        """The eight flags in their fixed order, an unset one as a dot: `R · X PS A D HW MW`."""
        return bits_text(self.word)

    @property
    def pfn(self) -> int:
        return spte_to_pfn(self.value)

    @property
    def param(self) -> str:
        return location_param((self.level, self.sp_gfn, self.index))

    @property
    def size(self) -> str:
        return level_name(self.level) if self.kind != "ptr" else f"L{self.level - 1} table"

    @property
    def target(self) -> str:
        """What the entry maps: `gfn 0x250 → pfn 0x80050` or a range for a large leaf."""
        if self.kind == "ptr":
            return f"gfns {hx(self.gfn)}–{hx(self.gfn + self.span - 1)}"
        if self.kind == "large":
            return f"gfns {hx(self.gfn)}–{hx(self.gfn + self.span - 1)} → pfn {hx(self.pfn)}"
        return f"gfn {hx(self.gfn)} → pfn {hx(self.pfn)}"


@dataclass(slots=True)
class RunView:
    """Entries of one table folded into one line: alike, consecutive and not worth drawing one by one."""

    first: int
    last: int
    count: int
    text: str
    changed: bool = False
    # For a run of leaves: what an entry drawn one by one must share with it to be collapsed with it.
    alike: tuple[str, str, int] | None = None

    @property
    def kind(self) -> str:
        return "run"


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
class CollapsedView:
    """Consecutive alike entries of one table drawn as one line that opens in place: the same kind, the
    same change this step (new, changed, removed or none), the same flags. `rows` are the entries drawn
    one by one inside it; `rest` the run of further alike entries the drawing budget summarised."""

    first: int
    last: int
    count: int
    gfn: int
    last_gfn: int
    text: str
    rows: list[SpteView | RunView]
    rest: RunView | None = None
    changed: bool = False
    ghost: bool = False
    # A repeating pattern of entries and runs (every eighth page rewritten: 1 writable + 7 read-only):
    # how many times it repeats; 0 for entries all alike.
    repeats: int = 0

    @property
    def kind(self) -> str:
        return "collapsed"


# Fewer alike entries than this in a row are drawn one by one: a line that opens would hide too little.
COLLAPSE_MIN = 4


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


def spte_kind(spte: int, level: int) -> str:
    if level == 1:
        return "4k"
    return "large" if spte & PT_PAGE_SIZE_MASK else "ptr"


def _removed_what(kind: str, level: int, count: int) -> str:
    """What a run of entries removed this step had been, by the kind of their old value."""
    if kind == "ptr":
        return f"{'pointer' if count == 1 else 'pointers'} to L{level - 1} tables"
    return f"{level_name(level)} {'leaf' if count == 1 else 'leaves'}"


def _leaf_counts(kvm: Kvm, sp: KvmMmuPage) -> tuple[int, int, int, int]:
    """(tables, large leaves, 4K leaves, writable leaves) below and in `sp`."""
    level = sp.level
    if level == PT_PAGE_TABLE_LEVEL:  # only 4K leaves; every non-present spte holds the same value
        present = len(sp.spt) - sp.spt.count(kvm.masks.nonpresent)
        return 1, 0, present, len([s for s in sp.spt if s & PT_WRITABLE_MASK])
    tables, large, small, writable = 1, 0, 0, 0
    for spte in sp.spt:
        if not spte & PT_PRESENT_MASK:
            continue
        if level == 1 or spte & PT_PAGE_SIZE_MASK:
            if level == 1:
                small += 1
            else:
                large += 1
            if spte & PT_WRITABLE_MASK:
                writable += 1
        else:
            child = kvm.sp_by_pfn.get((spte & PT64_BASE_ADDR_MASK) >> 12)
            if child is not None:
                t, lg, sm, w = _leaf_counts(kvm, child)
                tables, large, small, writable = tables + t, large + lg, small + sm, writable + w
    return tables, large, small, writable


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
                if old & PT_PRESENT_MASK:
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
        kvm = self.kvm
        hops: list[WalkHop] = []
        sp: KvmMmuPage | None = kvm.root
        last: tuple[KvmMmuPage, int] | None = None
        for level in range(kvm.root.level, 0, -1):
            index = spte_index(gfn, level)
            if sp is None:
                hops.append(WalkHop(level, index, "beyond"))
                continue
            spte = sp.spt[index]
            last = (sp, index)
            self.walk_marks.add((sp.level, sp.gfn, index))
            if not spte & PT_PRESENT_MASK:
                hops.append(WalkHop(level, index, "absent"))
                sp = None
            elif level == PT_PAGE_TABLE_LEVEL or spte & PT_PAGE_SIZE_MASK:
                hops.append(WalkHop(level, index, "leaf"))
                sp = None
            else:
                hops.append(WalkHop(level, index, "table"))
                sp = kvm.sp_by_pfn.get((spte & PT64_BASE_ADDR_MASK) >> 12)
        if last is not None:
            self._need(self.always, last[0], {last[1]})
        return WalkView(gfn, hops)

    def find(self, level: int, gfn: int) -> KvmMmuPage | None:
        for sp in self.kvm.mmu_page_hash.get((gfn, level), ()):
            if not sp.invalid:
                return sp
        return None

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
        if old is not None and old & PT_PRESENT_MASK and not ghost and spte_kind(old, sp.level) == view.kind:
            view.old_word = flag_word(old, self.kvm.masks)
        if view.kind == "large" and value & PT_WRITABLE_MASK and not ghost:
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
        if view.kind == "ptr" or not value & PT_WRITABLE_MASK:
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
            writable = sum(1 for i in present if spt[i] & PT_WRITABLE_MASK)
            view.summary = _leaves_text(0, len(present), writable) if present else "empty"
        else:
            view.summary = f"{len(present)} of 512 entries present" if present else "empty"
        indices = sorted(set(present) | {i for i, old in changes.items() if old & PT_PRESENT_MASK})
        whole = len(present) <= SMALL_TABLE and self.drawn + len(present) <= self.cap
        if not whole and not changes and not must and not always:
            view.items.extend(self.fold(sp, indices))  # nothing in it to draw one by one
            view.shown = collapse(view.items, always, sp.level, sp.gfn)
            return view
        pending: list[int] = []
        for index in indices:
            spte = spt[index]
            old = changes.get(index)
            ghost = not spte & PT_PRESENT_MASK
            forced = index in always or (index in must and self.drawn < self.cap)
            if forced or (whole and old is None) or (ghost and self.drawn < self.cap):
                if pending:
                    view.items.extend(self.fold(sp, pending))
                    pending = []
                entry = self._entry(sp, index, old if ghost and old is not None else spte, old, ghost)
                if entry.kind == "ptr" and not ghost:
                    child = kvm.sp_by_pfn.get((spte & PT64_BASE_ADDR_MASK) >> 12)
                    if child is not None:
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
        tables, large, small, writable = _leaf_counts(self.kvm, child)
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
                child = self.kvm.sp_by_pfn.get((spt[index] & PT64_BASE_ADDR_MASK) >> 12)
                if child is not None:
                    t, lg, sm, w = _leaf_counts(self.kvm, child)
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


def _alike(e: SpteView) -> tuple[str, str, int]:
    """What consecutive entries must share to be collapsed: kind, change this step, flags (of the value
    removed, for a removed one)."""
    if e.ghost:
        return (spte_kind(e.value, e.level), "gone", e.word)
    change = "" if e.old is None else "new" if not e.old & PT_PRESENT_MASK else "was"
    return (e.kind, change, e.word)


def _collapsible(e: SpteView | RunView | CollapsedView, keep: set[int]) -> bool:
    """Never hidden: the selected entry, the entries on the paths the page must show (to it and to what
    the step changed), the step's address walk, a table drawn below its pointer, and a warning."""
    return (
        isinstance(e, SpteView)
        and not e.selected
        and not e.walk
        and e.index not in keep
        and e.child is None
        and not e.child_note
        and not e.warning
    )


def _collapsed_text(e: SpteView, count: int) -> str:
    kind, change, word = _alike(e)
    return _part_text(kind, change, word, count, e.level)


def _part_text(kind: str, change: str, word: int, count: int, level: int) -> str:
    size = level_name(level)
    if kind == "ptr":
        what = f"{'pointer' if count == 1 else 'pointers'} to L{level - 1} tables"
    else:
        what = f"{size} {'leaf' if count == 1 else 'leaves'}"
    bits = bits_text(word)
    if change == "gone":
        return f"{count} × {what} removed this step, were {bits}"
    if change == "new":
        return f"{count} × new {what}, {bits}"
    if change == "was":
        return f"{count} × {what} changed this step, now {bits}"
    return f"{count} × {what}, {bits}"


def collapse(
    items: list[SpteView | RunView], keep: set[int], level: int, gfn: int
) -> list[SpteView | RunView | CollapsedView]:
    """Runs of at least COLLAPSE_MIN consecutive alike entries (adjacent indexes, one kind, one change, one
    set of flags) become one collapsed line, with a summarised run of alike entries right after them; then
    a pattern of two or three such pieces repeated at least COLLAPSE_MIN times becomes one line too."""
    return _collapse_patterns(_collapse_runs(items, keep), keep, level, gfn)


def _unit(item: SpteView | RunView | CollapsedView, keep: set[int]) -> tuple[object, ...] | None:
    """What a piece of a repeating pattern is: an entry or a run, its kind, change, flags and length."""
    if isinstance(item, SpteView):
        return ("piece", *_alike(item), 1) if _collapsible(item, keep) else None
    if isinstance(item, RunView) and item.alike is not None:
        return ("piece", *item.alike, item.count)  # a run of one is an entry beyond the drawing budget
    return None


def _bounds(item: SpteView | RunView | CollapsedView) -> tuple[int, int]:
    return (item.index, item.index) if isinstance(item, SpteView) else (item.first, item.last)


def _collapse_patterns(
    items: list[SpteView | RunView | CollapsedView], keep: set[int], level: int, gfn: int
) -> list[SpteView | RunView | CollapsedView]:
    out: list[SpteView | RunView | CollapsedView] = []
    span = pages_per_hpage(level)
    i = 0
    while i < len(items):
        found: tuple[int, int, list[tuple[object, ...]]] | None = None
        for period in (2, 3):
            keys = [_unit(item, keep) for item in items[i : i + period]]
            if len(keys) < period or None in keys or len(set(keys)) < period:
                continue
            j = i + 1
            while (
                j < len(items)
                and _unit(items[j], keep) == keys[(j - i) % period]
                and _bounds(items[j])[0] == _bounds(items[j - 1])[1] + 1
            ):
                j += 1
            if (j - i) // period >= COLLAPSE_MIN:
                found = (period, (j - i) // period, [k for k in keys if k is not None])
                break
        if found is None:
            out.append(items[i])
            i += 1
            continue
        period, repeats, pieces = found
        group = [item for item in items[i : i + period * repeats] if not isinstance(item, CollapsedView)]
        first, last = _bounds(group[0])[0], _bounds(group[-1])[1]
        parts = [_part_text(str(k[1]), str(k[2]), int(str(k[3])), int(str(k[4])), level) for k in pieces]
        changes = {str(k[2]) for k in pieces}
        out.append(
            CollapsedView(
                first=first,
                last=last,
                count=sum(1 if isinstance(item, SpteView) else item.count for item in group),
                gfn=gfn + first * span,
                last_gfn=gfn + (last + 1) * span - 1,
                text=f"{repeats} × ({' + '.join(parts)})",
                rows=group,
                changed=changes != {""},
                ghost=changes == {"gone"},
                repeats=repeats,
            )
        )
        i += period * repeats
    return out


def _collapse_runs(
    items: list[SpteView | RunView], keep: set[int]
) -> list[SpteView | RunView | CollapsedView]:
    out: list[SpteView | RunView | CollapsedView] = []
    i = 0
    while i < len(items):
        item = items[i]
        if not isinstance(item, SpteView) or not _collapsible(item, keep):
            out.append(item)
            i += 1
            continue
        key = _alike(item)
        j = i + 1
        while j < len(items):
            nxt, prev = items[j], items[j - 1]
            if not (
                isinstance(nxt, SpteView)
                and isinstance(prev, SpteView)
                and _collapsible(nxt, keep)
                and nxt.index == prev.index + 1
                and _alike(nxt) == key
            ):
                break
            j += 1
        rows = [e for e in items[i:j] if isinstance(e, SpteView)]
        rest: RunView | None = None
        if j < len(items):
            after = items[j]
            if isinstance(after, RunView) and after.alike == key and after.first == rows[-1].index + 1:
                rest = after
        count = len(rows) + (rest.count if rest is not None else 0)
        if count < COLLAPSE_MIN:
            out.extend(rows)
            i = j
            continue
        last = rest.last if rest is not None else rows[-1].index
        span = rows[0].span
        out.append(
            CollapsedView(
                first=rows[0].index,
                last=last,
                count=count,
                gfn=rows[0].gfn,
                last_gfn=rows[0].gfn + (last - rows[0].index + 1) * span - 1,
                text=_collapsed_text(rows[0], count),
                rows=list(rows),
                rest=rest,
                changed=key[1] != "",
                ghost=key[1] == "gone",
            )
        )
        i = j + (1 if rest is not None else 0)
    return out
