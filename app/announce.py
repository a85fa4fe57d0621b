"""The one line a screen reader hears after each step: the step's outcome, written by the server.

The page's live region (`#announcer` in base.html) stays in place across htmx swaps; each answer carries
this line in the position block (`[data-announce]`, hidden), and keys.js copies it into the region once
the swap has settled. A region that is itself replaced on every swap is not reliably read, and a
position number alone does not say what happened.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.predict import PredictPanel
from app.views.compare import FieldSplit
from app.views.play import PlayView


def play_announcement(step: int, total: int, view: PlayView, predict: PredictPanel | None) -> str:
    """"Step 5 of 12, #5: <what it did>" (the narration names the op), after predict mode's verdict."""
    head = f"Step {step} of {total}"
    if view.op:
        head += f", #{step}"
    verdict = ""
    if predict is not None and predict.feedback is not None:
        feedback = predict.feedback
        verdict = "Right. " if feedback.right else f"Wrong: the answer was {feedback.correct_label}. "
    return f"{verdict}{head}: {view.narration}"


def compare_announcement(step: int, total: int, view: PlayView, splits: Sequence[FieldSplit]) -> str:
    """"Step 5 of 12, #5 write gfn 0x250: the presets differ in faults (no majority), violations
    (lazy-buggy apart)." (or agree): the fields that split, each with the odd one out as the grid marks it."""
    head = f"Step {step} of {total}"
    if not view.op:
        return f"{head}: before the first step, every preset starts from the same empty tables."
    parts = []
    for split in splits:
        if len(split.groups) < 2:
            continue
        if split.majority is None:
            parts.append(f"{split.label.lower()} (no majority)")
        else:
            odd = [column for group in split.groups if group != split.majority for column in group]
            parts.append(f"{split.label.lower()} ({', '.join(odd)} apart)")
    outcome = f"the presets differ in {', '.join(parts)}" if parts else "every preset agrees"
    return f"{head}, #{step} {view.op}: {outcome}."
