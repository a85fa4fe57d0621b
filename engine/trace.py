"""Trace events: typed values named after the 3.14/3.16 kernel functions and tracepoints that act.

`mmutrace.h` makes tracepoints a schema; so does this module. Each event is a frozen dataclass whose
`name` is the kernel function (or tracepoint) it stands for. Fields named like spte values are written in
hex by `event_json`, everything else as plain JSON. The events of the passes over whole tables (huge page
splitting and recovery, the memslot zap of obsolete generations) and of the mmu notifiers are in
engine/trace_tables.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import wraps
from inspect import Parameter, signature
from typing import ClassVar, Concatenate, ParamSpec, Protocol, TypeVar, cast

_HEX_FIELDS = frozenset({"old", "new", "spte", "child"})


@dataclass(frozen=True, slots=True)
class Event:
    name: ClassVar[str] = "event"


def event_json(event: Event) -> dict[str, object]:
    out: dict[str, object] = {"name": event.name}
    for f in fields(event):
        value = getattr(event, f.name)
        if f.name in _HEX_FIELDS and isinstance(value, int):
            value = f"{value:#x}"
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


# --- the guest and the CPU ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuestAccess(Event):
    """One guest load or store, and how the CPU satisfied it: from the TLB, by a walk, or after faults."""

    name: ClassVar[str] = "guest_access"
    vcpu: int
    gfn: int
    write: bool
    via: str  # "tlb" | "walk" | "fault" | "livelock"
    faults: int = 0


@dataclass(frozen=True, slots=True)
class EptAdUpdate(Event):
    """The CPU sets the EPT accessed (and, for a store, dirty) flag of an entry it walked."""

    name: ClassVar[str] = "ept_ad_update"
    vcpu: int
    level: int
    sp_gfn: int
    index: int
    old: int
    new: int


@dataclass(frozen=True, slots=True)
class HandleEptViolation(Event):
    """vmx.c turns the exit qualification into page-fault error bits (PRESENT = translation readable)."""

    name: ClassVar[str] = "handle_ept_violation"
    vcpu: int
    gfn: int
    error_code: int
    present: bool
    write: bool
    stale_tlb: bool = False


# --- the fault path (mmu.c) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TdpPageFault(Event):
    name: ClassVar[str] = "tdp_page_fault"
    vcpu: int
    gfn: int
    error_code: int
    force_pt_level: bool
    level: int
    can_be_fast: bool


@dataclass(frozen=True, slots=True)
class MappingLevel(Event):
    name: ClassVar[str] = "mapping_level"
    gfn: int
    host_level: int
    max_level: int
    level: int


@dataclass(frozen=True, slots=True)
class FastPageFault(Event):
    """The tracepoint of the same name: the spte the lockless walk ended on, and what became of it."""

    name: ClassVar[str] = "fast_page_fault"
    vcpu: int
    gfn: int
    error_code: int
    level: int
    sp_level: int
    old: int
    new: int
    result: str


@dataclass(frozen=True, slots=True)
class FastPfFixDirectSpte(Event):
    name: ClassVar[str] = "fast_pf_fix_direct_spte"
    level: int
    sp_gfn: int
    index: int
    gfn: int
    old: int
    new: int


@dataclass(frozen=True, slots=True)
class GfnToPfn(Event):
    """try_async_pf / hva_to_pfn: the host page behind the gfn, and whether it could be mapped writable."""

    name: ClassVar[str] = "gfn_to_pfn"
    gfn: int
    pfn: int
    write_fault: bool
    map_writable: bool
    cow_broken: bool
    # The host copied the page to break the sharing (and so fired the mmu notifier), rather than making
    # the page it owned alone writable in place.
    copied: bool = False


@dataclass(frozen=True, slots=True)
class DirectMap(Event):
    name: ClassVar[str] = "__direct_map"
    gfn: int
    level: int
    pfn: int
    write: bool
    map_writable: bool
    mapped: bool


@dataclass(frozen=True, slots=True)
class KvmMmuGetPage(Event):
    name: ClassVar[str] = "kvm_mmu_get_page"
    level: int
    gfn: int
    created: bool


@dataclass(frozen=True, slots=True)
class LinkShadowPage(Event):
    name: ClassVar[str] = "link_shadow_page"
    level: int
    sp_gfn: int
    index: int
    child_level: int
    child_gfn: int


@dataclass(frozen=True, slots=True)
class DropLargeSpte(Event):
    name: ClassVar[str] = "drop_large_spte"
    level: int
    sp_gfn: int
    index: int
    gfn: int
    old: int


@dataclass(frozen=True, slots=True)
class DropParentPte(Event):
    name: ClassVar[str] = "drop_parent_pte"
    level: int
    sp_gfn: int
    index: int
    child_gfn: int


@dataclass(frozen=True, slots=True)
class MmuSetSpte(Event):
    name: ClassVar[str] = "mmu_set_spte"
    level: int
    sp_gfn: int
    index: int
    gfn: int
    pfn: int
    write_fault: bool
    speculative: bool
    old: int
    new: int
    result: str  # "created" | "updated" | "replaced_table" | "wrprotected_page"


@dataclass(frozen=True, slots=True)
class MakeSpteReadOnly(Event):
    """A read fault on a dirty-logged slot builds its leaf read-only (W clear, HW and MW kept) and marks
    nothing: only a write, fixed later by the fast path, reports the page."""

    name: ClassVar[str] = "make_spte"
    level: int
    sp_gfn: int
    index: int
    gfn: int
    slot: int
    new: int


@dataclass(frozen=True, slots=True)
class DirectPtePrefetch(Event):
    name: ClassVar[str] = "direct_pte_prefetch"
    sp_gfn: int
    gfns: tuple[int, ...]
    skipped: str = ""


@dataclass(frozen=True, slots=True)
class MarkPageDirty(Event):
    name: ClassVar[str] = "mark_page_dirty"
    gfn: int
    slot: int | None
    logged: bool
    caller: str


@dataclass(frozen=True, slots=True)
class DropSpte(Event):
    """drop_spte: clear and track (host page accessed/dirty), then rmap_remove."""

    name: ClassVar[str] = "drop_spte"
    level: int
    sp_gfn: int
    index: int
    gfn: int
    old: int
    pfn_dirty: bool


# --- write protection and dirty logging (mmu.c, x86.c, kvm_main.c) -----------------------------------


@dataclass(frozen=True, slots=True)
class SpteWriteProtect(Event):
    name: ClassVar[str] = "spte_write_protect"
    level: int
    sp_gfn: int
    index: int
    gfn: int
    old: int
    new: int
    action: str  # "wrprotect" | "zap" | "none"
    flush: bool


@dataclass(frozen=True, slots=True)
class RmapWriteProtect(Event):
    name: ClassVar[str] = "__rmap_write_protect"
    slot: int
    level: int
    gfn: int
    sptes: int
    flush: bool


@dataclass(frozen=True, slots=True)
class SetMemoryRegion(Event):
    name: ClassVar[str] = "__kvm_set_memory_region"
    slot: int
    log_dirty_pages: bool
    change: str  # "flags_only" | "none"


@dataclass(frozen=True, slots=True)
class SlotRemoveWriteAccess(Event):
    name: ClassVar[str] = "kvm_mmu_slot_remove_write_access"
    slot: int
    rmaps: int


@dataclass(frozen=True, slots=True)
class GetDirtyLog(Event):
    name: ClassVar[str] = "kvm_vm_ioctl_get_dirty_log"
    slot: int
    gfns: tuple[int, ...]
    flush: bool


@dataclass(frozen=True, slots=True)
class WriteProtectPtMasked(Event):
    name: ClassVar[str] = "kvm_mmu_write_protect_pt_masked"
    slot: int
    gfn_offset: int
    mask: str


@dataclass(frozen=True, slots=True)
class IoctlError(Event):
    """A VM ioctl that the kernel refuses under the VM's dirty-log mode (kvm_vm_ioctl returns -errno)."""

    name: ClassVar[str] = "kvm_vm_ioctl"
    ioctl: str
    errno: str
    reason: str


