"""The compare view: one column per preset, each field marked where the presets differ."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.views.play import PlayView
from app.views.presets import preset_description

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
