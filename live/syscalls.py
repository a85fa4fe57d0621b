"""The system calls the live VM makes, through libc (ctypes): ioctl, mmap, munmap, madvise.

An ioctl passes a pointer-sized argument unchanged and runs without the interpreter lock; a failure is a
`KvmError` naming the request. KVM_RUN is not here: it is the one call whose EINTR means something (the
watchdog's kick, `live.watchdog`), so it is not retried.
"""

from __future__ import annotations

import ctypes
import errno
import os

from live import kvm_abi as abi

PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_FAILED = ctypes.c_void_p(-1).value

MADV_HUGEPAGE = 14


class KvmError(OSError):
    """A /dev/kvm operation that failed; str() is one line naming the operation and the errno text."""

    def __str__(self) -> str:
        return str(self.strerror)


libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.restype = ctypes.c_int
libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
libc.munmap.restype = ctypes.c_int
libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
libc.madvise.restype = ctypes.c_int
libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def ioctl(fd: int, request: int, arg: int | ctypes.Structure | ctypes.Array[ctypes.c_char] = 0) -> int:
    """ioctl(2): an int argument is passed as a pointer-sized value, a structure by address. Retries on
    EINTR; raises KvmError (with the request's name when known) on failure."""
    pointer = ctypes.addressof(arg) if not isinstance(arg, int) else arg
    while True:
        result = int(libc.ioctl(fd, request, ctypes.c_void_p(pointer)))
        if result >= 0:
            return result
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise KvmError(code, f"{_REQUEST_NAMES.get(request, hex(request))}: {os.strerror(code)}")


_REQUEST_NAMES: dict[int, str] = {
    getattr(abi, name): name
    for name in (
        "KVM_GET_API_VERSION",
        "KVM_CREATE_VM",
        "KVM_CHECK_EXTENSION",
        "KVM_GET_VCPU_MMAP_SIZE",
        "KVM_CREATE_VCPU",
        "KVM_GET_DIRTY_LOG",
        "KVM_SET_USER_MEMORY_REGION",
        "KVM_SET_TSS_ADDR",
        "KVM_SET_IDENTITY_MAP_ADDR",
        "KVM_ENABLE_CAP",
        "KVM_CLEAR_DIRTY_LOG",
        "KVM_RESET_DIRTY_RINGS",
        "KVM_GET_STATS_FD",
        "KVM_RUN",
        "KVM_GET_REGS",
        "KVM_SET_REGS",
        "KVM_GET_SREGS",
        "KVM_SET_SREGS",
        "KVM_SET_MSRS",
        "KVM_SET_CPUID2",
        "KVM_GET_SUPPORTED_CPUID",
    )
}


def mmap(size: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    address = libc.mmap(None, size, prot, flags, fd, offset)
    if address is None or address == MAP_FAILED:
        code = ctypes.get_errno()
        raise KvmError(code, f"mmap of {size} bytes: {os.strerror(code)}")
    return int(address)


def munmap(address: int, size: int) -> None:
    libc.munmap(address, size)


def madvise_hugepage(address: int, size: int) -> bool:
    """madvise(MADV_HUGEPAGE): let the kernel back the range with transparent huge pages (where THP is
    madvise-only, as on the development machines, nothing else does). False when the kernel refused."""
    return int(libc.madvise(address, size, MADV_HUGEPAGE)) == 0


def kvm_run(fd: int) -> int:
    """One KVM_RUN: 0 when the vCPU exited to userspace, EINTR when a signal (the watchdog's kick) stopped
    it first; any other failure raises KvmError."""
    if int(libc.ioctl(fd, abi.KVM_RUN, None)) >= 0:
        return 0
    code = ctypes.get_errno()
    if code == errno.EINTR:
        return code
    raise KvmError(code, f"KVM_RUN: {os.strerror(code)}")
