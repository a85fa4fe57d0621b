"""get_dirty_log, clear_dirty_log and reset_dirty_ring: userspace harvesting the dirty log, as a bitmap
(KVM_GET_DIRTY_LOG, then KVM_CLEAR_DIRTY_LOG with manual protection; engine.dirty_log) or from the
dirty rings (KVM_RESET_DIRTY_RINGS; engine.dirty_ring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from engine.dirty_log import kvm_get_dirty_log_end, kvm_vm_ioctl_clear_dirty_log, kvm_vm_ioctl_get_dirty_log
from engine.dirty_ring import harvest_and_reset
from engine.ops.base import (
    Ask,
    CheckState,
    Harvest,
    LiveTarget,
    OpModel,
    OpSpec,
    Tell,
    check_slot_exists,
    never,
    no_access,
    no_check,
    no_pages,
    no_slot,
    not_a_note,
    where,
)
from engine.scenario.cost import MAX_TOTAL_PAGES
from engine.scenario.fields import Number, SlotId, _Between
from engine.scenario.wording import fail

if TYPE_CHECKING:
    from engine.estimate import Pricer, StepPrice
    from engine.simulation import Simulation


class GetDirtyLogStep(OpModel):
    """KVM_GET_DIRTY_LOG on the slot. With `split`, the ioctl is stopped after its part under mmu_lock
    (the bitmap taken and the pages write-protected): what comes after the unlock (the flush, since
    198c74f4) waits for a `get_dirty_log_end` step, so that vCPU steps can run in between."""

    slot: SlotId
    op: Literal["get_dirty_log"] = "get_dirty_log"
    split: bool = False

    def json_fields(self) -> dict[str, object]:
        out = super().json_fields()
        if not self.split:
            del out["split"]  # a whole GET reads as it always did
        return out


class GetDirtyLogEndStep(OpModel):
    """The rest of a split KVM_GET_DIRTY_LOG on the slot: mmu_lock dropped, the TLBs flushed (if the
    kernel flushes after unlocking), the bitmap copied to userspace."""

    slot: SlotId
    op: Literal["get_dirty_log_end"] = "get_dirty_log_end"


class ClearDirtyLogStep(OpModel):
    """KVM_CLEAR_DIRTY_LOG on pages [first, first + num) of the slot, with every bit of the user's mask set.

    The kernel's rules are checked before anything runs, as the ioctl's -EINVAL: `first` a multiple of 64,
    the range inside the slot, `num` a multiple of 64 unless the range reaches the slot's end.
    """

    slot: SlotId
    op: Literal["clear_dirty_log"] = "clear_dirty_log"
    first: Annotated[Number, _Between(0, MAX_TOTAL_PAGES, hex=True)]
    num: Annotated[Number, _Between(0, MAX_TOTAL_PAGES)]


class ResetDirtyRingStep(OpModel):
    """Userspace harvests every vCPU's dirty ring, then KVM_RESET_DIRTY_RINGS re-protects what it read."""

    op: Literal["reset_dirty_ring"] = "reset_dirty_ring"


def _check_logged(state: CheckState, index: int, step: GetDirtyLogStep | ClearDirtyLogStep) -> None:
    check_slot_exists(state, index, step, step.slot)
    if step.slot not in state.logged:
        what = f"slot {step.slot} is not dirty-logged at this point"
        raise fail(where(index, step), what, step=index, field="slot")


def _check_clear(state: CheckState, index: int, step: ClearDirtyLogStep) -> None:
    """KVM_CLEAR_DIRTY_LOG's -EINVAL cases: the cleared range works on whole 64-bit words of the bitmap,
    except for a last word cut short by the end of the slot."""
    _check_logged(state, index, step)
    at = where(index, step)
    npages = next(slot.npages for slot in state.memslots if slot.id == step.slot)
    if step.first % 64:
        raise fail(
            at,
            f"first {step.first:#x} is not a multiple of 64 (the bitmap is cleared a long at a time)",
            step=index,
            field="first",
        )
    if step.first > npages or step.num > npages - step.first:
        raise fail(
            at,
            f"num {step.num} from first {step.first:#x} goes past the end of slot {step.slot}"
            f" ({npages} pages)",
            step=index,
            field="num",
        )
    if step.num % 64 and step.first + step.num != npages:
        raise fail(
            at,
            f"num {step.num} is not a multiple of 64 and the range does not reach the end of slot"
            f" {step.slot} ({npages} pages)",
            step=index,
            field="num",
        )


def _run_get(sim: Simulation, step: GetDirtyLogStep) -> None:
    kvm = sim.kvm
    kvm.log.dirty_log = kvm_vm_ioctl_get_dirty_log(kvm, kvm.memslots.by_id[step.slot], step.split)


def _run_get_end(sim: Simulation, step: GetDirtyLogEndStep) -> None:
    kvm_get_dirty_log_end(sim.kvm, sim.kvm.memslots.by_id[step.slot])


def _check_get(state: CheckState, index: int, step: GetDirtyLogStep) -> None:
    _check_logged(state, index, step)
    if step.slot in state.split_gets:
        raise fail(where(index, step), f"the GET_DIRTY_LOG of slot {step.slot} at step"
                   f" {state.split_gets[step.slot]} has not returned yet (get_dirty_log_end)", step=index,
                   field="slot")
    if step.split:
        state.split_gets[step.slot] = index


def _check_get_end(state: CheckState, index: int, step: GetDirtyLogEndStep) -> None:
    check_slot_exists(state, index, step, step.slot)
    if state.split_gets.pop(step.slot, None) is None:
        raise fail(where(index, step), f"no split get_dirty_log of slot {step.slot} is waiting to end",
                   step=index, field="slot")


