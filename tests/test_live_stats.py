"""KVM's binary statistics (`live.stats`): the file format, snapshots and their differences, and what
this machine's kernel counts while the guest runs.

The parser is tested on made-up files everywhere; the rest reads the real device and is skipped, with the
reason `availability()` gives, where /dev/kvm cannot be opened.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from engine.scenario import parse_scenario
from live import kvm_abi as abi
from live.backend import run_with_stats
from live.guest_code import access_program
from live.report import availability
from live.stats import Snapshot, StatsFile, VmStats, parse_descriptors
from live.vm import KvmError, KvmVm
from scenarios import load_builtin_text

UNAVAILABLE = availability()
needs_kvm = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no usable KVM device: {UNAVAILABLE}")

def _has_hardware_virtualisation() -> bool:
    """Whether this CPU offers VMX or SVM (then KVM runs this guest on the CPU, through EPT/NPT)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(
        line.startswith("flags") and bool({"vmx", "svm"} & set(line.split())) for line in flags.splitlines()
    )


# ---------------------------------------------------------------------------------------------------------
# The file format, on a made-up stats file


def _stats_file(stats: list[tuple[str, int, list[int]]], name_size: int = 48) -> bytes:
    """A binary stats file as the kernel lays it out: header, id, descriptors, data."""
    header = abi.KvmStatsHeader(
        flags=0, name_size=name_size, num_desc=len(stats), id_offset=24, desc_offset=24 + name_size
    )
    descriptors = b""
    data = b""
    for name, flags, values in stats:
        desc = abi.KvmStatsDesc(flags=flags, exponent=0, size=len(values), offset=len(data), bucket_size=0)
        descriptors += bytes(desc) + name.encode().ljust(name_size, b"\0")
        data += b"".join(value.to_bytes(8, "little") for value in values)
    header.data_offset = header.desc_offset + len(descriptors)
    return bytes(header) + b"kvm-1/vcpu-0".ljust(name_size, b"\0") + descriptors + data


MADE_UP = [
    ("pf_taken", abi.KVM_STATS_TYPE_CUMULATIVE, [7]),
    ("pages_4k", abi.KVM_STATS_TYPE_INSTANT, [3]),
    ("max_mmu_rmap_size", abi.KVM_STATS_TYPE_PEAK, [9]),
    ("halt_wait_hist", abi.KVM_STATS_TYPE_LOG_HIST | abi.KVM_STATS_UNIT_SECONDS, [1, 2, 3]),
    ("insn_emulation", abi.KVM_STATS_TYPE_CUMULATIVE, [1 << 63]),
]


def test_the_layout_is_the_uapi_one() -> None:
    assert abi.KVM_GET_STATS_FD == 0xAECE
    assert ctypes.sizeof(abi.KvmStatsHeader) == 24 and ctypes.sizeof(abi.KvmStatsDesc) == 16
    assert abi.KvmStatsDesc.offset.offset == 8 and abi.KvmStatsHeader.data_offset.offset == 20


def test_a_stats_file_is_parsed_and_only_counters_are_snapshotted(tmp_path: Path) -> None:
    path = tmp_path / "stats"
    path.write_bytes(_stats_file(MADE_UP))
    file = StatsFile(os.open(path, os.O_RDONLY))
    try:
        assert file.id == "kvm-1/vcpu-0"
        kinds = {d.name: (d.kind, d.unit, d.size) for d in file.descriptors}
        assert kinds["halt_wait_hist"] == ("log_hist", "seconds", 3)
        assert kinds["pages_4k"] == ("instant", "none", 1)
        assert file.read()["halt_wait_hist"] == (1, 2, 3)
        assert file.counters() == {"pf_taken": 7, "pages_4k": 3, "insn_emulation": 1 << 63}
    finally:
        file.close()
    file.close()  # twice is harmless


def test_a_truncated_or_absurd_file_is_an_error_and_its_fd_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "stats"
    whole = _stats_file(MADE_UP)
    path.write_bytes(whole[: len(whole) - 8])  # the data block ends early: counters() must say so
    file = StatsFile(os.open(path, os.O_RDONLY))
    with pytest.raises(KvmError, match="the file ends"):
        file.counters()
    file.close()
    path.write_bytes(whole[:60])
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(KvmError, match="the file ends"):
        StatsFile(fd)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the failed constructor
    huge = abi.KvmStatsHeader(name_size=48, num_desc=1 << 20, id_offset=24, desc_offset=72, data_offset=0)
    path.write_bytes(bytes(huge) + bytes(64))
    with pytest.raises(KvmError, match="descriptors"):
        StatsFile(os.open(path, os.O_RDONLY))


def test_descriptors_name_a_later_type_by_its_number() -> None:
    header = abi.KvmStatsHeader(name_size=8, num_desc=1)
    block = bytes(abi.KvmStatsDesc(flags=0x9 | 0x7 << 4, size=1)) + b"new\0\0\0\0\0"
    (desc,) = parse_descriptors(header, block)
    assert (desc.name, desc.kind, desc.unit, desc.is_counter) == ("new", "type 9", "unit 7", False)


