"""A minimal KVM virtual machine driven from Python: memslots, vCPUs that run guest code, the dirty log.

`KvmVm` owns every resource it opens (the /dev/kvm, VM and vCPU fds, the guest memory and the vCPUs'
shared pages) and releases them in `close()`, which the context manager calls. The ioctls go through
libc's `ioctl` (ctypes), so that a pointer-sized argument passes unchanged, and the call runs without the
interpreter lock.

Guest memory is anonymous `MAP_NORESERVE` memory: a slot costs host memory only for the pages the guest
touches (with `huge`, aligned as the guest's addresses and offered to transparent huge pages). The guest
is one of two. By default each vCPU starts in 32-bit protected mode with paging off and flat segments,
runs the code of `live.guest_code` from a one-page memslot of its own (`code_gfn`), placed where the
scenario has no slot, and must end in KVM_EXIT_HLT; a shadow-MMU host emulates such a guest. With
`native`, `boot_native` adds a system slot (the code page, the PVM page, the guest's identity page
tables: `live.paging`) and puts every vCPU in 64-bit mode on those tables (`live.longmode`), so that its
accesses go through the kernel's MMU; its programs end on an `out` (KVM_EXIT_IO). Any other exit is an
error that names it, and every KVM_RUN is stopped by the watchdog (`live.watchdog`) past its time.

The dirty-log modes:

- ``bitmap``: KVM_GET_DIRTY_LOG returns the slot's bitmap, clears it and write-protects the pages again.
- ``manual_clear``: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with the manual-protect option: GET only copies the
  bitmap; KVM_CLEAR_DIRTY_LOG clears bits and write-protects those pages.
- ``initially_set``: the same, plus the initially-set option: a slot's bitmap starts with every bit set
  when logging is enabled.
- ``ring``: KVM_CAP_DIRTY_LOG_RING (or its _ACQ_REL form): each vCPU pushes the pages it dirties onto
  its own ring, shared with userspace at KVM_DIRTY_LOG_PAGE_OFFSET of the vCPU fd; userspace collects
  the entries and KVM_RESET_DIRTY_RINGS write-protects the collected pages again.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from live import kvm_abi as abi
from live.guest_code import DONE_PORT
from live.longmode import enter_long_mode, register_pvm_page, supported_cpuid
from live.owned import Owned
from live.paging import GuestPageTables, MappedRange, identity_map, table_pages
from live.shadow_guest import ShadowLayout
from live.syscalls import (
    MAP_ANONYMOUS,
    MAP_NORESERVE,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
    KvmError,
    ioctl,
    kvm_run,
    madvise_hugepage,
    mmap,
    munmap,
)
from live.watchdog import Watchdog

DEFAULT_DEVICE = "/dev/kvm"
DEVICE_ENV = "SPTELAB_KVM_DEVICE"

PAGE_SIZE = 4096
PAGE_SHIFT = 12

# Guest-physical space the VM keeps for the platform and for KVM itself: the top 32 MiB below 4 GiB holds
# the I/O APIC (0xfec00000), the local APIC and its access page (0xfee00000), the firmware area, and
# KVM's identity-mapped page table (0xfffbc000) and real-mode TSS (set here at TSS_ADDR). No scenario
# slot and no code page may lie there.
RESERVED_FIRST_GFN = 0xFE000
RESERVED_END_GFN = 0x100000
TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000

# The largest slot id userspace may use on x86 is below this (the kernel keeps the last few for itself).
X86_USER_MEM_SLOTS = 32764

DIRTY_LOG_MODES = ("bitmap", "manual_clear", "initially_set", "ring")

# Dirty-ring size in entries (16 bytes each): a power of two, the largest the kernel's ABI allows.
RING_ENTRIES = 65536

# Control-register bits the vCPU setup touches.
CR0_PE = 1 << 0
CR0_NW = 1 << 29
CR0_CD = 1 << 30
RFLAGS_RESERVED = 1 << 1


class GuestExitError(RuntimeError):
    """The guest stopped for a reason other than the end of its program."""


class GuestTimeoutError(GuestExitError):
    """The guest was still running when its KVM_RUN's budget ran out, and the watchdog stopped it."""


