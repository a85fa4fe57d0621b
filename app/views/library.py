"""The landing page's scenario cards: how each preset fares on one scenario."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from app.cache import StepRecord
from app.views.text import gfn_list, plural
from engine.simulation import Simulation


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
