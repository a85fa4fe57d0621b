"""read and write: `count` guest accesses at `gfn + k × stride` from one vCPU, through the CPU's TLB and
the EPT walk (engine.cpu), or through KVM's instruction emulator when the simulation says the guest is
emulated (engine.emulate). Under shadow paging they name a guest-virtual address (`gva`, or a gfn
through the identity map, `gfn << 12`) and go through the shadow tables (engine.shadow_cpu)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, model_validator

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
from engine.scenario.fields import _HEX, _MAX_NUMBER, Number, VcpuId, _Between
from engine.scenario.guest import GVA_LIMIT
from engine.scenario.wording import fail, refuse
from engine.shadow_cpu import shadow_accesses

if TYPE_CHECKING:
    from engine.estimate import Pricer, StepPrice
    from engine.simulation import Simulation


def _gfn_or_gva(schema: dict[str, Any]) -> None:
    """The published schema: an access names `gfn` or `gva`, not necessarily `gfn`."""
    required = schema.get("required")
    if isinstance(required, list) and "gfn" in required:
        required.remove("gfn")
        schema["oneOf"] = [{"required": ["gfn"]}, {"required": ["gva"]}]


class _AccessStep(OpModel):
    """`count` guest accesses at `gfn + k × stride`, in order, from one vCPU."""

    is_write: ClassVar[bool]

    # A gfn, or under shadow paging a guest-virtual address instead (`gfn` then holds its page number).
    gfn: Annotated[Number, _Between(0, _MAX_NUMBER, hex=True)]
    gva: Annotated[Number, _Between(0, GVA_LIMIT - 1, hex=True)] | None = None
    count: Annotated[Number, _Between(1, MAX_COUNT)] = 1
    # A stride of 0 repeats the same gfn: the way to show a TLB hit or a second fault on one page.
    stride: Annotated[Number, _Between(0, MAX_COUNT)] = 1
    vcpu: VcpuId = 0

    model_config = ConfigDict(json_schema_extra=_gfn_or_gva)

    @model_validator(mode="before")
    @classmethod
    def _one_address(cls, data: object) -> object:
        if isinstance(data, Mapping) and "gva" in data and data["gva"] is not None:
            if "gfn" in data:
                raise refuse("access_address", "give gfn or gva, not both")
            gva = data["gva"]
            # The page number stands in for the gfn (written out only as gva): parsed here as the field is.
            page = gva >> 12 if isinstance(gva, int) and not isinstance(gva, bool) else None
            if isinstance(gva, str) and _HEX.fullmatch(gva):
                page = int(gva, 16) >> 12
            return {**data, "gfn": page if page is not None else gva}
        return data

    def json_fields(self) -> dict[str, object]:
        """The fields, the address as it was given: a TDP step reads as it always did."""
        out = super().json_fields()
        if self.gva is None:
            del out["gva"]
        else:
            del out["gfn"]
        return out

    @property
    def address(self) -> int:
        """The guest-virtual address of the first access under shadow paging: `gva`, or `gfn << 12`."""
        return self.gva if self.gva is not None else self.gfn << 12

    @property
    def first_gfn(self) -> int:
        """The gfn of the first access (with `gva`: the guest-virtual page number)."""
        return self.gfn


class ReadStep(_AccessStep):
    is_write: ClassVar[bool] = False
    op: Literal["read"] = "read"


class WriteStep(_AccessStep):
    is_write: ClassVar[bool] = True
    op: Literal["write"] = "write"


def run(sim: Simulation, step: _AccessStep) -> None:
    kvm = sim.kvm
    vcpu = kvm.vcpus[step.vcpu]
    if kvm.shadow:
        shadow_accesses(kvm, vcpu, step.address, step.count, step.stride, step.is_write)
        return
    access = emulated_accesses if sim.guest_execution == "emulated" else guest_accesses
    access(kvm, vcpu, step.first_gfn, step.count, step.stride, step.is_write)


def check(state: CheckState, index: int, step: _AccessStep) -> None:
    """The vCPU exists, every access lands in a memslot, and the scenario's accesses stay countable."""
    at = where(index, step)
    if step.vcpu >= state.vcpus:
        raise fail(
            at, f"vcpu {step.vcpu} does not exist (vm.vcpus is {state.vcpus})", step=index, field="vcpu"
        )
    if step.gva is not None:
        if not state.spaces:
            raise fail(at, 'gva needs vm.mmu "shadow": under TDP a guest access names its gfn', step=index,
                       field="gva")
        last = step.gva + ((step.count - 1) * step.stride << 12)
        if last >= GVA_LIMIT:
            raise fail(at, f"the accesses reach gva {last:#x}, past the lower half of a 4-level guest",
                       step=index, field="count")
    else:
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
        gfn = step.first_gfn + k * step.stride
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
    parts = [step.op, f"gfn {step.gfn:#x}" if step.gva is None else f"gva {step.gva:#x}"]
    if step.count != 1:
        parts.append(f"×{step.count}")
        if step.stride != 1:
            parts.append(f"stride {step.stride}")
    if step.vcpu != 0:
        parts.append(f"vCPU {step.vcpu}")
    return " ".join(parts)


def live(target: LiveTarget, step: _AccessStep) -> list[int] | None:
    target.access(step.vcpu, step.first_gfn, step.count, step.stride, step.is_write)
    return None


def access(step: _AccessStep) -> Access:
    return Access(step.vcpu, step.first_gfn, step.count, step.stride, step.is_write, step.gva)


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
