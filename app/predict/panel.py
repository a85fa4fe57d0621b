"""The entry point, `question_for`, dispatching on what the op table says each op asks
(engine.ops.base.Ask), and the panel it fills."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.predict.access import access_question
from app.predict.base import Feedback, Question, scored
from app.predict.harvest import clear_question, dirty_log_question, verdict_question
from app.predict.logging import logging_off_question, logging_on_question
from app.replay import Shown
from engine.ops.base import Ask
from engine.ops.registry import op_spec
from engine.simulation import StepResult

# The question of each kind an op's `ask` facet (engine/ops) names; tests/test_op_table.py checks that
# every kind but NOTHING has one.
ASKERS: dict[Ask, Callable[[Shown, StepResult], Question | None]] = {
    Ask.FAULT: access_question,
    Ask.LOGGING_ON: logging_on_question,
    Ask.LOGGING_OFF: logging_off_question,
    Ask.REPORTED: dirty_log_question,
    Ask.PROTECTED: clear_question,
    Ask.VERDICT: verdict_question,
}


def question_for(shown: Shown) -> Question | None:
    """The question about step `shown.n - 1`, derived from the state after it (`shown`), or None for a
    step that asks nothing sensible (a note, a TLB flush, zapping everything, switching logging on for a
    slot nothing maps, or off for one without a table a huge page could replace). An ioctl the dirty-log
    mode refuses is asked about as if it ran: that it fails is the answer."""
    result = shown.result
    if result is None:
        return None
    asker = ASKERS.get(op_spec(result.op).ask)
    return asker(shown, result) if asker is not None else None


# ---------------------------------------------------------------------------------------------------------
# The panel


@dataclass(frozen=True, slots=True)
class PredictPanel:
    """What the question panel shows at step `step`: the verdict on the answer in the URL (about step
    `step - 1`), the running score with it counted, and the question about step `step`, or the final
    score at the end."""

    step: int
    total: int
    feedback: Feedback | None
    question: Question | None
    score: tuple[int, int]
    upcoming: str  # step `step` in short, "" at the end
    note: str  # the text of step `step` when it is a note

    @property
    def finished(self) -> bool:
        return self.step >= self.total

    @property
    def waiting(self) -> bool:
        """A question waits for its answer: stepping forward is off until it is given."""
        return self.question is not None


def predict_panel(
    step: int,
    total: int,
    score: tuple[int, int],
    feedback: Feedback | None,
    question: Question | None,
    upcoming: str,
    note: str,
) -> PredictPanel:
    return PredictPanel(step, total, feedback, question, scored(score, feedback), upcoming, note)
