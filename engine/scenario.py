"""The scenario format of contract §1: what a user asks the simulated VM to do.

A scenario is checked whole before anything runs, so that the engine never meets a gfn outside every slot,
a vCPU that does not exist or a GET_DIRTY_LOG on a slot that is not logged, and so that a user learns about
a typo in one line instead of from a half-run trace. Every refusal is a `ScenarioError` whose text is one
line naming where the problem is (`step 4 (write): gfn 0x400 is outside every memslot`).

Steps are numbered from 0, as the result's `index` numbers them. This module reads no files: the shells
hand it text, bytes or an already-decoded object.
"""

import bisect
import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from engine.policy import PRESETS

# Limits of contract §1. They keep one run small enough to answer an HTTP request and to draw in a page.
MAX_SCENARIO_BYTES = 1 << 20
MAX_VCPUS = 8
MAX_MEMSLOTS = 64
MAX_TOTAL_PAGES = 1 << 20  # 4 GiB of guest memory in all slots together
MAX_STEPS = 100_000
MAX_COUNT = 1 << 20
MAX_ACCESSES = 1 << 22  # guest accesses in the whole scenario: the sum of every read/write count
# The text a scenario shows, in characters. Each is shown on every page of the scenario (the title in the
# heading and the window title, the description beside the player, the current note in the narration),
# and a share code compresses repeated text a thousandfold: without a cap, a link of 1.6 KB made a 2 MB
# page. The built-in lessons use at most 64, 3 524 and 485 characters; the caps leave room for two
# screens of description and a long paragraph of narration per step.
MAX_TITLE_CHARS = 200
MAX_DESCRIPTION_CHARS = 8192
MAX_NOTE_CHARS = 2048

# The hardware's limits, not policy: a 4-level EPT walk covers 48 bits of guest-physical address, and an
# spte holds a 40-bit pfn (bits 12..51).
MAX_GFN_END = 1 << 36
MAX_PFN_END = 1 << 40

MAX_SLOT_ID = 32767
DEFAULT_BASE_PFN = 0x80000
DEFAULT_BASE_PFN_STRIDE = 0x100000

VERSION = 1

# The page sizes a scenario names, and the kernel's level for each (PG_LEVEL_4K = 1 ...).
PAGE_LEVELS: dict[str, int] = {"4K": 1, "2M": 2, "1G": 3}
PageSize = Literal["4K", "2M", "1G"]

# Keep parsed numbers to 64 bits: nothing in the format is wider, and a message must stay one short line.
_MAX_NUMBER = (1 << 64) - 1
_HEX = re.compile(r"0x[0-9a-fA-F]+")


def _refuse(kind: str, text: str) -> PydanticCustomError:
    """A validation error whose message is `text` verbatim, braces and all (user text may hold some)."""
    return PydanticCustomError(kind, "{text}", {"text": text})


class ScenarioError(ValueError):
    """A scenario the engine refuses to run; str() is one line saying where and why.

    Where, also as data, so that a shell can point at it without reading the message: `step`, the index
    of the step at fault (None when no step is), and `field`, the field at fault: a step's field (`gfn`,
    `slot`, `op`, ...) or a path in the scenario (`memslots[0].npages`), "" when no one field is."""

    def __init__(self, message: str, *, step: int | None = None, field: str = "") -> None:
        # Keep the message on one line: the CLI prints it as its only line on stderr.
        super().__init__(" ".join(message.splitlines()))
        self.step = step
        self.field = field


class ScenarioTooLargeError(ScenarioError):
    """A scenario text over MAX_SCENARIO_BYTES: refused for its size alone, so that a shell can answer
    "too large" (HTTP 413) rather than "invalid" without reading the message."""


# ---------------------------------------------------------------------------------------------------------
# Numbers and text