def test_snapshot_differences_keep_falls_and_drop_zeros_unless_asked() -> None:
    before = Snapshot(vm={"pages_4k": 5, "pages_2m": 1}, vcpus=({"pf_taken": 2, "exits": 4}, {"pf_taken": 0}))
    after = Snapshot(vm={"pages_4k": 4, "pages_2m": 1}, vcpus=({"pf_taken": 3, "exits": 4}, {"pf_taken": 6}))
    delta = after.minus(before)
    assert delta.to_json() == {"vm": {"pages_4k": -1}, "vcpus": {"0": {"pf_taken": 1}, "1": {"pf_taken": 6}}}
    assert after.minus(before, keep_zero=True).vm == {"pages_2m": 0, "pages_4k": -1}
    assert delta.plus(delta).vcpu_total("pf_taken") == 14
    assert delta.vcpu_total("insn_emulation") is None


# ---------------------------------------------------------------------------------------------------------
# The real device


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@needs_kvm
def test_the_kernel_offers_the_mmu_and_emulator_counters() -> None:
    with KvmVm(2) as vm, VmStats(vm) as stats:
        assert stats.missing is None
        assert stats.vm_file is not None and len(stats.vcpu_files) == 2
        vm_names = {d.name for d in stats.vm_file.descriptors}
        vcpu_names = {d.name for d in stats.vcpu_files[0].descriptors}
        assert {"pages_4k", "pages_2m", "remote_tlb_flush"} <= vm_names
        assert {"pf_taken", "pf_fixed", "insn_emulation", "exits"} <= vcpu_names
        kinds = {d.name: d.kind for d in stats.vcpu_files[0].descriptors}
        assert kinds["pf_taken"] == "cumulative"
        snapshot = stats.snapshot()
        assert "pf_taken" in snapshot.vcpus[1] and "pages_4k" in snapshot.vm
        assert not any(kinds[name].endswith("hist") for name in snapshot.vcpus[0])


@needs_kvm
@pytest.mark.parametrize("write", [True, False])
def test_n_accesses_emulated_count_at_least_n_instructions(write: bool) -> None:
    stores = 500
    with KvmVm(1) as vm:
        vm.add_slot(1, 0x200, 512)
        vm.add_code_slot(0, 0xFDFFF)
        with VmStats(vm) as stats:
            before = stats.snapshot()
            vm.run_code(0, access_program(0x200, stores, 0, write))
            delta = stats.snapshot().minus(before, keep_zero=True)
    emulated = delta.vcpus[0]["insn_emulation"]
    faults = delta.vcpus[0]["pf_taken"]
    if _has_hardware_virtualisation():
        assert faults > 0  # EPT/NPT: the first touch faults, the loop runs on the CPU
    else:
        assert emulated >= stores and faults == 0
        assert delta.vm["pages_4k"] == delta.vm["pages_2m"] == 0


@needs_kvm
def test_stats_fds_are_closed_on_every_path() -> None:
    with KvmVm(1) as warm, VmStats(warm):
        pass
    fds = _open_fds()
    with KvmVm(2) as vm:
        with VmStats(vm) as stats:
            stats.snapshot()
        stats.close()  # twice is harmless

        opened: list[int] = []

        def failing_second(fd: int) -> StatsFile:
            if opened:
                raise KvmError(0, "KVM_GET_STATS_FD: refused")
            opened.append(fd)
            return StatsFile.of(fd)

        broken = VmStats(vm, opener=failing_second)
        assert broken.missing == "this kernel's statistics cannot be read: KVM_GET_STATS_FD: refused"
        assert broken.snapshot() == Snapshot(vm={}, vcpus=({}, {}))
    assert _open_fds() == fds
    parsed = parse_scenario(load_builtin_text("worked-example"))
    run_with_stats(parsed)
    assert _open_fds() == fds


@needs_kvm
def test_a_run_reports_each_steps_counters() -> None:
    parsed = parse_scenario(load_builtin_text("worked-example"))
    run = run_with_stats(parsed)
    assert run.stats_missing is None
    assert (run.guest_accesses, run.pages_touched) == (8, 6)
    assert len(run.step_stats) == len(parsed.steps)
    # Each access step made the guest run: at least one exit (its hlt) on vCPU 0.
    for index, step in enumerate(parsed.steps):
        if step.op in ("read", "write"):
            assert run.step_stats[index].vcpus[0].get("exits", 0) >= 1, index
    total = run.step_stats[0]
    for later in run.step_stats[1:]:
        total = total.plus(later)
    assert total.vcpu_total("insn_emulation") == run.totals.vcpu_total("insn_emulation")
    assert "pf_taken" in run.totals.vcpus[0]  # zeros are kept in the totals