@dataclass(frozen=True, slots=True)
class ClearDirtyLog(Event):
    name: ClassVar[str] = "kvm_vm_ioctl_clear_dirty_log"
    slot: int
    first: int
    num: int


@dataclass(frozen=True, slots=True)
class ClearDirtyLogProtect(Event):
    """kvm_clear_dirty_log_protect: the bits it found set and cleared, and whether it flushed."""

    name: ClassVar[str] = "kvm_clear_dirty_log_protect"
    slot: int
    gfns: tuple[int, ...]
    flush: bool


@dataclass(frozen=True, slots=True)
class EnableLogDirtyPtMasked(Event):
    """kvm_arch_mmu_enable_log_dirty_pt_masked: re-arm logging for the set bits of one mask."""

    name: ClassVar[str] = "kvm_arch_mmu_enable_log_dirty_pt_masked"
    slot: int
    gfn_offset: int
    mask: str
    huge_first: bool  # INITIALLY_SET: the huge pages around the range were protected (and split) first


@dataclass(frozen=True, slots=True)
class DirtyRingPush(Event):
    name: ClassVar[str] = "kvm_dirty_ring_push"
    vcpu: int
    slot: int
    offset: int
    gfn: int
    used: int  # entries in the ring after the push


@dataclass(frozen=True, slots=True)
class DirtyRingFull(Event):
    """kvm_dirty_ring_check_request: a soft-full ring keeps the vCPU out of the guest
    (KVM_EXIT_DIRTY_RING_FULL); the access at `gfn` and the rest of the step's accesses do not happen."""

    name: ClassVar[str] = "kvm_dirty_ring_check_request"
    vcpu: int
    gfn: int
    used: int
    skipped: int


