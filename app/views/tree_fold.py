"""The tree's entries and how runs of alike ones are folded: one spte drawn (`SpteView`), a run of
entries summarised in a line (`RunView`), and a stretch of alike entries collapsed into one row
(`CollapsedView`, `collapse`), so that no table is drawn bigger because the VM is bigger."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.views.text import bit_changes, bits_text, flags_text, hx, location_param
from engine.spte import is_large_pte, is_shadow_present_pte, level_name, pages_per_hpage, spte_to_pfn

if TYPE_CHECKING:
    from app.views.tree import TableView  # a pointer's entry holds the table drawn below it



def spte_kind(spte: int, level: int) -> str:
    if level == 1:
        return "4k"
    return "large" if is_large_pte(spte) else "ptr"


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
        if self.old is None or not is_shadow_present_pte(self.old):
            return ""
        was = spte_kind(self.old, self.level)
        if was == self.kind and not self.ghost:
            return ""
        return {"large": f"{level_name(self.level)} leaf", "4k": "4K leaf"}.get(was, "table pointer")

    @property
    def data_attrs(self) -> str:
        """The data-* attributes the page's tree and the SVG export both give an entry."""
        attrs = (
            f' data-level="{self.level:#x}" data-sp-gfn="{self.sp_gfn:#x}" data-index="{self.index:#x}"'
            f' data-value="{self.value:#x}" data-flags="{self.flags}"'
        )
        if self.kind == "large":
            attrs += ' data-large="1"'
        if self.changed and not self.ghost:
            attrs += ' data-changed="1"'
        return attrs

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


def _alike(e: SpteView) -> tuple[str, str, int]:
    """What consecutive entries must share to be collapsed: kind, change this step, flags (of the value
    removed, for a removed one)."""
    if e.ghost:
        return (spte_kind(e.value, e.level), "gone", e.word)
    change = "" if e.old is None else "new" if not is_shadow_present_pte(e.old) else "was"
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
