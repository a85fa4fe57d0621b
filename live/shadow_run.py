"""A shadow-paging scenario's guest operations as the live guest's own instructions.

- read, write (by gfn: the identity address `gfn << 12`, or by `gva`): one load or store per page, each
  store writing the 32 bits its page already holds at its start (`live.guest_code`), in programs of at
  most `SHADOW_ACCESSES_PER_RUN` accesses;
- write_gpte: a 64-bit store of the PTE at `table << 12 + index × 8`;
- invlpg: INVLPG [gva];
- set_cr3: MOV CR3 to the space's PML4 (the vCPU's space is remembered for the next steps).

The live guest has no #PF handler: an access its own tables do not map, or map without the rights it
needs, would be a #PF the guest cannot take (a triple fault). The guest's walk is repeated from the host
before every program, over the guest's memory as it is then, and such an access is refused with its
step, as is one that leaves every memslot (MMIO) or crosses an entry without U/S (this host's native
path livelocks on those: spec live-kernel.md §2).
"""

from __future__ import annotations

import struct

from engine.ops.base import Access
from live.guest_code import (
    SHADOW_ACCESSES_PER_RUN,
    gpte_store_program,
    invlpg_program,
    set_cr3_program,
    shadow_access_program,
)
from live.paging import PTE_LARGE, PTE_PRESENT, PTE_USER, PTE_WRITABLE
from live.shadow_guest import ShadowLayout
from live.vm import PAGE_SHIFT, KvmVm

ADDRESS_MASK = ((1 << 52) - 1) & ~0xFFF


class GuestFaultError(ValueError):
    """A guest access the live guest cannot make: str() says which and why."""


class ShadowGuestOps:
    """The guest-paging side of one run: each vCPU's current space, and the programs of each op."""

    def __init__(self, vm: KvmVm, layout: ShadowLayout, slots: list[tuple[int, int]]) -> None:
        self.vm = vm
        self.layout = layout
        self.slots = slots  # (base gfn, npages) of the scenario's slots
        self.space = [0] * len(vm.vcpus)

    def _read_entry(self, table_gfn: int, index: int) -> int:
        if not any(base <= table_gfn < base + n for base, n in self.slots):
            raise GuestFaultError(f"the guest's table at gfn {table_gfn:#x} is outside every memslot")
        low = self.vm.first_dword_at(table_gfn, index * 8)
        high = self.vm.first_dword_at(table_gfn, index * 8 + 4)
        value: int = struct.unpack("<Q", struct.pack("<II", low, high))[0]
        return value

    def translate(self, vcpu: int, gva: int, write: bool) -> int:
        """The gfn the guest's tables map `gva` to for vCPU `vcpu`, walked from the host; raises
        GuestFaultError where the guest would take a #PF, or reach no memslot."""
        table = self.layout.cr3s[self.space[vcpu]] >> PAGE_SHIFT
        for level in (4, 3, 2, 1):
            index = (gva >> (PAGE_SHIFT + 9 * (level - 1))) & 511
            entry = self._read_entry(table, index)
            what = f"gva {gva:#x}: the level-{level} entry {index} of table {table:#x} ({entry:#x})"
            if not entry & PTE_PRESENT:
                raise GuestFaultError(f"{what} is not present: a #PF the live guest has no handler for")
            if not entry & PTE_USER:
                raise GuestFaultError(f"{what} lacks U/S, which this host's native path needs in every entry")
            if write and not entry & PTE_WRITABLE:
                raise GuestFaultError(f"{what} is read-only: a write #PF the live guest has no handler for")
            frame = (entry & ADDRESS_MASK) >> PAGE_SHIFT
            if level > 1 and entry & PTE_LARGE:
                gfn = frame + ((gva >> PAGE_SHIFT) & ((1 << (9 * (level - 1))) - 1))
                break
            table = frame
        else:
            gfn = table
        if not any(base <= gfn < base + n for base, n in self.slots):
            raise GuestFaultError(f"gva {gva:#x} maps gfn {gfn:#x}, outside every memslot (MMIO)")
        return gfn

    def access(self, access: Access) -> None:
        first = access.gva if access.gva is not None else access.gfn << PAGE_SHIFT
        stride = access.stride if access.count > 1 else 0
        addresses = [first + (k * stride << PAGE_SHIFT) for k in range(access.count)]
        for start in range(0, len(addresses), SHADOW_ACCESSES_PER_RUN):
            chunk = addresses[start : start + SHADOW_ACCESSES_PER_RUN]
            program: list[tuple[int, int | None]] = []
            for gva in chunk:
                gfn = self.translate(access.vcpu, gva, access.write)
                program.append((gva, self.vm.first_dword_at(gfn, 0) if access.write else None))
            self.vm.run_code(access.vcpu, shadow_access_program(program))

    def write_gpte(self, vcpu: int, table: int, index: int, pte: int) -> None:
        gva = (table << PAGE_SHIFT) + index * 8
        self.translate(vcpu, gva, True)
        self.vm.run_code(vcpu, gpte_store_program(gva, pte))

    def invlpg(self, vcpu: int, gva: int) -> None:
        self.vm.run_code(vcpu, invlpg_program(gva))

    def set_cr3(self, vcpu: int, space: int) -> None:
        self.vm.run_code(vcpu, set_cr3_program(self.layout.cr3s[space]))
        self.space[vcpu] = space