@dataclass(frozen=True, slots=True)
class DirtyRingHarvest(Event):
    """Userspace reads one vCPU's published entries, in order, and marks them collected."""

    name: ClassVar[str] = "dirty_ring_harvest"
    vcpu: int
    gfns: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DirtyRingReset(Event):
    name: ClassVar[str] = "kvm_dirty_ring_reset"
    vcpu: int
    entries: int


@dataclass(frozen=True, slots=True)
class ResetDirtyPages(Event):
    name: ClassVar[str] = "kvm_vm_ioctl_reset_dirty_pages"
    cleared: int
    flush: bool


@dataclass(frozen=True, slots=True)
class FlushRemoteTlbs(Event):
    name: ClassVar[str] = "kvm_flush_remote_tlbs"
    caller: str
    under_mmu_lock: bool
    entries_dropped: int


@dataclass(frozen=True, slots=True)
class ZapAll(Event):
    name: ClassVar[str] = "kvm_mmu_zap_all"
    pages: int


@dataclass(frozen=True, slots=True)
class PrepareZapPage(Event):
    name: ClassVar[str] = "kvm_mmu_prepare_zap_page"
    level: int
    gfn: int


@dataclass(frozen=True, slots=True)
class MmuLoad(Event):
    """kvm_mmu_load / mmu_alloc_direct_roots: the vCPUs (re)load the shared root."""

    name: ClassVar[str] = "kvm_mmu_load"
    gfn: int
    level: int


# --- migration (userspace) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigrateCopy(Event):
    name: ClassVar[str] = "migrate_copy"
    phase: str  # "begin" | "round" | "end"
    pages: int


@dataclass(frozen=True, slots=True)
class MigrateVerdict(Event):
    name: ClassVar[str] = "migrate_verdict"
    lost: tuple[int, ...]


@dataclass(slots=True)
class Call:
    """One kernel function entered while tracing: its name and the events emitted while it ran
    (`events[start:end]`; `end` is -1 while it runs). Among them, the first of its own name is the
    function's own event, the others are its callees'."""

    name: str
    start: int
    end: int = -1


@dataclass(slots=True)
class Trace:
    """The tracepoint sink. Hot paths check `on` first, as static keys do, so a summary run pays nothing.

    `events` is in emission order, which the result JSON keeps: a function emits when it has something to
    say, often after its callees did. The functions that call others that emit also record when they were
    entered and left (`enter`/`exit`, or `traced`), so that `call_order` can show each caller before its
    callees, indented by call depth, as a function-graph tracer would, without reordering `events`."""

    on: bool
    events: list[Event] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    running: list[Call] = field(default_factory=list)

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def enter(self, name: str) -> None:
        call = Call(name, len(self.events))
        self.calls.append(call)
        self.running.append(call)

    def exit(self) -> None:
        self.running.pop().end = len(self.events)

    def new_step(self) -> None:
        self.events = []
        self.calls = []
        self.running = []


class _Traced(Protocol):
    tp: Trace


K = TypeVar("K", bound=_Traced)
P = ParamSpec("P")
R = TypeVar("R")


def traced(
    event: type[Event],
) -> Callable[[Callable[Concatenate[K, P], R]], Callable[Concatenate[K, P], R]]:
    """Mark a kernel function whose callees emit events: while tracing, its entry and exit are recorded
    under the name of its own event.

    The wrapper is written with the function's own parameters (as dataclasses writes its methods), so an
    untraced call costs one plain call and one test of `on`, not a packing of `*args`: these functions run
    for every fault."""
    name = event.name

    def wrap(fn: Callable[Concatenate[K, P], R]) -> Callable[Concatenate[K, P], R]:
        params = list(signature(fn).parameters.values())
        if not params or any(p.kind is not Parameter.POSITIONAL_OR_KEYWORD for p in params):
            raise TypeError(f"traced: {fn.__name__} must take plain parameters, the VM first")
        scope: dict[str, object] = {"fn": fn, "name": name}
        heads = []
        for k, p in enumerate(params):
            if p.default is Parameter.empty:
                heads.append(p.name)
            else:
                scope[f"default_{k}"] = p.default
                heads.append(f"{p.name}=default_{k}")
        passed = ", ".join(p.name for p in params)
        source = (
            f"def call({', '.join(heads)}):\n"
            f"    tp = {params[0].name}.tp\n"
            f"    if not tp.on:\n"
            f"        return fn({passed})\n"
            f"    tp.enter(name)\n"
            f"    try:\n"
            f"        return fn({passed})\n"
            f"    finally:\n"
            f"        tp.exit()\n"
        )
        exec(source, scope)  # the source is built above from the signature alone
        return cast(Callable[Concatenate[K, P], R], wraps(fn)(scope["call"]))  # type: ignore[arg-type]

    return wrap


