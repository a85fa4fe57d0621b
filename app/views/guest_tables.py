"""The guest's page tables as the shadow-paging panel draws them (app.views.shadow): the tables of one
address space from its PML4 down, present entries only, each with its target gfn and bits, folded as the
TDP tree folds (small tables whole, alike runs of big ones on one line, the step's walk and write and the
way down to a table KVM shadows always drawn), each table marked when KVM shadows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from app.views.text import hx, plural
from engine.guest_pt import GuestPageTables, gpte_to_gfn_lvl, is_last_gpte
from engine.kvm import Kvm
from engine.spte import (
    PAGE_SHIFT,
    PT64_LEVEL_BITS,
    PT64_NX_MASK,
    PT_ACCESSED_MASK,
    PT_DIRTY_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_USER_MASK,
    PT_WRITABLE_MASK,
    level_name,
    pages_per_hpage,
)

# A table with at most this many present entries is drawn whole (budget permitting); a bigger one shows
# the entries that matter this step and folds the rest into runs. The shadow tables share these.
SMALL_TABLE = 16
# Entries drawn one by one in each tree: a 4 GiB identity map must not become a page of 2 000 rows.
DRAW_CAP = 120
# Folded lines per table, the last summing up the rest.
MAX_RUNS = 8
# The guest's table of each level, by the names the SDM gives them.
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


def span_bytes(level: int) -> int:
    return 1 << (PAGE_SHIFT + PT64_LEVEL_BITS * (level - 1))


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


class GuestTree:
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
        entry_gva = gva + index * span_bytes(level)
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
        return cap_runs(runs)

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
        span = span_bytes(level)
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


def cap_runs(runs: list[FoldedRun]) -> list[FoldedRun]:
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


