"""The compare view: one column per preset, each with its tree and bitmaps; the odd one out of each field
marked, and what it differs from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.views.play import PlayView
from app.views.presets import preset_description

# The dirty bitmap first: it sits under each column's page-table tree, the state the step left.
COMPARE_FIELDS: list[tuple[str, str]] = [
    ("bitmap", "Dirty bitmap"),
    ("faults", "Faults"),
    ("dirty_log", "Dirty log returned"),
    ("migration", "Migration"),
    ("violations", "Violations"),
    ("sptes", "Sptes changed"),
    ("flushes", "TLB flushes"),
    ("stats", "Large pages, flushes so far"),
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


@dataclass(frozen=True, slots=True)
class FieldSplit:
    """How the columns split on one field: groups of columns with equal values (in column order), the
    majority group when one group is larger than every other, and whether the largest groups tie."""

    name: str
    label: str
    groups: tuple[tuple[str, ...], ...]
    majority: tuple[str, ...] | None

    @property
    def tie(self) -> bool:
        return len(self.groups) > 1 and self.majority is None

    @property
    def groups_text(self) -> str:
        """The groups in words, e.g. "zap, lazy | lazy-buggy, modern"."""
        return " | ".join(", ".join(group) for group in self.groups)

    def odd(self, variant: str) -> bool:
        """Whether this column is an odd one out: not in the majority of a field that splits."""
        return self.majority is not None and variant not in self.majority


def field_splits(views: Mapping[str, PlayView]) -> list[FieldSplit]:
    """For each field, the columns grouped by value. The odd one out is what a reader looks for: a column
    is marked only when a strict majority of the columns agree and it is not among them; when the
    largest groups are as large as each other (2 against 2, every column its own), no column is."""
    out = []
    for name, label in COMPARE_FIELDS:
        groups, majority = split({variant: repr(_signature(view, name)) for variant, view in views.items()})
        out.append(FieldSplit(name, label, groups, majority))
    return out


def split(values: Mapping[str, object]) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...] | None]:
    """The columns grouped by equal value (groups and their members in column order), and the majority:
    the one group larger than every other, or None when the largest groups tie or all agree."""
    groups: dict[object, list[str]] = {}
    for column, value in values.items():
        groups.setdefault(value, []).append(column)
    ordered = tuple(tuple(group) for group in groups.values())
    sizes = sorted((len(group) for group in ordered), reverse=True)
    if len(ordered) > 1 and sizes[0] > sizes[1]:
        return ordered, max(ordered, key=len)
    return ordered, None


@dataclass(slots=True)
class CompareColumn:
    variant: str
    description: str
    view: PlayView
    # Per field: whether this column is the odd one out, and the columns of the majority it differs from.
    differs: dict[str, bool]
    against: dict[str, str]


def compare_columns(views: Mapping[str, PlayView], splits: Sequence[FieldSplit]) -> list[CompareColumn]:
    """One column per preset; a field of a column differs when the column is an odd one out of it
    (`splits`: `field_splits(views)`, which the page also states the ties from)."""
    columns = []
    for variant, view in views.items():
        differs = {split.name: split.odd(variant) for split in splits}
        against = {
            split.name: ", ".join(split.majority) for split in splits if split.majority and split.odd(variant)
        }
        columns.append(CompareColumn(variant, preset_description(variant), view, differs, against))
    return columns