def call_order(events: Sequence[Event], calls: Sequence[Call]) -> list[tuple[int, int]]:
    """The events as (index in `events`, call depth), callers first: each function's own event where the
    function was entered, its callees' events after it, one level deeper. A function that emitted nothing
    of its own name (it returned early, or its event fell beyond a cap) is left out and its callees move
    up a level. Events outside every recorded call stay where they were emitted."""
    n = len(events)
    top: list[tuple[bool, int]] = []  # (is a call, call or event index)
    children: list[list[tuple[bool, int]]] = [[] for _ in calls]
    head = [-1] * len(calls)
    ends = [n if c.end < 0 else min(c.end, n) for c in calls]
    running: list[int] = []
    following = 0
    for i in range(n + 1):
        while running and ends[running[-1]] <= i:
            running.pop()
        while following < len(calls) and calls[following].start <= i:
            c = following
            following += 1
            if ends[c] <= calls[c].start:
                continue  # nothing emitted while it ran
            while running and ends[running[-1]] <= i:
                running.pop()
            (children[running[-1]] if running else top).append((True, c))
            running.append(c)
        if i == n:
            break
        inner = running[-1] if running else -1
        if inner >= 0 and head[inner] < 0 and events[i].name == calls[inner].name:
            head[inner] = i
        else:
            (children[inner] if inner >= 0 else top).append((False, i))
    out: list[tuple[int, int]] = []
    stack: list[tuple[list[tuple[bool, int]], int, int]] = [(top, 0, 0)]
    while stack:
        items, at, depth = stack.pop()
        if at >= len(items):
            continue
        stack.append((items, at + 1, depth))
        is_call, k = items[at]
        if not is_call:
            out.append((k, depth))
        elif head[k] >= 0:
            out.append((head[k], depth))
            stack.append((children[k], 0, depth + 1))
        else:
            stack.append((children[k], 0, depth))
    return out


# --- Intel PML (vmx.c, mmu/mmu.c, x86.c in later kernels) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class PmlLog(Event):
    """The CPU set D on a leaf for a store while PML is enabled, and logged the page in the vCPU's PML
    buffer at `index` (511 first, counting down). No exit: the page reaches the dirty log only when the
    buffer is flushed."""

    name: ClassVar[str] = "pml_log"
    vcpu: int
    gfn: int
    index: int


@dataclass(frozen=True, slots=True)
class FlushPmlBuffer(Event):
    """vmx_flush_pml_buffer: the vCPU's logged pages handed to mark_page_dirty, oldest first, and the log
    emptied. `reason`: "exit" (any VM exit, here an EPT violation), "pml_full" (the PML-full exit of a
    store that found the log full), "kick" (userspace is about to read the dirty log, or the vCPUs are
    told to update their dirty-logging state: each vCPU is kicked out of the guest)."""

    name: ClassVar[str] = "vmx_flush_pml_buffer"
    vcpu: int
    reason: str
    gfns: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class UpdateCpuDirtyLogging(Event):
    """Logging was switched on or off for a slot with `pml` set: every vCPU turns PML on while any slot is
    logged (vmx_update_cpu_dirty_logging). `inert`: the kernel disabled PML because EPT A/D bits are off,
    so dirty logging stays write-protection based."""

    name: ClassVar[str] = "vmx_update_cpu_dirty_logging"
    slot: int
    enable: bool
    logged_slots: int
    pml: bool
    inert: bool


@dataclass(frozen=True, slots=True)
class SlotLeafClearDirty(Event):
    """kvm_mmu_slot_leaf_clear_dirty: logging starts with PML, so the 4K leaves of the slot lose D instead
    of W: the next store to each sets D again and is logged by the CPU, without a fault."""

    name: ClassVar[str] = "kvm_mmu_slot_leaf_clear_dirty"
    slot: int
    cleared: int


@dataclass(frozen=True, slots=True)
class ClearDirtyPtMasked(Event):
    """kvm_mmu_clear_dirty_pt_masked: harvesting under PML re-arms the reported pages by clearing D on
    their 4K sptes (not W); `cleared` is how many sptes had D set."""

    name: ClassVar[str] = "kvm_mmu_clear_dirty_pt_masked"
    slot: int
    gfn_offset: int
    mask: str
    cleared: int
