"""Engine state → template data: what each panel of the player and the compare view shows.

Everything here reads a `Shown` state (a private copy of the VM after N steps, with the step that led
there) and builds plain values; the templates only lay them out. Every list is capped, so a 1 GiB slot
gives a page of the same order of size as the worked example: the page-table tree draws the sptes that
matter (changed, selected, and small tables whole) and summarises runs of alike entries; the dirty
bitmap folds runs of alike rows.
"""

from __future__ import annotations

import heapq
import sys
from array import array
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import compress, groupby, islice
from typing import NamedTuple

from markupsafe import Markup

from app.budget_bytes import CELL_ROWS
from app.cache import Shown, StepRecord
from app.explain import INVARIANT_TEXT, Context, bit_meanings, explain, kernel_source
from engine.invariants import Violation
from engine.kvm import Kvm
from engine.memslot import KvmMemorySlot
from engine.policy import PRESET_DESCRIPTIONS, PRESET_KERNELS, Policy
from engine.result import FLAG_MASK
from engine.rmap import pte_list
from engine.shadow_page import KvmMmuPage
from engine.simulation import Simulation, StepResult
from engine.spte import (
    ERA_6X,
    FLAG_BITS,
    PT64_BASE_ADDR_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    SpteMasks,
    flag_word,
    level_name,
    pages_per_hpage,
    spte_flags,
    spte_to_pfn,
)
from engine.trace import event_json

# A table with at most this many present entries is drawn entry by entry (budget permitting).
SMALL_TABLE = 64
# Bitmap rows are this many pages wide.
ROW = 32
# Caps of the list panels.
MAX_RMAP_ROWS = 64
MAX_TLB_ROWS = 64
MAX_VIOLATIONS = 60
MAX_HISTORY = 100
STEP_WINDOW = 4

Location = tuple[int, int, int]  # (level, sp gfn, index)


def hx(value: int) -> str:
    return f"{value:#x}"


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {many or word + 's'}"


def gfn_list(gfns: Iterable[int], limit: int = 16) -> str:
    items = list(gfns)
    text = " ".join(hx(g) for g in items[:limit])
    if len(items) > limit:
        text += f" … (+{len(items) - limit})"
    return text or "none"


# The texts below depend only on an spte's flag word (engine.spte.flag_word: the contract's flags at fixed
# positions, whatever the layout), and a tree repeats a handful of combinations, so each is written once.


@lru_cache(maxsize=256)
def _flags_text(word: int) -> str:
    return " ".join(name for name, bit in FLAG_BITS if word & bit)


@lru_cache(maxsize=256)
def _bits_text(word: int) -> str:
    return " ".join(name if on else "·" for name, on in letters(word))


def letters(word: int) -> list[tuple[str, bool]]:
    """Each contract flag of a flag word in order with whether it is set: the tree shows unset ones as a
    dot."""
    return [(name, bool(word & bit)) for name, bit in FLAG_BITS]


def parse_location(text: str) -> Location:
    """`spte=LEVEL:SPGFN:INDEX`, each in hex with or without 0x; raise ValueError when malformed."""
    parts = text.split(":")
    if len(parts) != 3 or len(text) > 64:
        raise ValueError(f"spte={text[:40]!r}: expected LEVEL:SPGFN:INDEX in hex, e.g. 2:0:1")
    level, sp_gfn, index = (int(part, 16) for part in parts)
    if not 1 <= level <= 4 or not 0 <= index < 512 or sp_gfn < 0:
        raise ValueError(f"spte={text[:40]!r}: level must be 1 to 4 and index 0 to 0x1ff")
    return level, sp_gfn, index


def location_param(location: Location) -> str:
    level, sp_gfn, index = location
    return f"{level}:{sp_gfn:x}:{index:x}"


# ---------------------------------------------------------------------------------------------------------
# Describing steps


def describe_op(op: Mapping[str, object]) -> str:
    """A step's op as one short line: `write gfn 0x250`, `read gfn 0x200 ×512`, `get_dirty_log slot 1`."""
    name = str(op.get("op"))
    if name == "note":
        return "note"
    parts = [name]
    gfn = op.get("gfn")
    if isinstance(gfn, int):
        parts.append(f"gfn {gfn:#x}")
        count, stride, vcpu = op.get("count", 1), op.get("stride", 1), op.get("vcpu", 0)
        if count != 1:
            parts.append(f"×{count}")
            if stride != 1:
                parts.append(f"stride {stride}")
        if vcpu != 0:
            parts.append(f"vCPU {vcpu}")
    slot = op.get("slot")
    if isinstance(slot, int):
        parts.append(f"slot {slot}")
    first, num = op.get("first"), op.get("num")
    if isinstance(first, int) and isinstance(num, int):
        parts.append(f"pages {first:#x}+{num}")
    return " ".join(parts)


# Ops whose marked_dirty would repeat what their dirty_log already says.
_HARVESTING_OPS = ("get_dirty_log", "reset_dirty_ring", "migrate_round", "migrate_end")


def _int_field(op: Mapping[str, object], name: str) -> int:
    value = op.get(name)
    return value if isinstance(value, int) else 0