def _short_repr(value: object, limit: int = 24) -> str:
    """Quote a user's value in a message without letting it run the message over several lines."""
    try:
        text = repr(value)
    except ValueError:  # an int of thousands of digits, which Python will not print
        return "a number too long to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: object) -> str:
    """Name a Python value by its JSON type, since that is what the user wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {_short_repr(value)}"
    if isinstance(value, str):
        return f"the string {_short_repr(value)}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _parse_number(value: object) -> int:
    """Accept a JSON integer or a "0x" hex string, the two spellings contract §1 allows for numbers.

    Decimal strings are refused rather than guessed at: "200" next to "0x200" would be an easy slip.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _HEX.fullmatch(value):
        if len(value[2:].lstrip("0")) > 16:
            raise PydanticCustomError("number_too_large", "must fit in 64 bits")
        number = int(value, 16)
    else:
        raise _refuse(
            "number_type", f'must be an integer or a hex string such as "0x200", not {_json_kind(value)}'
        )
    if number < 0:
        raise PydanticCustomError("number_negative", "must not be negative")
    if number > _MAX_NUMBER:
        raise PydanticCustomError("number_too_large", "must fit in 64 bits")
    return number


Number = Annotated[
    int,
    BeforeValidator(_parse_number),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^0x[0-9a-fA-F]{1,16}$"},
            ]
        }
    ),
]


@dataclass(frozen=True, slots=True)
class _Between:
    """Bound a number, with a message that names the range instead of pydantic's generic one."""

    low: int
    high: int | None = None
    hex: bool = False

    def _text(self, value: int) -> str:
        return f"{value:#x}" if self.hex else str(value)

    def _check(self, value: int) -> int:
        if value < self.low or (self.high is not None and value > self.high):
            if self.high is None:
                message = f"must be at least {self._text(self.low)}"
            else:
                message = f"must be between {self._text(self.low)} and {self._text(self.high)}"
            raise _refuse("number_range", message)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Copy: WithJsonSchema hands every Number the same dict, and each bound is its own.
        json_schema = copy.deepcopy(handler(schema))
        for branch in json_schema.get("anyOf", []):
            if branch.get("type") == "integer":
                branch["minimum"] = self.low
                if self.high is not None:
                    branch["maximum"] = self.high
        return json_schema


def _check_text(value: str) -> str:
    """Refuse lone surrogates: JSON's \\ud800 escapes allow them, but UTF-8 (and so a share code) cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise _refuse(
            "text_unicode",
            f"holds {value[error.start]!r} at position {error.start}, which is not valid Unicode",
        ) from None
    return value


def _check_text_input(value: object) -> object:
    return _check_text(value) if isinstance(value, str) else value


Text = Annotated[str, BeforeValidator(_check_text_input)]


@dataclass(frozen=True, slots=True)
class _MaxChars:
    """Cap a text's length, with a message that names the limit and the length found."""

    limit: int
    what: str

    def _check(self, value: str) -> str:
        if len(value) > self.limit:
            raise _refuse(
                "text_too_long",
                f"is {len(value):,} characters long, more than the {self.limit:,} {self.what} may hold",
            )
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), "maxLength": self.limit}


Title = Annotated[Text, _MaxChars(MAX_TITLE_CHARS, "a title")]
Description = Annotated[Text, _MaxChars(MAX_DESCRIPTION_CHARS, "a description")]
NoteText = Annotated[Text, _MaxChars(MAX_NOTE_CHARS, "a note")]

# The presets a note's `by_preset` may name.
NOTE_PRESETS: tuple[str, ...] = tuple(PRESETS)
_BY_PRESET_SCHEMA: dict[str, object] = {
    "type": "object",
    "description": "the note as each preset tells it; `text` for the presets not named",
    "propertyNames": {"enum": list(NOTE_PRESETS)},
    "additionalProperties": {"type": "string", "maxLength": MAX_NOTE_CHARS},
}


class _Frozen(BaseModel):
    # strict: no silent coercion of "true" to True or of 1.0 to 1; numbers go through _parse_number.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# ---------------------------------------------------------------------------------------------------------
# The VM and its memslots


