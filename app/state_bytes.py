"""What a run's states weigh in bytes, as the cache's byte budget (app.budget_bytes) is told: a live VM
state estimated from what it holds (`sim_weight`), a cursor (`shown_weight`) and a step record
(`record_weight`). Snapshots are counted exactly, by their length, where they are kept (app.cache)."""

from __future__ import annotations

from app.records import StepRecord
from app.replay import Shown
from engine.simulation import Simulation

# Bytes a live VM state takes (see sim_weight), fitted to tracemalloc's count of a thawed state on the
# built-in lessons and on slots of 256 Ki pages written, read and logged at 4K, 2M and 1G (and
# tests/test_memory_bound.py checks the estimate is never below the measure):
# - a shadow page: its list of 512 sptes and its bookkeeping; under 6.x every empty entry holds the
#   non-present value (suppress-#VE), an int of its own, so a table costs five times more;
# - a present leaf: the spte's int and its rmap entry; a vCPU's TLB entry (a tuple in a dict);
# - a guest page: its content word and its share of the slot's arrays, and more while its slot is logged;
# - the VM's fixed part (vCPUs, statistics, logs).
# Counting only a full table per shadow page and each guest page, as before, was 2.1-2.6 times low on
# states with many present 4K leaves mapped through the TLB.
LIVE_BYTES_PER_TABLE = 4_608
LIVE_BYTES_PER_TABLE_6X = 23_552
LIVE_BYTES_PER_LEAF = 160
LIVE_BYTES_PER_TLB_ENTRY = 384
LIVE_BYTES_PER_PAGE = 18
LIVE_BYTES_PER_LOGGED_PAGE = 20
LIVE_BYTES_BASE = 300_000


def sim_weight(sim: Simulation) -> int:
    """The size of a live VM state in bytes, estimated from its shadow pages, its present leaves (the
    statistics the choke point keeps), its TLB entries and its guest pages (see LIVE_BYTES_PER_TABLE).
    An estimate too high evicts runs that would have fit, and rebuilding them is what a busy server
    cannot afford; too low lets the caches outgrow their budget, so each constant is rounded up."""
    kvm = sim.kvm
    per_table = LIVE_BYTES_PER_TABLE_6X if kvm.era6 else LIVE_BYTES_PER_TABLE
    leaves = sum(kvm.stat.pages)
    tlb = sum(len(entries) for vcpu in kvm.vcpus for entries in vcpu.tlb.by_level)
    pages = logged = 0
    for slot in kvm.memslots:
        pages += slot.npages
        if slot.dirty_bitmap is not None:
            logged += slot.npages
    return (
        LIVE_BYTES_BASE
        + len(kvm.active_mmu_pages) * per_table
        + leaves * LIVE_BYTES_PER_LEAF
        + tlb * LIVE_BYTES_PER_TLB_ENTRY
        + pages * LIVE_BYTES_PER_PAGE
        + logged * LIVE_BYTES_PER_LOGGED_PAGE
    )


# A StepRecord's own bytes (a tuple of nine fields, its ints), and each gfn of a dirty log it keeps.
RECORD_BYTES = 200
RECORD_BYTES_PER_GFN = 40
# A cursor beside its live state: the traced step's result (its events capped) and, per spte the step
# wrote, its `touched` entry.
SHOWN_BYTES = 24_000
SHOWN_BYTES_PER_TOUCHED = 130


def record_weight(record: StepRecord) -> int:
    return RECORD_BYTES + (RECORD_BYTES_PER_GFN * len(record.dirty_log) if record.dirty_log else 0)


def shown_weight(shown: Shown) -> int:
    """A cursor's bytes: its live state and the step result it carries."""
    return sim_weight(shown.sim) + SHOWN_BYTES + SHOWN_BYTES_PER_TOUCHED * len(shown.touched)