def _enabling_text(sim: Simulation) -> str:
    """What switching logging on does to the slot's sptes under the run's policy (kvm_mmu_slot_apply_flags
    in later kernels, kvm_mmu_slot_remove_write_access in 3.x): the rest of the step's sentence. With PML
    in use (it needs EPT A/D bits) the 4K sptes lose D instead of W."""
    policy = sim.policy
    if policy.dirty_log_mode == "initially_set":
        return " with every bit already set: no spte is touched until KVM_CLEAR_DIRTY_LOG"
    small = "every 4K spte loses D (PML logs the next store to it)" if sim.kvm.cpu_dirty_log_size else ""
    if policy.eager_split:
        if small:
            return f": every huge page is split into 4K sptes, and {small}"
        return ": every huge page is split into 4K sptes, and every spte loses W"
    if policy.wp_large == "zap":
        return f": its large sptes are zapped, and {small or 'every 4K spte loses W'}"
    if small:
        return f": large sptes lose W, staying mapped read-only, and {small}"
    return ": every spte loses W, large ones staying mapped read-only"


def _disabling_text(policy: Policy) -> str:
    """What switching logging off does: 3.x only frees the bitmap; later kernels zap the tables a huge
    page could replace (kvm_mmu_zap_collapsible_sptes), so the next fault maps huge again."""
    if policy.recover_on_disable:
        return (
            ": the tables a huge page could replace are zapped, so the next fault there maps a huge page"
            " again"
        )
    return "; the sptes stay as they are"


def narrate(op: Mapping[str, object], result: StepResult, sim: Simulation) -> str:
    """One line saying what the step did, in words."""
    name = op.get("op")
    if name == "note":  # its text is shown beside, once
        return "A note of the lesson: nothing runs, nothing changes."
    counts = result.fault_counts
    fast, slow = counts.get("fast", 0), counts.get("slow", 0)
    parts: list[str] = []
    if name in ("read", "write"):
        verb = "writes" if name == "write" else "reads"
        count = op.get("count", 1)
        target = (
            f"gfn {hx(int(str(op.get('gfn'))))}"
            if count == 1
            else f"{count} pages from gfn {hx(int(str(op.get('gfn'))))}"
        )
        head = f"vCPU {op.get('vcpu', 0)} {verb} {target}"
        if fast or slow:
            faults = []
            if slow:
                faults.append(plural(slow, "slow fault"))
            if fast:
                faults.append(plural(fast, "fast fault"))
            parts.append(f"{head}: {' and '.join(faults)}")
        else:
            parts.append(f"{head}: no exit, the mapping already allows it")
    elif name == "enable_dirty_log":
        parts.append(f"Dirty logging is switched on for slot {op.get('slot')}{_enabling_text(sim)}")
    elif name == "disable_dirty_log":
        parts.append(f"Dirty logging is switched off for slot {op.get('slot')}{_disabling_text(sim.policy)}")
    elif result.error is not None:
        parts.append(f"{describe_op(op)} fails: {result.error}")
    elif name == "get_dirty_log" and sim.policy.dirty_log_mode != "bitmap":
        parts.append(
            f"KVM_GET_DIRTY_LOG on slot {op.get('slot')} copies {gfn_list(result.dirty_log or [])}:"
            " with manual protection nothing is cleared or re-protected until KVM_CLEAR_DIRTY_LOG"
        )
    elif name == "get_dirty_log":
        parts.append(
            f"KVM_GET_DIRTY_LOG on slot {op.get('slot')} returns {gfn_list(result.dirty_log or [])},"
            " clearing those bits and re-protecting their pages"
        )
    elif name == "clear_dirty_log":
        parts.append(
            f"KVM_CLEAR_DIRTY_LOG on slot {op.get('slot')}, pages {hx(_int_field(op, 'first'))}"
            f"+{op.get('num')}: the bits that were set are cleared and their pages re-protected"
            + (
                ", after the huge pages holding the range are split and write-protected"
                if sim.policy.dirty_log_mode == "initially_set"
                else ""
            )
        )
    elif name == "reset_dirty_ring":
        parts.append(
            f"The dirty rings are harvested ({gfn_list(result.dirty_log or [])}) and reset:"
            " those pages are re-protected"
        )
    elif name == "flush_tlb":
        parts.append("Every vCPU's TLB is flushed")
    elif name == "zap_all":
        parts.append("Every spte is zapped, as on a memslot change")
    elif name == "migrate_begin":
        parts.append(
            f"Migration starts: dirty logging on for every slot{_enabling_text(sim)}; every page copied once"
        )
    elif name == "migrate_round":
        parts.append(
            f"Pre-copy round: the dirty log returns {gfn_list(result.dirty_log or [])}, copied again"
        )
    elif name == "migrate_end":
        lost = sim.migration.lost or []
        verdict = f"{plural(len(lost), 'page')} LOST: {gfn_list(lost)}" if lost else "no page lost"
        parts.append(f"Stop-and-copy: the last round returns {gfn_list(result.dirty_log or [])}; {verdict}")
        if sim.policy.recover_on_disable:
            parts.append(f"dirty logging is switched off{_disabling_text(sim.policy)}")
    else:
        parts.append(describe_op(op))
    if result.marked_dirty and name not in _HARVESTING_OPS:
        parts.append(f"marked dirty: {gfn_list(result.marked_dirty)}")
    if result.tlb_flushes:
        parts.append(plural(result.tlb_flushes, "TLB flush", "TLB flushes"))
    if result.violations:
        names = sorted({v.invariant for v in result.violations})
        parts.append(f"⚠ {plural(len(result.violations), 'violation')}: {', '.join(names)}")
    return "; ".join(parts) + "."


