"""The 3.14/3.16 spte format on EPT: bit positions, constructors and predicates (mmu.c, vmx.c).

Sptes are plain ints, as in the kernel. The masks that depend on module parameters (EPT A/D bits) live in a
frozen `SpteMasks` value handed around explicitly, never in module globals, so that two VMs with different
settings can be simulated side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE_SHIFT = 12
PT64_LEVEL_BITS = 9
PT64_ENT_PER_PAGE = 1 << PT64_LEVEL_BITS

PT_PAGE_TABLE_LEVEL = 1
PT_DIRECTORY_LEVEL = 2
PT_PDPE_LEVEL = 3
PT64_ROOT_LEVEL = 4
KVM_NR_PAGE_SIZES = 3

PT_PRESENT_MASK = 1 << 0
PT_WRITABLE_MASK = 1 << 1
VMX_EPT_EXECUTABLE_MASK = 1 << 2
VMX_EPT_MT_EPTE_SHIFT = 3
MTRR_TYPE_WRBACK = 6
VMX_EPT_IPAT_BIT = 1 << 6
PT_PAGE_SIZE_MASK = 1 << 7
VMX_EPT_ACCESS_BIT = 1 << 8
VMX_EPT_DIRTY_BIT = 1 << 9
PT_FIRST_AVAIL_BITS_SHIFT = 10
SPTE_HOST_WRITEABLE = 1 << PT_FIRST_AVAIL_BITS_SHIFT
SPTE_MMU_WRITEABLE = 1 << (PT_FIRST_AVAIL_BITS_SHIFT + 1)
PT64_BASE_ADDR_MASK = ((1 << 52) - 1) & ~((1 << PAGE_SHIFT) - 1)

# Memory type of guest RAM without non-coherent DMA: write-back, ignore PAT (vmx_get_mt_mask).
EPT_RAM_MT_MASK = (MTRR_TYPE_WRBACK << VMX_EPT_MT_EPTE_SHIFT) | VMX_EPT_IPAT_BIT

# The decoded flags shown to people, in the order the contract fixes.
FLAG_BITS: tuple[tuple[str, int], ...] = (
    ("R", PT_PRESENT_MASK),
    ("W", PT_WRITABLE_MASK),
    ("X", VMX_EPT_EXECUTABLE_MASK),
    ("PS", PT_PAGE_SIZE_MASK),
    ("A", VMX_EPT_ACCESS_BIT),
    ("D", VMX_EPT_DIRTY_BIT),
    ("HW", SPTE_HOST_WRITEABLE),
    ("MW", SPTE_MMU_WRITEABLE),
)


@dataclass(frozen=True, slots=True)
class SpteMasks:
    """The masks `kvm_mmu_set_mask_ptes` installs from vmx.c's hardware_setup for EPT."""

    accessed_mask: int
    dirty_mask: int
    x_mask: int = VMX_EPT_EXECUTABLE_MASK
    mt_mask: int = EPT_RAM_MT_MASK

    @classmethod
    def for_ept(cls, ept_ad: bool) -> SpteMasks:
        """With `eptad=0` the CPU keeps no A/D bits, and KVM's masks for them are zero."""
        if ept_ad:
            return cls(accessed_mask=VMX_EPT_ACCESS_BIT, dirty_mask=VMX_EPT_DIRTY_BIT)
        return cls(accessed_mask=0, dirty_mask=0)


def is_shadow_present_pte(spte: int) -> bool:
    # MMIO sptes are not modelled, so "present" is just the readable bit.
    return bool(spte & PT_PRESENT_MASK)


is_rmap_spte = is_shadow_present_pte


def is_large_pte(spte: int) -> bool:
    return bool(spte & PT_PAGE_SIZE_MASK)


def is_writable_pte(spte: int) -> bool:
    return bool(spte & PT_WRITABLE_MASK)


def is_last_spte(spte: int, level: int) -> bool:
    """A leaf at `level`. The answer depends on the level the caller believes it is at: see
    fast_page_fault's last-spte check."""
    return level == PT_PAGE_TABLE_LEVEL or is_large_pte(spte)


def spte_is_locklessly_modifiable(spte: int) -> bool:
    """HW and MW both set: only dirty logging removed W, so the fast path may put it back."""
    mask = SPTE_HOST_WRITEABLE | SPTE_MMU_WRITEABLE
    return spte & mask == mask


def spte_to_pfn(spte: int) -> int:
    return (spte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT


def spte_flags(spte: int) -> list[str]:
    """The contract's decoded flags, e.g. ['R', 'X', 'PS', 'A', 'D', 'HW', 'MW']."""
    return [name for name, bit in FLAG_BITS if spte & bit]


def pages_per_hpage(level: int) -> int:
    """KVM_PAGES_PER_HPAGE: 4K pages one entry at `level` maps."""
    return 1 << (PT64_LEVEL_BITS * (level - 1))


def spte_index(gfn: int, level: int) -> int:
    """SHADOW_PT_INDEX: which of the 512 entries of a level-`level` table maps `gfn`."""
    return (gfn >> (PT64_LEVEL_BITS * (level - 1))) & (PT64_ENT_PER_PAGE - 1)


def level_name(level: int) -> str:
    return {1: "4K", 2: "2M", 3: "1G", 4: "512G"}[level]
