"""Memslots as 3.14/3.16 see them: `struct kvm_memory_slot` with its arch rmaps, lpage_info and dirty bitmap.

Mirrors kvm_host.h, x86.c `kvm_arch_create_memslot` and the memslot lookups of kvm_main.c. The host side
of a slot (hugetlbfs page size, copy-on-write state, the page contents a migration copies) lives here too,
because the kernel reaches it through the slot's userspace address.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator
from typing import TYPE_CHECKING

from engine.spte import KVM_NR_PAGE_SIZES, PT64_LEVEL_BITS, pages_per_hpage

if TYPE_CHECKING:
    from engine.shadow_page import RmapHead


BITS_PER_LONG = 64


def gfn_to_index(gfn: int, base_gfn: int, level: int) -> int:
    shift = PT64_LEVEL_BITS * (level - 1)
    return (gfn >> shift) - (base_gfn >> shift)


class KvmMemorySlot:
    """One slot. `rmap[level - 1]` maps an index to the sptes mapping that gfn (range) at that level."""

    __slots__ = (
        "base_gfn",
        "base_pfn",
        "content",
        "cow_broken",
        "dirty_bitmap",
        "host_cow_copies",
        "host_level",
        "host_writable",
        "id",
        "lpage_write_count",
        "npages",
        "rmap",
    )

    def __init__(
        self,
        slot_id: int,
        base_gfn: int,
        npages: int,
        host_level: int,
        base_pfn: int,
        host_writable: bool,
        largepages_enabled: bool,
        host_cow_copies: bool = True,
    ) -> None:
        self.id = slot_id
        self.base_gfn = base_gfn
        self.npages = npages
        self.host_level = host_level
        self.base_pfn = base_pfn
        self.host_writable = host_writable
        # Whether making a read-only host page writable copies it (a shared page: the mmu notifier fires)
        # or reuses it in place (a page the process owns alone: no notifier).
        self.host_cow_copies = host_cow_copies
        # Host pages whose copy-on-write sharing a write fault has already broken (by host page number).
        self.cow_broken: set[int] = set()
        self.dirty_bitmap: bytearray | None = None
        # Per level, gfn_to_index -> rmap head (see engine.rmap).
        self.rmap: list[dict[int, RmapHead]] = [{} for _ in range(KVM_NR_PAGE_SIZES)]
        # The guest's view of each page's contents: a counter every write bumps.
        self.content = array("Q", bytes(8 * npages))
        self.lpage_write_count: list[list[int]] = []
        last_gfn = base_gfn + npages - 1
        for level in range(2, KVM_NR_PAGE_SIZES + 1):
            lpages = gfn_to_index(last_gfn, base_gfn, level) + 1
            counts = [0] * lpages
            mask = pages_per_hpage(level) - 1
            # A partial first or last range may not be mapped large: it would cover gfns of no slot.
            if base_gfn & mask:
                counts[0] = 1
            if (base_gfn + npages) & mask:
                counts[-1] = 1
            # Large pages need the guest and host ranges aligned alike (base_pfn stands in for the hva).
            if (base_gfn ^ base_pfn) & mask or not largepages_enabled:
                counts = [1] * lpages
            self.lpage_write_count.append(counts)

    @property
    def last_gfn(self) -> int:
        return self.base_gfn + self.npages - 1

    def contains(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.base_gfn + self.npages

    def gfn_to_pfn(self, gfn: int) -> int:
        return self.base_pfn + (gfn - self.base_gfn)

    def host_page_writable(self, pfn: int) -> bool:
        """Whether the host PTE for `pfn` is writable now: always, or once a write broke its COW sharing."""
        return self.host_writable or (pfn >> (PT64_LEVEL_BITS * (self.host_level - 1))) in self.cow_broken

    def break_cow(self, pfn: int) -> bool:
        """A write fault un-shares the host page (all of a huge page). True if it was still shared."""
        if self.host_page_writable(pfn):
            return False
        self.cow_broken.add(pfn >> (PT64_LEVEL_BITS * (self.host_level - 1)))
        return True

    def has_wrprotected_page(self, gfn: int, level: int) -> int:
        return self.lpage_write_count[level - 2][gfn_to_index(gfn, self.base_gfn, level)]

    def create_dirty_bitmap(self) -> None:
        """kvm_create_dirty_bitmap: ALIGN(npages, 64) zeroed bits, bit i for gfn base_gfn + i, little-endian
        within each 64-bit long (the snapshot half the kernel also allocates is GET_DIRTY_LOG's local)."""
        self.dirty_bitmap = bytearray(-(-self.npages // BITS_PER_LONG) * (BITS_PER_LONG // 8))

    def set_all_dirty(self) -> None:
        """KVM_DIRTY_LOG_INITIALLY_SET: bitmap_set over the slot's pages (the padding of the last long stays
        clear)."""
        bitmap = self.dirty_bitmap
        if bitmap is None:
            raise AssertionError(f"slot {self.id} has no dirty bitmap to fill")
        bitmap[:] = ((1 << self.npages) - 1).to_bytes(len(bitmap), "little")

    def fetch_andnot_word(self, word: int, mask: int) -> int:
        """atomic_long_fetch_andnot on one long of the bitmap: clear `mask`'s bits, return the old long."""
        bitmap = self.dirty_bitmap
        if bitmap is None:
            raise AssertionError(f"slot {self.id} has no dirty bitmap")
        old = int.from_bytes(bitmap[word * 8 : word * 8 + 8], "little")
        bitmap[word * 8 : word * 8 + 8] = (old & ~mask).to_bytes(8, "little")
        return old

    def all_dirty(self, gfn: int, npages: int) -> bool:
        """Whether every page of [gfn, gfn + npages) inside the slot has its bit set."""
        bitmap = self.dirty_bitmap
        if bitmap is None:
            return False
        first = max(gfn, self.base_gfn) - self.base_gfn
        end = min(gfn + npages, self.base_gfn + self.npages) - self.base_gfn
        if end <= first:
            return True
        chunk = int.from_bytes(bitmap[first >> 3 : (end + 7) >> 3], "little") >> (first & 7)
        width = end - first
        return chunk & ((1 << width) - 1) == (1 << width) - 1

    def test_dirty(self, gfn: int) -> bool:
        bitmap = self.dirty_bitmap
        offset = gfn - self.base_gfn
        return bitmap is not None and bool(bitmap[offset >> 3] >> (offset & 7) & 1)

    def dirty_words(self) -> Iterator[tuple[int, int]]:
        """(word index, mask) of every non-zero long of the bitmap, ascending."""
        bitmap = self.dirty_bitmap
        if bitmap is None:
            return
        for word in range(len(bitmap) // 8):
            mask = int.from_bytes(bitmap[word * 8 : word * 8 + 8], "little")
            if mask:
                yield word, mask

    def dirty_gfns(self) -> list[int]:
        """The gfns whose bit is set, ascending."""
        return list(self.iter_dirty_gfns())

    def iter_dirty_gfns(self) -> Iterator[int]:
        """The gfns whose bit is set, ascending, one long of the bitmap at a time: for a view that shows
        only the first few of a big slot."""
        for word, mask in self.dirty_words():
            yield from self.gfns_of_word(word, mask)

    def gfns_of_word(self, word: int, mask: int) -> list[int]:
        first = self.base_gfn + word * BITS_PER_LONG
        out: list[int] = []
        while mask:
            low = mask & -mask
            out.append(first + low.bit_length() - 1)
            mask ^= low
        return out


class Memslots:
    """`struct kvm_memslots`: the slots sorted by gfn, found by binary search like search_memslots()."""

    __slots__ = ("_bases", "_last", "by_id", "sorted")

    def __init__(self, slots: list[KvmMemorySlot]) -> None:
        self.sorted = sorted(slots, key=lambda s: s.base_gfn)
        self._bases = [s.base_gfn for s in self.sorted]
        self.by_id = {s.id: s for s in slots}
        # Like the kernel's lru_slot: consecutive lookups nearly always hit the same slot.
        self._last = self.sorted[0]

    def gfn_to_memslot(self, gfn: int) -> KvmMemorySlot | None:
        last = self._last
        if last.base_gfn <= gfn < last.base_gfn + last.npages:
            return last
        i = bisect_right(self._bases, gfn) - 1
        if i < 0:
            return None
        slot = self.sorted[i]
        if gfn < slot.base_gfn + slot.npages:
            self._last = slot
            return slot
        return None

    def __iter__(self) -> Iterator[KvmMemorySlot]:
        """Slots in id order: the order userspace loops such as migration walk them."""
        return iter(sorted(self.by_id.values(), key=lambda s: s.id))
