"""What an op declares: `OpSpec`, the one record of every question the code asks about an op, and the
types its facets speak (what predict mode asks, how it harvests, where it reads guest memory, what the
live backend must offer it, what the whole-scenario check tracks).

A shell or an engine module that needs to know something about a step asks its spec (`op_spec(step)`,
engine.ops.registry), never the step's type: adding an op is writing its module and registering it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from engine.scenario.fields import _Frozen
from engine.scenario.wording import fail

if TYPE_CHECKING:
    from engine.estimate import Pricer, StepPrice
    from engine.ops.note import NoteStep
    from engine.scenario.models import Memslot
    from engine.simulation import Simulation


class OpModel(_Frozen):
    """The pydantic model every op's model derives from: how a step is written out and keyed, which a
    note does its own way. Each op's model declares `op` as its Literal name (the union's tag)."""

    if TYPE_CHECKING:  # declared by each op's model, so that `op` keeps its place among the fields
        op: str

    def json_fields(self) -> dict[str, object]:
        """Every field but `op`, defaults filled, as the result's `op` object shows them."""
        return self.model_dump(mode="python", exclude={"op"})

    def key(self) -> tuple[object, ...]:
        """The step's field values as a dict key, so that equal steps of a long scenario share one object."""
        return type(self), *self.__dict__.values()


class Ask(Enum):
    """What predict mode asks about the step it just ran (app/predict)."""

    NOTHING = "nothing"
    FAULT = "fault"  # will the access exit, which path handles it, which bits change
    LOGGING_ON = "logging_on"  # what switching logging on does to a mapped page
    LOGGING_OFF = "logging_off"  # whether a huge page comes back when logging stops
    REPORTED = "reported"  # whether the harvest reports a page the guest wrote
    PROTECTED = "protected"  # whether KVM_CLEAR_DIRTY_LOG write-protects a page again
    VERDICT = "verdict"  # whether the migration lost a page


class Tell(Enum):
    """Which sentence the player's narration (app/views/narration) says of what the step did."""

    ACCESS = "access"  # which vCPU read or wrote what, and the faults it took
    LOGGING_ON = "logging_on"  # what switching logging on did to the slot's sptes under the policy
    LOGGING_OFF = "logging_off"  # what switching it off did
    GET = "get"  # what KVM_GET_DIRTY_LOG returned, and whether it cleared and re-protected
    GET_END = "get_end"  # the rest of a split KVM_GET_DIRTY_LOG: the flush after unlocking
    CLEAR = "clear"  # the range KVM_CLEAR_DIRTY_LOG cleared and re-protected
    RING = "ring"  # what the ring harvest collected
    FLUSH = "flush"  # every TLB flushed
    ZAP = "zap"  # every spte zapped
    MIGRATION_START = "migration_start"  # logging on everywhere, every page copied
    MIGRATION_ROUND = "migration_round"  # what a round copied again
    MIGRATION_END = "migration_end"  # the last round and the verdict
    NOTE = "note"  # nothing ran
    GUEST_PAGING = "guest_paging"  # what a guest PTE store, INVLPG or MOV CR3 did to the shadow tables


class Harvest(Enum):
    """How an op hands the dirty log to userspace (its result's `dirty_log`)."""

    GET = "get"  # KVM_GET_DIRTY_LOG on one slot
    RING = "ring"  # every vCPU's dirty ring harvested and reset
    ROUND = "round"  # a migration round: the log of every logged slot, as the dirty-log mode harvests it


@dataclass(frozen=True, slots=True)
class Access:
    """The guest accesses of a read or write step: `count` at `gfn + k × stride` from `vcpu`."""

    vcpu: int
    gfn: int
    count: int
    stride: int
    write: bool
    gva: int | None = None  # shadow paging: the guest-virtual address named instead of a gfn


class LiveTarget(Protocol):
    """What the live backend (live/backend.py) offers an op to express itself on a real VM."""

    def access(self, vcpu: int, gfn: int, count: int, stride: int, write: bool) -> None: ...

    def set_logging(self, slot: int, on: bool) -> None: ...

    def get_dirty_log(self, slot: int) -> list[int] | None: ...

    def clear_dirty_log(self, slot: int, first: int, num: int) -> None: ...

    def reset_dirty_ring(self) -> list[int] | None: ...

    def migrate_begin(self) -> None: ...

    def migrate_round(self) -> list[int]: ...

    def migrate_end(self) -> list[int]: ...


