"""The switches that tell 3.14, caf6900f, 3.16 and today's kernel apart (spec section 8), and the named
presets.

A variant is a combination of switch values, never a code fork: the fault path and the write-protect paths
read these fields at exactly the places where the kernels differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Literal, get_args

# The values of each switch that is not a plain yes/no, as types: a comparison with a value a switch
# cannot take (a misspelling) is refused by the type checker (strict_equality), not silently false.
WpLarge = Literal["zap", "readonly"]
FastPfLevelGuard = Literal["none", "any_large", "large_if_dirty_logged"]
LastSpteCheck = Literal["requested_level", "sp_level"]
FlushRule = Literal["old_w", "old_hw_mw"]
SplitOnFault = Literal["drop", "split_in_place"]
HugePageRecovery = Literal["zap_collapsible", "in_place"]
FastPfDirtyGfn = Literal["sp_gfn", "fault_gfn"]
DirtyLogMode = Literal["bitmap", "manual_clear", "initially_set", "ring"]
Era = Literal["3.x", "6.x"]


class PolicyError(ValueError):
    """A preset or switch the engine does not know, or knows but does not implement yet."""


@dataclass(frozen=True, slots=True)
class Policy:
    # How spte_write_protect treats a writable large spte: 3.14 zaps it, caf6900f and 3.16 clear W.
    wp_large: WpLarge = "readonly"
    # Which sptes fast_page_fault refuses to make writable: the seed's `sp->role.level > 1` guard.
    fast_pf_level_guard: FastPfLevelGuard = "any_large"
    # Which level fast_page_fault's is_last_spte() is asked about: the requested one (3.14) or the sp's.
    last_spte_check: LastSpteCheck = "sp_level"
    # mmu_spte_update's flush rule: "W was set" (3.14) or "HW and MW were set" (3.16).
    flush_rule: FlushRule = "old_hw_mw"
    # Whether the write-protect flushes run after mmu_lock is dropped (198c74f4, in 3.16).
    flush_after_unlock: bool = True
    # Whether __direct_map drops a large spte met above the target level (404381c5).
    direct_map_drops_large: bool = True
    # What __direct_map does with a large leaf above the target level: drop it (404381c5) or, as the
    # modern TDP MMU does, split it in place into a full table with the same permissions.
    split_on_fault: SplitOnFault = "drop"
    # Whether enabling logging first splits every huge page of the slot (kvm.eager_page_split).
    eager_split: bool = False
    # Whether disabling logging brings huge pages back at once (3.14/3.16 leave the 4K tables alone).
    recover_on_disable: bool = False
    # How it does so: zap every table a huge page could replace so that the next fault maps it huge
    # (kvm_mmu_zap_collapsible_sptes, 4.1 to 6.12), or replace each such table by a huge leaf in place
    # (kvm_mmu_recover_huge_pages, 6.13 and later).
    huge_page_recovery: HugePageRecovery = "zap_collapsible"
    # Whether a read fault on a logged slot maps writable and marks the page dirty, as every TDP kernel does
    # when the host page is writable (set_spte / make_spte give ACC_ALL); false maps it read-only and marks
    # nothing, which no TDP kernel does (the shadow MMU does it for a read through a clean guest PTE).
    read_fault_marks_dirty: bool = True
    # Whether a 4K fault also maps its still-empty neighbours speculatively (direct_pte_prefetch, the
    # rmap-based MMU of every generation); the 6.x TDP MMU never prefetches.
    pte_prefetch: bool = True
    # Which gfn fast_pf_fix_direct_spte marks: the one the spte's position maps, the first of a huge
    # page's range (3.x), or the faulting one (fault->gfn, 6.x).
    fast_pf_dirty_gfn: FastPfDirtyGfn = "sp_gfn"
    dirty_log_mode: DirtyLogMode = "bitmap"
    # Intel PML: logging clears D on 4K leaves and the CPU logs stores, instead of write-protection faults.
    # Inert without EPT A/D bits (vm.ept_ad false), as the kernel then runs without PML.
    pml: bool = False
    # The kernel generation whose bookkeeping the model speaks: the spte layout (3.x: HW/MW at bits 10/11 and
    # 0 for a non-present spte; 6.x: MMU-present at bit 11, HW/MW at 57/58, suppress-#VE at 63 in every
    # spte), D on the sptes make_spte builds writable (6.x), the statistics (3.x `largepages` and a
    # `pf_fixed` of slow faults; 6.x `pages_4k/2m/1g`, `pf_taken`, `pf_fast`, `pf_spurious` and a
    # `pf_fixed` of every fixed fault), what the fast path does with a non-present spte (3.x: let the
    # guest retry; 6.x: take the slow path), the levels PML's enable pass clears D on (3.x rmaps: 4K; 6.x
    # TDP MMU: every leaf), and the memslot zap (3.x: kvm_mmu_invalidate_zap_all_pages).
    era: Era = "3.x"

    def as_json(self) -> dict[str, str | bool]:
        return dict(asdict(self))


# Every value each switch may take, in the spec's spelling.
SWITCH_VALUES: dict[str, tuple[str | bool, ...]] = {
    "wp_large": get_args(WpLarge),
    "fast_pf_level_guard": get_args(FastPfLevelGuard),
    "last_spte_check": get_args(LastSpteCheck),
    "flush_rule": get_args(FlushRule),
    "flush_after_unlock": (False, True),
    "direct_map_drops_large": (False, True),
    "split_on_fault": get_args(SplitOnFault),
    "eager_split": (False, True),
    "recover_on_disable": (False, True),
    "huge_page_recovery": get_args(HugePageRecovery),
    "read_fault_marks_dirty": (False, True),
    "pte_prefetch": (False, True),
    "fast_pf_dirty_gfn": get_args(FastPfDirtyGfn),
    "dirty_log_mode": get_args(DirtyLogMode),
    "pml": (False, True),
    "era": get_args(Era),
}

# Values the spec defines for later kernels that this engine does not model yet. Refusing them loudly is
# the point: a what-if that silently behaved like 3.16 would teach the wrong thing.
NOT_IMPLEMENTED: dict[tuple[str, str | bool], str] = {}

PRESETS: dict[str, Policy] = {
    "zap": Policy(
        wp_large="zap",
        fast_pf_level_guard="none",
        last_spte_check="requested_level",
        flush_rule="old_w",
        flush_after_unlock=False,
    ),
    "lazy-buggy": Policy(
        wp_large="readonly",
        fast_pf_level_guard="none",
        last_spte_check="requested_level",
        flush_rule="old_w",
        flush_after_unlock=False,
    ),
    "lazy": Policy(),
    "modern": Policy(
        wp_large="readonly",
        fast_pf_level_guard="large_if_dirty_logged",
        last_spte_check="sp_level",
        flush_rule="old_hw_mw",
        flush_after_unlock=True,
        direct_map_drops_large=True,
        split_on_fault="split_in_place",
        eager_split=True,
        recover_on_disable=True,
        huge_page_recovery="in_place",
        read_fault_marks_dirty=True,
        pte_prefetch=False,
        fast_pf_dirty_gfn="fault_gfn",
        dirty_log_mode="bitmap",
        pml=False,
        era="6.x",
    ),
}

# The kernel each preset stands for, in few words: how each description below begins.
PRESET_KERNELS: dict[str, str] = {
    "zap": "Linux 3.14 (as 3.8 to 3.15), before the patch",
    "lazy-buggy": "the first attempt, caf6900f (early 2013, a 3.9-era tree; reverted before v3.9)",
    "lazy": "Linux 3.16.0, the patch (c126d94f) and its series",
    "modern": "upstream Linux 6.13 and later, the TDP MMU on an Intel EPT host",
}

PRESET_DESCRIPTIONS: dict[str, str] = {
    "zap": f"{PRESET_KERNELS['zap']}: write-protecting a large spte zaps it",
    "lazy-buggy": f"{PRESET_KERNELS['lazy-buggy']}: large sptes made read-only, no fast-path level guard",
    "lazy": f"{PRESET_KERNELS['lazy']}: large sptes made read-only, never made writable by the fast path",
    "modern": f"{PRESET_KERNELS['modern']} with A/D bits"
    " (kvm.tdp_mmu=Y, kvm.eager_page_split=Y, no PML, plain KVM_GET_DIRTY_LOG): huge pages split"
    " eagerly when logging starts and in place on a fault, recovered in place when it stops; a read"
    " fault on a logged page maps it writable and dirty and logs it; no prefetch; the fast path's"
    " large-page guard only while logging, marking the faulting gfn; 6.x spte layout and statistics."
    " Modelled on the rmap-based MMU's structure: not the TDP MMU's lockless, RCU-protected tables"
    " (which keep no rmaps), nor NX huge pages. Manual clear, the dirty ring and Intel PML are opt-in"
    " switches; 6.12's zap-and-refault recovery is huge_page_recovery=zap_collapsible",
}

DEFAULT_PRESET = "lazy"

# Under shadow paging (vm.mmu "shadow") KVM runs the rmap-based MMU whatever the generation: the 6.x TDP
# MMU needs EPT/NPT. Its switches take the legacy MMU's values there, whatever the policy says, and the
# page says so, with the reason.
SHADOW_HOST_VALUES: dict[str, tuple[str | bool, str]] = {
    "split_on_fault": (
        "drop",
        "the shadow MMU drops a huge spte in the way of a smaller mapping (FNAME(fetch), __direct_map);"
        " splitting in place is the TDP MMU's",
    ),
    "eager_split": (
        False,
        "eager page splitting is the TDP MMU's (the rmap-based MMU splits only a nested guest's pages):"
        " huge sptes are write-protected, and dropped at the first write",
    ),
    "huge_page_recovery": (
        "zap_collapsible",
        "the rmap-based MMU brings huge pages back by zapping the 4K sptes of direct pages; in-place"
        " recovery is the TDP MMU's",
    ),
    "pte_prefetch": (
        True,
        "the shadow MMU always maps a fault's neighbours ahead (FNAME(pte_prefetch)); only the TDP MMU never"
        " does",
    ),
    "pml": (False, "PML logs the guest-physical addresses of an EPT walk: shadow paging has no EPT"),
}

# And for a guest with paging on, these switches act on code its faults never reach.
SHADOW_PAGING_INERT: dict[str, str] = {
    "fast_pf_level_guard": "the lockless fast path runs only for direct MMUs, never for a paging guest",
    "last_spte_check": "the lockless fast path runs only for direct MMUs, never for a paging guest",
    "fast_pf_dirty_gfn": "the lockless fast path runs only for direct MMUs, never for a paging guest",
    "direct_map_drops_large": "FNAME(fetch) has dropped huge sptes in both its loops since 3.8; 404381c5"
    " changed only __direct_map",
    "read_fault_marks_dirty": "a read is logged iff the guest PTE is dirty and the host page writable"
    " (FNAME(protect_clean_gpte))",
}


def for_shadow_host(policy: Policy) -> Policy:
    """The policy as the rmap-based MMU of a shadow-paging host runs it (SHADOW_HOST_VALUES)."""
    return replace(policy, **{name: value for name, (value, _) in SHADOW_HOST_VALUES.items()})  # type: ignore[arg-type]


def inert_under_shadow(policy: Policy, guest_paging: bool) -> dict[str, str]:
    """The switches that do nothing under shadow paging, each with why: those the policy sets otherwise
    than the shadow MMU runs (SHADOW_HOST_VALUES), and for a paging guest SHADOW_PAGING_INERT."""
    out = {
        name: reason
        for name, (value, reason) in SHADOW_HOST_VALUES.items()
        if getattr(policy, name) != value
    }
    if guest_paging:
        out.update(SHADOW_PAGING_INERT)
    return out


def _parse_value(name: str, raw: str | bool) -> str | bool:
    allowed = SWITCH_VALUES[name]
    if isinstance(allowed[0], bool):
        if isinstance(raw, bool):
            return raw
        lowered = raw.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
    elif isinstance(raw, str) and raw.strip().lower() in allowed:
        return raw.strip().lower()
    shown = ", ".join(str(v).lower() for v in allowed)
    raise PolicyError(f"switch {name}: unknown value {raw!r} (known: {shown})")


def make_policy(variant: str = DEFAULT_PRESET, overrides: Mapping[str, str | bool] | None = None) -> Policy:
    """The preset named `variant` with `overrides` applied on top, each checked by name and value."""
    if variant not in PRESETS:
        raise PolicyError(f"unknown variant {variant!r} (known: {', '.join(PRESETS)})")
    policy = PRESETS[variant]
    changes: dict[str, str | bool] = {}
    for name, raw in (overrides or {}).items():
        if name not in SWITCH_VALUES:
            raise PolicyError(f"unknown policy switch {name!r} (known: {', '.join(SWITCH_VALUES)})")
        if not isinstance(raw, str | bool):
            raise PolicyError(f"switch {name}: value must be a string or a boolean")
        value = _parse_value(name, raw)
        if (name, value) in NOT_IMPLEMENTED:
            what = NOT_IMPLEMENTED[(name, value)]
            raise PolicyError(
                f"switch {name}={str(value).lower()} ({what}) is not implemented by this engine yet"
            )
        changes[name] = value
    return replace(policy, **changes)  # type: ignore[arg-type]


def parse_policy_args(args: list[str]) -> dict[str, str]:
    """`K=V` strings from the command line into overrides; a malformed one, or a switch given twice, is
    refused by name.

    Each string may also hold several pairs separated by commas, `K=V,K=V`, as the web's `policy=`
    parameter does, so a setting copied from a link works on the command line; `--policy a=1,b=2` means
    `--policy a=1 --policy b=2`, and a switch named twice across both forms is still refused."""
    out: dict[str, str] = {}
    for arg in args:
        items = [item for item in arg.split(",") if item.strip()]
        if not items:
            raise PolicyError(f"--policy {arg!r}: expected SWITCH=VALUE, e.g. wp_large=zap")
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise PolicyError(
                    f"--policy {arg!r}: expected SWITCH=VALUE, or several separated by commas,"
                    " e.g. wp_large=zap"
                )
            name = name.strip()
            if name in out:
                raise PolicyError(
                    f"--policy {arg!r}: the switch {name!r} is given twice; give each switch once"
                )
            out[name] = value.strip()
    return out


def variant_of(policy: Policy) -> str | None:
    """The preset whose switches equal `policy`, if any."""
    for name, preset in PRESETS.items():
        if preset == policy:
            return name
    return None
