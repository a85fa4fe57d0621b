"""The /dev/kvm userspace ABI this package uses: ioctl numbers, structure layouts, capability numbers.

These are facts of the kernel's stable userspace interface (the uapi `linux/kvm.h` and x86 `asm/kvm.h`),
written out here because the standard library has no binding for them. ioctl numbers are computed the way
the kernel encodes them (direction, size, type, number), so that a structure's size and its ioctl number
cannot disagree. Only the fields this package reads or writes are named; every structure has the kernel's
exact size (checked at import by `_check_sizes`).
"""

from __future__ import annotations

import ctypes

# ---------------------------------------------------------------------------------------------------------
# ioctl number encoding (asm-generic/ioctl.h): bits 0-7 number, 8-15 type, 16-29 size, 30-31 direction.

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, kind: int, number: int, size: int) -> int:
    if not 0 <= size < 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument of {size} bytes does not fit the size field")
    return (
        (direction << _IOC_DIRSHIFT)
        | (kind << _IOC_TYPESHIFT)
        | (number << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _io(kind: int, number: int) -> int:
    return _ioc(_IOC_NONE, kind, number, 0)


def _iow(kind: int, number: int, argument: type[ctypes._CData]) -> int:
    return _ioc(_IOC_WRITE, kind, number, ctypes.sizeof(argument))


def _ior(kind: int, number: int, argument: type[ctypes._CData]) -> int:
    return _ioc(_IOC_READ, kind, number, ctypes.sizeof(argument))


def _iowr(kind: int, number: int, argument: type[ctypes._CData]) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, kind, number, ctypes.sizeof(argument))


KVMIO = 0xAE
KVM_API_VERSION = 12

# ---------------------------------------------------------------------------------------------------------
# Structures


class KvmUserspaceMemoryRegion(ctypes.Structure):
    """struct kvm_userspace_memory_region: `slot` is (address space << 16) | slot id."""

    _fields_ = (
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    )


class KvmRegs(ctypes.Structure):
    """struct kvm_regs (x86): the general registers, rip and rflags."""

    _fields_ = (
        ("rax", ctypes.c_uint64),
        ("rbx", ctypes.c_uint64),
        ("rcx", ctypes.c_uint64),
        ("rdx", ctypes.c_uint64),
        ("rsi", ctypes.c_uint64),
        ("rdi", ctypes.c_uint64),
        ("rsp", ctypes.c_uint64),
        ("rbp", ctypes.c_uint64),
        ("r8", ctypes.c_uint64),
        ("r9", ctypes.c_uint64),
        ("r10", ctypes.c_uint64),
        ("r11", ctypes.c_uint64),
        ("r12", ctypes.c_uint64),
        ("r13", ctypes.c_uint64),
        ("r14", ctypes.c_uint64),
        ("r15", ctypes.c_uint64),
        ("rip", ctypes.c_uint64),
        ("rflags", ctypes.c_uint64),
    )


class KvmSegment(ctypes.Structure):
    """struct kvm_segment: a segment register's hidden part (base, limit, attributes) and selector."""

    _fields_ = (
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    )


class KvmDtable(ctypes.Structure):
    """struct kvm_dtable: a descriptor-table register (GDTR, IDTR)."""

    _fields_ = (
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint16),
        ("padding", ctypes.c_uint16 * 3),
    )


KVM_NR_INTERRUPTS = 256