# How long one KVM_RUN may take: the longest access step the backend accepts (a million accesses,
# emulated at a few µs each, or each the first touch of a host page) takes a few seconds.
RUN_TIMEOUT_S = 20.0

# Host memory for a slot whose host pages are 2M or larger is aligned to 2 MiB, as its guest addresses
# are, so that transparent huge pages can back it and a large spte can map it.
HUGE_ALIGN = 2 << 20

# The system slot of the native guest: its code page, the page registered with the PVM MSR, and the
# guest's page tables; room for the tables that map the system slot itself is kept on top.
SYSTEM_FIXED_PAGES = 2
SYSTEM_SLACK_PAGES = 3


def stats_fd(fd: int) -> int:
    """KVM_GET_STATS_FD on a VM or vCPU fd: a new read-only fd of its binary statistics (see live.stats)."""
    return ioctl(fd, abi.KVM_GET_STATS_FD)


def device_path(device: str | None = None) -> str:
    """The KVM device to open: the one given, else $SPTELAB_KVM_DEVICE, else /dev/kvm."""
    return device or os.environ.get(DEVICE_ENV) or DEFAULT_DEVICE


def probe(device: str | None = None) -> str | None:
    """None when the KVM device opens read-write, speaks API version 12 and creates a VM; else why not."""
    path = device_path(device)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return f"cannot open {path}: {error.strerror or error}"
    try:
        version = ioctl(fd, abi.KVM_GET_API_VERSION)
        if version != abi.KVM_API_VERSION:
            return f"{path} speaks KVM API version {version}, not {abi.KVM_API_VERSION}"
        os.close(ioctl(fd, abi.KVM_CREATE_VM, 0))
    except KvmError as error:
        return f"{path}: {error.strerror}"
    finally:
        os.close(fd)
    return None


@dataclass(slots=True)
class GuestSlot:
    """One memslot as the VM registered it."""

    slot_id: int
    base_gfn: int
    npages: int
    address: int  # userspace address of the backing memory
    flags: int = 0
    huge: bool = False  # backed by transparent huge pages where the host has them
    mapping: tuple[int, int] = (0, 0)  # (address, size) of the whole mmap, alignment included

    @property
    def size(self) -> int:
        return self.npages << PAGE_SHIFT

    @property
    def logged(self) -> bool:
        return bool(self.flags & abi.KVM_MEM_LOG_DIRTY_PAGES)


@dataclass(slots=True)
class Vcpu:
    fd: int
    run_address: int
    run_size: int
    ring_address: int | None = None
    ring_next: int = 0  # the index of the next ring entry to collect


def _bitmap_bytes(npages: int) -> int:
    """A dirty bitmap is a whole number of 64-bit words."""
    return (npages + 63) // 64 * 8


def _set_bits(bitmap: bytes, base_gfn: int) -> Iterator[int]:
    for byte_index, byte in enumerate(bitmap):
        bits = byte
        while bits:
            low = bits & -bits
            yield base_gfn + byte_index * 8 + low.bit_length() - 1
            bits ^= low


