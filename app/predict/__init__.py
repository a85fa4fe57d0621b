"""Predict next: a question about the step about to run, read off the engine's own result of that step.

The player's predict mode asks, before a step is revealed, what it will do, then shows the answer with
the state after it. Nothing here is written per scenario: a question is derived from the `StepResult` of
the step (what `Run.at(n + 1)` returns: fault rows, dirty log, violations, trace events) and the spte
values the step replaced (`Shown.touched`), so the right answer is whatever the model does under the
page's preset and switches — a what-if changes the answers with it.

What a question asks about is chosen from the op and from the state *before* the step, which the learner
sees on the page, never from the outcome, so the prompt gives nothing away. The one exception is the
dirty-log question: it prefers a page that was written but will not be reported, because that silent
loss is what the lazy-buggy preset is about; its prompt reads the same whatever the answer.

The kinds follow the op: an access asks which path a fault takes (or which bits the CPU sets); enabling
logging asks what becomes of a mapping (zapped, write-protected, split into 4K sptes, or left alone when the
bitmap starts all set), and disabling it what becomes of the table logging left where a huge page was (left,
zapped, or replaced in place by a huge leaf, as 6.13 and later do); a harvest (GET_DIRTY_LOG, a round, the
dirty ring's reset) asks whether a written page is reported; KVM_CLEAR_DIRTY_LOG asks whether a page is
write-protected again; the end of a migration asks for the verdict. An ioctl the VM's dirty-log mode
refuses is asked about as if it ran, and its failure is the answer.

Everything here is a pure function of engine values; the explanations reuse `app.explain`'s sentences for
the trace events that decided the answer.

The package by concern: `base` (the kinds, a question, its verdict, reading the engine's values),
`access`, `logging` and `harvest` (the questions of each kind), `panel` (`question_for`, which asks what
the op's `ask` facet names, and the panel).
"""

from app.predict.access import asks_bits, many_outcome, single_outcome
from app.predict.base import (
    BITS,
    CLEAR,
    DIRTY_LOG,
    FAULT,
    LOGGING,
    VERDICT,
    Choice,
    Feedback,
    Leaf,
    Question,
    judge,
    leaf_before,
    scored,
)
from app.predict.harvest import first_write_since
from app.predict.logging import small_leaves_under
from app.predict.panel import ASKERS, PredictPanel, predict_panel, question_for

__all__ = [
    "ASKERS",
    "BITS",
    "CLEAR",
    "DIRTY_LOG",
    "FAULT",
    "LOGGING",
    "VERDICT",
    "Choice",
    "Feedback",
    "Leaf",
    "PredictPanel",
    "Question",
    "asks_bits",
    "first_write_since",
    "judge",
    "leaf_before",
    "many_outcome",
    "predict_panel",
    "question_for",
    "scored",
    "single_outcome",
    "small_leaves_under",
]
