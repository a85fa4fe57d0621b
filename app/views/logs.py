"""Invariant violations, dirty rings, PML buffers and the migration's verdict."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple

from app.explain.meanings import INVARIANT_TEXT
from engine.invariants import Violation
from engine.simulation import Simulation

MAX_VIOLATIONS = 60


@dataclass(slots=True)
class ViolationView:
    step: int
    invariant: str
    gfn: int | None
    message: str
    explanation: str
    current: bool


def violation_views(violations: list[Violation], current: int | None) -> list[ViolationView]:
    """The latest violations (the header counts all of them). Each invariant's explanation is given once,
    at its latest occurrence, so a run that violates one rule thousands of times stays a short page."""
    shown = violations[-MAX_VIOLATIONS:]
    explained: set[str] = set()
    views: list[ViolationView] = []
    for v in reversed(shown):
        text = "" if v.invariant in explained else INVARIANT_TEXT.get(v.invariant, "")
        explained.add(v.invariant)
        views.append(ViolationView(v.step, v.invariant, v.gfn, v.message, text, v.step == current))
    views.reverse()
    return views


# Entries shown per vCPU ring: a ring holds up to DIRTY_RING_SIZE, and the page must not grow with it.
RING_ENTRIES_SHOWN = 64


class RingView(NamedTuple):
    """One vCPU's dirty ring: its published entries not yet reset, oldest first (the first few)."""

    vcpu: int
    entries: int
    gfns: list[int]
    soft_full: bool


def ring_views(sim: Simulation) -> list[RingView] | None:
    """The vCPUs' dirty rings, or None when the VM logs into bitmaps."""
    if sim.policy.dirty_log_mode != "ring":
        return None
    kvm = sim.kvm
    by_id = kvm.memslots.by_id
    return [
        RingView(
            vcpu.id,
            len(vcpu.dirty_ring),
            [by_id[s].base_gfn + off for s, off in islice(vcpu.dirty_ring.entries, RING_ENTRIES_SHOWN)],
            vcpu.dirty_ring.soft_full(),
        )
        for vcpu in kvm.vcpus
    ]


class PmlView(NamedTuple):
    """One vCPU's PML buffer: the pages the CPU logged and KVM has not flushed yet, oldest first."""

    vcpu: int
    entries: int
    gfns: list[int]


def pml_views(sim: Simulation) -> list[PmlView] | None:
    """The vCPUs' PML buffers, or None when dirty logging does not use PML (pml off, or EPT A/D off)."""
    kvm = sim.kvm
    if not kvm.cpu_dirty_log_size:
        return None
    return [PmlView(v.id, len(v.pml), v.pml.entries[:RING_ENTRIES_SHOWN]) for v in kvm.vcpus]


@dataclass(slots=True)
class MigrationView:
    running: bool
    finished: bool
    rounds: int
    pages_sent: int
    lost: list[int]


def migration_view(sim: Simulation) -> MigrationView | None:
    if not sim.migrated:
        return None
    mig = sim.migration
    return MigrationView(mig.running, mig.lost is not None, mig.rounds, mig.pages_sent, list(mig.lost or []))
