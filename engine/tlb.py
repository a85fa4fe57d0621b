"""A per-vCPU TLB of EPT translations: what the hardware caches, and why KVM must flush.

No kernel file holds this; it is the CPU's side of the contract that mmu.c's flushes serve. An entry caches
one leaf translation (4K, 2M or 1G) with its write permission and whether the CPU already set the dirty
flag through it. A store through a writable entry whose dirty flag is cached never looks at the spte again:
that is the window kvm_flush_remote_tlbs closes.
"""

from __future__ import annotations

from typing import NamedTuple

from engine.spte import PT64_LEVEL_BITS, pages_per_hpage


class TlbEntry(NamedTuple):
    """One cached translation. A tuple, because the guest's hot path builds one per TLB fill."""

    level: int
    gfn: int  # first gfn of the cached range
    pfn: int  # first pfn of the cached range
    writable: bool
    dirty: bool


class Tlb:
    """Three maps, one per page size, keyed by gfn >> (9 × (level − 1)), as a real TLB's split arrays."""

    __slots__ = ("by_level",)

    def __init__(self) -> None:
        self.by_level: tuple[dict[int, TlbEntry], ...] = ({}, {}, {})

    def invalidate_gfn(self, gfn: int) -> None:
        """An EPT violation drops the translations cached for the faulting address."""
        l1, l2, l3 = self.by_level
        if l1:
            l1.pop(gfn, None)
        if l2:
            l2.pop(gfn >> PT64_LEVEL_BITS, None)
        if l3:
            l3.pop(gfn >> (2 * PT64_LEVEL_BITS), None)

    def flush(self) -> int:
        dropped = sum(len(entries) for entries in self.by_level)
        for entries in self.by_level:
            entries.clear()
        return dropped

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.by_level)

    def entries(self) -> list[TlbEntry]:
        """Every cached translation, by level then gfn: for reports and invariant checks."""
        out: list[TlbEntry] = []
        for entries in self.by_level:
            out.extend(entries[k] for k in sorted(entries))
        return out

    def entries_overlapping(self, gfn: int, level: int) -> list[TlbEntry]:
        """Entries that translate any gfn of the level-`level` range starting at `gfn`."""
        out: list[TlbEntry] = []
        span = pages_per_hpage(level)
        for lvl, entries in enumerate(self.by_level, start=1):
            shift = PT64_LEVEL_BITS * (lvl - 1)
            if lvl >= level:
                hit = entries.get(gfn >> shift)
                if hit is not None:
                    out.append(hit)
            elif len(entries) <= span >> shift:
                out.extend(e for e in entries.values() if gfn <= e.gfn < gfn + span)
            else:
                first = gfn >> shift
                out.extend(e for k in range(first, first + (span >> shift)) if (e := entries.get(k)))
        return out
