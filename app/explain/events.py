"""One sentence per trace event: `EXPLAINERS` maps each event's name to its function (app.explain.fault_path,
app.explain.dirty_logging), and `explain` answers for any event, naming the ones it does not know yet."""

from __future__ import annotations

from collections.abc import Callable

from app.explain import shadow_paging
from app.explain.context import Context, Event
from app.explain.dirty_logging import (
    dirty_ring_harvest,
    kvm_arch_mmu_enable_log_dirty_pt_masked,
    kvm_clear_dirty_log_protect,
    kvm_dirty_ring_check_request,
    kvm_dirty_ring_push,
    kvm_dirty_ring_reset,
    kvm_flush_remote_tlbs,
    kvm_mmu_clear_dirty_pt_masked,
    kvm_mmu_invalidate_zap_all_pages,
    kvm_mmu_load,
    kvm_mmu_notifier_invalidate_range_start,
    kvm_mmu_prepare_zap_page,
    kvm_mmu_recover_huge_pages,
    kvm_mmu_slot_leaf_clear_dirty,
    kvm_mmu_slot_remove_write_access,
    kvm_mmu_slot_try_split_huge_pages,
    kvm_mmu_write_protect_pt_masked,
    kvm_mmu_zap_all,
    kvm_mmu_zap_collapsible_sptes,
    kvm_set_memory_region,
    kvm_vm_ioctl,
    kvm_vm_ioctl_clear_dirty_log,
    kvm_vm_ioctl_get_dirty_log,
    kvm_vm_ioctl_reset_dirty_pages,
    make_spte,
    migrate_copy,
    migrate_verdict,
    mmu_free_roots,
    mmu_notifier_retry,
    pml_log,
    rmap_write_protect,
    spte_write_protect,
    tdp_mmu_make_huge_spte,
    tdp_mmu_split_huge_page,
    vmx_flush_pml_buffer,
    vmx_update_cpu_dirty_logging,
    zap_collapsible_spte_range,
)
from app.explain.fault_path import (
    direct_map,
    direct_pte_prefetch,
    drop_large_spte,
    drop_parent_pte,
    drop_spte,
    ept_ad_update,
    fast_page_fault,
    fast_pf_fix_direct_spte,
    gfn_to_pfn,
    guest_access,
    handle_ept_violation,
    kvm_mmu_get_page,
    link_shadow_page,
    mapping_level,
    mark_page_dirty,
    mmu_set_spte,
    tdp_page_fault,
)


def _guest_access(ev: Event, ctx: Context) -> str:
    """The CPU's access: by gva under shadow paging, by gfn under TDP."""
    return shadow_paging.shadow_guest_access(ev, ctx) if "gva" in ev else guest_access(ev, ctx)


def _get_page(ev: Event, ctx: Context) -> str:
    """kvm_mmu_get_page: the shadow MMU's carries the role (direct, access) and the gva it covers."""
    return shadow_paging.shadow_get_page(ev, ctx) if "direct" in ev else kvm_mmu_get_page(ev, ctx)


def _zap_collapsible(ev: Event, ctx: Context) -> str:
    """Huge page recovery: over the TDP tables, or over the rmaps of the shadow MMU."""
    if ctx.masks.shadow:
        return shadow_paging.kvm_mmu_zap_collapsible_sptes_rmap(ev, ctx)
    return kvm_mmu_zap_collapsible_sptes(ev, ctx)


