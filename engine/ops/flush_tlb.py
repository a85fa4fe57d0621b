"""flush_tlb: userspace asks for kvm_flush_remote_tlbs, which empties every vCPU's TLB."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from engine.kvm_main import kvm_flush_remote_tlbs
from engine.ops.base import (
    Ask,
    OpModel,
    OpSpec,
    Tell,
    never,
    no_access,
    no_check,
    no_pages,
    no_slot,
    not_a_note,
)

if TYPE_CHECKING:
    from engine.estimate import Pricer, StepPrice
    from engine.simulation import Simulation


class FlushTlbStep(OpModel):
    """kvm_flush_remote_tlbs."""

    op: Literal["flush_tlb"] = "flush_tlb"


def run(sim: Simulation, step: FlushTlbStep) -> None:
    kvm_flush_remote_tlbs(sim.kvm, "userspace", under_mmu_lock=False)


def price(pricer: Pricer, step: FlushTlbStep) -> StepPrice:
    return pricer.per_vcpu()


def describe(step: FlushTlbStep) -> str:
    return "flush_tlb"


FLUSH_TLB: OpSpec[FlushTlbStep] = OpSpec(
    model=FlushTlbStep,
    run=run,
    check=no_check,
    price=price,
    describe=describe,
    ask=Ask.NOTHING,
    tell=Tell.FLUSH,
    live=None,
    refusal="userspace has no ioctl that flushes a VM's TLBs (the kernel flushes when it needs to)",
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
