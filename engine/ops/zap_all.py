"""zap_all: every spte dropped, as a memslot deletion or move does it (3.14/3.16 invalidate the
generation, kvm_mmu_invalidate_zap_all_pages; the model of 6.x zaps all, kvm_mmu_zap_all)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

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
from engine.zap import kvm_mmu_invalidate_zap_all_pages, kvm_mmu_zap_all

if TYPE_CHECKING:
    from engine.estimate import Pricer, StepPrice
    from engine.simulation import Simulation


class ZapAllStep(OpModel):
    """kvm_mmu_zap_all."""

    op: Literal["zap_all"] = "zap_all"


def run(sim: Simulation, step: ZapAllStep) -> None:
    kvm = sim.kvm
    if kvm.era6:
        kvm_mmu_zap_all(kvm)
    else:
        kvm_mmu_invalidate_zap_all_pages(kvm)


def price(pricer: Pricer, step: ZapAllStep) -> StepPrice:
    return pricer.zap_all()


def describe(step: ZapAllStep) -> str:
    return "zap_all"


ZAP_ALL: OpSpec[ZapAllStep] = OpSpec(
    model=ZapAllStep,
    run=run,
    check=no_check,
    price=price,
    describe=describe,
    ask=Ask.NOTHING,
    tell=Tell.ZAP,
    live=None,
    refusal="userspace has no ioctl that zaps every spte (the kernel does it on its own, e.g. when a"
    " memslot is deleted)",
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