# ---------------------------------------------------------------------------------------------------------
# The page-table tree


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

    @property
    def changed(self) -> bool:
        return self.old is not None

    @property
    def old_kind(self) -> str:
        """What the spte was before the step, when it was something else: "2M leaf", "table pointer"."""
        if self.old is None or not self.old & PT_PRESENT_MASK:
            return ""
        was = _kind(self.old, self.level)
        if was == self.kind and not self.ghost:
            return ""
        return {"large": f"{level_name(self.level)} leaf", "4k": "4K leaf"}.get(was, "table pointer")

    @property
    def flags(self) -> str:
        return _flags_text(self.word)

    @property
    def bits(self) -> str:
        """The eight flags in their fixed order, an unset one as a dot: `R · X PS A D HW MW`."""
        return _bits_text(self.word)

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

    @property
    def kind(self) -> str:
        return "run"


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


def _kind(spte: int, level: int) -> str:
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
            kind=_kind(value, sp.level),
            gfn=sp.gfn + index * span,
            span=span,
            old=old,
            ghost=ghost,
            selected=self.selected == (sp.level, sp.gfn, index),
        )
        if view.kind == "large" and value & PT_WRITABLE_MASK and not ghost:
            slot = self.kvm.gfn_to_memslot(view.gfn)
            if slot is not None and slot.dirty_bitmap is not None:
                view.warning = (
                    f"writable while slot {slot.id} is dirty-logged: stores anywhere in"
                    f" {hx(view.gfn)}–{hx(view.gfn + view.span - 1)} set no dirty bit"
                )
        self.drawn += 1
        return view

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
        def key(i: int) -> tuple[int, bool, str]:
            gone = not spt[i] & PT_PRESENT_MASK
            return (
                spt[i] & FLAG_MASK,
                i in changes,
                _kind(changes[i], sp.level) if gone and i in changes else "",
            )

        for (_, changed, was), members in groupby(indices, key=key):
            group = list(members)
            kind = "gone" if was else _kind(spt[group[0]], sp.level)
            runs.append(self._run(sp, group, kind, changed or any(i in must for i in group), was))
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
        return view


# ---------------------------------------------------------------------------------------------------------
# Dirty bitmaps


class Cell(NamedTuple):
    gfn: int
    dirty: bool
    written: bool


@dataclass(slots=True)
class BitmapRow:
    """Either up to ROW cells starting at `gfn`, drawn one by one (`drawn`, with the row's dirty bits
    and written-not-dirty bits as masks, bit k for gfn + k), or a folded run of `count` pages."""

    gfn: int
    count: int
    drawn: bool = False
    dirty_mask: int = 0
    written_mask: int = 0
    dirty_pages: int = 0
    written_pages: int = 0

    @property
    def cells(self) -> list[Cell]:
        if not self.drawn:
            return []
        return [
            Cell(self.gfn + k, bool(self.dirty_mask >> k & 1), bool(self.written_mask >> k & 1))
            for k in range(self.count)
        ]

    @property
    def last_gfn(self) -> int:
        return self.gfn + self.count - 1

    @property
    def run_text(self) -> str:
        """A folded row in words, as the player and the SVG export both write it."""
        state = self.state
        if state == "clean":
            what = "all clean"
        elif state == "dirty":
            what = "all dirty ●"
        else:
            what = f"{self.dirty_pages} dirty ●, {self.written_pages} written, not dirty !"
        return f"{self.gfn:#x}–{self.last_gfn:#x}: {self.count} pages, {what}"

    @property
    def state(self) -> str:
        if self.dirty_pages == self.count:
            return "dirty"
        if self.written_pages == self.count:
            return "written"
        if not self.dirty_pages and not self.written_pages:
            return "clean"
        return "mixed"


@dataclass(slots=True)
class BitmapView:
    slot: int
    base_gfn: int
    npages: int
    logged: bool
    rows: list[BitmapRow]
    dirty: list[int]
    dirty_count: int
    written: list[int]
    written_count: int
    lost: list[int]
    # The rows as HTML, written once when the view is built (see rows_html).
    html: str = ""


@lru_cache(maxsize=CELL_ROWS)
def _cells_html(gfn: int, count: int, dirty_mask: int, written_mask: int) -> str:
    """One drawn row's cells. A row's bits seldom change from one step to the next, so rows are kept
    by value: stepping redraws the bitmap from what it drew before."""
    cells = []
    for k in range(count):
        cell = gfn + k
        if written_mask >> k & 1:
            cells.append(
                f'<i data-dirty-gfn="{cell:#x}" data-dirty="{dirty_mask >> k & 1}" data-written="1"'
                f' title="gfn {cell:#x}: written, not dirty: lost">!</i>'
            )
        elif dirty_mask >> k & 1:
            cells.append(f'<i data-dirty-gfn="{cell:#x}" data-dirty="1" title="gfn {cell:#x}: dirty">●</i>')
        else:
            cells.append(f'<i data-dirty-gfn="{cell:#x}" data-dirty="0"></i>')
    return "".join(cells)


