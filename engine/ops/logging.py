"""enable_dirty_log and disable_dirty_log: KVM_MEM_LOG_DIRTY_PAGES set or cleared on a memslot
(engine.dirty_log.kvm_set_dirty_logging, with eager splitting, INITIALLY_SET and huge page recovery
where the policy says)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from engine.dirty_log import kvm_set_dirty_logging
from engine.ops.base import (
    Ask,
    CheckState,
    LiveTarget,
    OpModel,
    OpSpec,
    Tell,
    check_slot_exists,
    no_access,
    no_pages,
    not_a_note,
)
from engine.scenario.fields import SlotId

if TYPE_CHECKING:
    from engine.estimate import Pricer, StepPrice
    from engine.simulation import Simulation


class _LoggingStep(OpModel):
    enables: ClassVar[bool]

    slot: SlotId


class EnableDirtyLogStep(_LoggingStep):
    """KVM_MEM_LOG_DIRTY_PAGES set on the slot."""

    enables: ClassVar[bool] = True
    op: Literal["enable_dirty_log"] = "enable_dirty_log"


class DisableDirtyLogStep(_LoggingStep):
    """KVM_MEM_LOG_DIRTY_PAGES cleared on the slot."""

    enables: ClassVar[bool] = False
    op: Literal["disable_dirty_log"] = "disable_dirty_log"


def run(sim: Simulation, step: _LoggingStep) -> None:
    kvm_set_dirty_logging(sim.kvm, sim.kvm.memslots.by_id[step.slot], step.enables)


def check(state: CheckState, index: int, step: _LoggingStep) -> None:
    """The slot exists; from here on it is logged (or not)."""
    check_slot_exists(state, index, step, step.slot)
    if step.enables:
        state.logged.add(step.slot)
    else:
        state.logged.discard(step.slot)


def price_enable(pricer: Pricer, step: EnableDirtyLogStep) -> StepPrice:
    return pricer.enable_dirty_log(step.slot)


def price_disable(pricer: Pricer, step: DisableDirtyLogStep) -> StepPrice:
    return pricer.disable_dirty_log(step.slot)


def describe(step: _LoggingStep) -> str:
    return f"{step.op} slot {step.slot}"


def live(target: LiveTarget, step: _LoggingStep) -> list[int] | None:
    target.set_logging(step.slot, step.enables)
    return None


def slot(step: _LoggingStep) -> int:
    return step.slot


def restarts_page(step: _LoggingStep, mode: str, slot_id: int, offset: int) -> bool:
    """Logging switched on or off starts a new interval for every page of the slot."""
    return step.slot == slot_id


def clears_some(step: _LoggingStep, mode: str) -> bool:
    """Logging switched on starts every page clean; switched off clears nothing."""
    return step.enables


ENABLE: OpSpec[EnableDirtyLogStep] = OpSpec(
    model=EnableDirtyLogStep,
    run=run,
    check=check,
    price=price_enable,
    describe=describe,
    ask=Ask.LOGGING_ON,
    tell=Tell.LOGGING_ON,
    live=live,
    refusal=None,
    access=no_access,
    slot=slot,
    pages=no_pages,
    note=not_a_note,
    harvest=None,
    restarts_page=restarts_page,
    clears_some=clears_some,
    begins_migration=False,
    ends_migration=False,
)

DISABLE: OpSpec[DisableDirtyLogStep] = OpSpec(
    model=DisableDirtyLogStep,
    run=run,
    check=check,
    price=price_disable,
    describe=describe,
    ask=Ask.LOGGING_OFF,
    tell=Tell.LOGGING_OFF,
    live=live,
    refusal=None,
    access=no_access,
    slot=slot,
    pages=no_pages,
    note=not_a_note,
    harvest=None,
    restarts_page=restarts_page,
    clears_some=clears_some,
    begins_migration=False,
    ends_migration=False,
)
