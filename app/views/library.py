"""The landing page's scenario cards (how each preset fares on one scenario, and the step to open it at),
and the story the page opens with: where, in the worked example, each kernel parts from the next."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from app.records import StepRecord
from app.views.compare import split
from app.views.text import gfn_list, plural
from engine.policy import DEFAULT_PRESET
from engine.simulation import Simulation
from scenarios import lesson_teaches

# The two kernels the story turns on: caf6900f's fast path and the fixed patch. Where they part is the
# bug itself, so it is where a lesson, and the landing page's "Start here", opens.
BUGGY, FIXED = "lazy-buggy", "lazy"
STORY_KERNELS = ("zap", BUGGY, FIXED)


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
    # The step a link to this lesson opens at (the player's `step=`: the state after that many scenario
    # steps): right after the first step where something happens (`key_step`).
    key_step: int = 0
    # Per preset, the first scenario step where it does something other than the kernel it is told
    # against in the story (`STORY_AGAINST`); None if it never does.
    parts: dict[str, int | None] = field(default_factory=dict)
    teaches: str = ""
    # Per field, the odd ones out (as compare marks them: a strict majority of the presets agree and
    # these do not), each with the presets of the majority.
    odd: dict[str, dict[str, str]] = field(default_factory=dict)


# Each chapter of the story, and the kernel it is told against: zap, caf6900f and the 6.13 one against
# the fixed patch, the fixed patch against caf6900f.
STORY_AGAINST: dict[str, str] = {"zap": FIXED, BUGGY: FIXED, FIXED: BUGGY, "modern": FIXED}


def _signature(record: StepRecord) -> tuple[Hashable, ...]:
    """What one step did, as a user sees it: faults, flushes, pages marked, the log returned, violations."""
    return (
        record.fast,
        record.slow,
        record.tlb_flushes,
        record.marked_dirty,
        record.dirty_log_len,
        record.dirty_log_digest,
        record.violations,
    )


def first_parting(records: Mapping[str, list[StepRecord]], names: Sequence[str]) -> int | None:
    """The first scenario step at which the presets `names` (those that ran) did not all do the same."""
    logs = [records[name] for name in names if name in records]
    if len(logs) < 2:
        return None
    for index in range(min(len(log) for log in logs)):
        if len({_signature(log[index]) for log in logs}) > 1:
            return index
    return None


def key_step(records: Mapping[str, list[StepRecord]]) -> int:
    """The player's `step=` a lesson's links open at: just after the first step where the story's three
    kernels (zap, caf6900f, the fix; contract §2) do not all do the same, as the lesson is about where
    they part; failing that, where the default preset first faults, flushes, marks or logs anything;
    0 when nothing ever happens. `modern` is left out: in the lessons where the kernels agree on every
    fault and log (presets-agree, cow-large-spte) it still parts from them, near the end."""
    index = first_parting(records, STORY_KERNELS)
    if index is None:
        quiet = _signature(StepRecord(0, 0, 0, 0, None, 0, None, (), 0))
        default = records.get(DEFAULT_PRESET) or next(iter(records.values()), [])
        index = next((i for i, record in enumerate(default) if _signature(record) != quiet), None)
    return 0 if index is None else index + 1


def decisive_step(card: ScenarioCard) -> int:
    """The player's `step=` right after the step where the bug and the fix part (the worked example's
    write to 0x250, spec §7.2 step 5), or the card's key step if they never part."""
    index = card.parts.get(BUGGY)
    return card.key_step if index is None else index + 1


def scenario_card(
    name: str,
    title: str,
    summary: str,
    steps: int,
    runs: Mapping[str, tuple[list[StepRecord], Simulation]],
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
    odd: dict[str, dict[str, str]] = {}
    for key, values in fields.items():
        _, majority = split({o.variant: value for o, value in zip(outcomes, values, strict=True)})
        agree = ", ".join(majority or ())
        odd[key] = {o.variant: agree for o in outcomes if majority is not None and o.variant not in majority}
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
    by_preset = {variant: run[0] for variant, run in runs.items()}
    parts = {
        variant: first_parting(by_preset, (variant, STORY_AGAINST.get(variant, FIXED))) for variant in runs
    }
    return ScenarioCard(
        name,
        title,
        summary,
        steps,
        outcomes,
        differs,
        notes,
        key_step(by_preset),
        parts,
        lesson_teaches(name),
        odd,
    )


@dataclass(slots=True)
class Story:
    """The landing page's telling of the worked example: per chapter (preset) the player's step where that
    kernel parts from the one it is told against, and the decisive step "Start here" opens the compare
    view at. Steps are the player's `step=` (the state after that many scenario steps)."""

    scenario: str
    steps: dict[str, int]
    start: int


def story(card: ScenarioCard) -> Story:
    """The story told on `card`'s scenario (the worked example): computed from its runs, not written down,
    so the links follow the lesson if its steps change."""
    steps = {
        preset: (card.key_step if index is None else index + 1)
        for preset, index in card.parts.items()
        if preset in STORY_AGAINST
    }
    return Story(card.name, steps, decisive_step(card))
