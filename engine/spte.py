"""The spte format on EPT, as 3.14/3.16 (mmu.c, vmx.c) and 6.x (mmu/spte.h, spte.c) lay it out.

Sptes are plain ints, as in the kernel. The masks that depend on module parameters (EPT A/D bits) and on the
kernel generation (where the software bits live, what a non-present spte holds) live in a frozen
`SpteMasks` value handed around explicitly, never in module globals, so that two VMs with different
settings can be simulated side by side: the kernel itself chooses them once, in `kvm_mmu_set_mask_ptes`
(3.x) or `kvm_mmu_set_ept_masks` (6.x).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from engine.policy import Era

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

# 6.x (mmu/spte.h, asm/vmx.h): the software bits moved up, out of the way of the hardware's, and bit 11
# became "MMU-present", so that a present spte is recognisable whatever its permissions. Bit 63 is EPT's
# "suppress #VE", which 6.x sets in every spte, present or not: a non-present spte is that bit alone.
SPTE_MMU_PRESENT_MASK = 1 << 11
SPTE_TDP_AD_DISABLED = 1 << 52
EPT_SPTE_HOST_WRITABLE = 1 << 57
EPT_SPTE_MMU_WRITABLE = 1 << 58
VMX_EPT_SUPPRESS_VE_BIT = 1 << 63
SHADOW_NONPRESENT_VALUE = VMX_EPT_SUPPRESS_VE_BIT

# The x86 PTE's own bits, which a shadow spte shares with the guest's PTEs (mmu.h).
PT_USER_MASK = 1 << 2
PT_ACCESSED_MASK = 1 << 5
PT_DIRTY_MASK = 1 << 6
PT64_NX_MASK = 1 << 63
# 6.x's software bits of a shadow (non-EPT) spte: host-writable bit 9 and MMU-writable bit 10 (spte.h).
DEFAULT_SPTE_HOST_WRITABLE = 1 << 9
DEFAULT_SPTE_MMU_WRITABLE = 1 << 10

# The kernel generations whose spte layout and statistics the model speaks (Policy.era).
ERA_3X: Final = "3.x"
ERA_6X: Final = "6.x"

# Memory type of guest RAM without non-coherent DMA: write-back, ignore PAT (vmx_get_mt_mask).
EPT_RAM_MT_MASK = (MTRR_TYPE_WRBACK << VMX_EPT_MT_EPTE_SHIFT) | VMX_EPT_IPAT_BIT

@dataclass(frozen=True, slots=True)
class SpteMasks:
    """The masks KVM installs for EPT at module load: 3.x `kvm_mmu_set_mask_ptes` from vmx.c's
    hardware_setup, or 6.x `kvm_mmu_set_ept_masks`.

    `present_mask` holds the bits every present spte carries besides R (6.x: MMU-present and suppress-#VE,
    and "A/D disabled" without EPT A/D bits); `nonpresent` is what a cleared spte holds (0 in 3.x,
    suppress-#VE alone in 6.x).
    """

    accessed_mask: int
    dirty_mask: int
    x_mask: int = VMX_EPT_EXECUTABLE_MASK
    mt_mask: int = EPT_RAM_MT_MASK
    host_writable_mask: int = SPTE_HOST_WRITEABLE
    mmu_writable_mask: int = SPTE_MMU_WRITEABLE
    present_mask: int = 0
    nonpresent: int = 0
    era: Era = ERA_3X
    # Shadow paging (kvm_mmu_set_mask_ptes from x86.c, not vmx.c): the spte is an x86 PTE, whose U/S bit
    # says user access and whose bit 63 takes execution away (EPT has neither: X is a permission bit).
    user_mask: int = 0
    nx_mask: int = 0
    # Where A and D sit in this format, whether or not KVM uses them (EPT's bits 8 and 9; the x86 PTE's 5
    # and 6): what a decoded spte reads.
    a_bit: int = VMX_EPT_ACCESS_BIT
    d_bit: int = VMX_EPT_DIRTY_BIT
    shadow: bool = False

    @classmethod
    def for_ept(cls, ept_ad: bool, era: Era = ERA_3X) -> SpteMasks:
        """With `eptad=0` the CPU keeps no A/D bits, and KVM's masks for them are zero."""
        accessed, dirty = (VMX_EPT_ACCESS_BIT, VMX_EPT_DIRTY_BIT) if ept_ad else (0, 0)
        if era == ERA_6X:
            present = SPTE_MMU_PRESENT_MASK | VMX_EPT_SUPPRESS_VE_BIT
            if not ept_ad:
                present |= SPTE_TDP_AD_DISABLED
            return cls(
                accessed_mask=accessed,
                dirty_mask=dirty,
                host_writable_mask=EPT_SPTE_HOST_WRITABLE,
                mmu_writable_mask=EPT_SPTE_MMU_WRITABLE,
                present_mask=present,
                nonpresent=SHADOW_NONPRESENT_VALUE,
                era=ERA_6X,
            )
        return cls(accessed_mask=accessed, dirty_mask=dirty)

    @classmethod
    def for_shadow(cls, era: Era = ERA_3X) -> SpteMasks:
        """Shadow paging's masks: the spte is an x86 PTE (U/S bit 2, A bit 5, D bit 6, NX bit 63, no memory
        type). 3.x keeps HW and MW at bits 10 and 11; 6.x moved them to 9 and 10 and made bit 11
        MMU-present, and a non-present spte is 0 (suppress-#VE is EPT's)."""
        common = {
            "accessed_mask": PT_ACCESSED_MASK,
            "dirty_mask": PT_DIRTY_MASK,
            "x_mask": 0,
            "mt_mask": 0,
            "user_mask": PT_USER_MASK,
            "nx_mask": PT64_NX_MASK,
            "a_bit": PT_ACCESSED_MASK,
            "d_bit": PT_DIRTY_MASK,
            "shadow": True,
        }
        if era == ERA_6X:
            return cls(
                host_writable_mask=DEFAULT_SPTE_HOST_WRITABLE,
                mmu_writable_mask=DEFAULT_SPTE_MMU_WRITABLE,
                present_mask=SPTE_MMU_PRESENT_MASK,
                era=ERA_6X,
                **common,  # type: ignore[arg-type]
            )
        return cls(**common)  # type: ignore[arg-type]

    @property
    def lockless_mask(self) -> int:
        """HW and MW: the bits spte_is_locklessly_modifiable asks for."""
        return self.host_writable_mask | self.mmu_writable_mask

    @property
    def flag_bits(self) -> tuple[tuple[str, int], ...]:
        """The contract's flags at this layout's positions (A and D where EPT keeps them even when KVM
        has turned its masks off, so that a value always decodes the same way)."""
        return (
            ("R", PT_PRESENT_MASK),
            ("W", PT_WRITABLE_MASK),
            ("X", VMX_EPT_EXECUTABLE_MASK),
            ("PS", PT_PAGE_SIZE_MASK),
            ("A", self.a_bit),
            ("D", self.d_bit),
            ("HW", self.host_writable_mask),
            ("MW", self.mmu_writable_mask),
        )

    @property
    def flag_mask(self) -> int:
        """Every bit of an spte that is not its address: what a decoded spte's flags depend on."""
        return ~PT64_BASE_ADDR_MASK & ((1 << 64) - 1)



def is_shadow_present_pte(spte: int) -> bool:
    # MMIO sptes are not modelled, so "present" is just the readable bit.
    return bool(spte & PT_PRESENT_MASK)


is_rmap_spte = is_shadow_present_pte


def is_large_pte(spte: int) -> bool:
    return bool(spte & PT_PAGE_SIZE_MASK)


def is_writable_pte(spte: int) -> bool:
    return bool(spte & PT_WRITABLE_MASK)


def is_mmu_writable_spte(spte: int, masks: SpteMasks) -> bool:
    """MW: KVM itself has no reason to keep the page read-only (no write tracking)."""
    return bool(spte & masks.mmu_writable_mask)


def is_host_writable_spte(spte: int, masks: SpteMasks) -> bool:
    """HW: the host page behind the spte was writable when it was mapped."""
    return bool(spte & masks.host_writable_mask)


def is_accessed_spte(spte: int, masks: SpteMasks) -> bool:
    """A: set by the CPU's walk (always false with EPT A/D bits off, whose mask is 0)."""
    return bool(spte & masks.accessed_mask)


def is_dirty_spte(spte: int, masks: SpteMasks) -> bool:
    """D: set by a store through the spte (always false with EPT A/D bits off)."""
    return bool(spte & masks.dirty_mask)


def is_large_leaf(spte: int) -> bool:
    """A present huge leaf (is_shadow_present_pte and is_large_pte)."""
    return bool(spte & PT_PRESENT_MASK and spte & PT_PAGE_SIZE_MASK)


def is_last_spte(spte: int, level: int) -> bool:
    """A leaf at `level`. The answer depends on the level the caller believes it is at: see
    fast_page_fault's last-spte check."""
    return level == PT_PAGE_TABLE_LEVEL or is_large_pte(spte)


def spte_is_locklessly_modifiable(spte: int, masks: SpteMasks) -> bool:
    """HW and MW both set: only dirty logging removed W, so the fast path may put it back."""
    mask = masks.lockless_mask
    return spte & mask == mask


def spte_to_pfn(spte: int) -> int:
    return (spte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT


# A non-leaf spte holds the address of its child table where a leaf holds the page's: the same field.
spte_to_child_pfn = spte_to_pfn


# The decoded flags shown to people, in the order the contract fixes, at their 3.x positions: the positions
# of `flag_word`, which packs any layout's flags there.
FLAG_BITS = SpteMasks.for_ept(True, ERA_3X).flag_bits

# The bits of FLAG_BITS other than HW and MW, which sit at the same positions in every layout.
_FIXED_FLAGS = PT_PRESENT_MASK | PT_WRITABLE_MASK | VMX_EPT_EXECUTABLE_MASK | PT_PAGE_SIZE_MASK
_FIXED_FLAGS |= VMX_EPT_ACCESS_BIT | VMX_EPT_DIRTY_BIT


def flag_word(spte: int, masks: SpteMasks) -> int:
    """The contract's eight flags of `spte` packed at their 3.x positions (FLAG_BITS), whatever the
    layout: code that decodes or compares flags is written once, against FLAG_BITS. A non-present spte
    has none."""
    if not spte & PT_PRESENT_MASK:
        return 0
    if masks.shadow:
        word = spte & (PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_PAGE_SIZE_MASK)
        if not spte & masks.nx_mask:
            word |= VMX_EPT_EXECUTABLE_MASK
        if spte & masks.a_bit:
            word |= VMX_EPT_ACCESS_BIT
        if spte & masks.d_bit:
            word |= VMX_EPT_DIRTY_BIT
    else:
        word = spte & _FIXED_FLAGS
    if spte & masks.host_writable_mask:
        word |= SPTE_HOST_WRITEABLE
    if spte & masks.mmu_writable_mask:
        word |= SPTE_MMU_WRITEABLE
    return word


def spte_flags(spte: int, masks: SpteMasks) -> list[str]:
    """The contract's decoded flags, e.g. ['R', 'X', 'PS', 'A', 'D', 'HW', 'MW'], read at the positions of
    `masks`' layout. A non-present spte has none (6.x keeps suppress-#VE in it, which is not a flag)."""
    if not spte & PT_PRESENT_MASK:
        return []
    if masks.shadow:
        word = flag_word(spte, masks)
        names = [name for name, bit in FLAG_BITS if word & bit]
        return [*names, "U"] if spte & masks.user_mask else names
    return [name for name, bit in masks.flag_bits if spte & bit]


# --- whole tables at once ---------------------------------------------------------------------------------
#
# R (bit 0), W (bit 1) and PS (bit 7) all sit in an spte's low byte, so what is_shadow_present_pte,
# is_writable_pte and is_large_pte say of an spte can be looked up from its low byte alone. The bulk paths
# (a huge page split, a table zapped, a slot write-protected, the checks of such a step) ask it of 512
# sptes at a time: `low_bytes(sptes).translate(TABLE)` is one byte per spte, 1 where the predicate holds,
# computed at C speed rather than one int at a time.

PRESENT_BY_LOW_BYTE = bytes(int(is_shadow_present_pte(b)) for b in range(256))
WRITABLE_BY_LOW_BYTE = bytes(int(is_writable_pte(b)) for b in range(256))
LARGE_LEAF_BY_LOW_BYTE = bytes(int(is_shadow_present_pte(b) and is_large_pte(b)) for b in range(256))
READ_ONLY_BY_LOW_BYTE = bytes(int(is_shadow_present_pte(b) and not is_writable_pte(b)) for b in range(256))


def low_bytes(sptes: Iterable[int]) -> bytes:
    """The low byte of each spte (64-bit values, as the kernel's u64)."""
    words = array("Q", sptes)
    if sys.byteorder != "little":
        words.byteswap()
    return words.tobytes()[::8]


def count_where(sptes: Sequence[int], by_low_byte: bytes) -> int:
    """How many of `sptes` a table above (`by_low_byte`) holds a 1 for: how many the predicate holds of."""
    if sptes and sptes[0] == sptes[-1] and sptes.count(sptes[0]) == len(sptes):
        # One value throughout, as a new table or one cleared whole holds.
        return len(sptes) * by_low_byte[sptes[0] & 0xFF]
    return low_bytes(sptes).translate(by_low_byte).count(1)


def count_leaves(sptes: Sequence[int], level: int) -> int:
    """How many of `sptes`, entries of a level-`level` table, are present leaves (is_last_spte)."""
    return count_where(sptes, PRESENT_BY_LOW_BYTE if level == PT_PAGE_TABLE_LEVEL else LARGE_LEAF_BY_LOW_BYTE)


def pages_per_hpage(level: int) -> int:
    """KVM_PAGES_PER_HPAGE: 4K pages one entry at `level` maps."""
    return 1 << (PT64_LEVEL_BITS * (level - 1))


def spte_index(gfn: int, level: int) -> int:
    """SHADOW_PT_INDEX: which of the 512 entries of a level-`level` table maps `gfn`."""
    return (gfn >> (PT64_LEVEL_BITS * (level - 1))) & (PT64_ENT_PER_PAGE - 1)


def level_name(level: int) -> str:
    return {1: "4K", 2: "2M", 3: "1G", 4: "512G"}[level]
