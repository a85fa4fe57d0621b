"""KVM's binary statistics (KVM_GET_STATS_FD): the VM's and each vCPU's counters, read and compared.

A VM fd and each vCPU fd hand out a read-only stats fd on KVM_GET_STATS_FD (KVM_CAP_BINARY_STATS_FD,
Linux 5.14). The file starts with `struct kvm_stats_header`; the header gives the offsets of an id
string, of the descriptors (`struct kvm_stats_desc`, each followed by its name in `name_size` bytes) and of
the data block, where each statistic is `size` u64 values at the descriptor's `offset`. The header and
descriptors never change for an fd, so they are read once; the data block is read whole with one pread
per snapshot.

What is compared are the counters: statistics of type cumulative (only grows: `pf_taken`,
`insn_emulation`, `exits`, `remote_tlb_flush`, ...) and instant (a current value that may fall:
`pages_4k`, `pages_2m`, `mmu_unsync`, ...) with one value. Peaks (a high-water mark, whose change says
little) and histograms are read but left out of snapshots.

`VmStats` opens the stats fds of a `live.vm.KvmVm` and its vCPUs together and closes them together; a
kernel without binary stats gives a `VmStats` that says why (`missing`) and whose snapshots are empty.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from live import kvm_abi as abi
from live.owned import Owned
from live.syscalls import KvmError
from live.vm import KvmVm, stats_fd

# Bounds on what a stats header may claim, so that a malformed one cannot make us allocate gigabytes.
MAX_DESCRIPTORS = 1 << 12
MAX_NAME_SIZE = 1 << 10
MAX_VALUES = 1 << 12

_HEADER_SIZE = ctypes.sizeof(abi.KvmStatsHeader)
_DESC_SIZE = ctypes.sizeof(abi.KvmStatsDesc)
_U64 = 8

# The statistics a snapshot keeps.
COUNTER_KINDS = ("cumulative", "instant")


@dataclass(frozen=True, slots=True)
class StatDescriptor:
    """One statistic as its descriptor describes it."""

    name: str
    kind: str  # cumulative, instant, peak, linear_hist, log_hist (or "type N" for a later one)
    unit: str  # none, bytes, seconds, cycles, boolean (or "unit N")
    base: int  # 10 or 2: the value is in unit × base ** exponent
    exponent: int
    size: int  # how many u64 values
    offset: int  # bytes from the start of the data block
    bucket_size: int

    @property
    def is_counter(self) -> bool:
        return self.kind in COUNTER_KINDS and self.size == 1


def _field(value: int, mask: int, names: Mapping[int, str], what: str) -> str:
    """A flags field by its uapi name, or by its number (shifted down) when this module has no name."""
    field = value & mask
    return names.get(field, f"{what} {field >> ((mask & -mask).bit_length() - 1)}")


def parse_descriptors(header: abi.KvmStatsHeader, block: bytes) -> tuple[StatDescriptor, ...]:
    """The descriptors of a stats file from its header and the bytes of its descriptor block."""
    stride = _DESC_SIZE + header.name_size
    if len(block) < stride * header.num_desc:
        raise KvmError(0, "KVM stats: the descriptor block is shorter than its header says")
    descriptors: list[StatDescriptor] = []
    for index in range(header.num_desc):
        start = index * stride
        raw = abi.KvmStatsDesc.from_buffer_copy(block, start)
        name = block[start + _DESC_SIZE : start + stride].split(b"\0", 1)[0].decode("ascii", "replace")
        if raw.size > MAX_VALUES:
            raise KvmError(0, f"KVM stats: {name} claims {raw.size} values")
        descriptors.append(
            StatDescriptor(
                name=name,
                kind=_field(raw.flags, abi.KVM_STATS_TYPE_MASK, abi.STATS_TYPE_NAMES, "type"),
                unit=_field(raw.flags, abi.KVM_STATS_UNIT_MASK, abi.STATS_UNIT_NAMES, "unit"),
                base=2 if raw.flags & abi.KVM_STATS_BASE_MASK == abi.KVM_STATS_BASE_POW2 else 10,
                exponent=raw.exponent,
                size=raw.size,
                offset=raw.offset,
                bucket_size=raw.bucket_size,
            )
        )
    return tuple(descriptors)


def _pread_exactly(fd: int, size: int, offset: int) -> bytes:
    """pread(2) until `size` bytes are read; a file that ends first, or a failed read, is a KvmError."""
    chunks: list[bytes] = []
    done = 0
    while done < size:
        try:
            chunk = os.pread(fd, size - done, offset + done)
        except OSError as error:
            raise KvmError(error.errno or 0, f"KVM stats: pread: {error.strerror or error}") from None
        if not chunk:
            raise KvmError(0, f"KVM stats: the file ends at {offset + done}, before {offset + size}")
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


class StatsFile:
    """One binary stats fd (owned: `close()` closes it). Header, id and descriptors are read at once."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        try:
            self.header = abi.KvmStatsHeader.from_buffer_copy(_pread_exactly(fd, _HEADER_SIZE, 0))
            header = self.header
            if header.num_desc > MAX_DESCRIPTORS or header.name_size > MAX_NAME_SIZE:
                raise KvmError(
                    0, f"KVM stats: a header of {header.num_desc} descriptors, names of {header.name_size}"
                )
            raw_id = _pread_exactly(fd, header.name_size, header.id_offset)
            self.id = raw_id.split(b"\0", 1)[0].decode("ascii", "replace")
            block = _pread_exactly(fd, (_DESC_SIZE + header.name_size) * header.num_desc, header.desc_offset)
            self.descriptors = parse_descriptors(header, block)
            self.data_size = max((d.offset + d.size * _U64 for d in self.descriptors), default=0)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def of(cls, owner_fd: int) -> StatsFile:
        """KVM_GET_STATS_FD on a VM or vCPU fd."""
        return cls(stats_fd(owner_fd))

    def read(self) -> dict[str, tuple[int, ...]]:
        """Every statistic's values now, by name."""
        data = _pread_exactly(self.fd, self.data_size, self.header.data_offset)
        return {
            d.name: tuple(
                int.from_bytes(data[d.offset + k * _U64 : d.offset + (k + 1) * _U64], "little")
                for k in range(d.size)
            )
            for d in self.descriptors
        }

    def counters(self) -> dict[str, int]:
        """The counters now (cumulative and instant statistics of one value), by name."""
        data = _pread_exactly(self.fd, self.data_size, self.header.data_offset)
        return {
            d.name: int.from_bytes(data[d.offset : d.offset + _U64], "little")
            for d in self.descriptors
            if d.is_counter
        }

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The VM's counters and each vCPU's (in vCPU order), as read at one moment or as a difference."""

    vm: dict[str, int]
    vcpus: tuple[dict[str, int], ...]

    def minus(self, before: Snapshot, *, keep_zero: bool = False) -> Snapshot:
        """What changed since `before`: after − before per counter (an instant counter may fall), without
        the counters that did not change unless `keep_zero`."""

        def one(after: Mapping[str, int], earlier: Mapping[str, int]) -> dict[str, int]:
            changes = {name: value - earlier.get(name, 0) for name, value in after.items()}
            return {name: delta for name, delta in sorted(changes.items()) if delta or keep_zero}

        return Snapshot(
            vm=one(self.vm, before.vm),
            vcpus=tuple(one(a, b) for a, b in zip(self.vcpus, before.vcpus, strict=True)),
        )

    def plus(self, other: Snapshot) -> Snapshot:
        """The sum, counter by counter (for adding up the differences of several steps)."""

        def one(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
            return {name: a.get(name, 0) + b.get(name, 0) for name in sorted({*a, *b})}

        return Snapshot(
            vm=one(self.vm, other.vm),
            vcpus=tuple(one(a, b) for a, b in zip(self.vcpus, other.vcpus, strict=True)),
        )

    def vcpu_total(self, name: str) -> int | None:
        """The counter summed over the vCPUs, or None when no vCPU has it."""
        values = [counters[name] for counters in self.vcpus if name in counters]
        return sum(values) if values else None

    def to_json(self) -> dict[str, object]:
        return {"vm": dict(self.vm), "vcpus": {str(i): dict(c) for i, c in enumerate(self.vcpus)}}


class VmStats(Owned):
    """The stats fds of a VM and of each of its vCPUs, opened together and closed together.

    Open it after the vCPUs exist. Where the kernel has no binary stats (no KVM_CAP_BINARY_STATS_FD, or
    the ioctl fails), nothing is opened, `missing` says why in one line and every snapshot is empty.
    """

    def __init__(self, vm: KvmVm, *, opener: Callable[[int], StatsFile] = StatsFile.of) -> None:
        self.vm_file: StatsFile | None = None
        self.vcpu_files: list[StatsFile] = []
        self.missing: str | None = None
        self._vcpus = len(vm.vcpus)
        if not vm.check_extension(abi.KVM_CAP_BINARY_STATS_FD):
            self.missing = "this kernel has no binary statistics (KVM_CAP_BINARY_STATS_FD)"
            return
        try:
            self.vm_file = opener(vm.vm_fd)
            for vcpu in vm.vcpus:
                self.vcpu_files.append(opener(vcpu.fd))
        except KvmError as error:
            self.close()
            self.missing = f"this kernel's statistics cannot be read: {error}"
        except BaseException:
            self.close()
            raise

    def snapshot(self) -> Snapshot:
        if self.vm_file is None:
            return Snapshot(vm={}, vcpus=tuple({} for _ in range(self._vcpus)))
        return Snapshot(vm=self.vm_file.counters(), vcpus=tuple(file.counters() for file in self.vcpu_files))

    def close(self) -> None:
        """Close every stats fd opened. Idempotent."""
        files = [*self.vcpu_files, *([self.vm_file] if self.vm_file is not None else [])]
        self.vcpu_files = []
        self.vm_file = None
        for file in files:
            file.close()
