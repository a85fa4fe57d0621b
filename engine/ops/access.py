"""read and write: `count` guest accesses at `gfn + k × stride` from one vCPU, through the CPU's TLB and
the EPT walk (engine.cpu), or through KVM's instruction emulator when the simulation says the guest is
emulated (engine.emulate)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from engine.cpu import guest_accesses
from engine.emulate import emulated_accesses
from engine.ops.base import (
    Access,
    Ask,
    CheckState,
    LiveTarget,
    OpModel,
    OpSpec,
    Tell,
    never,
    no_pages,
    no_slot,
    not_a_note,
    where,
)
from engine.scenario.cost import MAX_ACCESSES, MAX_COUNT
from engine.scenario.fields import _MAX_NUMBER, Number, VcpuId, _Between
from engine.scenario.wording import fail

if TYPE_CHECKING:
    from engine.estimate import Pricer, StepPrice
    from engine.simulation import Simulation


class _AccessStep(OpModel):
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


def run(sim: Simulation, step: _AccessStep) -> None:
    kvm = sim.kvm
    access = emulated_accesses if sim.guest_execution == "emulated" else guest_accesses
    access(kvm, kvm.vcpus[step.vcpu], step.gfn, step.count, step.stride, step.is_write)


def check(state: CheckState, index: int, step: _AccessStep) -> None:
    """The vCPU exists, every access lands in a memslot, and the scenario's accesses stay countable."""
    at = where(index, step)
    if step.vcpu >= state.vcpus:
        raise fail(
            at, f"vcpu {step.vcpu} does not exist (vm.vcpus is {state.vcpus})", step=index, field="vcpu"
        )
    _check_accesses(at, index, step, state)
    state.accesses += step.count
    if state.accesses > MAX_ACCESSES:
        raise fail(
            at,
            f"count {step.count} takes the scenario to {state.accesses} guest accesses,"
            f" more than the limit of {MAX_ACCESSES}",
            step=index,
            field="count",
        )


def _check_accesses(at: str, index: int, step: _AccessStep, state: CheckState) -> None:
    """Every gfn + k × stride, k < count, must lie in a memslot.

    Jump over each slot's run of accesses instead of visiting every k: a million-page stride-1 access
    crosses at most a few slots, so this costs one bisect per slot crossed.
    """
    k = 0
    while k < step.count:
        gfn = step.gfn + k * step.stride
        slot = state.slot_at(gfn)
        if slot is None:
            which = f" (access {k + 1} of {step.count})" if step.count > 1 else ""
            raise fail(at, f"gfn {gfn:#x}{which} is outside every memslot", step=index, field="gfn")
        if step.stride == 0:
            return
        # The accesses left inside this slot: the smallest j with gfn + j × stride >= end.
        k += -(-(slot.end_gfn - gfn) // step.stride)


def price(pricer: Pricer, step: _AccessStep) -> StepPrice:
    return pricer.access(step.count, step.stride)


def describe(step: _AccessStep) -> str:
    """`write gfn 0x250`, `read gfn 0x200 ×512 stride 2 vCPU 1`: the fields that differ from their
    defaults (a stride only where there is more than one access)."""
    parts = [step.op, f"gfn {step.gfn:#x}"]
    if step.count != 1:
        parts.append(f"×{step.count}")
        if step.stride != 1:
            parts.append(f"stride {step.stride}")
    if step.vcpu != 0:
        parts.append(f"vCPU {step.vcpu}")
    return " ".join(parts)


def live(target: LiveTarget, step: _AccessStep) -> list[int] | None:
    target.access(step.vcpu, step.gfn, step.count, step.stride, step.is_write)
    return None


def access(step: _AccessStep) -> Access:
    return Access(step.vcpu, step.gfn, step.count, step.stride, step.is_write)


def _spec(model: type[_AccessStep]) -> OpSpec[_AccessStep]:
    return OpSpec(
        model=model,
        run=run,
        check=check,
        price=price,
        describe=describe,
        ask=Ask.FAULT,
        tell=Tell.ACCESS,
        live=live,
        refusal=None,
        access=access,
        slot=no_slot,
        pages=no_pages,
        note=not_a_note,
        harvest=None,
        restarts_page=never,
        clears_some=never,
        begins_migration=False,
        ends_migration=False,
    )


READ = _spec(ReadStep)
WRITE = _spec(WriteStep)