def rows_html(rows: list[BitmapRow]) -> Markup:
    """The bitmap's rows as HTML, written here rather than in a template: a bitmap is hundreds of cells,
    and every value in them is a number or a fixed word, so there is nothing to escape."""
    out: list[str] = []
    for row in rows:
        label = f'<span class="bm-label">{row.gfn:#x}</span>'
        if not row.drawn:
            state = row.state
            out.append(
                f'<div class="bm-run bm-{state}" data-dirty-run="{row.gfn:#x}-{row.last_gfn:#x}"'
                f' data-state="{state}">{label} {row.run_text}</div>'
            )
            continue
        cells = _cells_html(row.gfn, row.count, row.dirty_mask, row.written_mask)
        out.append(f'<div class="bm-row">{label}{cells}</div>')
    return Markup("\n".join(out))  # only numbers and fixed words: nothing to escape


def bitmap_view(sim: Simulation, slot: KvmMemorySlot, max_cells: int, lost: Iterable[int] = ()) -> BitmapView:
    """The slot's dirty bitmap as rows of cells; in a slot larger than `max_cells` pages, rows whose
    pages are all alike fold into runs, and past `max_cells` drawn cells every row folds."""
    lost_here = [g for g in lost if slot.contains(g)]
    bitmap = slot.dirty_bitmap
    if bitmap is None:
        return BitmapView(slot.id, slot.base_gfn, slot.npages, False, [], [], 0, [], 0, lost_here)
    base, npages = slot.base_gfn, slot.npages
    pending = sim.checker.pending.get(slot.id, {})
    written = sorted(g for g in pending if not slot.test_dirty(g))
    written_rows: dict[int, int] = {}  # row -> its written-not-dirty bits
    for g in written:
        row = (g - base) // ROW
        written_rows[row] = written_rows.get(row, 0) | 1 << ((g - base) % ROW)
    dirty_count = int.from_bytes(bitmap, "little").bit_count()
    small = npages <= max_cells
    rows: list[BitmapRow] = []
    drawn = 0
    # One 32-bit word per row, read in one go (the bitmap is little-endian longs, so also 32-bit words).
    words = array("I", bytes(bitmap))
    if sys.byteorder == "big":
        words.byteswap()
    full = (1 << ROW) - 1
    for row, offset in enumerate(range(0, npages, ROW)):
        width = min(ROW, npages - offset)
        gfn = base + offset
        row_full = full if width == ROW else (1 << width) - 1
        word = words[row] & row_full
        written_mask = written_rows.get(row, 0) if written_rows else 0
        if not small and not written_mask and word in (0, row_full):
            dirty = width if word else 0
            last = rows[-1] if rows else None
            if last is not None and not last.drawn and last.state == ("dirty" if dirty else "clean"):
                last.count += width
                last.dirty_pages += dirty
            else:
                rows.append(BitmapRow(gfn, width, dirty_pages=dirty))
            continue
        if small or drawn < max_cells:
            rows.append(BitmapRow(gfn, width, True, word, written_mask))
            drawn += width
            continue
        dirty = word.bit_count()
        written_here = written_mask.bit_count()
        last = rows[-1] if rows else None
        if last is not None and not last.drawn and last.state == "mixed":
            last.count += width
            last.dirty_pages += dirty
            last.written_pages += written_here
        else:
            rows.append(BitmapRow(gfn, width, dirty_pages=dirty, written_pages=written_here))
    dirty_list = list(islice(slot.iter_dirty_gfns(), 256)) if dirty_count else []
    return BitmapView(
        slot.id,
        base,
        npages,
        True,
        rows,
        dirty_list,
        dirty_count,
        written[:256],
        len(written),
        lost_here,
        rows_html(rows),
    )


# ---------------------------------------------------------------------------------------------------------
# Rmaps, TLBs, trace, counters, violations


class RmapRow(NamedTuple):
    level: int
    gfn: int
    span: int
    entries: list[str]


@dataclass(slots=True)
class RmapSlotView:
    slot: int
    rows: list[RmapRow]
    total: int
    rows_html: Markup


_SIZE_NAMES = {1: "4K", 2: "2M", 3: "1G"}


def rmap_rows_html(rows: Iterable[RmapRow]) -> Markup:
    """The table rows of an rmap panel, built here rather than in the template: a panel is redrawn on
    every step, and its cells hold only numbers and fixed words, so there is nothing to escape."""
    out = []
    for r in rows:
        gfns = f"<code>{r.gfn:#x}</code>"
        if r.span > 1:
            gfns += f"–<code>{r.gfn + r.span - 1:#x}</code>"
        out.append(f"<tr><td>{_SIZE_NAMES[r.level]}</td><td>{gfns}</td><td>{', '.join(r.entries)}</td></tr>")
    return Markup("".join(out))


