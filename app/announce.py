"""The one line a screen reader hears after each step: the step's outcome, written by the server.

The page's live region (`#announcer` in base.html) stays in place across htmx swaps; each answer carries
this line in the position block (`[data-announce]`, hidden), and keys.js copies it into the region once
the swap has settled. A region that is itself replaced on every swap is not reliably read, and a
position number alone does not say what happened.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.predict import PredictPanel
from app.views.compare import COMPARE_FIELDS, CompareColumn
from app.views.play import PlayView


def play_announcement(step: int, total: int, view: PlayView, predict: PredictPanel | None) -> str:
    """"Step 5 of 12, #4: <what it did>" (the narration names the op), after predict mode's verdict."""
    head = f"Step {step} of {total}"
    if view.op:
        head += f", #{step - 1}"
    verdict = ""
    if predict is not None and predict.feedback is not None:
        feedback = predict.feedback
        verdict = "Right. " if feedback.right else f"Wrong: the answer was {feedback.correct_label}. "
    return f"{verdict}{head}: {view.narration}"


def compare_announcement(step: int, total: int, view: PlayView, columns: Sequence[CompareColumn]) -> str:
    """"Step 5 of 12, #4 write gfn 0x250: the presets differ in faults, violations." (or agree)."""
    head = f"Step {step} of {total}"
    if not view.op:
        return f"{head}: before the first step, every preset starts from the same empty tables."
    differs = columns[0].differs if columns else {}
    fields = [label.lower() for name, label in COMPARE_FIELDS if differs.get(name)]
    outcome = f"the presets differ in {', '.join(fields)}" if fields else "every preset agrees"
    return f"{head}, #{step - 1} {view.op}: {outcome}."
