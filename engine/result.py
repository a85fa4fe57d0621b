"""The result object of contract section 4: what `sptelab run --json` prints and `POST /api/run` returns.

Built only from engine values; written with sorted keys, so the same scenario and policy give the same
bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

from engine.canonical import RawArray
from engine.collector import gc_paused
from engine.kvm import FaultRecord, Kvm
from engine.ops.registry import step_to_json
from engine.policy import variant_of
from engine.shadow_page import KvmMmuPage, kvm_mmu_page_get_gfn
from engine.simulation import Simulation, StepResult
from engine.spte import (
    PT64_BASE_ADDR_MASK,
    PT64_LEVEL_BITS,
    PT_PAGE_SIZE_MASK,
    PT_PAGE_TABLE_LEVEL,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    SpteMasks,
    is_last_spte,
    pages_per_hpage,
    spte_to_pfn,
)
from engine.tdp_iter import spte_to_child_sp
from engine.trace import event_json

RESULT_FORMAT = "sptelab-result"
RESULT_VERSION = 1


def fault_json(fault: FaultRecord) -> dict[str, object]:
    return {
        "vcpu": fault.vcpu,
        "gfn": fault.gfn,
        "write": fault.write,
        "error_code": fault.error_code,
        "path": fault.path,
        "fast_tried": fault.fast_tried,
        "fast_result": fault.fast_result,
        "level": fault.level,
    }


def step_json(step: StepResult) -> dict[str, object]:
    out: dict[str, object] = {
        "index": step.index,
        "op": step_to_json(step.op),
        "fault_counts": step.fault_counts,
        "marked_dirty": step.marked_dirty,
        "dirty_log": step.dirty_log,
        "tlb_flushes": step.tlb_flushes,
        "violations": [v.as_json() for v in step.violations],
    }
    if step.error is not None:
        out["error"] = step.error
    if step.faults is not None:
        out["faults"] = [fault_json(f) for f in step.faults]
    if step.spte_changes is not None:
        out["spte_changes"] = [
            {
                "level": c.level,
                "sp_gfn": c.sp_gfn,
                "index": c.index,
                "old": f"{c.old:#x}",
                "new": f"{c.new:#x}",
            }
            for c in step.spte_changes
        ]
    if step.events is not None:
        out["events"] = [event_json(e) for e in step.events]
    return out


# The bits of an spte that are not its address: all its decoded fields depend on.
FLAG_MASK = ~PT64_BASE_ADDR_MASK & ((1 << 64) - 1)


@functools.cache
def _decoded_bits(flag_bits: int, leaf: bool, masks: SpteMasks) -> dict[str, bool]:
    """The boolean fields of an spte, which depend only on its non-address bits, whether it is a leaf and
    the layout: computed once per combination, since a big final state repeats a handful of them."""
    return {
        "leaf": leaf,
        "large": bool(flag_bits & PT_PAGE_SIZE_MASK),
        "present": bool(flag_bits & PT_PRESENT_MASK),
        "writable": bool(flag_bits & PT_WRITABLE_MASK),
        "host_writable": bool(flag_bits & masks.host_writable_mask),
        "mmu_writable": bool(flag_bits & masks.mmu_writable_mask),
        "accessed": bool(flag_bits & masks.a_bit),
        "dirty": bool(flag_bits & masks.d_bit),
    }


def spte_json(
    level: int, sp_gfn: int, index: int, gfn: int, spte: int, masks: SpteMasks
) -> dict[str, object]:
    return {
        "level": level,
        "sp_gfn": sp_gfn,
        "index": index,
        "gfn": gfn,
        **_decoded_bits(spte & FLAG_MASK, is_last_spte(spte, level), masks),
        "pfn": spte_to_pfn(spte),
        "value": f"{spte:#x}",
    }


def _pages_in_order(kvm: Kvm) -> list[KvmMmuPage]:
    return sorted(kvm.active_mmu_pages.values(), key=lambda sp: (-sp.level, sp.gfn, sp.serial))


def present_sptes(kvm: Kvm) -> list[dict[str, object]]:
    """Every present spte of every shadow page, by (level descending, sp gfn, index). Under shadow
    paging a row also says the guest-virtual address it translates (`gva`), and its `gfn` is the one the
    guest PTE gave (an indirect page's `gfns`)."""
    if kvm.shadow:
        return _present_shadow_sptes(kvm)
    rows: list[dict[str, object]] = []
    masks = kvm.masks
    for sp in _pages_in_order(kvm):
        level, sp_gfn, step = sp.level, sp.gfn, pages_per_hpage(sp.level)
        rows.extend(
            spte_json(level, sp_gfn, index, sp_gfn + index * step, spte, masks)
            for index, spte in enumerate(sp.spt)
            if spte & PT_PRESENT_MASK
        )
    return rows


def _present_shadow_sptes(kvm: Kvm) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for sp in _pages_in_order(kvm):
        shift = 12 + PT64_LEVEL_BITS * (sp.level - 1)
        for index, spte in enumerate(sp.spt):
            if spte & PT_PRESENT_MASK:
                # A pointer's gfn is the guest table its child shadows (a direct child: its first gfn).
                leaf = is_last_spte(spte, sp.level)
                gfn = kvm_mmu_page_get_gfn(sp, index) if leaf else spte_to_child_sp(kvm, spte).gfn
                row = spte_json(sp.level, sp.gfn, index, gfn, spte, kvm.masks)
                row["gva"] = sp.gva + (index << shift)
                row["direct"] = sp.direct
                rows.append(row)
    return rows


def _present_shadow_sptes_text(kvm: Kvm, depth: int) -> Iterator[str]:
    """_present_shadow_sptes as canonical text, from row templates by (flags, leaf, role)."""
    masks = kvm.masks
    templates: dict[tuple[int, bool, bool], str] = {}
    for sp in _pages_in_order(kvm):
        shift = 12 + PT64_LEVEL_BITS * (sp.level - 1)
        level, sp_gfn, gva, direct = sp.level, sp.gfn, sp.gva, sp.direct
        for index, spte in enumerate(sp.spt):
            if not spte & PT_PRESENT_MASK:
                continue
            leaf = level == PT_PAGE_TABLE_LEVEL or bool(spte & PT_PAGE_SIZE_MASK)
            gfn = kvm_mmu_page_get_gfn(sp, index) if leaf else spte_to_child_sp(kvm, spte).gfn
            key = (spte & FLAG_MASK, leaf, direct)
            template = templates.get(key)
            if template is None:
                template = templates[key] = _spte_row_template(key[0], leaf, depth, masks, direct)
            pfn = (spte & PT64_BASE_ADDR_MASK) >> 12
            yield template % (gfn, gva + (index << shift), index, level, pfn, sp_gfn, hex(spte))


# The numbers of an spte row in the order of their sorted keys: what a row template's %s stand for.
_ROW_NUMBERS = ("gfn", "index", "level", "pfn", "sp_gfn", "value")


# Under shadow paging a row adds its guest-virtual address (a number) and its page's role (a flag).
_SHADOW_ROW_NUMBERS = ("gfn", "gva", "index", "level", "pfn", "sp_gfn", "value")


def _spte_row_template(
    flag_bits: int, leaf: bool, depth: int, masks: SpteMasks, direct: bool | None = None
) -> str:
    """The canonical text of an spte row at nesting `depth`, its flags filled in, its numbers left as
    %s placeholders in the order of _ROW_NUMBERS (with `direct`, a shadow row's: _SHADOW_ROW_NUMBERS)."""
    decoded = _decoded_bits(flag_bits, leaf, masks)
    fields = {name: "true" if value else "false" for name, value in decoded.items()}
    numbers: tuple[str, ...] = _ROW_NUMBERS
    if direct is not None:
        fields["direct"] = "true" if direct else "false"
        numbers = _SHADOW_ROW_NUMBERS
    fields.update({name: "%s" for name in numbers}, value='"%s"')
    if [name for name in sorted(fields) if "%s" in fields[name]] != list(numbers):
        raise AssertionError("an spte row gained a numeric field: update _ROW_NUMBERS")
    inner = "\n" + " " * (depth + 1)
    body = ",".join(f'{inner}"{name}": {fields[name]}' for name in sorted(fields))
    return "{" + body + "\n" + " " * depth + "}"


class _RowTemplates(dict[int, str]):
    """Row templates of one table level by the spte's non-address bits, built on first use: a big final
    state repeats a handful of flag combinations."""

    def __init__(self, table_level: bool, depth: int, masks: SpteMasks) -> None:
        super().__init__()
        self.table_level = table_level
        self.depth = depth
        self.masks = masks

    def __missing__(self, flag_bits: int) -> str:
        leaf = self.table_level or bool(flag_bits & PT_PAGE_SIZE_MASK)
        self[flag_bits] = template = _spte_row_template(flag_bits, leaf, self.depth, self.masks)
        return template


def present_sptes_text(kvm: Kvm, depth: int) -> Iterator[str]:
    """`present_sptes` as canonical text, row by row: what a big final state is written from, without
    holding a dict per spte."""
    if kvm.shadow:
        yield from _present_shadow_sptes_text(kvm, depth)
        return
    masks = kvm.masks
    by_level = {True: _RowTemplates(True, depth, masks), False: _RowTemplates(False, depth, masks)}
    for sp in _pages_in_order(kvm):
        level, sp_gfn, step = sp.level, sp.gfn, pages_per_hpage(sp.level)
        templates = by_level[level == PT_PAGE_TABLE_LEVEL]
        yield from [
            templates[spte & FLAG_MASK]
            % (sp_gfn + index * step, index, level, (spte & PT64_BASE_ADDR_MASK) >> 12, sp_gfn, hex(spte))
            for index, spte in enumerate(sp.spt)
            if spte & PT_PRESENT_MASK
        ]


def final_json(sim: Simulation, *, stream: bool = False) -> dict[str, object]:
    """The final state. With `stream`, the sptes are a RawArray that `engine.canonical` writes row by row."""
    kvm = sim.kvm
    ring = sim.policy.dirty_log_mode == "ring"
    out: dict[str, object] = {
        "sptes": RawArray(lambda depth: present_sptes_text(kvm, depth)) if stream else present_sptes(kvm),
        # With the dirty ring the kernel keeps no bitmap (the slot's bits are only the model's index).
        "dirty_bitmaps": {}
        if ring
        else {str(slot.id): slot.dirty_gfns() for slot in kvm.memslots if slot.dirty_bitmap is not None},
        "tlb": {
            str(vcpu.id): [
                {"gfn": e.gfn, "level": e.level, "writable": e.writable} for e in vcpu.tlb.entries()
            ]
            for vcpu in kvm.vcpus
        },
        "stats": kvm.stats(),
        "migration": sim.migration.as_json() if sim.migrated else None,
        "violations": [v.as_json() for v in sim.violations],
    }
    if ring:
        out["dirty_rings"] = dirty_rings_json(kvm)
    if any(vcpu.pml.entries for vcpu in kvm.vcpus):  # only ever with PML in use
        out["pml_buffers"] = pml_buffers_json(kvm)
    return out


def pml_buffers_json(kvm: Kvm) -> dict[str, list[int]]:
    """Each vCPU's PML buffer not yet flushed, oldest entry first, as gfns."""
    return {str(vcpu.id): list(vcpu.pml.entries) for vcpu in kvm.vcpus}


def dirty_rings_json(kvm: Kvm) -> dict[str, list[int]]:
    """Each vCPU's published entries not yet reset, oldest first, as gfns (repeats kept)."""
    by_id = kvm.memslots.by_id
    return {
        str(vcpu.id): [by_id[slot_id].base_gfn + offset for slot_id, offset in vcpu.dirty_ring.entries]
        for vcpu in kvm.vcpus
    }


def result_json(sim: Simulation, steps: Iterable[StepResult], *, stream: bool = False) -> dict[str, object]:
    """The result object. With `stream` it is meant for `engine.canonical.iterdumps` only: its final
    sptes are written as text when the object is, instead of being built as dicts first."""
    with gc_paused():  # a big final state is a million small objects: see engine.collector
        return _result_json(sim, steps, stream)


def _result_json(sim: Simulation, steps: Iterable[StepResult], stream: bool) -> dict[str, object]:
    return {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "variant": variant_of(sim.policy) or "custom",
        "policy": sim.policy.as_json(),
        "scenario": {"title": sim.scenario.title},
        "steps": [step_json(s) for s in steps],
        "final": final_json(sim, stream=stream),
    }