class KvmVm(Owned):
    """One VM with `vcpus` vCPUs in the given dirty-log mode. Use as a context manager."""

    def __init__(
        self,
        vcpus: int,
        *,
        dirty_log_mode: str = "bitmap",
        device: str | None = None,
        native: bool = False,
        run_timeout: float | None = None,
    ) -> None:
        if dirty_log_mode not in DIRTY_LOG_MODES:
            raise ValueError(
                f"unknown dirty-log mode {dirty_log_mode!r} (known: {', '.join(DIRTY_LOG_MODES)})"
            )
        self.mode = dirty_log_mode
        self.device = device_path(device)
        self.kvm_fd = -1
        self.vm_fd = -1
        self.slots: dict[int, GuestSlot] = {}
        self.vcpus: list[Vcpu] = []
        self.code_slot: GuestSlot | None = None
        # native: 64-bit mode with paging (live.paging, live.longmode), set up by boot_native; else
        # 32-bit protected mode with paging off, from the vCPUs' creation on.
        self.native = native
        self.guest_tables: GuestPageTables | None = None  # the native guest's, once booted
        self.pvm_registered = False
        # Where the vCPUs find the code page: its guest-physical address, unless the guest's own tables
        # map it elsewhere (a shadow-paging scenario's guest: live.shadow_guest).
        self.code_va: int | None = None
        self.run_timeout = RUN_TIMEOUT_S if run_timeout is None else run_timeout
        # A whole run's end (time.monotonic()), past which no vCPU runs again; None for none.
        self.deadline: float | None = None
        self._closed = False
        self._watchdog: Watchdog | None = None
        try:
            self._open(vcpus)
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------------------------------------

    def _open(self, vcpus: int) -> None:
        try:
            self.kvm_fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            raise KvmError(
                error.errno or 0, f"cannot open {self.device}: {error.strerror or error}"
            ) from None
        version = ioctl(self.kvm_fd, abi.KVM_GET_API_VERSION)
        if version != abi.KVM_API_VERSION:
            raise KvmError(0, f"{self.device} speaks KVM API version {version}, not {abi.KVM_API_VERSION}")
        self.vm_fd = ioctl(self.kvm_fd, abi.KVM_CREATE_VM, 0)
        if self.check_extension(abi.KVM_CAP_SET_TSS_ADDR):
            ioctl(self.vm_fd, abi.KVM_SET_TSS_ADDR, TSS_ADDR)
        if self.mode in ("manual_clear", "initially_set"):
            options = abi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
            if self.mode == "initially_set":
                options |= abi.KVM_DIRTY_LOG_INITIALLY_SET
            supported = self.check_extension(abi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
            if supported & options != options:
                raise KvmError(0, f"this kernel does not offer dirty-log mode {self.mode}")
            self._enable_cap(abi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, options)
        elif self.mode == "ring":
            self._enable_ring()
        limit = self.check_extension(abi.KVM_CAP_MAX_VCPUS) or self.check_extension(abi.KVM_CAP_NR_VCPUS)
        if vcpus > max(limit, 1):
            raise KvmError(0, f"this kernel allows {limit} vCPUs per VM, not {vcpus}")
        mmap_size = ioctl(self.kvm_fd, abi.KVM_GET_VCPU_MMAP_SIZE)
        for index in range(vcpus):
            self._create_vcpu(index, mmap_size)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION asked of this VM: 0 when absent, else a positive value (often a limit)."""
        return ioctl(self.vm_fd, abi.KVM_CHECK_EXTENSION, cap)

    def _enable_cap(self, cap: int, *args: int) -> None:
        request = abi.KvmEnableCap(cap=cap)
        for index, value in enumerate(args):
            request.args[index] = value
        ioctl(self.vm_fd, abi.KVM_ENABLE_CAP, request)

    def _enable_ring(self) -> None:
        # The acquire/release form is the one every architecture has; x86 has both. Either must be on before
        # the first vCPU exists.
        for cap in (abi.KVM_CAP_DIRTY_LOG_RING_ACQ_REL, abi.KVM_CAP_DIRTY_LOG_RING):
            largest = self.check_extension(cap)
            if largest >= RING_ENTRIES * ctypes.sizeof(abi.KvmDirtyGfn):
                self._enable_cap(cap, RING_ENTRIES * ctypes.sizeof(abi.KvmDirtyGfn))
                return
        raise KvmError(0, f"this kernel offers no dirty ring of {RING_ENTRIES} entries")

    def _create_vcpu(self, index: int, mmap_size: int) -> None:
        fd = ioctl(self.vm_fd, abi.KVM_CREATE_VCPU, index)
        vcpu = Vcpu(fd=fd, run_address=0, run_size=mmap_size)
        self.vcpus.append(vcpu)  # owned from here on, so that close() releases it if the rest fails
        vcpu.run_address = mmap(mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd)
        if self.mode == "ring":
            vcpu.ring_address = mmap(
                RING_ENTRIES * ctypes.sizeof(abi.KvmDirtyGfn),
                PROT_READ | PROT_WRITE,
                MAP_SHARED,
                fd,
                abi.KVM_DIRTY_LOG_PAGE_OFFSET * PAGE_SIZE,
            )
        if not self.native:
            self._protected_mode(vcpu)

    def _protected_mode(self, vcpu: Vcpu) -> None:
        """32-bit protected mode, paging off, flat code and data segments (no GDT needed: the hidden parts
        of the segment registers are what the CPU uses)."""
        sregs = abi.KvmSregs()
        ioctl(vcpu.fd, abi.KVM_GET_SREGS, sregs)
        code = abi.KvmSegment(
            base=0, limit=0xFFFFFFFF, selector=0x08, type=0xB, present=1, dpl=0, db=1, s=1, l=0, g=1
        )
        data = abi.KvmSegment(
            base=0, limit=0xFFFFFFFF, selector=0x10, type=0x3, present=1, dpl=0, db=1, s=1, l=0, g=1
        )
        sregs.cs = code
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
        sregs.cr0 = (sregs.cr0 | CR0_PE) & ~(CR0_CD | CR0_NW)
        sregs.cr4 = 0
        sregs.efer = 0
        ioctl(vcpu.fd, abi.KVM_SET_SREGS, sregs)

    def add_slot(self, slot_id: int, base_gfn: int, npages: int, *, huge: bool = False) -> GuestSlot:
        """Register a memslot of anonymous memory, not logged. `huge`: aligned as its guest addresses are
        to 2 MiB and offered to transparent huge pages, so that the kernel can map it with large sptes."""
        if slot_id in self.slots:
            raise ValueError(f"slot {slot_id} exists already")
        size = npages << PAGE_SHIFT
        extra = HUGE_ALIGN if huge else 0
        start = mmap(size + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
        address = start
        if huge:
            # The first address past `start` congruent to the slot's guest address modulo 2 MiB.
            address = start + ((base_gfn << PAGE_SHIFT) - start) % HUGE_ALIGN
            huge = madvise_hugepage(start, size + extra)
        slot = GuestSlot(
            slot_id=slot_id,
            base_gfn=base_gfn,
            npages=npages,
            address=address,
            huge=huge,
            mapping=(start, size + extra),
        )
        self.slots[slot_id] = slot
        self._set_region(slot)
        return slot

    def _set_region(self, slot: GuestSlot) -> None:
        region = abi.KvmUserspaceMemoryRegion(
            slot=slot.slot_id,
            flags=slot.flags,
            guest_phys_addr=slot.base_gfn << PAGE_SHIFT,
            memory_size=slot.size,
            userspace_addr=slot.address,
        )
        ioctl(self.vm_fd, abi.KVM_SET_USER_MEMORY_REGION, region)

    def add_code_slot(self, slot_id: int, gfn: int) -> None:
        """The one page the guest code runs from (never logged)."""
        self.code_slot = self.add_slot(slot_id, gfn, 1)

    def system_pages(self) -> int:
        """How many pages `boot_native`'s system slot needs for the slots added so far."""
        ranges = [MappedRange(s.base_gfn, s.npages, s.huge) for s in self.slots.values()]
        return SYSTEM_FIXED_PAGES + table_pages(ranges) + SYSTEM_SLACK_PAGES

    def boot_native(self, slot_id: int, base_gfn: int) -> None:
        """Add the system slot at `base_gfn` (`system_pages()` pages that no slot holds): the code page,
        the PVM page and page tables mapping every slot, itself included, to itself; then put every vCPU
        in 64-bit mode on those tables and register the PVM page where the kernel has the MSR."""
        if not self.native:
            raise ValueError("boot_native is for a VM created with native=True")
        npages = self.system_pages()
        ranges = [MappedRange(s.base_gfn, s.npages, s.huge) for s in self.slots.values()]
        ranges.append(MappedRange(base_gfn, npages, False))
        tables = identity_map(ranges, base_gfn + SYSTEM_FIXED_PAGES)
        if SYSTEM_FIXED_PAGES + len(tables.pages) > npages:
            raise AssertionError("the system slot is too small for the tables that map it")
        self.guest_tables = tables
        self.code_slot = system = self.add_slot(slot_id, base_gfn, npages)
        for position, page in enumerate(tables.pages):
            ctypes.memmove(system.address + (SYSTEM_FIXED_PAGES + position) * PAGE_SIZE, page, PAGE_SIZE)
        cpuid = supported_cpuid(self.kvm_fd)
        pvm_page = (base_gfn + 1) << PAGE_SHIFT
        self.pvm_registered = True
        for vcpu in self.vcpus:
            enter_long_mode(vcpu.fd, cpuid, tables.cr3)
            self.pvm_registered &= register_pvm_page(vcpu.fd, pvm_page)

    def boot_shadow(self, slot_id: int, layout: ShadowLayout) -> None:
        """A shadow-paging scenario's guest: its table pages written into the scenario's slots, the
        system slot (code page, PVM page, the tables that map them) added at `layout.system_base`, every
        page of the scenario's slots touched by the host first (present and writable, as the model's
        host pages are), and every vCPU put in 64-bit mode on space 0's PML4."""
        if not self.native:
            raise ValueError("boot_shadow is for a VM created with native=True")
        for slot in self.slots.values():
            self._touch(slot)
        for gfn, content in layout.scenario_pages.items():
            self.write_page(gfn, content)
        npages = len(layout.system_pages)
        self.code_slot = system = self.add_slot(slot_id, layout.system_base, npages)
        for position, page in enumerate(layout.system_pages):
            ctypes.memmove(system.address + position * PAGE_SIZE, page, PAGE_SIZE)
        self.code_va = layout.code_va
        cpuid = supported_cpuid(self.kvm_fd)
        pvm_page = (layout.system_base + 1) << PAGE_SHIFT
        self.pvm_registered = True
        for vcpu in self.vcpus:
            enter_long_mode(vcpu.fd, cpuid, layout.cr3s[0])
            self.pvm_registered &= register_pvm_page(vcpu.fd, pvm_page)

    @staticmethod
    def _touch(slot: GuestSlot) -> None:
        """Write a zero into every page of the slot from the host, so that each is present and writable
        in the host's page tables before the guest touches it (a huge page where the host backs it so)."""
        ctypes.memset(slot.address, 0, slot.size)

    @staticmethod
    def huge_backed(slot: GuestSlot) -> int:
        """How many bytes of the slot's memory the host backs with transparent huge pages now
        (/proc/self/smaps' AnonHugePages of its mapping)."""
        start, size = slot.mapping
        total = 0
        inside = False
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):
                    low, high = (int(part, 16) for part in head.split("-"))
                    inside = low < start + size and start < high
                elif inside and head == "AnonHugePages:":
                    total += int(line.split()[1]) * 1024
        return total

    def _host_address(self, gfn: int) -> int:
        for slot in self.slots.values():
            if slot.base_gfn <= gfn < slot.base_gfn + slot.npages:
                return slot.address + ((gfn - slot.base_gfn) << PAGE_SHIFT)
        raise ValueError(f"gfn {gfn:#x} is in no memslot")

    def write_page(self, gfn: int, content: bytes) -> None:
        """Guest memory written from the host (no guest access: KVM sees nothing of it)."""
        ctypes.memmove(self._host_address(gfn), content, len(content))

    def first_dword_at(self, gfn: int, offset: int) -> int:
        """The 32 bits at `offset` (a multiple of 4) in the page, read from the host."""
        return ctypes.c_uint32.from_address(self._host_address(gfn) + offset).value

    # -- dirty logging -----------------------------------------------------------------------------------

    def set_logging(self, slot_id: int, enable: bool) -> None:
        """Set or clear KVM_MEM_LOG_DIRTY_PAGES on a slot (a flags-only memslot update)."""
        slot = self.slots[slot_id]
        if enable:
            slot.flags |= abi.KVM_MEM_LOG_DIRTY_PAGES
        else:
            slot.flags &= ~abi.KVM_MEM_LOG_DIRTY_PAGES
        self._set_region(slot)

    def get_dirty_log(self, slot_id: int) -> list[int]:
        """KVM_GET_DIRTY_LOG: the gfns whose bit was set, ascending."""
        slot = self.slots[slot_id]
        bitmap = ctypes.create_string_buffer(_bitmap_bytes(slot.npages))
        request = abi.KvmDirtyLog(slot=slot_id, dirty_bitmap=ctypes.addressof(bitmap))
        ioctl(self.vm_fd, abi.KVM_GET_DIRTY_LOG, request)
        return list(_set_bits(bitmap.raw, slot.base_gfn))

    def clear_dirty_log(self, slot_id: int, first: int, num: int, gfns: Iterable[int] | None = None) -> None:
        """KVM_CLEAR_DIRTY_LOG over pages [first, first + num) of the slot: of the pages `gfns` names, or
        (None) every page of the range."""
        mask = bytearray(_bitmap_bytes(num))
        if gfns is None:
            mask[:] = b"\xff" * len(mask)
        else:
            start = self.slots[slot_id].base_gfn + first
            for gfn in gfns:
                offset = gfn - start
                if not 0 <= offset < num:
                    raise ValueError(f"gfn {gfn:#x} is outside pages {first:#x}+{num} of slot {slot_id}")
                mask[offset >> 3] |= 1 << (offset & 7)
        bitmap = (ctypes.c_uint8 * len(mask)).from_buffer(mask)
        request = abi.KvmClearDirtyLog(
            slot=slot_id, num_pages=num, first_page=first, dirty_bitmap=ctypes.addressof(bitmap)
        )
        ioctl(self.vm_fd, abi.KVM_CLEAR_DIRTY_LOG, request)

    def harvest_rings(self) -> list[tuple[int, int]]:
        """Collect every vCPU's published ring entries in order, marking each collected: (slot, gfn).
        A VM without dirty rings has nothing to collect."""
        harvested: list[tuple[int, int]] = []
        size = ctypes.sizeof(abi.KvmDirtyGfn)
        for vcpu in self.vcpus:
            if vcpu.ring_address is None:
                continue
            while True:
                entry = abi.KvmDirtyGfn.from_address(
                    vcpu.ring_address + (vcpu.ring_next % RING_ENTRIES) * size
                )
                if not entry.flags & abi.KVM_DIRTY_GFN_F_DIRTY:
                    break
                slot = self.slots.get(entry.slot & 0xFFFF)
                if slot is None:
                    raise KvmError(0, f"the dirty ring names slot {entry.slot}, which this VM never made")
                harvested.append((slot.slot_id, slot.base_gfn + entry.offset))
                entry.flags = abi.KVM_DIRTY_GFN_F_RESET
                vcpu.ring_next += 1
        return harvested

    def reset_rings(self) -> int:
        """KVM_RESET_DIRTY_RINGS: re-protect the collected pages; returns how many entries were reset."""
        return ioctl(self.vm_fd, abi.KVM_RESET_DIRTY_RINGS)

    # -- running the guest -------------------------------------------------------------------------------

    def run_code(self, vcpu_index: int, code: bytes) -> None:
        """Load `code` into the code page and run it on the vCPU from its first byte until it halts (the
        native guest: until its `out` to DONE_PORT).

        Any other exit raises GuestExitError, KVM_EXIT_DIRTY_RING_FULL included: a caller keeps the
        writes between two harvests well below the ring's size instead (see `live.backend`). A run still
        going after `run_timeout` seconds is stopped by the watchdog: GuestTimeoutError.
        """
        if self.code_slot is None:
            raise ValueError("the VM has no code page (add_code_slot)")
        if len(code) > PAGE_SIZE:
            raise ValueError(f"{len(code)} bytes of guest code do not fit in a page")
        ctypes.memmove(self.code_slot.address, code, len(code))
        vcpu = self.vcpus[vcpu_index]
        regs = abi.KvmRegs()
        ioctl(vcpu.fd, abi.KVM_GET_REGS, regs)
        regs.rip = self.code_slot.base_gfn << PAGE_SHIFT if self.code_va is None else self.code_va
        regs.rflags = RFLAGS_RESERVED
        ioctl(vcpu.fd, abi.KVM_SET_REGS, regs)
        run = abi.KvmRunHeader.from_address(vcpu.run_address)
        if self._watchdog is None:
            self._watchdog = Watchdog()
        watchdog = self._watchdog
        immediate_exit = vcpu.run_address + abi.KvmRunHeader.immediate_exit.offset
        run.immediate_exit = 0
        timeout = self.run_timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise GuestTimeoutError("the run's time budget is spent; the guest was not started again")
        watchdog.arm(immediate_exit, timeout)
        try:
            while True:
                interrupted = kvm_run(vcpu.fd)
                if watchdog.fired:
                    raise GuestTimeoutError(
                        f"vCPU {vcpu_index} was still running after {timeout:.3g} s; stopped"
                    )
                if interrupted:
                    continue  # another signal: the guest carries on
                reason = run.exit_reason
                if self._finished(vcpu, reason):
                    return
                if reason != abi.KVM_EXIT_INTR:
                    raise GuestExitError(self._exit_text(vcpu_index, vcpu, reason))
        finally:
            watchdog.disarm()
            run.immediate_exit = 0

    def _finished(self, vcpu: Vcpu, reason: int) -> bool:
        """Whether the exit is the end of the guest's program: hlt, or the native guest's `out`."""
        if not self.native:
            return reason == abi.KVM_EXIT_HLT
        if reason != abi.KVM_EXIT_IO:
            return False
        io = abi.KvmRunIo.from_address(vcpu.run_address + abi.KVM_RUN_EXIT_UNION_OFFSET)
        return bool(io.port == DONE_PORT)

    def _exit_text(self, index: int, vcpu: Vcpu, reason: int) -> str:
        """What stopped the guest, in one line."""
        union = vcpu.run_address + abi.KVM_RUN_EXIT_UNION_OFFSET
        end = f"out {DONE_PORT:#x}" if self.native else "hlt"
        text = f"vCPU {index} stopped with {abi.exit_reason_name(reason)} instead of {end}"
        if reason == abi.KVM_EXIT_MMIO:
            mmio = abi.KvmRunMmio.from_address(union)
            kind = "write" if mmio.is_write else "read"
            text += f": a {kind} of gpa {mmio.phys_addr:#x}, which no memslot holds"
        elif reason == abi.KVM_EXIT_IO:
            io = abi.KvmRunIo.from_address(union)
            text += f": port {io.port:#x}"
        elif reason == abi.KVM_EXIT_INTERNAL_ERROR:
            internal = abi.KvmRunInternal.from_address(union)
            text += f": suberror {internal.suberror}"
        elif reason == abi.KVM_EXIT_FAIL_ENTRY:
            fail = abi.KvmRunFailEntry.from_address(union)
            text += f": hardware reason {fail.hardware_entry_failure_reason:#x}"
        elif reason == abi.KVM_EXIT_DIRTY_RING_FULL:
            text += f": its dirty ring ({RING_ENTRIES} entries) is full"
        regs = abi.KvmRegs()
        try:
            ioctl(vcpu.fd, abi.KVM_GET_REGS, regs)
            text += f" (rip {regs.rip:#x})"
        except KvmError:
            pass
        return text

    # -- teardown ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release everything: vCPU pages and fds, the VM fd, guest memory, the device fd. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        for vcpu in self.vcpus:
            if vcpu.ring_address:
                munmap(vcpu.ring_address, RING_ENTRIES * ctypes.sizeof(abi.KvmDirtyGfn))
            if vcpu.run_address:
                munmap(vcpu.run_address, vcpu.run_size)
            os.close(vcpu.fd)
        self.vcpus = []
        # The VM holds references to the slots' memory until its fd is closed; unmap after that.
        if self.vm_fd >= 0:
            os.close(self.vm_fd)
            self.vm_fd = -1
        for slot in self.slots.values():
            munmap(*slot.mapping)
        self.slots = {}
        self.code_slot = None
        if self.kvm_fd >= 0:
            os.close(self.kvm_fd)
            self.kvm_fd = -1
