"""The trace panel's source column (app.explain.kernel_files): the file each event's function lives in,
and the tree it is quoted from, named as the preset's kernel is named (engine/policy.py PRESET_DESCRIPTIONS):
3.14, caf6900f's 3.9-era tree, 3.16, and upstream 6.13 and later for `modern` (kvm-mmu.md §5.7).
"""

from __future__ import annotations

import pytest
from conftest import PRESET_NAMES

from app.explain.kernel_files import KERNEL_VERSIONS, kernel_source

TREES = {"zap": "3.14", "lazy-buggy": "caf6900f, 3.9-era", "lazy": "3.16", "modern": "6.13+"}


def test_each_preset_names_its_own_tree() -> None:
    assert KERNEL_VERSIONS == TREES
    assert set(KERNEL_VERSIONS) == set(PRESET_NAMES)


@pytest.mark.parametrize(
    ("name", "variant", "era", "source"),
    [
        # 3.x: mmu.c and vmx.c at the top of arch/x86/kvm.
        ("fast_page_fault", "lazy", None, "arch/x86/kvm/mmu.c (3.16)"),
        ("fast_page_fault", "lazy-buggy", None, "arch/x86/kvm/mmu.c (caf6900f, 3.9-era)"),
        ("handle_ept_violation", "zap", None, "arch/x86/kvm/vmx.c (3.14)"),
        # 6.13+: the same functions' files where 6.13 has them.
        ("fast_page_fault", "modern", None, "arch/x86/kvm/mmu/mmu.c (6.13+)"),
        ("handle_ept_violation", "modern", None, "arch/x86/kvm/vmx/vmx.c (6.13+)"),
        ("kvm_vm_ioctl_get_dirty_log", "modern", None, "virt/kvm/kvm_main.c (6.13+)"),
        # A what-if matches no preset: its generation names the tree.
        ("fast_page_fault", None, "6.x", "arch/x86/kvm/mmu/mmu.c (6.13+)"),
        ("fast_page_fault", None, "3.x", "arch/x86/kvm/mmu.c (3.14–3.16)"),
        ("fast_page_fault", None, None, "arch/x86/kvm/mmu.c (3.14–3.16)"),
        # The mmu notifier is in every kernel (§5.8), under each one's own name for the unmap.
        (
            "kvm_mmu_notifier_invalidate_range_start",
            "lazy",
            None,
            "virt/kvm/kvm_main.c and arch/x86/kvm/mmu.c (kvm_unmap_hva_range) (3.16)",
        ),
        (
            "kvm_mmu_notifier_invalidate_range_start",
            "modern",
            None,
            "virt/kvm/kvm_main.c and arch/x86/kvm/mmu/mmu.c (kvm_unmap_gfn_range) (6.13+)",
        ),
        # A later kernel's function is quoted from 6.13+ whatever the preset (a what-if switch on 3.x)...
        ("kvm_mmu_recover_huge_pages", "lazy", None, "arch/x86/kvm/mmu/mmu.c (6.13+)"),
        ("tdp_mmu_split_huge_page", "zap", None, "arch/x86/kvm/mmu/tdp_mmu.c (6.13+)"),
        ("kvm_dirty_ring_push", "lazy", None, "virt/kvm/dirty_ring.c (6.13+)"),
        # ... except 6.12's zap-and-refault recovery, which 6.13 replaced (§5.7).
        ("kvm_mmu_zap_collapsible_sptes", "modern", None, "arch/x86/kvm/mmu/mmu.c (up to 6.12)"),
        ("zap_collapsible_spte_range", "lazy", None, "arch/x86/kvm/mmu/tdp_mmu.c (up to 6.12)"),
        # Not kernel code: no tree.
        ("migrate_copy", "modern", None, "QEMU (userspace migration loop)"),
    ],
)
def test_kernel_source(name: str, variant: str | None, era: str | None, source: str) -> None:
    assert kernel_source(name, variant, era) == source