@dataclass(slots=True)
class CheckState:
    """What the whole-scenario check knows when it reaches a step: the VM, its slots, which are logged
    (and which of them a running migration logged), and the guest accesses so far."""

    vcpus: int
    memslots: list[Memslot]
    # Under shadow paging, the guest's address spaces (set_cr3 names one); 0 under TDP.
    spaces: int = 0
    logged: set[int] = field(default_factory=set)
    logged_by_migration: set[int] | None = None  # None: no migration is running
    accesses: int = 0
    # slot -> the step of a split get_dirty_log not yet ended.
    split_gets: dict[int, int] = field(default_factory=dict)
    slots: list[Memslot] = field(init=False)
    bases: list[int] = field(init=False)
    slot_ids: set[int] = field(init=False)

    def __post_init__(self) -> None:
        self.slots = sorted(self.memslots, key=lambda slot: slot.base_gfn)
        self.bases = [slot.base_gfn for slot in self.slots]
        self.slot_ids = {slot.id for slot in self.memslots}

    def slot_at(self, gfn: int) -> Memslot | None:
        """The memslot holding `gfn`, by bisection over the sorted bases."""
        position = bisect.bisect_right(self.bases, gfn) - 1
        if position < 0 or gfn >= self.slots[position].end_gfn:
            return None
        return self.slots[position]


S = TypeVar("S", bound=OpModel)


@dataclass(frozen=True, slots=True)
class OpSpec(Generic[S]):
    """Every facet of one op. No facet has a default: an op that does nothing for one says so.

    - `model`: its pydantic model (the JSON shape, the schema, the messages);
    - `run(sim, step)`: the step on the simulation, through the kernel's functions;
    - `check(state, index, step)`: what the whole scenario must hold for the step to run (raises
      engine.scenario.wording.fail's error), and what it changes in `state`;
    - `price(pricer, step)`: its share of the work estimate (engine.estimate);
    - `describe(step)`: the op in a few words, the same on the web and in the CLI;
    - `ask`: what predict mode asks after it;
    - `tell`: which sentence the player's narration says of it;
    - `live(target, step)`: the step on the live kernel, returning the dirty log it reads, or None
      with `refusal` saying why the live backend cannot express it;
    - `access(step)`: the guest accesses it makes, None for an op that makes none;
    - `slot(step)`: the memslot it names, None for an op on the whole VM;
    - `pages(step)`: the pages (first, num) of that slot it acts on, None for the whole slot or none;
    - `note(step)`: the step as a note (its `text`, `by_preset`, `text_for`), None for an op that is none;
    - `harvest`: how it hands the dirty log to userspace, None if it does not;
    - `restarts_page(step, mode, slot, offset)`: whether it starts a new interval for the dirty bit (or
      ring entry) of page `offset` of `slot` under the dirty-log mode (clears it, or switches logging);
    - `clears_some(step, mode)`: whether it clears some dirty bits (or ring entries) under `mode`, or
      switches logging on;
    - `begins_migration`, `ends_migration`: whether it starts or ends the pre-copy migration.
    """

    model: type[S]
    run: Callable[[Simulation, S], None]
    check: Callable[[CheckState, int, S], None]
    price: Callable[[Pricer, S], StepPrice]
    describe: Callable[[S], str]
    ask: Ask
    tell: Tell
    live: Callable[[LiveTarget, S], list[int] | None] | None
    refusal: str | None
    access: Callable[[S], Access | None]
    slot: Callable[[S], int | None]
    pages: Callable[[S], tuple[int, int] | None]
    note: Callable[[S], NoteStep | None]
    harvest: Harvest | None
    restarts_page: Callable[[S, str, int, int], bool]
    clears_some: Callable[[S, str], bool]
    begins_migration: bool
    ends_migration: bool

    @property
    def name(self) -> str:
        """The op's name in the format (`"write"`)."""
        return str(self.model.model_fields["op"].default)


# Facets shared by ops that have nothing to say for them.


def no_check(state: CheckState, index: int, step: Any) -> None:
    """Nothing to check beyond the model: the op runs on any VM at any point."""


def no_access(step: Any) -> Access | None:
    return None


def no_slot(step: Any) -> int | None:
    return None


def no_pages(step: Any) -> tuple[int, int] | None:
    return None


def not_a_note(step: Any) -> NoteStep | None:
    return None


def never(step: Any, *args: Any) -> bool:
    return False


def always(step: Any, *args: Any) -> bool:
    return True


def check_shadow(state: CheckState, index: int, step: OpModel, what: str) -> None:
    """`what` exists only under shadow paging, where KVM sees the guest's page tables."""
    if not state.spaces:
        raise fail(where(index, step), f'{what} needs vm.mmu "shadow": under TDP KVM never sees the guest\'s'
                   " page tables", step=index, field="op")


def where(index: int, step: OpModel) -> str:
    """`step 4 (write)`: how a refusal names a step."""
    return f"step {index} ({step.op})"


def check_slot_exists(state: CheckState, index: int, step: OpModel, slot: int) -> None:
    """The slot an ioctl names must be a memslot of the scenario."""
    if slot not in state.slot_ids:
        raise fail(
            where(index, step), f"slot {slot} is not a memslot of this scenario", step=index, field="slot"
        )
