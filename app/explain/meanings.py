"""What each invariant and each spte bit means, for the log panel and the inspector."""

from __future__ import annotations

from engine.spte import (
    DEFAULT_SPTE_HOST_WRITABLE,
    DEFAULT_SPTE_MMU_WRITABLE,
    EPT_SPTE_HOST_WRITABLE,
    EPT_SPTE_MMU_WRITABLE,
    ERA_6X,
    PT64_NX_MASK,
    PT_ACCESSED_MASK,
    PT_DIRTY_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_USER_MASK,
    PT_WRITABLE_MASK,
    SPTE_HOST_WRITEABLE,
    SPTE_MMU_PRESENT_MASK,
    SPTE_MMU_WRITEABLE,
    SPTE_TDP_AD_DISABLED,
    VMX_EPT_ACCESS_BIT,
    VMX_EPT_DIRTY_BIT,
    VMX_EPT_EXECUTABLE_MASK,
    VMX_EPT_IPAT_BIT,
    VMX_EPT_SUPPRESS_VE_BIT,
    SpteMasks,
)

# --- the invariants ---------------------------------------------------------------------------------------

INVARIANT_TEXT: dict[str, str] = {
    "rmap_consistency": "Every present leaf spte must be in exactly one rmap, the one of its level and gfn,"
    " and nothing else may be.",
    "w_implies_hw_mw": "A writable spte must have both software bits, HW and MW.",
    "lpages_count": "The large-page statistics must count the present large leaf sptes: 6.x pages_2m and"
    " pages_1g exactly, 3.x largepages too, but for the large sptes 3.14/3.16's mmu-notifier path dropped"
    " without counting them down.",
    "no_writable_large_while_logging": "While a slot is dirty-logged no large spte may be writable: stores"
    " anywhere in its range take no fault and set no dirty bit.",
    "writable_implies_dirty_bit": "While a slot is logged, a writable 4K spte must have its page's dirty bit"
    " set, or stores to it go unreported. With PML only a writable spte with D set needs it (or its page"
    " waiting in a PML buffer): a store that sets D is logged by the CPU.",
    "tlb_more_permissive_than_spte": "At a step boundary no TLB entry may allow more than its spte does: a"
    " flush is missing.",
    "written_not_logged": "A store to a logged page that no GET_DIRTY_LOG reported: a migration would lose"
    " it.",
    "fault_livelock": "An access faulted again and again without progress: the guest would hang.",
}

# What each spte bit means, for the inspector: (bits, name, meaning, mask). The mask is the bit to read,
# or None for a field the inspector reads on its own (memory type, pfn). 3.x (spec section 1.1):
_COMMON_LOW_BITS: list[tuple[str, str, str, int | None]] = [
    ("0", "R", "readable; KVM treats it as present", PT_PRESENT_MASK),
    ("1", "W", "writable: a store through it needs no exit", PT_WRITABLE_MASK),
    ("2", "X", "executable", VMX_EPT_EXECUTABLE_MASK),
    ("3–5", "MT", "EPT memory type (6 = write-back)", None),
    ("6", "IPAT", "ignore the guest's PAT memory type", VMX_EPT_IPAT_BIT),
    ("7", "PS", "page size: this leaf maps 2M (level 2) or 1G (level 3) at once", PT_PAGE_SIZE_MASK),
    ("8", "A", "accessed: the CPU set it on a walk (EPT A/D bits)", VMX_EPT_ACCESS_BIT),
    ("9", "D", "dirty: the CPU set it on a store", VMX_EPT_DIRTY_BIT),
]
_HW = "host writable: the host page was writable when the spte was built"
_MW = "MMU writable: KVM's MMU allows writes; with HW, the fast path may set W again locklessly"
_PFN = ("12–51", "pfn", "host page frame (leaf) or the child table's page (non-leaf)", None)
BIT_MEANINGS_3X: list[tuple[str, str, str, int | None]] = [
    *_COMMON_LOW_BITS,
    ("10", "HW", _HW, SPTE_HOST_WRITEABLE),
    ("11", "MW", _MW, SPTE_MMU_WRITEABLE),
    _PFN,
]
# 6.x (mmu/spte.h): the software bits moved up, and two bits every present spte carries were added.
BIT_MEANINGS_6X: list[tuple[str, str, str, int | None]] = [
    *_COMMON_LOW_BITS,
    ("11", "MMU-present", "set in every present spte, whatever its permissions (SPTE_MMU_PRESENT_MASK)",
     SPTE_MMU_PRESENT_MASK),
    _PFN,
    ("52", "AD-disabled", "A/D bits disabled: set in every spte when EPT A/D bits are off",
     SPTE_TDP_AD_DISABLED),
    ("57", "HW", _HW, EPT_SPTE_HOST_WRITABLE),
    ("58", "MW", _MW, EPT_SPTE_MMU_WRITABLE),
    ("63", "SVE", "suppress #VE: set in every spte, present or not; a non-present spte is this bit alone",
     VMX_EPT_SUPPRESS_VE_BIT),
]


# Shadow paging: the spte is an x86 PTE (mmu.h's PT_*_MASK), no memory type, no separate R bit; the
# software bits sit where each generation put them (SpteMasks.for_shadow).
_SHADOW_LOW_BITS: list[tuple[str, str, str, int | None]] = [
    ("0", "P", "present, and so readable: an x86 PTE has no separate R bit", PT_PRESENT_MASK),
    ("1", "W", "writable: a store through it needs no exit", PT_WRITABLE_MASK),
    ("2", "U", "user: what the guest's U/S bits allow, ANDed down its walk", PT_USER_MASK),
    ("5", "A", "accessed: the CPU set it on a walk of the shadow tables", PT_ACCESSED_MASK),
    ("6", "D", "dirty: the CPU set it on a store", PT_DIRTY_MASK),
    ("7", "PS", "page size: this leaf maps 2M (level 2) or 1G (level 3) at once", PT_PAGE_SIZE_MASK),
]
_NX = ("63", "NX", "no execute: the guest's NX (with EFER.NX on) taken into the spte", PT64_NX_MASK)
BIT_MEANINGS_SHADOW_3X: list[tuple[str, str, str, int | None]] = [
    *_SHADOW_LOW_BITS,
    ("10", "HW", _HW, SPTE_HOST_WRITEABLE),
    ("11", "MW", _MW, SPTE_MMU_WRITEABLE),
    _PFN,
    _NX,
]
BIT_MEANINGS_SHADOW_6X: list[tuple[str, str, str, int | None]] = [
    *_SHADOW_LOW_BITS,
    ("9", "HW", _HW, DEFAULT_SPTE_HOST_WRITABLE),
    ("10", "MW", _MW, DEFAULT_SPTE_MMU_WRITABLE),
    ("11", "MMU-present", "set in every present spte, whatever its permissions (SPTE_MMU_PRESENT_MASK)",
     SPTE_MMU_PRESENT_MASK),
    _PFN,
    _NX,
]


def bit_meanings(masks: SpteMasks) -> list[tuple[str, str, str, int | None]]:
    """The inspector's rows for the layout of the run's kernel generation, lowest bit first: EPT's, or
    the x86 PTE format of a shadow MMU (a host without EPT, also a guest with paging off there)."""
    if masks.shadow:
        return BIT_MEANINGS_SHADOW_6X if masks.era == ERA_6X else BIT_MEANINGS_SHADOW_3X
    return BIT_MEANINGS_6X if masks.era == ERA_6X else BIT_MEANINGS_3X
