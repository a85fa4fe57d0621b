"""note: narration for the player, which changes nothing; optionally worded per preset."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import WithJsonSchema, field_validator

from engine.ops.base import Ask, OpModel, OpSpec, Tell, never, no_access, no_check, no_pages, no_slot
from engine.policy import PRESETS
from engine.scenario.cost import MAX_NOTE_CHARS
from engine.scenario.fields import NoteText
from engine.scenario.wording import refuse, short_repr

if TYPE_CHECKING:
    from engine.estimate import Pricer, StepPrice
    from engine.simulation import Simulation

# The presets a note's `by_preset` may name.
NOTE_PRESETS: tuple[str, ...] = tuple(PRESETS)
_BY_PRESET_SCHEMA: dict[str, object] = {
    "type": "object",
    "description": "the note as each preset tells it; `text` for the presets not named",
    "propertyNames": {"enum": list(NOTE_PRESETS)},
    "additionalProperties": {"type": "string", "maxLength": MAX_NOTE_CHARS},
}


class NoteStep(OpModel):
    """Narration for the player; changes nothing.

    `by_preset` optionally says it per preset (`{"zap": "...", "lazy-buggy": "..."}`): where the presets
    part, one paragraph about all of them reads worse than each preset's own sentence. `text` stays the
    note for every preset not named, for a what-if policy, and for any reader that knows only `text`.
    Absent, it is left out of the canonical form, so a note without it encodes as it always did.
    """

    op: Literal["note"] = "note"
    text: NoteText
    by_preset: Annotated[dict[str, NoteText], WithJsonSchema(_BY_PRESET_SCHEMA)] | None = None

    @field_validator("by_preset", mode="before")
    @classmethod
    def _known_presets(cls, value: object) -> object:
        # Before the values are checked: an unknown name is the likelier mistake, and names the key.
        if isinstance(value, Mapping):
            for name in value:
                if name not in NOTE_PRESETS:
                    raise refuse(
                        "note_preset",
                        f"names {short_repr(name, 40)}, which is not a preset (the presets:"
                        f" {', '.join(NOTE_PRESETS)})",
                    )
        return value

    @field_validator("by_preset", mode="after")
    @classmethod
    def _empty_is_absent(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # {} says nothing more than no by_preset at all: one meaning, one canonical form, one share code.
        return value or None

    def __hash__(self) -> int:
        # Frozen steps hash by value; the mapping by its items (a dict itself does not hash).
        return hash((self.text, tuple(sorted(self.by_preset.items())) if self.by_preset else None))

    def text_for(self, preset: str | None) -> str:
        """The note as `preset` tells it: its own text if the note has one, else `text`."""
        if preset is not None and self.by_preset and preset in self.by_preset:
            return self.by_preset[preset]
        return self.text

    def json_fields(self) -> dict[str, object]:
        """`by_preset` only when the note has one: an extension of the format, so a scenario that does
        not use it keeps the canonical form (and share code, and result) it had before the field existed."""
        exclude = {"op", "by_preset"} if self.by_preset is None else {"op"}
        return self.model_dump(mode="python", exclude=exclude)

    def key(self) -> tuple[object, ...]:
        # A dict does not hash: `by_preset` as its sorted items.
        if self.by_preset is not None:
            return NoteStep, self.text, tuple(sorted(self.by_preset.items()))
        return super().key()


def run(sim: Simulation, step: NoteStep) -> None:
    """Nothing runs."""


def price(pricer: Pricer, step: NoteStep) -> StepPrice:
    return pricer.nothing()


def describe(step: NoteStep) -> str:
    """`note`: its text is shown beside, not in the op's words (the CLI appends it)."""
    return "note"


def live(target: object, step: NoteStep) -> list[int] | None:
    """Nothing to ask the kernel."""
    return None


def note(step: NoteStep) -> NoteStep:
    return step


NOTE: OpSpec[NoteStep] = OpSpec(
    model=NoteStep,
    run=run,
    check=no_check,
    price=price,
    describe=describe,
    ask=Ask.NOTHING,
    tell=Tell.NOTE,
    live=live,
    refusal=None,
    access=no_access,
    slot=no_slot,
    pages=no_pages,
    note=note,
    harvest=None,
    restarts_page=never,
    clears_some=never,
    begins_migration=False,
    ends_migration=False,
)
