"""The scenario's models: the VM, its memslots, and the whole scenario with its steps (the op models
are in engine/ops, one module per op or family).

Steps are numbered from 0, as the result's `index` numbers them.
"""

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import field_validator, model_validator

from engine.ops.registry import Step, step_to_json
from engine.scenario.checks import check_memslots, check_steps
from engine.scenario.cost import (
    DEFAULT_BASE_PFN,
    DEFAULT_BASE_PFN_STRIDE,
    MAX_GFN_END,
    MAX_MEMSLOTS,
    MAX_PFN_END,
    MAX_SLOT_ID,
    MAX_STEPS,
    MAX_TOTAL_PAGES,
    MAX_VCPUS,
)
from engine.scenario.fields import PAGE_LEVELS, Description, Number, PageSize, Title, _Between, _Frozen
from engine.scenario.guest import BuiltGuest, Guest, build_guest
from engine.scenario.wording import fail, refuse

VERSION = 1


class Vm(_Frozen):
    """The VM-wide knobs: how many vCPUs, the largest mapping the MMU may build, EPT A/D, and whether
    the MMU is TDP (EPT/NPT) or shadow paging."""

    vcpus: Annotated[Number, _Between(1, MAX_VCPUS)] = 1
    max_page_level: PageSize = "2M"
    ept_ad: bool = True
    # Written out only when it is "shadow": a TDP scenario reads and writes exactly as before the field.
    mmu: Literal["tdp", "shadow"] = "tdp"

    def canonical(self) -> dict[str, object]:
        out = self.model_dump(mode="python")
        if self.mmu == "tdp":
            del out["mmu"]
        return out

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
            raise refuse(
                "memslot_cow",
                "host_cow says what a write does to a host page that is not writable yet; with"
                " host_writable true every page already is",
            )
        if self.end_gfn > MAX_GFN_END:
            raise refuse(
                "memslot_range",
                f"gfns {self.base_gfn:#x}-{self.end_gfn - 1:#x} go past {MAX_GFN_END - 1:#x},"
                " the last gfn a 4-level EPT maps",
            )
        if self.base_pfn + self.npages > MAX_PFN_END:
            raise refuse(
                "memslot_range",
                f"pfns {self.base_pfn:#x}-{self.base_pfn + self.npages - 1:#x} go past {MAX_PFN_END - 1:#x},"
                " the widest pfn an spte can hold",
            )
        return self


class Scenario(_Frozen):
    """A whole scenario, checked as a whole so that every step of it can run."""

    format: Literal["sptelab-scenario"]
    version: int
    title: Title = ""
    description: Description = ""
    vm: Vm = Vm()
    memslots: list[Memslot]
    # The guest's page tables: required under shadow paging. Under TDP KVM never sees them and the engine
    # does not walk them; a TDP scenario may still give them, so that it runs under shadow paging as it is
    # (`under_mmu`: the same accesses, both MMUs side by side).
    guest: Guest | None = None
    steps: list[Step] = []  # noqa: RUF012 (a pydantic field: each model gets its own copy)

    @field_validator("version", mode="before")
    @classmethod
    def _known_version(cls, value: object) -> object:
        # Compare by type as well: True == 1 in Python, but `"version": true` is not version 1.
        if type(value) is not int or value != VERSION:
            raise refuse("version", f"must be {VERSION}, the only version this program reads")
        return value

    @field_validator("memslots", mode="before")
    @classmethod
    def _default_base_pfns(cls, value: object) -> object:
        # Count first, so that a list of a million slots is refused without validating each one.
        if isinstance(value, list | tuple):
            if not 1 <= len(value) <= MAX_MEMSLOTS:
                raise refuse(
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
            raise refuse("steps_count", f"must hold at most {MAX_STEPS} steps, not {len(value)}")
        return value

    @field_validator("steps", mode="after")
    @classmethod
    def _share_equal_steps(cls, steps: list[Step]) -> list[Step]:
        # Steps are frozen values, and long scenarios repeat a few of them thousands of times (a share
        # code of 4 KB can hold 40 000 steps): keep one object per distinct step, not one per line, so a
        # parsed scenario costs a pointer per step (pydantic's model of a step is about 500 bytes).
        # Keyed by the field values (plain ints, strings and booleans), which hash faster than the models.
        distinct: dict[tuple[object, ...], Step] = {}
        return [distinct.setdefault(step.key(), step) for step in steps]

    @model_validator(mode="after")
    def _check(self) -> "Scenario":
        check_memslots(self.memslots)
        spaces = 0
        if self.vm.mmu == "shadow":
            if self.guest is None:
                raise fail(
                    "guest", 'vm.mmu "shadow" needs the guest\'s page tables: give at least guest.tables_at'
                )
            spaces = len(build_guest(self.guest, self.memslots).cr3s)
        elif self.guest is not None:
            build_guest(self.guest, self.memslots)  # valid as it stands, for under_mmu("shadow")
        check_steps(self.vm.vcpus, self.memslots, self.steps, spaces)
        return self

    def built_guest(self) -> BuiltGuest | None:
        """The guest's tables laid out in its memory under shadow paging; None under TDP, which never
        walks them."""
        if self.guest is None or self.vm.mmu != "shadow":
            return None
        return build_guest(self.guest, self.memslots)

    def with_mmu(self, mmu: Literal["tdp", "shadow"]) -> dict[str, object]:
        """The scenario as data under the other MMU, for parse_scenario to check whole again (a
        shadow-only op, or a gva, is refused under TDP; shadow paging needs the guest's tables)."""
        data = self.canonical()
        data["vm"] = {**self.vm.model_dump(mode="python"), "mmu": mmu}
        return data

    def canonical(self) -> dict[str, object]:
        """The scenario with every default filled in and numbers as ints: what a share code encodes."""
        return {
            "format": self.format,
            "version": self.version,
            "title": self.title,
            "description": self.description,
            "vm": self.vm.canonical(),
            "memslots": [slot.model_dump(mode="python") for slot in self.memslots],
            **({"guest": self.guest.canonical()} if self.guest is not None else {}),
            "steps": [step_to_json(step) for step in self.steps],
        }
