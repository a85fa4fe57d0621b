"""Where each traced function lives in the kernel, and which tree it is quoted from: the trace panel
names the code that acted (`kernel_source`)."""

from __future__ import annotations

from engine.spte import ERA_3X, ERA_6X

# Which tree each preset's code comes from (engine/policy.py PRESET_DESCRIPTIONS): 3.14; caf6900f, on an
# early-2013 tree of the 3.9 cycle, reverted before v3.9; 3.16; upstream 6.13 and later.
KERNEL_VERSIONS = {"zap": "3.14", "lazy-buggy": "caf6900f, 3.9-era", "lazy": "3.16", "modern": "6.13+"}
# A run whose switches match no preset is named by its generation (policy.era).
ERA_VERSIONS = {ERA_3X: "3.14–3.16", ERA_6X: KERNEL_VERSIONS["modern"]}

_MMU = "arch/x86/kvm/mmu.c"
_KVM_MAIN = "virt/kvm/kvm_main.c"
_CPU = "the CPU (Intel SDM, EPT)"
# Under shadow paging the CPU walks KVM's shadow tables, taking them for the guest's own.
CPU_SHADOW = "the CPU (Intel SDM, on the shadow tables)"
_TMPL = "arch/x86/kvm/paging_tmpl.h"
_X86 = "arch/x86/kvm/x86.c"
KERNEL_SOURCES: dict[str, str] = {
    "guest_access": _CPU,
    "ept_ad_update": _CPU,
    "handle_ept_violation": "arch/x86/kvm/vmx.c",
    "tdp_page_fault": _MMU,
    "mapping_level": _MMU,
    "fast_page_fault": _MMU,
    "fast_pf_fix_direct_spte": _MMU,
    "gfn_to_pfn": f"{_KVM_MAIN} (hva_to_pfn)",
    "__direct_map": _MMU,
    "kvm_mmu_get_page": _MMU,
    "link_shadow_page": _MMU,
    "drop_large_spte": _MMU,
    "drop_parent_pte": _MMU,
    "mmu_set_spte": _MMU,
    "direct_pte_prefetch": _MMU,
    "mark_page_dirty": _KVM_MAIN,
    "drop_spte": _MMU,
    "spte_write_protect": _MMU,
    "__rmap_write_protect": _MMU,
    "__kvm_set_memory_region": _KVM_MAIN,
    "kvm_mmu_slot_remove_write_access": _MMU,
    "kvm_vm_ioctl_get_dirty_log": "arch/x86/kvm/x86.c",
    "kvm_mmu_write_protect_pt_masked": _MMU,
    "kvm_flush_remote_tlbs": _KVM_MAIN,
    "kvm_mmu_zap_all": _MMU,
    "kvm_mmu_prepare_zap_page": _MMU,
    "kvm_mmu_load": _MMU,
    "tdp_mmu_split_huge_page": "arch/x86/kvm/mmu/tdp_mmu.c",
    "kvm_mmu_slot_try_split_huge_pages": "arch/x86/kvm/mmu/mmu.c",
    "make_spte": "arch/x86/kvm/mmu/spte.c",
    "zap_collapsible_spte_range": "arch/x86/kvm/mmu/tdp_mmu.c",
    "kvm_mmu_zap_collapsible_sptes": "arch/x86/kvm/mmu/mmu.c",
    "tdp_mmu_make_huge_spte": "arch/x86/kvm/mmu/tdp_mmu.c",
    "kvm_mmu_recover_huge_pages": "arch/x86/kvm/mmu/mmu.c",
    "kvm_mmu_notifier_invalidate_range_start": f"{_KVM_MAIN} and {_MMU} (kvm_unmap_hva_range)",
    "mmu_notifier_retry": f"{_MMU} (tdp_page_fault)",
    "kvm_mmu_invalidate_zap_all_pages": _MMU,
    "mmu_free_roots": _MMU,
    "migrate_copy": "QEMU (userspace migration loop)",
    "migrate_verdict": "QEMU (userspace migration loop)",
    "kvm_vm_ioctl": _KVM_MAIN,
    "kvm_vm_ioctl_clear_dirty_log": _KVM_MAIN,
    "kvm_clear_dirty_log_protect": _KVM_MAIN,
    "kvm_arch_mmu_enable_log_dirty_pt_masked": "arch/x86/kvm/mmu/mmu.c",
    "kvm_dirty_ring_push": "virt/kvm/dirty_ring.c",
    "kvm_dirty_ring_check_request": "virt/kvm/dirty_ring.c",
    "dirty_ring_harvest": "QEMU (userspace, kvm_dirty_ring_reap)",
    "kvm_dirty_ring_reset": "virt/kvm/dirty_ring.c",
    "kvm_vm_ioctl_reset_dirty_pages": _KVM_MAIN,
    "pml_log": "the CPU (Intel SDM, page-modification logging)",
    "vmx_flush_pml_buffer": "arch/x86/kvm/vmx/vmx.c",
    "vmx_update_cpu_dirty_logging": "arch/x86/kvm/vmx/vmx.c",
    "kvm_mmu_slot_leaf_clear_dirty": "arch/x86/kvm/mmu/mmu.c",
    "kvm_mmu_clear_dirty_pt_masked": "arch/x86/kvm/mmu/mmu.c",
    # Shadow paging: paging_tmpl.h's FNAME()s as PTTYPE 64 names them, and the shadow half of mmu.c.
    "walk_addr_generic": f"{_TMPL} (FNAME(walk_addr_generic))",
    "paging64_page_fault": _TMPL,
    "paging64_fetch": _TMPL,
    "paging64_pte_prefetch": _TMPL,
    "inject_page_fault": f"{_X86} (kvm_inject_page_fault)",
    "account_shadowed": _MMU,
    "kvm_mmu_unsync_page": _MMU,
    "kvm_mmu_sync_page": _MMU,
    "validate_direct_spte": _MMU,
    "x86_emulate_instruction": _X86,
    "kvm_mmu_pte_write": _MMU,
    "kvm_set_cr3": _X86,
    "kvm_mmu_sync_roots": _MMU,
    "kvm_mmu_invlpg": f"{_MMU} and {_TMPL} (FNAME(invlpg))",
}