class Vm(_Frozen):
    """The VM-wide knobs: how many vCPUs, the largest mapping the TDP MMU may build, and EPT A/D."""

    vcpus: Annotated[Number, _Between(1, MAX_VCPUS)] = 1
    max_page_level: PageSize = "2M"
    ept_ad: bool = True

    @property
    def max_level(self) -> int:
        return PAGE_LEVELS[self.max_page_level]


class Memslot(_Frozen):
    """One KVM memslot: a guest frame range backed by a host pfn range of one host page size."""

    id: Annotated[Number, _Between(0, MAX_SLOT_ID)]
    base_gfn: Annotated[Number, _Between(0, MAX_GFN_END - 1, hex=True)]
    npages: Annotated[Number, _Between(1, MAX_TOTAL_PAGES)]
    host_page: PageSize = "4K"
    # No default here: it depends on the slot's position, so Scenario fills it in, and a parsed slot
    # always holds a concrete pfn.
    base_pfn: Annotated[Number, _Between(0, MAX_PFN_END - 1, hex=True)]
    host_writable: bool = True
    # What the host does when a guest write needs a page that is not writable yet (host_writable false):
    # "copy" a shared page (the zero page, KSM, a fork's copy-on-write), which fires the mmu notifier, or
    # "reuse" a page the process owns alone, made writable where it is, with no notifier (do_wp_page).
    host_cow: Literal["copy", "reuse"] = "copy"

    @property
    def host_level(self) -> int:
        return PAGE_LEVELS[self.host_page]

    @property
    def end_gfn(self) -> int:
        """The first gfn past the slot."""
        return self.base_gfn + self.npages

    @model_validator(mode="after")
    def _fits_the_hardware(self) -> "Memslot":
        if self.host_cow != "copy" and self.host_writable:
            raise _refuse(
                "memslot_cow",
                "host_cow says what a write does to a host page that is not writable yet; with"
                " host_writable true every page already is",
            )
        if self.end_gfn > MAX_GFN_END:
            raise _refuse(
                "memslot_range",
                f"gfns {self.base_gfn:#x}-{self.end_gfn - 1:#x} go past {MAX_GFN_END - 1:#x},"
                " the last gfn a 4-level EPT maps",
            )
        if self.base_pfn + self.npages > MAX_PFN_END:
            raise _refuse(
                "memslot_range",
                f"pfns {self.base_pfn:#x}-{self.base_pfn + self.npages - 1:#x} go past {MAX_PFN_END - 1:#x},"
                " the widest pfn an spte can hold",
            )
        return self


# ---------------------------------------------------------------------------------------------------------
# Steps. To add an op, write its model below and list it in `Step`: parsing, the error for unknown ops,
# the JSON schema and step_to_json all follow from that union.

VcpuId = Annotated[Number, _Between(0, MAX_VCPUS - 1)]
SlotId = Annotated[Number, _Between(0, MAX_SLOT_ID)]


class _AccessStep(_Frozen):
    """`count` guest accesses at `gfn + k × stride`, in order, from one vCPU."""

    is_write: ClassVar[bool]

    gfn: Annotated[Number, _Between(0, _MAX_NUMBER, hex=True)]
    count: Annotated[Number, _Between(1, MAX_COUNT)] = 1
    # A stride of 0 repeats the same gfn: the way to show a TLB hit or a second fault on one page.
    stride: Annotated[Number, _Between(0, MAX_COUNT)] = 1
    vcpu: VcpuId = 0


class ReadStep(_AccessStep):
    is_write: ClassVar[bool] = False
    op: Literal["read"] = "read"


class WriteStep(_AccessStep):
    is_write: ClassVar[bool] = True
    op: Literal["write"] = "write"


class _SlotStep(_Frozen):
    slot: SlotId


class EnableDirtyLogStep(_SlotStep):
    """KVM_MEM_LOG_DIRTY_PAGES set on the slot."""

    op: Literal["enable_dirty_log"] = "enable_dirty_log"


class DisableDirtyLogStep(_SlotStep):
    """KVM_MEM_LOG_DIRTY_PAGES cleared on the slot."""

    op: Literal["disable_dirty_log"] = "disable_dirty_log"