EXPLAINERS: dict[str, Callable[[Event, Context], str]] = {
    "tdp_mmu_make_huge_spte": tdp_mmu_make_huge_spte,
    "kvm_mmu_recover_huge_pages": kvm_mmu_recover_huge_pages,
    "kvm_mmu_notifier_invalidate_range_start": kvm_mmu_notifier_invalidate_range_start,
    "mmu_notifier_retry": mmu_notifier_retry,
    "kvm_mmu_invalidate_zap_all_pages": kvm_mmu_invalidate_zap_all_pages,
    "mmu_free_roots": mmu_free_roots,
    "guest_access": _guest_access,
    "ept_ad_update": ept_ad_update,
    "handle_ept_violation": handle_ept_violation,
    "tdp_page_fault": tdp_page_fault,
    "mapping_level": mapping_level,
    "fast_page_fault": fast_page_fault,
    "fast_pf_fix_direct_spte": fast_pf_fix_direct_spte,
    "gfn_to_pfn": gfn_to_pfn,
    "__direct_map": direct_map,
    "kvm_mmu_get_page": _get_page,
    "link_shadow_page": link_shadow_page,
    "drop_large_spte": drop_large_spte,
    "drop_parent_pte": drop_parent_pte,
    "mmu_set_spte": mmu_set_spte,
    "direct_pte_prefetch": direct_pte_prefetch,
    "mark_page_dirty": mark_page_dirty,
    "drop_spte": drop_spte,
    "spte_write_protect": spte_write_protect,
    "__rmap_write_protect": rmap_write_protect,
    "__kvm_set_memory_region": kvm_set_memory_region,
    "kvm_mmu_slot_remove_write_access": kvm_mmu_slot_remove_write_access,
    "kvm_vm_ioctl_get_dirty_log": kvm_vm_ioctl_get_dirty_log,
    "kvm_mmu_write_protect_pt_masked": kvm_mmu_write_protect_pt_masked,
    "kvm_flush_remote_tlbs": kvm_flush_remote_tlbs,
    "kvm_mmu_zap_all": kvm_mmu_zap_all,
    "kvm_mmu_prepare_zap_page": kvm_mmu_prepare_zap_page,
    "kvm_mmu_load": kvm_mmu_load,
    "tdp_mmu_split_huge_page": tdp_mmu_split_huge_page,
    "kvm_mmu_slot_try_split_huge_pages": kvm_mmu_slot_try_split_huge_pages,
    "make_spte": make_spte,
    "zap_collapsible_spte_range": zap_collapsible_spte_range,
    "kvm_mmu_zap_collapsible_sptes": _zap_collapsible,
    "migrate_copy": migrate_copy,
    "migrate_verdict": migrate_verdict,
    "kvm_vm_ioctl": kvm_vm_ioctl,
    "kvm_vm_ioctl_clear_dirty_log": kvm_vm_ioctl_clear_dirty_log,
    "kvm_clear_dirty_log_protect": kvm_clear_dirty_log_protect,
    "kvm_arch_mmu_enable_log_dirty_pt_masked": kvm_arch_mmu_enable_log_dirty_pt_masked,
    "kvm_dirty_ring_push": kvm_dirty_ring_push,
    "kvm_dirty_ring_check_request": kvm_dirty_ring_check_request,
    "dirty_ring_harvest": dirty_ring_harvest,
    "kvm_dirty_ring_reset": kvm_dirty_ring_reset,
    "kvm_vm_ioctl_reset_dirty_pages": kvm_vm_ioctl_reset_dirty_pages,
    "pml_log": pml_log,
    "vmx_flush_pml_buffer": vmx_flush_pml_buffer,
    "vmx_update_cpu_dirty_logging": vmx_update_cpu_dirty_logging,
    "kvm_mmu_slot_leaf_clear_dirty": kvm_mmu_slot_leaf_clear_dirty,
    "kvm_mmu_clear_dirty_pt_masked": kvm_mmu_clear_dirty_pt_masked,
    # Shadow paging (app.explain.shadow_paging).
    "walk_addr_generic": shadow_paging.walk_addr_generic,
    "paging64_page_fault": shadow_paging.paging64_page_fault,
    "inject_page_fault": shadow_paging.inject_page_fault,
    "paging64_fetch": shadow_paging.paging64_fetch,
    "account_shadowed": shadow_paging.account_shadowed,
    "kvm_mmu_unsync_page": shadow_paging.kvm_mmu_unsync_page,
    "kvm_mmu_sync_page": shadow_paging.kvm_mmu_sync_page,
    "paging64_pte_prefetch": shadow_paging.paging64_pte_prefetch,
    "validate_direct_spte": shadow_paging.validate_direct_spte,
    "x86_emulate_instruction": shadow_paging.x86_emulate_instruction,
    "kvm_mmu_pte_write": shadow_paging.kvm_mmu_pte_write,
    "kvm_set_cr3": shadow_paging.kvm_set_cr3,
    "kvm_mmu_sync_roots": shadow_paging.kvm_mmu_sync_roots,
    "kvm_mmu_invlpg": shadow_paging.kvm_mmu_invlpg,
}


def explain(ev: Event, ctx: Context) -> str:
    """One sentence for `ev`; an event this module does not know yet is named, not guessed at."""
    explainer = EXPLAINERS.get(str(ev.get("name")))
    if explainer is None:
        return f"{ev.get('name')} acted."
    return explainer(ev, ctx)
