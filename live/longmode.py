"""The native guest's vCPU state: 64-bit mode with paging, the code at CPL 0, run by the MMU.

What the development machines' kernel needs for guest code to run natively (spec live-kernel.md §2,
measured): the supported CPUID set with KVM_SET_CPUID2 before the control registers (else CR4's bits are
refused); CR0 with PE, PG and WP; CR4 with PAE; EFER with LME, LMA, NXE and SCE; CR3 at the PML4 of
`live.paging`; a 64-bit code segment. On that kernel (`kvm_pvm`, which runs its guests at hardware CPL 3
under a switcher) code at CPL 0 is emulated unless the guest first registers a page through MSR
`PVM_MSR` (bit 10 set in the value): with it the same code runs natively, and its `out` still stops the
vCPU with KVM_EXIT_IO, which a CPL 3 guest's `out` would not (it raises #GP: a shutdown). The MSR is set
from userspace with KVM_SET_MSRS, which answers how many MSRs it took: a kernel without it (every
VMX or SVM host, where CPL 0 code runs natively anyway) takes none, and nothing else changes.

Whether the guest really ran natively is never assumed from this setup: `live.execution` decides it from
the run's statistics.
"""

from __future__ import annotations

from live import kvm_abi as abi
from live.syscalls import ioctl

CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

LONG_MODE_CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG  # 0x80050033
LONG_MODE_CR4 = CR4_PAE
LONG_MODE_EFER = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE  # 0xd01

# The PVM MSR that lets CPL 0 guest code run natively, and the enable bit of its value (measured; the
# MSR's meaning is otherwise undocumented).
PVM_MSR = 0x4B564D10
PVM_MSR_ENABLE = 1 << 10

CODE_SELECTOR = 0x08
DATA_SELECTOR = 0x10


def supported_cpuid(kvm_fd: int) -> abi.KvmCpuid2:
    """KVM_GET_SUPPORTED_CPUID on the /dev/kvm fd: every leaf the kernel can give a guest."""
    cpuid = abi.KvmCpuid2(nent=abi.CPUID_ENTRIES)
    ioctl(kvm_fd, abi.KVM_GET_SUPPORTED_CPUID, cpuid)
    return cpuid


def enter_long_mode(vcpu_fd: int, cpuid: abi.KvmCpuid2, cr3: int) -> None:
    """Set the vCPU's CPUID, then 64-bit mode at CPL 0 with paging rooted at `cr3`, flat segments."""
    ioctl(vcpu_fd, abi.KVM_SET_CPUID2, cpuid)
    sregs = abi.KvmSregs()
    ioctl(vcpu_fd, abi.KVM_GET_SREGS, sregs)
    code = abi.KvmSegment(
        base=0, limit=0xFFFFFFFF, selector=CODE_SELECTOR, type=0xB, present=1, dpl=0, db=0, s=1, l=1, g=1
    )
    data = abi.KvmSegment(
        base=0, limit=0xFFFFFFFF, selector=DATA_SELECTOR, type=0x3, present=1, dpl=0, db=1, s=1, l=0, g=1
    )
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.cr0 = LONG_MODE_CR0
    sregs.cr3 = cr3
    sregs.cr4 = LONG_MODE_CR4
    sregs.efer = LONG_MODE_EFER
    ioctl(vcpu_fd, abi.KVM_SET_SREGS, sregs)


def register_pvm_page(vcpu_fd: int, gpa: int) -> bool:
    """Write PVM_MSR with the page at `gpa` (inside a memslot): True when the kernel took it."""
    msrs = abi.KvmMsrs1(nmsrs=1)
    msrs.entries[0].index = PVM_MSR
    msrs.entries[0].data = gpa | PVM_MSR_ENABLE
    return ioctl(vcpu_fd, abi.KVM_SET_MSRS, msrs) == 1