# The dirty-log modes after 3.16 (policy.dirty_log_mode): their functions are quoted from later trees.
LATER_DIRTY_LOG_EVENTS = frozenset(
    {
        "kvm_vm_ioctl",
        "kvm_vm_ioctl_clear_dirty_log",
        "kvm_clear_dirty_log_protect",
        "kvm_dirty_ring_push",
        "kvm_dirty_ring_check_request",
        "kvm_dirty_ring_reset",
        "kvm_vm_ioctl_reset_dirty_pages",
        "vmx_flush_pml_buffer",
        "vmx_update_cpu_dirty_logging",
    }
)
# Later functions that 6.13 no longer has: 6.12's zap-and-refault recovery (huge_page_recovery=
# zap_collapsible), replaced by kvm_mmu_recover_huge_pages in 6.13 (spec §5.7).
UNTIL_6_12 = frozenset({"zap_collapsible_spte_range", "kvm_mmu_zap_collapsible_sptes"})
# Where a 3.x source moved by 6.13: mmu.c and vmx.c into their directories, and what the file names.
_MOVED_IN_6X = (
    ("arch/x86/kvm/mmu.c", "arch/x86/kvm/mmu/mmu.c"),
    ("arch/x86/kvm/vmx.c", "arch/x86/kvm/vmx/vmx.c"),
    ("arch/x86/kvm/paging_tmpl.h", "arch/x86/kvm/mmu/paging_tmpl.h"),
)
SOURCES_6X: dict[str, str] = {
    "kvm_mmu_notifier_invalidate_range_start": (
        f"{_KVM_MAIN} and arch/x86/kvm/mmu/mmu.c (kvm_unmap_gfn_range)"
    ),
    "mmu_notifier_retry": "arch/x86/kvm/mmu/mmu.c (is_page_fault_stale)",
    "kvm_vm_ioctl_get_dirty_log": _KVM_MAIN,
}


def kernel_source(name: str, variant: str | None, era: str | None = None) -> str:
    """`arch/x86/kvm/mmu.c (3.16)`: the file, with the tree it is quoted from when it is kernel code.

    `variant` is the run's preset; a run whose switches match none (a what-if) is named by its generation,
    `era`. Under 6.13+ the file is where 6.13 has it. A function only later kernels have is quoted from
    6.13+ whatever the preset, except 6.12's recovery, which 6.13 replaced."""
    later = KERNEL_VERSIONS["modern"]
    version = KERNEL_VERSIONS.get(variant or "") or ERA_VERSIONS.get(era or "", ERA_VERSIONS[ERA_3X])
    where = KERNEL_SOURCES.get(name, "")
    if version == later:
        where = SOURCES_6X.get(name, where)
        for old, new in _MOVED_IN_6X:
            where = where.replace(old, new)
    if not where or not (where.startswith("arch/") or where.startswith("virt/")):
        return where
    if name in UNTIL_6_12:
        return f"{where} (up to 6.12)"
    if where.startswith("arch/x86/kvm/mmu/") or name in LATER_DIRTY_LOG_EVENTS:
        # the mmu/ directory, KVM_CLEAR_DIRTY_LOG and the dirty ring exist only in later kernels
        return f"{where} ({later})"
    return f"{where} ({version})"
