"""migrate_begin, migrate_round and migrate_end: QEMU's pre-copy live migration (engine.migration), which
logs every slot not yet logged, harvests in the policy's dirty-log mode each round, and compares the
destination with the source at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from engine.migration import migrate_begin, migrate_end, migrate_round
from engine.ops.base import (
    Ask,
    CheckState,
    Harvest,
    LiveTarget,
    OpModel,
    OpSpec,
    Tell,
    always,
    no_access,
    no_pages,
    no_slot,
    not_a_note,
    where,
)
from engine.scenario.wording import fail

if TYPE_CHECKING:
    from engine.estimate import Pricer, StepPrice
    from engine.simulation import Simulation


class MigrateBeginStep(OpModel):
    """Start a live migration: log every slot not yet logged and copy every page."""

    op: Literal["migrate_begin"] = "migrate_begin"


class MigrateRoundStep(OpModel):
    """One pre-copy round: get_dirty_log on every slot, copy what it returns."""

    op: Literal["migrate_round"] = "migrate_round"


class MigrateEndStep(OpModel):
    """Stop and copy, compare destination with source, and undo the logging migrate_begin enabled."""

    op: Literal["migrate_end"] = "migrate_end"


def _run_begin(sim: Simulation, step: MigrateBeginStep) -> None:
    sim.migrated = True
    migrate_begin(sim.kvm, sim.migration)


def _run_round(sim: Simulation, step: MigrateRoundStep) -> None:
    sim.kvm.log.dirty_log = migrate_round(sim.kvm, sim.migration)


def _run_end(sim: Simulation, step: MigrateEndStep) -> None:
    sim.kvm.log.dirty_log = migrate_end(sim.kvm, sim.migration)


def _check_begin(state: CheckState, index: int, step: MigrateBeginStep) -> None:
    """One migration at a time; it logs every slot not yet logged."""
    if state.logged_by_migration is not None:
        raise fail(where(index, step), "a migration is already running", step=index)
    state.logged_by_migration = state.slot_ids - state.logged
    state.logged |= state.logged_by_migration


def _check_running(state: CheckState, index: int, step: MigrateRoundStep | MigrateEndStep) -> None:
    if state.logged_by_migration is None:
        raise fail(where(index, step), "no migration is running (migrate_begin starts one)", step=index)


def _check_end(state: CheckState, index: int, step: MigrateEndStep) -> None:
    """The end undoes the logging the beginning switched on."""
    _check_running(state, index, step)
    state.logged -= state.logged_by_migration or set()
    state.logged_by_migration = None


def _price_begin(pricer: Pricer, step: MigrateBeginStep) -> StepPrice:
    return pricer.migrate_begin()


def _price_round(pricer: Pricer, step: MigrateRoundStep) -> StepPrice:
    return pricer.migrate_round()


def _price_end(pricer: Pricer, step: MigrateEndStep) -> StepPrice:
    return pricer.migrate_end()


def _describe(step: MigrateBeginStep | MigrateRoundStep | MigrateEndStep) -> str:
    return step.op


def _live_begin(target: LiveTarget, step: MigrateBeginStep) -> list[int] | None:
    target.migrate_begin()
    return None


def _live_round(target: LiveTarget, step: MigrateRoundStep) -> list[int] | None:
    return target.migrate_round()


def _live_end(target: LiveTarget, step: MigrateEndStep) -> list[int] | None:
    return target.migrate_end()


BEGIN: OpSpec[MigrateBeginStep] = OpSpec(
    model=MigrateBeginStep,
    run=_run_begin,
    check=_check_begin,
    price=_price_begin,
    describe=_describe,
    ask=Ask.LOGGING_ON,
    tell=Tell.MIGRATION_START,
    live=_live_begin,
    refusal=None,
    access=no_access,
    slot=no_slot,
    pages=no_pages,
    note=not_a_note,
    harvest=None,
    restarts_page=always,
    clears_some=always,
    begins_migration=True,
    ends_migration=False,
)

ROUND: OpSpec[MigrateRoundStep] = OpSpec(
    model=MigrateRoundStep,
    run=_run_round,
    check=_check_running,
    price=_price_round,
    describe=_describe,
    ask=Ask.REPORTED,
    tell=Tell.MIGRATION_ROUND,
    live=_live_round,
    refusal=None,
    access=no_access,
    slot=no_slot,
    pages=no_pages,
    note=not_a_note,
    harvest=Harvest.ROUND,
    restarts_page=always,
    clears_some=always,
    begins_migration=False,
    ends_migration=False,
)

END: OpSpec[MigrateEndStep] = OpSpec(
    model=MigrateEndStep,
    run=_run_end,
    check=_check_end,
    price=_price_end,
    describe=_describe,
    ask=Ask.VERDICT,
    tell=Tell.MIGRATION_END,
    live=_live_end,
    refusal=None,
    access=no_access,
    slot=no_slot,
    pages=no_pages,
    note=not_a_note,
    harvest=Harvest.ROUND,
    restarts_page=always,
    clears_some=always,
    begins_migration=False,
    ends_migration=True,
)