class GetDirtyLogStep(_SlotStep):
    """KVM_GET_DIRTY_LOG on the slot."""

    op: Literal["get_dirty_log"] = "get_dirty_log"


class ClearDirtyLogStep(_SlotStep):
    """KVM_CLEAR_DIRTY_LOG on pages [first, first + num) of the slot, with every bit of the user's mask set.

    The kernel's rules are checked before anything runs, as the ioctl's -EINVAL: `first` a multiple of 64,
    the range inside the slot, `num` a multiple of 64 unless the range reaches the slot's end.
    """

    op: Literal["clear_dirty_log"] = "clear_dirty_log"
    first: Annotated[Number, _Between(0, MAX_TOTAL_PAGES, hex=True)]
    num: Annotated[Number, _Between(0, MAX_TOTAL_PAGES)]


class ResetDirtyRingStep(_Frozen):
    """Userspace harvests every vCPU's dirty ring, then KVM_RESET_DIRTY_RINGS re-protects what it read."""

    op: Literal["reset_dirty_ring"] = "reset_dirty_ring"


class FlushTlbStep(_Frozen):
    """kvm_flush_remote_tlbs."""

    op: Literal["flush_tlb"] = "flush_tlb"


class ZapAllStep(_Frozen):
    """kvm_mmu_zap_all."""

    op: Literal["zap_all"] = "zap_all"


