"""The guest's own paging operations under shadow paging: a store of a new PTE into one of its page
tables (`write_gpte`), INVLPG (`invlpg`) and MOV CR3 (`set_cr3`). Under TDP KVM sees none of them, so a
TDP scenario may not use them.

`write_gpte` is a guest store like `write`, through the shadow tables to the table page's identity
mapping (`table << 12`): it lands through a writable spte if the table is unsync or not shadowed, or
faults and is emulated, which tells the shadow MMU (kvm_mmu_pte_write).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

from engine.ops.base import (
    Ask,
    CheckState,
    OpModel,
    OpSpec,
    Tell,
    check_shadow,
    never,
    no_access,
    no_pages,
    no_slot,
    not_a_note,
    where,
)
from engine.scenario.fields import _MAX_NUMBER, Number, VcpuId, _Between
from engine.scenario.guest import GVA_LIMIT, MAX_SPACES
from engine.scenario.wording import fail
from engine.shadow_cpu import GptStore, guest_invlpg, guest_set_cr3, shadow_accesses

if TYPE_CHECKING:
    from engine.estimate import Pricer, StepPrice
    from engine.simulation import Simulation

# The live backend runs these as the guest's own instructions (a store, INVLPG, MOV CR3: live.shadow_run),
# which need the guest's page-table layout, not a LiveTarget call; through this facet they are refused.
_REFUSAL = "a guest paging operation runs on the live VM only as the shadow guest's own instruction"


def _check_vcpu(state: CheckState, index: int, step: WriteGpteStep | InvlpgStep | SetCr3Step) -> None:
    if step.vcpu >= state.vcpus:
        raise fail(where(index, step), f"vcpu {step.vcpu} does not exist (vm.vcpus is {state.vcpus})",
                   step=index, field="vcpu")


# --- write_gpte --------------------------------------------------------------------------------------------


class WriteGpteStep(OpModel):
    """A guest store of `pte` into entry `index` of the page table at gfn `table`."""

    op: Literal["write_gpte"] = "write_gpte"
    table: Annotated[Number, _Between(0, _MAX_NUMBER, hex=True)]
    index: Annotated[Number, _Between(0, 511)]
    pte: Annotated[Number, _Between(0, _MAX_NUMBER, hex=True)]
    vcpu: VcpuId = 0


def run_write_gpte(sim: Simulation, step: WriteGpteStep) -> None:
    kvm = sim.kvm
    gva = (step.table << 12) + step.index * 8
    shadow_accesses(kvm, kvm.vcpus[step.vcpu], gva, 1, 0, True, GptStore(step.index, step.pte))


def check_write_gpte(state: CheckState, index: int, step: WriteGpteStep) -> None:
    check_shadow(state, index, step, "write_gpte")
    _check_vcpu(state, index, step)
    if state.slot_at(step.table) is None:
        raise fail(where(index, step), f"gfn {step.table:#x} is outside every memslot: a page table lives in"
                   " guest memory", step=index, field="table")
    state.accesses += 1


def describe_write_gpte(step: WriteGpteStep) -> str:
    vcpu = f" vCPU {step.vcpu}" if step.vcpu else ""
    return f"write_gpte {step.table:#x}[{step.index}] = {step.pte:#x}{vcpu}"


# --- invlpg -------------------------------------------------------------------------------------------------


class InvlpgStep(OpModel):
    """INVLPG of the guest-virtual address `gva` on one vCPU."""

    op: Literal["invlpg"] = "invlpg"
    gva: Annotated[Number, _Between(0, GVA_LIMIT - 1, hex=True)]
    vcpu: VcpuId = 0


def run_invlpg(sim: Simulation, step: InvlpgStep) -> None:
    kvm = sim.kvm
    guest_invlpg(kvm, kvm.vcpus[step.vcpu], step.gva)


def check_invlpg(state: CheckState, index: int, step: InvlpgStep) -> None:
    check_shadow(state, index, step, "invlpg")
    _check_vcpu(state, index, step)


def describe_invlpg(step: InvlpgStep) -> str:
    vcpu = f" vCPU {step.vcpu}" if step.vcpu else ""
    return f"invlpg {step.gva:#x}{vcpu}"


# --- set_cr3 ------------------------------------------------------------------------------------------------


class SetCr3Step(OpModel):
    """MOV CR3 to the PML4 of the guest's address space `space` (the same one again reloads it)."""

    op: Literal["set_cr3"] = "set_cr3"
    space: Annotated[Number, _Between(0, MAX_SPACES - 1)] = 0
    vcpu: VcpuId = 0


def run_set_cr3(sim: Simulation, step: SetCr3Step) -> None:
    kvm = sim.kvm
    guest_set_cr3(kvm, kvm.vcpus[step.vcpu], sim.guest_cr3s[step.space], step.space)


def check_set_cr3(state: CheckState, index: int, step: SetCr3Step) -> None:
    check_shadow(state, index, step, "set_cr3")
    _check_vcpu(state, index, step)
    if step.space >= state.spaces:
        raise fail(where(index, step), f"space {step.space} does not exist (guest.spaces holds"
                   f" {state.spaces})", step=index, field="space")


def describe_set_cr3(step: SetCr3Step) -> str:
    vcpu = f" vCPU {step.vcpu}" if step.vcpu else ""
    return f"set_cr3 space {step.space}{vcpu}"


def _price(pricer: Pricer, step: OpModel) -> StepPrice:
    return pricer.access(1, 0)


S = TypeVar("S", bound=OpModel)


def _spec(
    model: type[S],
    run: Callable[[Simulation, S], None],
    check: Callable[[CheckState, int, S], None],
    describe: Callable[[S], str],
    tell: Tell,
) -> OpSpec[S]:
    """What the three ops share: nothing for predict mode to ask, no live form, no slot or access facet."""
    return OpSpec(
        model=model,
        run=run,
        check=check,
        price=_price,
        describe=describe,
        ask=Ask.NOTHING,
        tell=tell,
        live=None,
        refusal=_REFUSAL,
        access=no_access,
        slot=no_slot,
        pages=no_pages,
        note=not_a_note,
        harvest=None,
        restarts_page=never,
        clears_some=never,
        begins_migration=False,
        ends_migration=False,
    )


WRITE_GPTE = _spec(WriteGpteStep, run_write_gpte, check_write_gpte, describe_write_gpte, Tell.GUEST_PAGING)
INVLPG = _spec(InvlpgStep, run_invlpg, check_invlpg, describe_invlpg, Tell.GUEST_PAGING)
SET_CR3 = _spec(SetCr3Step, run_set_cr3, check_set_cr3, describe_set_cr3, Tell.GUEST_PAGING)