def rmap_views(kvm: Kvm) -> list[RmapSlotView]:
    out = []
    for slot in kvm.memslots:
        rows: list[RmapRow] = []
        total = 0
        for level, heads in enumerate(slot.rmap, start=1):
            total += len(heads)
            shift = 9 * (level - 1)
            # The lowest gfns first, without sorting every head of a big slot.
            for key in heapq.nsmallest(max(0, MAX_RMAP_ROWS - len(rows)), heads):
                gfn = ((slot.base_gfn >> shift) + key) << shift
                head = pte_list(heads[key])
                entries = [f"L{sp.level}[{index:#x}] in table {sp.gfn:#x}" for sp, index in head]
                rows.append(RmapRow(level, gfn, pages_per_hpage(level), entries))
        out.append(RmapSlotView(slot.id, rows, total, rmap_rows_html(rows)))
    return out


class TlbRow(NamedTuple):
    level: int
    gfn: int
    span: int
    pfn: int
    writable: bool
    dirty: bool


@dataclass(slots=True)
class TlbView:
    vcpu: int
    rows: list[TlbRow]
    total: int


def tlb_views(kvm: Kvm) -> list[TlbView]:
    out = []
    for vcpu in kvm.vcpus:
        entries = vcpu.tlb.entries()
        rows = [
            TlbRow(e.level, e.gfn, pages_per_hpage(e.level), e.pfn, e.writable, e.dirty)
            for e in entries[:MAX_TLB_ROWS]
        ]
        out.append(TlbView(vcpu.id, rows, len(entries)))
    return out


_HEX_KEYS = {"gfn", "pfn", "sp_gfn", "child_gfn", "index", "gfn_offset"}


