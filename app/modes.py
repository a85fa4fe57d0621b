"""The player's modes: predict (mode=predict, answer=KEY, score=RIGHT-ASKED) and presentation
(present=1, focus=PANEL), as the URL gives them.

Checked before any engine work: a bad value is a 400 naming the parameter. Every player link keeps the
modes (app.links.Links.mode_fields).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.errors import bad_request

PREDICT_MODE = "predict"
# The panels presentation mode can enlarge, in the order of their number keys (1-8); the first is the
# default.
FOCUS_PANELS: tuple[tuple[str, str], ...] = (
    ("tree", "Tables"),
    ("bitmap", "Bitmap"),
    ("trace", "Trace"),
    ("counters", "Counters"),
    ("violations", "Invariants"),
    ("inspector", "Inspector"),
    ("rmaps", "Rmaps"),
    ("tlb", "TLBs"),
)
DEFAULT_FOCUS = FOCUS_PANELS[0][0]
_ANSWER = re.compile(r"[a-z][a-z0-9-]{0,23}")
_SCORE = re.compile(r"(\d{1,6})-(\d{1,6})")


@dataclass(frozen=True, slots=True)
class Modes:
    """The player's modes as the URL gives them. `score` is the running score *before* the answer in the
    same URL is counted: the answer form holds one score for all its buttons, so it cannot know it."""

    predict: bool = False
    answer: str | None = None
    score: tuple[int, int] = (0, 0)
    present: bool = False
    focus: str = DEFAULT_FOCUS
    live: bool = False  # the kernel's own tables beside the model's (live=1)


def parse_modes(
    mode: str | None,
    answer: str | None,
    score: str | None,
    present: str | None,
    focus: str | None,
    live: str | None = None,
) -> Modes:
    predict = False
    if mode is not None and mode.strip():
        if mode.strip() != PREDICT_MODE:
            raise bad_request(
                f"mode={mode[:20]!r}: the only mode is {PREDICT_MODE!r}; leave mode= out for the normal"
                " player"
            )
        predict = True
    if not predict:
        for name, value in (("answer", answer), ("score", score)):
            if value is not None:
                raise bad_request(f"{name}= belongs to predict mode: add mode=predict, or leave {name}= out")
    chosen = None
    if answer is not None:
        if not _ANSWER.fullmatch(answer):
            raise bad_request(
                f"answer={answer[:24]!r}: an answer is one choice's key, lowercase letters, digits and"
                " dashes (e.g. answer=fast)"
            )
        chosen = answer
    right = asked = 0
    if score is not None:
        match = _SCORE.fullmatch(score)
        if match is None:
            raise bad_request(
                f"score={score[:20]!r}: expected RIGHT-ASKED, two whole numbers, e.g. score=3-4"
            )
        right, asked = int(match.group(1)), int(match.group(2))
        if right > asked:
            raise bad_request(f"score={score}: more right answers ({right}) than questions asked ({asked})")
    shown = False
    if present is not None:
        if present not in ("0", "1", ""):
            raise bad_request(
                f"present={present[:20]!r}: 1 for presentation mode, 0 (or nothing) for the normal page"
            )
        shown = present == "1"
    panel = DEFAULT_FOCUS
    if focus is not None and focus != "":
        names = [name for name, _ in FOCUS_PANELS]
        if focus not in names:
            raise bad_request(f"focus={focus[:20]!r}: not a panel (panels: {', '.join(names)})")
        panel = focus
    if live is not None and live not in ("0", "1", ""):
        raise bad_request(f"live={live[:20]!r}: 1 to show the kernel's own tables, 0 (or nothing) not to")
    return Modes(predict, chosen, (right, asked), shown, panel, live == "1")