def _describe_get_end(step: GetDirtyLogEndStep) -> str:
    return f"get_dirty_log_end slot {step.slot}"


def _price_get_end(pricer: Pricer, step: GetDirtyLogEndStep) -> StepPrice:
    return pricer.per_vcpu()


def _run_clear(sim: Simulation, step: ClearDirtyLogStep) -> None:
    kvm = sim.kvm
    kvm_vm_ioctl_clear_dirty_log(kvm, kvm.memslots.by_id[step.slot], step.first, step.num)


def _run_reset(sim: Simulation, step: ResetDirtyRingStep) -> None:
    sim.kvm.log.dirty_log = harvest_and_reset(sim.kvm)


def _price_get(pricer: Pricer, step: GetDirtyLogStep) -> StepPrice:
    return pricer.get_dirty_log(step.slot)


def _price_clear(pricer: Pricer, step: ClearDirtyLogStep) -> StepPrice:
    return pricer.clear_dirty_log(step.slot, step.num)


def _price_reset(pricer: Pricer, step: ResetDirtyRingStep) -> StepPrice:
    return pricer.per_vcpu()


def _describe_get(step: GetDirtyLogStep) -> str:
    return f"get_dirty_log slot {step.slot}" + (" (split)" if step.split else "")


def _describe_clear(step: ClearDirtyLogStep) -> str:
    return f"clear_dirty_log slot {step.slot} pages {step.first:#x}+{step.num}"


def _describe_reset(step: ResetDirtyRingStep) -> str:
    return "reset_dirty_ring"


def _live_get(target: LiveTarget, step: GetDirtyLogStep) -> list[int] | None:
    return target.get_dirty_log(step.slot)


def _live_clear(target: LiveTarget, step: ClearDirtyLogStep) -> list[int] | None:
    target.clear_dirty_log(step.slot, step.first, step.num)
    return None


def _live_reset(target: LiveTarget, step: ResetDirtyRingStep) -> list[int] | None:
    return target.reset_dirty_ring()


def _slot(step: GetDirtyLogStep | GetDirtyLogEndStep | ClearDirtyLogStep) -> int:
    return step.slot


def _pages(step: ClearDirtyLogStep) -> tuple[int, int]:
    return step.first, step.num


def _get_restarts(step: GetDirtyLogStep, mode: str, slot_id: int, offset: int) -> bool:
    """Plain GET clears what it returns; with manual protection it only copies."""
    return step.slot == slot_id and mode == "bitmap"


def _get_clears(step: GetDirtyLogStep, mode: str) -> bool:
    return mode == "bitmap"


def _clear_restarts(step: ClearDirtyLogStep, mode: str, slot_id: int, offset: int) -> bool:
    return step.slot == slot_id and mode != "ring" and step.first <= offset < step.first + step.num


def _clear_clears(step: ClearDirtyLogStep, mode: str) -> bool:
    return mode != "ring"


def _reset_restarts(step: ResetDirtyRingStep, mode: str, slot_id: int, offset: int) -> bool:
    return mode == "ring"


def _reset_clears(step: ResetDirtyRingStep, mode: str) -> bool:
    return mode == "ring"


GET: OpSpec[GetDirtyLogStep] = OpSpec(
    model=GetDirtyLogStep,
    run=_run_get,
    check=_check_get,
    price=_price_get,
    describe=_describe_get,
    ask=Ask.REPORTED,
    tell=Tell.GET,
    live=_live_get,
    refusal=None,
    access=no_access,
    slot=_slot,
    pages=no_pages,
    note=not_a_note,
    harvest=Harvest.GET,
    restarts_page=_get_restarts,
    clears_some=_get_clears,
    begins_migration=False,
    ends_migration=False,
)

CLEAR: OpSpec[ClearDirtyLogStep] = OpSpec(
    model=ClearDirtyLogStep,
    run=_run_clear,
    check=_check_clear,
    price=_price_clear,
    describe=_describe_clear,
    ask=Ask.PROTECTED,
    tell=Tell.CLEAR,
    live=_live_clear,
    refusal=None,
    access=no_access,
    slot=_slot,
    pages=_pages,
    note=not_a_note,
    harvest=None,
    restarts_page=_clear_restarts,
    clears_some=_clear_clears,
    begins_migration=False,
    ends_migration=False,
)

GET_END: OpSpec[GetDirtyLogEndStep] = OpSpec(
    model=GetDirtyLogEndStep,
    run=_run_get_end,
    check=_check_get_end,
    price=_price_get_end,
    describe=_describe_get_end,
    ask=Ask.NOTHING,
    tell=Tell.GET_END,
    live=None,
    refusal="the live backend cannot stop an ioctl halfway: its GET_DIRTY_LOG is always whole",
    access=no_access,
    slot=_slot,
    pages=no_pages,
    note=not_a_note,
    harvest=None,
    restarts_page=never,
    clears_some=never,
    begins_migration=False,
    ends_migration=False,
)

RESET_RING: OpSpec[ResetDirtyRingStep] = OpSpec(
    model=ResetDirtyRingStep,
    run=_run_reset,
    check=no_check,
    price=_price_reset,
    describe=_describe_reset,
    ask=Ask.REPORTED,
    tell=Tell.RING,
    live=_live_reset,
    refusal=None,
    access=no_access,
    slot=no_slot,
    pages=no_pages,
    note=not_a_note,
    harvest=Harvest.RING,
    restarts_page=_reset_restarts,
    clears_some=_reset_clears,
    begins_migration=False,
    ends_migration=False,
)

__all__ = [
    "CLEAR",
    "GET",
    "GET_END",
    "RESET_RING",
    "ClearDirtyLogStep",
    "GetDirtyLogEndStep",
    "GetDirtyLogStep",
    "ResetDirtyRingStep",
]