class KvmSregs(ctypes.Structure):
    """struct kvm_sregs (x86): segment and control registers."""

    _fields_ = (
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", ctypes.c_uint64),
        ("cr2", ctypes.c_uint64),
        ("cr3", ctypes.c_uint64),
        ("cr4", ctypes.c_uint64),
        ("cr8", ctypes.c_uint64),
        ("efer", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("interrupt_bitmap", ctypes.c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    )


class KvmDirtyLog(ctypes.Structure):
    """struct kvm_dirty_log: the slot to harvest and where to copy its bitmap (one bit per page)."""

    _fields_ = (
        ("slot", ctypes.c_uint32),
        ("padding1", ctypes.c_uint32),
        ("dirty_bitmap", ctypes.c_uint64),  # a user pointer, in a 64-bit union
    )


class KvmClearDirtyLog(ctypes.Structure):
    """struct kvm_clear_dirty_log: clear (and re-protect) the pages set in a bitmap of `num_pages` bits
    starting at page `first_page` of the slot."""

    _fields_ = (
        ("slot", ctypes.c_uint32),
        ("num_pages", ctypes.c_uint32),
        ("first_page", ctypes.c_uint64),
        ("dirty_bitmap", ctypes.c_uint64),  # a user pointer, in a 64-bit union
    )


class KvmEnableCap(ctypes.Structure):
    """struct kvm_enable_cap."""

    _fields_ = (
        ("cap", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("args", ctypes.c_uint64 * 4),
        ("pad", ctypes.c_uint8 * 64),
    )


class KvmCpuidEntry2(ctypes.Structure):
    """struct kvm_cpuid_entry2: one CPUID leaf (function, index) and the registers it returns."""

    _fields_ = (
        ("function", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("eax", ctypes.c_uint32),
        ("ebx", ctypes.c_uint32),
        ("ecx", ctypes.c_uint32),
        ("edx", ctypes.c_uint32),
        ("padding", ctypes.c_uint32 * 3),
    )


class KvmCpuid2Header(ctypes.Structure):
    """struct kvm_cpuid2 without its flexible array of entries: what the ioctl number is sized by."""

    _fields_ = (("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32))


# How many CPUID leaves a buffer holds: the supported list of a 6.x kernel is about 75 leaves.
CPUID_ENTRIES = 256


class KvmCpuid2(ctypes.Structure):
    """struct kvm_cpuid2 with room for CPUID_ENTRIES leaves (KVM_GET_SUPPORTED_CPUID, KVM_SET_CPUID2)."""

    _fields_ = (
        ("nent", ctypes.c_uint32),
        ("padding", ctypes.c_uint32),
        ("entries", KvmCpuidEntry2 * CPUID_ENTRIES),
    )


class KvmMsrEntry(ctypes.Structure):
    """struct kvm_msr_entry."""

    _fields_ = (("index", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("data", ctypes.c_uint64))


class KvmMsrsHeader(ctypes.Structure):
    """struct kvm_msrs without its entries: what the ioctl number is sized by."""

    _fields_ = (("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32))


class KvmMsrs1(ctypes.Structure):
    """struct kvm_msrs holding one MSR (KVM_SET_MSRS returns how many of them it set)."""

    _fields_ = (("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("entries", KvmMsrEntry * 1))


class KvmRunHeader(ctypes.Structure):
    """The start of struct kvm_run (the vCPU's shared page), up to the exit-reason union at offset 32."""

    _fields_ = (
        ("request_interrupt_window", ctypes.c_uint8),
        ("immediate_exit", ctypes.c_uint8),
        ("padding1", ctypes.c_uint8 * 6),
        ("exit_reason", ctypes.c_uint32),
        ("ready_for_interrupt_injection", ctypes.c_uint8),
        ("if_flag", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("cr8", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
    )


KVM_RUN_EXIT_UNION_OFFSET = 32


class KvmRunIo(ctypes.Structure):
    """kvm_run's `io` member (KVM_EXIT_IO)."""

    _fields_ = (
        ("direction", ctypes.c_uint8),
        ("size", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("count", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint64),
    )


class KvmRunMmio(ctypes.Structure):
    """kvm_run's `mmio` member (KVM_EXIT_MMIO): an access to a gpa in no memslot."""

    _fields_ = (
        ("phys_addr", ctypes.c_uint64),
        ("data", ctypes.c_uint8 * 8),
        ("len", ctypes.c_uint32),
        ("is_write", ctypes.c_uint8),
    )


class KvmRunInternal(ctypes.Structure):
    """kvm_run's `internal` member (KVM_EXIT_INTERNAL_ERROR)."""

    _fields_ = (
        ("suberror", ctypes.c_uint32),
        ("ndata", ctypes.c_uint32),
        ("data", ctypes.c_uint64 * 16),
    )


class KvmRunFailEntry(ctypes.Structure):
    """kvm_run's `fail_entry` member (KVM_EXIT_FAIL_ENTRY)."""

    _fields_ = (
        ("hardware_entry_failure_reason", ctypes.c_uint64),
        ("cpu", ctypes.c_uint32),
    )


class KvmDirtyGfn(ctypes.Structure):
    """struct kvm_dirty_gfn: one dirty-ring entry; `offset` is the page's index in slot `slot`."""

    _fields_ = (
        ("flags", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
        ("offset", ctypes.c_uint64),
    )


KVM_DIRTY_GFN_F_DIRTY = 1 << 0
KVM_DIRTY_GFN_F_RESET = 1 << 1


class KvmStatsHeader(ctypes.Structure):
    """struct kvm_stats_header: the start of a binary stats fd (KVM_GET_STATS_FD). The offsets are in
    bytes from the start of the file; `name_size` is the bytes each descriptor's name takes, NUL included."""

    _fields_ = (
        ("flags", ctypes.c_uint32),
        ("name_size", ctypes.c_uint32),
        ("num_desc", ctypes.c_uint32),
        ("id_offset", ctypes.c_uint32),
        ("desc_offset", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint32),
    )


class KvmStatsDesc(ctypes.Structure):
    """The fixed part of struct kvm_stats_desc. Its name (`name_size` bytes) follows it, so descriptors
    lie `sizeof(KvmStatsDesc) + name_size` bytes apart. `size` counts u64 values; `offset` is where they
    start, in bytes from the header's `data_offset`."""

    _fields_ = (
        ("flags", ctypes.c_uint32),
        ("exponent", ctypes.c_int16),
        ("size", ctypes.c_uint16),
        ("offset", ctypes.c_uint32),
        ("bucket_size", ctypes.c_uint32),
    )


# The descriptor flags: type (bits 0-3), unit (4-7), base of the exponent (8-11).
KVM_STATS_TYPE_MASK = 0xF << 0
KVM_STATS_TYPE_CUMULATIVE = 0x0 << 0
KVM_STATS_TYPE_INSTANT = 0x1 << 0
KVM_STATS_TYPE_PEAK = 0x2 << 0
KVM_STATS_TYPE_LINEAR_HIST = 0x3 << 0
KVM_STATS_TYPE_LOG_HIST = 0x4 << 0
KVM_STATS_UNIT_MASK = 0xF << 4
KVM_STATS_UNIT_NONE = 0x0 << 4
KVM_STATS_UNIT_BYTES = 0x1 << 4
KVM_STATS_UNIT_SECONDS = 0x2 << 4
KVM_STATS_UNIT_CYCLES = 0x3 << 4
KVM_STATS_UNIT_BOOLEAN = 0x4 << 4
KVM_STATS_BASE_MASK = 0xF << 8
KVM_STATS_BASE_POW10 = 0x0 << 8
KVM_STATS_BASE_POW2 = 0x1 << 8

STATS_TYPE_NAMES: dict[int, str] = {
    KVM_STATS_TYPE_CUMULATIVE: "cumulative",
    KVM_STATS_TYPE_INSTANT: "instant",
    KVM_STATS_TYPE_PEAK: "peak",
    KVM_STATS_TYPE_LINEAR_HIST: "linear_hist",
    KVM_STATS_TYPE_LOG_HIST: "log_hist",
}
STATS_UNIT_NAMES: dict[int, str] = {
    KVM_STATS_UNIT_NONE: "none",
    KVM_STATS_UNIT_BYTES: "bytes",
    KVM_STATS_UNIT_SECONDS: "seconds",
    KVM_STATS_UNIT_CYCLES: "cycles",
    KVM_STATS_UNIT_BOOLEAN: "boolean",
}

# ---------------------------------------------------------------------------------------------------------
# ioctls: on the /dev/kvm fd (system), the VM fd and the vCPU fd

KVM_GET_API_VERSION = _io(KVMIO, 0x00)
KVM_CREATE_VM = _io(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _io(KVMIO, 0x03)  # also on a VM fd, answering for that VM
KVM_GET_VCPU_MMAP_SIZE = _io(KVMIO, 0x04)

KVM_CREATE_VCPU = _io(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _iow(KVMIO, 0x42, KvmDirtyLog)
KVM_SET_USER_MEMORY_REGION = _iow(KVMIO, 0x46, KvmUserspaceMemoryRegion)
KVM_SET_TSS_ADDR = _io(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(KVMIO, 0x48, ctypes.c_uint64)
KVM_ENABLE_CAP = _iow(KVMIO, 0xA3, KvmEnableCap)
KVM_CLEAR_DIRTY_LOG = _iowr(KVMIO, 0xC0, KvmClearDirtyLog)
KVM_RESET_DIRTY_RINGS = _io(KVMIO, 0xC7)
KVM_GET_STATS_FD = _io(KVMIO, 0xCE)  # on a VM or a vCPU fd: returns a read-only fd of its statistics

KVM_GET_SUPPORTED_CPUID = _iowr(KVMIO, 0x05, KvmCpuid2Header)

KVM_RUN = _io(KVMIO, 0x80)
KVM_GET_REGS = _ior(KVMIO, 0x81, KvmRegs)
KVM_SET_REGS = _iow(KVMIO, 0x82, KvmRegs)
KVM_GET_SREGS = _ior(KVMIO, 0x83, KvmSregs)
KVM_SET_SREGS = _iow(KVMIO, 0x84, KvmSregs)
KVM_SET_MSRS = _iow(KVMIO, 0x89, KvmMsrsHeader)
KVM_SET_CPUID2 = _iow(KVMIO, 0x90, KvmCpuid2Header)

# ---------------------------------------------------------------------------------------------------------
# Memslot flags, capabilities, exit reasons

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0

KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_BINARY_STATS_FD = 203
KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223

# The options of KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (args[0]).
KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1

# The page offset, in a vCPU fd, of the vCPU's dirty ring (x86).
KVM_DIRTY_LOG_PAGE_OFFSET = 64

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_DIRTY_RING_FULL = 31

EXIT_REASON_NAMES: dict[int, str] = {
    KVM_EXIT_UNKNOWN: "KVM_EXIT_UNKNOWN",
    KVM_EXIT_EXCEPTION: "KVM_EXIT_EXCEPTION",
    KVM_EXIT_IO: "KVM_EXIT_IO",
    KVM_EXIT_HYPERCALL: "KVM_EXIT_HYPERCALL",
    KVM_EXIT_DEBUG: "KVM_EXIT_DEBUG",
    KVM_EXIT_HLT: "KVM_EXIT_HLT",
    KVM_EXIT_MMIO: "KVM_EXIT_MMIO",
    KVM_EXIT_IRQ_WINDOW_OPEN: "KVM_EXIT_IRQ_WINDOW_OPEN",
    KVM_EXIT_SHUTDOWN: "KVM_EXIT_SHUTDOWN",
    KVM_EXIT_FAIL_ENTRY: "KVM_EXIT_FAIL_ENTRY",
    KVM_EXIT_INTR: "KVM_EXIT_INTR",
    KVM_EXIT_INTERNAL_ERROR: "KVM_EXIT_INTERNAL_ERROR",
    KVM_EXIT_SYSTEM_EVENT: "KVM_EXIT_SYSTEM_EVENT",
    KVM_EXIT_DIRTY_RING_FULL: "KVM_EXIT_DIRTY_RING_FULL",
}


def exit_reason_name(reason: int) -> str:
    return EXIT_REASON_NAMES.get(reason, f"exit reason {reason}")


# The uapi sizes: a layout mistake here would hand the kernel a wrong ioctl number or a short buffer.
_SIZES: dict[type[ctypes.Structure], int] = {
    KvmUserspaceMemoryRegion: 32,
    KvmRegs: 144,
    KvmSegment: 24,
    KvmDtable: 16,
    KvmSregs: 312,
    KvmDirtyLog: 16,
    KvmClearDirtyLog: 24,
    KvmEnableCap: 104,
    KvmCpuidEntry2: 40,
    KvmCpuid2Header: 8,
    KvmMsrEntry: 16,
    KvmMsrsHeader: 8,
    KvmRunHeader: 32,
    KvmDirtyGfn: 16,
    KvmStatsHeader: 24,
    KvmStatsDesc: 16,
}


def _check_sizes() -> None:
    for struct, size in _SIZES.items():
        if ctypes.sizeof(struct) != size:
            raise AssertionError(f"{struct.__name__} is {ctypes.sizeof(struct)} bytes, not {size}")


_check_sizes()