class NoteStep(_Frozen):
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
                    raise _refuse(
                        "note_preset",
                        f"names {_short_repr(name, 40)}, which is not a preset (the presets:"
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


class MigrateBeginStep(_Frozen):
    """Start a live migration: log every slot not yet logged and copy every page."""

    op: Literal["migrate_begin"] = "migrate_begin"


class MigrateRoundStep(_Frozen):
    """One pre-copy round: get_dirty_log on every slot, copy what it returns."""

    op: Literal["migrate_round"] = "migrate_round"


class MigrateEndStep(_Frozen):
    """Stop and copy, compare destination with source, and undo the logging migrate_begin enabled."""

    op: Literal["migrate_end"] = "migrate_end"


Step = Annotated[
    ReadStep
    | WriteStep
    | EnableDirtyLogStep
    | DisableDirtyLogStep
    | GetDirtyLogStep
    | ClearDirtyLogStep
    | ResetDirtyRingStep
    | FlushTlbStep
    | ZapAllStep
    | NoteStep
    | MigrateBeginStep
    | MigrateRoundStep
    | MigrateEndStep,
    Field(discriminator="op"),
]

STEP_TYPES: tuple[type[_Frozen], ...] = get_args(get_args(Step)[0])
STEP_OPS: tuple[str, ...] = tuple(str(cls.model_fields["op"].default) for cls in STEP_TYPES)


def step_to_json(step: Step) -> dict[str, object]:
    """The step as the result's `op` object shows it: `op` first, then every field with defaults filled.

    A note's `by_preset` only when it has one: an extension of the format, so a scenario that does not
    use it keeps the canonical form (and share code, and result) it had before the field existed.
    """
    exclude = {"op", "by_preset"} if isinstance(step, NoteStep) and step.by_preset is None else {"op"}
    fields = step.model_dump(mode="python", exclude=exclude)
    return {"op": step.op, **fields}


# ---------------------------------------------------------------------------------------------------------
# The scenario


def _fail(where: str, what: str, *, step: int | None = None, field: str = "") -> PydanticCustomError:
    """A whole-scenario refusal, already worded with its location (see _message), which it also carries
    as data: the step's index and the field at fault (for the scenario's own fields, `where`)."""
    at = field if step is not None else where
    return PydanticCustomError("sptelab", "{text}", {"text": f"{where}: {what}", "step": step, "field": at})


def _step_key(step: Step) -> tuple[object, ...]:
    """A step's field values as a dict key; a note's `by_preset` (a dict) as its sorted items."""
    if isinstance(step, NoteStep) and step.by_preset is not None:
        return NoteStep, step.text, tuple(sorted(step.by_preset.items()))
    return type(step), *step.__dict__.values()


def _step_where(index: int, step: Step) -> str:
    return f"step {index} ({step.op})"


class Scenario(_Frozen):
    """A whole scenario, checked as a whole so that every step of it can run."""

    format: Literal["sptelab-scenario"]
    version: int
    title: Title = ""
    description: Description = ""
    vm: Vm = Vm()
    memslots: list[Memslot]
    steps: list[Step] = []

    @field_validator("version", mode="before")
    @classmethod
    def _known_version(cls, value: object) -> object:
        # Compare by type as well: True == 1 in Python, but `"version": true` is not version 1.
        if type(value) is not int or value != VERSION:
            raise _refuse("version", f"must be {VERSION}, the only version this program reads")
        return value

    @field_validator("memslots", mode="before")
    @classmethod
    def _default_base_pfns(cls, value: object) -> object:
        # Count first, so that a list of a million slots is refused without validating each one.
        if isinstance(value, list | tuple):
            if not 1 <= len(value) <= MAX_MEMSLOTS:
                raise _refuse(
                    "memslots_count", f"must hold between 1 and {MAX_MEMSLOTS} memslots, not {len(value)}"
                )
            # The default depends on the position, which only the list knows.
            return [
                {**slot, "base_pfn": DEFAULT_BASE_PFN + DEFAULT_BASE_PFN_STRIDE * position}
                if isinstance(slot, Mapping) and "base_pfn" not in slot
                else slot
                for position, slot in enumerate(value)
            ]
        return value

    @field_validator("steps", mode="before")
    @classmethod
    def _step_count(cls, value: object) -> object:
        if isinstance(value, list | tuple) and len(value) > MAX_STEPS:
            raise _refuse("steps_count", f"must hold at most {MAX_STEPS} steps, not {len(value)}")
        return value

    @field_validator("steps", mode="after")
    @classmethod
    def _share_equal_steps(cls, steps: list[Step]) -> list[Step]:
        # Steps are frozen values, and long scenarios repeat a few of them thousands of times (a share
        # code of 4 KB can hold 40 000 steps): keep one object per distinct step, not one per line, so a
        # parsed scenario costs a pointer per step (pydantic's model of a step is about 500 bytes).
        # Keyed by the field values (plain ints, strings and booleans), which hash faster than the models.
        distinct: dict[tuple[object, ...], Step] = {}
        return [distinct.setdefault(_step_key(step), step) for step in steps]

    @model_validator(mode="after")
    def _check(self) -> "Scenario":
        self._check_memslots()
        self._check_steps()
        return self

    def _check_memslots(self) -> None:
        """Slots must have distinct ids and disjoint gfn ranges, as KVM_SET_USER_MEMORY_REGION demands."""
        for position, slot in enumerate(self.memslots):
            for earlier_position, earlier in enumerate(self.memslots[:position]):
                if slot.id == earlier.id:
                    raise _fail(
                        f"memslots[{position}].id",
                        f"slot {slot.id} is already memslots[{earlier_position}]",
                    )
                if slot.base_gfn < earlier.end_gfn and earlier.base_gfn < slot.end_gfn:
                    span = f"gfns {earlier.base_gfn:#x}-{earlier.end_gfn - 1:#x}"
                    raise _fail(f"memslots[{position}]", f"overlaps memslot {earlier.id} ({span})")
        total = sum(slot.npages for slot in self.memslots)
        if total > MAX_TOTAL_PAGES:
            raise _fail(
                "memslots",
                f"{total} pages in all, more than the limit of {MAX_TOTAL_PAGES} (4 GiB)",
            )

    def _check_steps(self) -> None:
        """Walk the steps once, tracking which slots are logged, so no step fails halfway through a run."""
        slots = sorted(self.memslots, key=lambda slot: slot.base_gfn)
        bases = [slot.base_gfn for slot in slots]
        slot_ids = {slot.id for slot in self.memslots}
        logged: set[int] = set()
        logged_by_migration: set[int] | None = None  # None: no migration is running
        accesses = 0
        for index, step in enumerate(self.steps):
            where = _step_where(index, step)
            if isinstance(step, ReadStep | WriteStep):
                if step.vcpu >= self.vm.vcpus:
                    raise _fail(
                        where,
                        f"vcpu {step.vcpu} does not exist (vm.vcpus is {self.vm.vcpus})",
                        step=index,
                        field="vcpu",
                    )
                _check_accesses(where, index, step, slots, bases)
                accesses += step.count
                if accesses > MAX_ACCESSES:
                    raise _fail(
                        where,
                        f"count {step.count} takes the scenario to {accesses} guest accesses,"
                        f" more than the limit of {MAX_ACCESSES}",
                        step=index,
                        field="count",
                    )
            elif isinstance(
                step, EnableDirtyLogStep | DisableDirtyLogStep | GetDirtyLogStep | ClearDirtyLogStep
            ):
                if step.slot not in slot_ids:
                    raise _fail(
                        where, f"slot {step.slot} is not a memslot of this scenario", step=index, field="slot"
                    )
                if isinstance(step, EnableDirtyLogStep):
                    logged.add(step.slot)
                elif isinstance(step, DisableDirtyLogStep):
                    logged.discard(step.slot)
                elif step.slot not in logged:
                    raise _fail(
                        where, f"slot {step.slot} is not dirty-logged at this point", step=index, field="slot"
                    )
                elif isinstance(step, ClearDirtyLogStep):
                    _check_clear_range(where, index, step, self.memslots)
            elif isinstance(step, MigrateBeginStep):
                if logged_by_migration is not None:
                    raise _fail(where, "a migration is already running", step=index)
                logged_by_migration = slot_ids - logged
                logged |= logged_by_migration
            elif isinstance(step, MigrateRoundStep | MigrateEndStep):
                if logged_by_migration is None:
                    raise _fail(where, "no migration is running (migrate_begin starts one)", step=index)
                if isinstance(step, MigrateEndStep):
                    logged -= logged_by_migration
                    logged_by_migration = None

    def canonical(self) -> dict[str, object]:
        """The scenario with every default filled in and numbers as ints: what a share code encodes."""
        return {
            "format": self.format,
            "version": self.version,
            "title": self.title,
            "description": self.description,
            "vm": self.vm.model_dump(mode="python"),
            "memslots": [slot.model_dump(mode="python") for slot in self.memslots],
            "steps": [step_to_json(step) for step in self.steps],
        }


def _check_clear_range(where: str, index: int, step: ClearDirtyLogStep, memslots: list[Memslot]) -> None:
    """KVM_CLEAR_DIRTY_LOG's -EINVAL cases: the cleared range works on whole 64-bit words of the bitmap,
    except for a last word cut short by the end of the slot."""
    npages = next(slot.npages for slot in memslots if slot.id == step.slot)
    if step.first % 64:
        raise _fail(
            where,
            f"first {step.first:#x} is not a multiple of 64 (the bitmap is cleared a long at a time)",
            step=index,
            field="first",
        )
    if step.first > npages or step.num > npages - step.first:
        raise _fail(
            where,
            f"num {step.num} from first {step.first:#x} goes past the end of slot {step.slot}"
            f" ({npages} pages)",
            step=index,
            field="num",
        )
    if step.num % 64 and step.first + step.num != npages:
        raise _fail(
            where,
            f"num {step.num} is not a multiple of 64 and the range does not reach the end of slot"
            f" {step.slot} ({npages} pages)",
            step=index,
            field="num",
        )


def _check_accesses(
    where: str, index: int, step: ReadStep | WriteStep, slots: list[Memslot], bases: list[int]
) -> None:
    """Every gfn + k × stride, k < count, must lie in a memslot.

    Jump over each slot's run of accesses instead of visiting every k: a million-page stride-1 access
    crosses at most a few slots, so this costs one bisect per slot crossed.
    """
    k = 0
    while k < step.count:
        gfn = step.gfn + k * step.stride
        position = bisect.bisect_right(bases, gfn) - 1
        if position < 0 or gfn >= slots[position].end_gfn:
            which = f" (access {k + 1} of {step.count})" if step.count > 1 else ""
            raise _fail(where, f"gfn {gfn:#x}{which} is outside every memslot", step=index, field="gfn")
        if step.stride == 0:
            return
        # The accesses left inside this slot: the smallest j with gfn + j × stride >= end.
        k += -(-(slots[position].end_gfn - gfn) // step.stride)


# ---------------------------------------------------------------------------------------------------------
# Parsing


class _JsonRefusedError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads would keep the last of two "op" keys; a scenario that says two things is refused instead.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _JsonRefusedError(
                f"scenario: not valid JSON: the key {_short_repr(key)} appears twice in one object"
            )
        result[key] = value
    return result


def _no_constant(name: str) -> object:
    raise _JsonRefusedError(f"scenario: not valid JSON: {name} is not a JSON number")


def loads_json(data: str | bytes) -> object:
    """Decode JSON text strictly (no NaN, no repeated keys), refusing oversized or hostile input cleanly."""
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioTooLargeError(f"scenario: larger than {MAX_SCENARIO_BYTES} bytes (1 MiB)")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ScenarioError(f"scenario: not valid UTF-8 (byte {error.start})") from None
    else:
        text = data
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SCENARIO_BYTES:
            raise ScenarioTooLargeError(f"scenario: larger than {MAX_SCENARIO_BYTES} bytes (1 MiB)")
    # Editors on some systems start a UTF-8 file with a byte-order mark; JSON allows ignoring it.
    text = text.removeprefix("\ufeff")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise ScenarioError(
            f"scenario: not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}"
        ) from None
    except _JsonRefusedError as error:
        raise ScenarioError(str(error)) from None
    except RecursionError:
        raise ScenarioError("scenario: not valid JSON: nested too deeply") from None
    except ValueError:
        # Python refuses to convert integers of thousands of digits; no field could hold one anyway.
        raise ScenarioError("scenario: not valid JSON: a number has too many digits") from None


def _where(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """Turn pydantic's location into ("step 4 (write)", "count") or ("memslots[1].npages", "")."""
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        step = f"step {loc[1]}"
        if len(loc) >= 3:
            step += f" ({loc[2]})"
        field = ".".join(str(part) for part in loc[3:])
        return step, field
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where or "scenario", ""


def _step_of(loc: tuple[int | str, ...]) -> int | None:
    """The index of the step a pydantic location is in, or None."""
    return loc[1] if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int) else None


def _field_of(loc: tuple[int | str, ...]) -> str:
    """The field a pydantic location names: a step's own field (`gfn`), else its path in the scenario
    (`memslots[0].npages`), "" for the scenario or a step as a whole."""
    where, field = _where(loc)
    if _step_of(loc) is not None:
        return field
    return "" if where == "scenario" else where


def _refusal(error: Mapping[str, Any]) -> ScenarioError:
    """The ScenarioError for pydantic's first error: its one-line message, and where, as data."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    if error["type"] == "sptelab":
        ctx = error.get("ctx") or {}
        return ScenarioError(str(error["msg"]), step=ctx.get("step"), field=str(ctx.get("field") or ""))
    field = _field_of(loc)
    if error["type"] in ("missing", "extra_forbidden"):
        *parent, name = loc
        field = _field_of(tuple(parent))
        if _step_of(loc) is None or not field:
            field = f"{field}.{name}" if field else str(name)
    elif error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        field = "op"
    return ScenarioError(_message(error), step=_step_of(loc), field=field)


def _message(error: Mapping[str, Any]) -> str:
    """One line for pydantic's first error, worded for someone editing the JSON."""
    kind: str = error["type"]
    loc: tuple[int | str, ...] = tuple(error["loc"])
    if kind == "sptelab":
        return str(error["msg"])
    if kind in ("missing", "extra_forbidden"):
        *parent, name = loc
        where, field = _where(tuple(parent))
        if field:
            where += f", {field}"
        what = "missing field" if kind == "missing" else "unknown field"
        return f"{where}: {what} {_short_repr(name)}"
    where, field = _where(loc)
    value = error.get("input")
    if kind == "union_tag_invalid":
        op = value.get("op") if isinstance(value, Mapping) else None
        known = ", ".join(STEP_OPS)
        if isinstance(op, str):
            return f"{where}: unknown op {_short_repr(op, 40)} (known: {known})"
        return f"{where}: op must be a string, not {_json_kind(op)} (known: {known})"
    if kind == "union_tag_not_found":
        return f"{where}: missing field 'op' (known: {', '.join(STEP_OPS)})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        what = f"must be an object, not {_json_kind(value)}"
    elif kind == "list_type":
        what = f"must be a list, not {_json_kind(value)}"
    elif kind == "string_type":
        what = f"must be a string, not {_json_kind(value)}"
    elif kind == "bool_type":
        what = f"must be true or false, not {_json_kind(value)}"
    else:
        what = str(error["msg"]).replace("Input should be", "must be").removeprefix("Value error, ")
    return f"{where}: {field} {what}" if field else f"{where}: {what}"


def parse_scenario(data: str | bytes | Mapping[str, object]) -> Scenario:
    """Parse and check a scenario given as JSON text or bytes, or as an already-decoded object.

    Raise ScenarioError, and nothing else, for anything a user could have written.
    """
    raw = loads_json(data) if isinstance(data, str | bytes) else data
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"scenario: must be a JSON object, not {_json_kind(raw)}")
    try:
        return Scenario.model_validate(dict(raw))
    except ValidationError as error:
        raise _refusal(error.errors(include_url=False)[0]) from None
    except RecursionError:
        raise ScenarioError("scenario: nested too deeply") from None


def scenario_json_schema() -> dict[str, object]:
    """A JSON Schema of the format, for editors; parse_scenario's checks go further than it can say."""
    schema: dict[str, Any] = Scenario.model_json_schema()
    # Memslot.base_pfn is required of the model but optional in the format: Scenario supplies it.
    memslot = schema["$defs"]["Memslot"]
    memslot["required"] = [name for name in memslot["required"] if name != "base_pfn"]
    memslot["properties"]["base_pfn"]["description"] = (
        f"default {DEFAULT_BASE_PFN:#x} + {DEFAULT_BASE_PFN_STRIDE:#x} × position in the list"
    )
    schema["properties"]["version"] = {"const": VERSION, "type": "integer", "title": "Version"}
    schema["properties"]["memslots"] |= {"minItems": 1, "maxItems": MAX_MEMSLOTS}
    schema["properties"]["steps"] |= {"maxItems": MAX_STEPS}
    # `op` has a default only so that Python code can write ReadStep(gfn=...); JSON must name it.
    for step_type in STEP_TYPES:
        definition = schema["$defs"][step_type.__name__]
        definition["required"] = ["op", *definition.get("required", [])]
    return schema


__all__ = [
    "MAX_ACCESSES",
    "MAX_COUNT",
    "MAX_DESCRIPTION_CHARS",
    "MAX_MEMSLOTS",
    "MAX_NOTE_CHARS",
    "MAX_SCENARIO_BYTES",
    "MAX_STEPS",
    "MAX_TITLE_CHARS",
    "MAX_TOTAL_PAGES",
    "MAX_VCPUS",
    "NOTE_PRESETS",
    "PAGE_LEVELS",
    "STEP_OPS",
    "ClearDirtyLogStep",
    "DisableDirtyLogStep",
    "EnableDirtyLogStep",
    "FlushTlbStep",
    "GetDirtyLogStep",
    "Memslot",
    "MigrateBeginStep",
    "MigrateEndStep",
    "MigrateRoundStep",
    "NoteStep",
    "ReadStep",
    "ResetDirtyRingStep",
    "Scenario",
    "ScenarioError",
    "ScenarioTooLargeError",
    "Step",
    "Vm",
    "WriteStep",
    "ZapAllStep",
    "loads_json",
    "parse_scenario",
    "scenario_json_schema",
    "step_to_json",
]