def _arg_text(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and key in _HEX_KEYS:
        return hx(value)
    if isinstance(value, list):
        return (
            "["
            + " ".join(hx(v) if isinstance(v, int) else str(v) for v in value[:32])
            + (" …]" if len(value) > 32 else "]")
        )
    if value is None:
        return "none"
    return str(value)


@dataclass(slots=True)
class EventView:
    name: str
    args: list[tuple[str, str]]
    text: str
    source: str
    tone: str  # "" | "good" | "bad": the trace marks the events that decide the story


def _tone(ev: Mapping[str, object]) -> str:
    name = ev.get("name")
    if name == "fast_page_fault":
        if (
            ev.get("result") == "fixed"
            and isinstance(ev.get("sp_level"), int)
            and int(str(ev["sp_level"])) > 1
        ):
            return "bad"
        if ev.get("result") == "bail_large":
            return "good"
    if name == "spte_write_protect" and ev.get("action") == "zap":
        return "note"
    if name == "migrate_verdict":
        return "bad" if ev.get("lost") else "good"
    return ""


@dataclass(slots=True)
class TraceView:
    traced: bool
    events: list[EventView]
    dropped: int
    counts: list[tuple[str, int]]


def trace_view(shown: Shown, variant: str | None) -> TraceView:
    result = shown.result
    if result is None or result.events is None:
        return TraceView(False, [], 0, [])
    ctx = Context(shown.sim.kvm.masks)
    events = []
    counts: dict[str, int] = {}
    for event in result.events:
        data = event_json(event)
        name = str(data["name"])
        counts[name] = counts.get(name, 0) + 1
        args = [(k, _arg_text(k, v)) for k, v in data.items() if k != "name"]
        source = kernel_source(name, variant, shown.sim.kvm.masks.era)
        events.append(EventView(name, args, explain(data, ctx), source, _tone(data)))
    return TraceView(True, events, shown.dropped_events, sorted(counts.items()))


@dataclass(slots=True)
class ViolationView:
    step: int
    invariant: str
    gfn: int | None
    message: str
    explanation: str
    current: bool


def violation_views(violations: list[Violation], current: int | None) -> list[ViolationView]:
    """The latest violations (the header counts all of them). Each invariant's explanation is given once,
    at its latest occurrence, so a run that violates one rule thousands of times stays a short page."""
    shown = violations[-MAX_VIOLATIONS:]
    explained: set[str] = set()
    views: list[ViolationView] = []
    for v in reversed(shown):
        text = "" if v.invariant in explained else INVARIANT_TEXT.get(v.invariant, "")
        explained.add(v.invariant)
        views.append(ViolationView(v.step, v.invariant, v.gfn, v.message, text, v.step == current))
    views.reverse()
    return views


# Entries shown per vCPU ring: a ring holds up to DIRTY_RING_SIZE, and the page must not grow with it.
RING_ENTRIES_SHOWN = 64


class RingView(NamedTuple):
    """One vCPU's dirty ring: its published entries not yet reset, oldest first (the first few)."""

    vcpu: int
    entries: int
    gfns: list[int]
    soft_full: bool


def ring_views(sim: Simulation) -> list[RingView] | None:
    """The vCPUs' dirty rings, or None when the VM logs into bitmaps."""
    if sim.policy.dirty_log_mode != "ring":
        return None
    kvm = sim.kvm
    by_id = kvm.memslots.by_id
    return [
        RingView(
            vcpu.id,
            len(vcpu.dirty_ring),
            [by_id[s].base_gfn + off for s, off in islice(vcpu.dirty_ring.entries, RING_ENTRIES_SHOWN)],
            vcpu.dirty_ring.soft_full(),
        )
        for vcpu in kvm.vcpus
    ]


class PmlView(NamedTuple):
    """One vCPU's PML buffer: the pages the CPU logged and KVM has not flushed yet, oldest first."""

    vcpu: int
    entries: int
    gfns: list[int]


def pml_views(sim: Simulation) -> list[PmlView] | None:
    """The vCPUs' PML buffers, or None when dirty logging does not use PML (pml off, or EPT A/D off)."""
    kvm = sim.kvm
    if not kvm.cpu_dirty_log_size:
        return None
    return [PmlView(v.id, len(v.pml), v.pml.entries[:RING_ENTRIES_SHOWN]) for v in kvm.vcpus]


@dataclass(slots=True)
class MigrationView:
    running: bool
    finished: bool
    rounds: int
    pages_sent: int
    lost: list[int]


def migration_view(sim: Simulation) -> MigrationView | None:
    if not sim.migrated:
        return None
    mig = sim.migration
    return MigrationView(mig.running, mig.lost is not None, mig.rounds, mig.pages_sent, list(mig.lost or []))


# ---------------------------------------------------------------------------------------------------------
# The whole player view


class StepLine(NamedTuple):
    number: int
    text: str
    current: bool


@dataclass(slots=True)
class PlayView:
    step: int
    total: int
    title: str
    op: str  # the current step (n-1) in short, "" at step 0
    narration: str
    note: str  # the text of a note step
    next_op: str
    window: list[StepLine]
    tree: TreeView
    bitmaps: list[BitmapView]
    rings: list[RingView] | None  # with the dirty ring only
    rmaps: list[RmapSlotView]
    tlbs: list[TlbView]
    trace: TraceView
    stats: dict[str, int]
    step_counts: list[tuple[str, str, int]]  # (hook name, label, value)
    kernel_stats: KernelStatsView
    violations: list[ViolationView]
    violation_total: int
    step_violations: int
    migration: MigrationView | None
    # For the compare view.
    faults: list[str]
    spte_changes: list[str]
    spte_change_count: int
    dirty_log: list[int] | None
    marked_dirty: list[int]
    pml: list[PmlView] | None = None  # with PML only


def _fault_lines(result: StepResult | None) -> list[str]:
    if result is None or result.faults is None:
        return []
    lines = []
    for fault in result.faults[:32]:
        path = "fast" if fault.path == "fast" else "slow"
        if fault.fast_result:
            path += f" ({fault.fast_result})"
        level = level_name(fault.level) if fault.level is not None else "unmapped"
        lines.append(f"{'write' if fault.write else 'read'} {hx(fault.gfn)}: {path} → {level}")
    if len(result.faults) > 32:
        lines.append(f"… {len(result.faults) - 32} more")
    return lines


def _change_lines(tree: TreeBuilder) -> tuple[list[str], int]:
    """The step's spte changes as short lines (the first 24, by level, table and index), and their count."""
    pages = sorted(
        (
            (tree.freed_pages.get(serial) or tree.kvm.active_mmu_pages[serial], entries)
            for serial, entries in tree.changes.items()
        ),
        key=lambda item: (-item[0].level, item[0].gfn, item[0].serial),
    )
    lines: list[str] = []
    count = 0
    for sp, entries in pages:
        count += len(entries)
        for index in sorted(entries)[: max(0, 24 - len(lines))]:
            lines.append(
                f"L{sp.level}[{hx(index)}] of table {hx(sp.gfn)}: {hx(entries[index])} → {hx(sp.spt[index])}"
            )
    if count > len(lines):
        lines.append(f"… {count - len(lines)} more")
    return lines, count


def play_view(
    shown: Shown,
    variant: str | None,
    selected: Location | None,
    *,
    tree_cap: int,
    bitmap_cells: int,
) -> PlayView:
    sim = shown.sim
    kvm = sim.kvm
    scenario = sim.scenario
    total = len(scenario.steps)
    n = shown.n
    result = shown.result
    ops = scenario.steps
    if result is not None:
        op = result.op
        narration = narrate(op, result, sim)
        op_text = describe_op(op)
        note = str(op.get("text", "")) if op.get("op") == "note" else ""
    else:
        narration = "Before the first step: no guest access has happened yet, and no spte is present."
        op_text = ""
        note = ""
    next_op = describe_op(ops[n].model_dump(mode="python")) if n < total else ""
    if n < total and ops[n].op == "note":
        next_op = "note: " + " ".join(str(getattr(ops[n], "text", "")).split())[:80]
    low = max(0, n - 1 - STEP_WINDOW)
    window = [
        StepLine(i, describe_op(ops[i].model_dump(mode="python")), i == n - 1)
        for i in range(low, min(total, low + 2 * STEP_WINDOW + 1))
    ]
    lost = list(sim.migration.lost or []) if sim.migrated else []
    counts = result.fault_counts if result is not None else {"fast": 0, "slow": 0}
    tree = TreeBuilder(kvm, shown.touched, selected, tree_cap)
    changes, change_count = _change_lines(tree)
    step_counts = [
        ("faults_fast", "fast faults", counts.get("fast", 0)),
        ("faults_slow", "slow faults", counts.get("slow", 0)),
        ("tlb_flushes", "TLB flushes", result.tlb_flushes if result else 0),
        ("marked_dirty", "pages marked dirty", len(result.marked_dirty) if result else 0),
        ("spte_writes", "sptes changed", change_count),
    ]
    return PlayView(
        step=n,
        total=total,
        title=scenario.title,
        op=op_text,
        narration=narration,
        note=note,
        next_op=next_op,
        window=window,
        tree=tree.build(),
        bitmaps=[bitmap_view(sim, slot, bitmap_cells, lost) for slot in kvm.memslots],
        rings=ring_views(sim),
        pml=pml_views(sim),
        rmaps=rmap_views(kvm),
        tlbs=tlb_views(kvm),
        trace=trace_view(shown, variant),
        stats=kvm.stats(),
        step_counts=step_counts,
        kernel_stats=kernel_stats_view(kvm),
        violations=violation_views(sim.violations, n - 1 if n else None),
        violation_total=len(sim.violations),
        step_violations=len(result.violations) if result else 0,
        migration=migration_view(sim),
        faults=_fault_lines(result),
        spte_changes=changes,
        spte_change_count=change_count,
        dirty_log=list(result.dirty_log) if result is not None and result.dirty_log is not None else None,
        marked_dirty=list(result.marked_dirty) if result else [],
    )


# ---------------------------------------------------------------------------------------------------------
# The inspector


@dataclass(slots=True)
class BitRow:
    bits: str
    name: str
    meaning: str
    value: str
    on: bool | None  # None for multi-bit fields


@dataclass(slots=True)
class HistoryRow:
    step: int
    old: int
    new: int
    text: str


@dataclass(slots=True)
class InspectorView:
    location: Location
    param: str
    exists: bool  # a table with that level and gfn exists now
    value: int
    kind: str
    gfn: int
    span: int
    bits: list[BitRow]
    history: list[HistoryRow]
    history_total: int
    orphan: bool

    @property
    def where(self) -> str:
        level, sp_gfn, index = self.location
        return f"L{level}[{hx(index)}] of the level-{level} table at gfn {hx(sp_gfn)}"


def _change_text(old: int, new: int, masks: SpteMasks) -> str:
    if not old & PT_PRESENT_MASK:
        return "created"
    if not new & PT_PRESENT_MASK:
        return "removed"
    gained = [f for f in spte_flags(new, masks) if f not in spte_flags(old, masks)]
    lost = [f for f in spte_flags(old, masks) if f not in spte_flags(new, masks)]
    parts = [f"+{f}" for f in gained] + [f"−{f}" for f in lost]
    if spte_to_pfn(old) != spte_to_pfn(new):
        parts.append("new target")
    return " ".join(parts) or "rewritten"


def inspector_view(sim: Simulation, location: Location, history: list[tuple[int, int, int]]) -> InspectorView:
    level, sp_gfn, index = location
    sp = None
    for candidate in sim.kvm.mmu_page_hash.get((sp_gfn, level), ()):
        if not candidate.invalid:
            sp = candidate
            break
    masks = sim.kvm.masks
    value = sp.spt[index] if sp is not None else masks.nonpresent
    span = pages_per_hpage(level)
    leaf = level == 1 or bool(value & PT_PAGE_SIZE_MASK)
    bits: list[BitRow] = []
    for bits_text, name, meaning, mask in bit_meanings(masks):
        if name == "MT":
            bits.append(BitRow(bits_text, name, meaning, str(value >> 3 & 7), None))
        elif name == "pfn":
            pfn = spte_to_pfn(value)
            what = meaning if value & PT_PRESENT_MASK else "—"
            if value & PT_PRESENT_MASK and not leaf:
                child = sim.kvm.sp_by_pfn.get(pfn)
                what = f"child table: level {child.level}, gfn {hx(child.gfn)}" if child else "child table"
            elif value & PT_PRESENT_MASK:
                what = f"host page of gfn {hx(sp_gfn + index * span)}"
            bits.append(BitRow(bits_text, name, what, hx(pfn), None))
        elif mask is not None:
            bits.append(BitRow(bits_text, name, meaning, "1" if value & mask else "0", bool(value & mask)))
    rows = [
        HistoryRow(step, old, new, _change_text(old, new, masks)) for step, old, new in history[-MAX_HISTORY:]
    ]
    return InspectorView(
        location=location,
        param=location_param(location),
        exists=sp is not None,
        value=value,
        kind=_kind(value, level) if value & PT_PRESENT_MASK else "none",
        gfn=sp_gfn + index * span,
        span=span,
        bits=bits,
        history=rows,
        history_total=len(history),
        orphan=sp is not None and sp is not sim.kvm.root and not sp.parent_ptes,
    )


def preset_description(variant: str | None) -> str:
    return PRESET_DESCRIPTIONS.get(variant or "", "a custom combination of switches")


@dataclass(frozen=True, slots=True)
class LegendRow:
    preset: str
    kernel: str
    description: str


def preset_legend() -> list[LegendRow]:
    """The landing page's key to the presets: each one's kernel, and its whole description."""
    return [LegendRow(name, PRESET_KERNELS[name], PRESET_DESCRIPTIONS[name]) for name in PRESET_DESCRIPTIONS]


# ---------------------------------------------------------------------------------------------------------
# The compare view


COMPARE_FIELDS: list[tuple[str, str]] = [
    ("faults", "Faults"),
    ("dirty_log", "Dirty log returned"),
    ("migration", "Migration"),
    ("violations", "Violations"),
    ("sptes", "Sptes changed"),
    ("flushes", "TLB flushes"),
    ("stats", "Large pages, flushes so far"),
    ("bitmap", "Dirty bitmap"),
]


def _signature(view: PlayView, name: str) -> object:
    if name == "faults":
        return tuple(view.faults)
    if name == "sptes":
        return tuple(view.spte_changes), view.spte_change_count
    if name == "flushes":
        return dict((k, v) for k, _, v in view.step_counts)["tlb_flushes"]
    if name == "bitmap":
        return tuple(
            (b.slot, b.logged, b.dirty_count, tuple(b.dirty), tuple(b.written)) for b in view.bitmaps
        )
    if name == "dirty_log":
        return None if view.dirty_log is None else tuple(view.dirty_log)
    if name == "violations":
        return tuple((v.invariant, v.gfn) for v in view.violations if v.current), view.violation_total
    if name == "stats":
        return view.stats.get("lpages"), view.stats.get("remote_tlb_flush")
    if name == "migration":
        mig = view.migration
        return None if mig is None else (mig.finished, tuple(mig.lost))
    raise KeyError(name)


# The counters kvm_stat shows per vCPU (the model sums them over the vCPUs); the others are the VM's.
VCPU_STATS = frozenset({"exits", "pf_fixed", "pf_taken", "pf_fast", "pf_spurious"})


@dataclass(slots=True)
class KernelStatsView:
    """The statistics as the preset's kernel names them, VM and vCPU apart, and where kvm_stat reads
    them: every name shown is one a kvm_stat user knows from that kernel. The result's `lpages` (the
    present large leaves, contract §4) is no kernel name, so it is not among them."""

    source: str
    vm: list[tuple[str, int]]
    vcpu: list[tuple[str, int]]
    note: str


def kernel_stats_view(kvm: Kvm) -> KernelStatsView:
    stats = {name: value for name, value in kvm.stats().items() if name != "lpages"}
    era6 = kvm.masks.era == ERA_6X
    source = "binary stats (KVM_GET_STATS_FD) of Linux 6.x" if era6 else "debugfs kvm/ of Linux 3.x"
    note = ""
    drift = kvm.stat.lpages_uncounted
    if not era6 and drift:
        note = (
            f"largepages counts {drift} more than the {kvm.stat.large_leaves} large sptes present:"
            " 3.14/3.16's mmu-notifier path drops a large spte without counting it down."
        )
    return KernelStatsView(
        source,
        [(name, value) for name, value in stats.items() if name not in VCPU_STATS],
        [(name, value) for name, value in stats.items() if name in VCPU_STATS],
        note,
    )


@dataclass(slots=True)
class CompareColumn:
    variant: str
    description: str
    view: PlayView
    differs: dict[str, bool]


def compare_columns(views: Mapping[str, PlayView]) -> list[CompareColumn]:
    """One column per preset; a field differs when its value is not the same in every column."""
    differs = {
        name: len({repr(_signature(view, name)) for view in views.values()}) > 1 for name, _ in COMPARE_FIELDS
    }
    return [
        CompareColumn(variant, preset_description(variant), view, differs) for variant, view in views.items()
    ]


# ---------------------------------------------------------------------------------------------------------
# The landing page


@dataclass(slots=True)
class Outcome:
    variant: str
    fast: int
    slow: int
    pages_logged: int
    lost: list[int] | None
    violations: int


@dataclass(slots=True)
class ScenarioCard:
    name: str
    title: str
    summary: str
    steps: int
    outcomes: list[Outcome]
    differs: dict[str, bool]
    notes: list[str]


def scenario_card(
    name: str, title: str, summary: str, steps: int, runs: Mapping[str, tuple[list[StepRecord], Simulation]]
) -> ScenarioCard:
    """How the presets fare on one scenario: faults, pages logged, lost pages, violations, and the steps
    whose dirty logs differ."""
    outcomes = []
    for variant, (records, sim) in runs.items():
        outcomes.append(
            Outcome(
                variant,
                sum(r.fast for r in records),
                sum(r.slow for r in records),
                sum(r.dirty_log_len for r in records),
                list(sim.migration.lost) if sim.migrated and sim.migration.lost is not None else None,
                len(sim.violations),
            )
        )
    fields: dict[str, list[Hashable]] = {
        "faults": [(o.fast, o.slow) for o in outcomes],
        "logged": [o.pages_logged for o in outcomes],
        "lost": [tuple(o.lost) if o.lost is not None else None for o in outcomes],
        "violations": [o.violations for o in outcomes],
    }
    differs = {key: len(set(values)) > 1 for key, values in fields.items()}
    notes = []
    logs = [[(r.dirty_log_len, r.dirty_log_digest) for r in records] for records, _ in runs.values()]
    differing = [i for i in range(steps) if len({log[i] for log in logs}) > 1]
    if differing:
        shown = ", ".join(str(i) for i in differing[:12]) + (" …" if len(differing) > 12 else "")
        notes.append(f"The dirty logs differ at step{'s' if len(differing) != 1 else ''} {shown}.")
    elif len(runs) > 1:
        notes.append("Every preset returns the same dirty logs.")
    for o in outcomes:
        if o.lost:
            notes.append(
                f"{o.variant} loses {plural(len(o.lost), 'page')} to the migration: {gfn_list(o.lost, 8)}."
            )
    return ScenarioCard(name, title, summary, steps, outcomes, differs, notes)
