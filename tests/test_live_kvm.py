"""The live-kernel backend (`live/`): the ABI numbers, the hand-written guest code, refusals, the result
shape, and, where /dev/kvm opens, what the kernel's dirty log returns for the spec's live-kernel facts.

The tests that need the device skip with the reason `availability()` gives; the others run anywhere.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from engine.scenario import STEP_OPS, Scenario, parse_scenario
from live import kvm_abi as abi
from live.backend import (
    MAX_LIVE_PAGES,
    RING_WRITE_BUDGET,
    KernelRun,
    UnsupportedScenarioError,
    code_gfn,
    code_slot_id,
    refusal,
    run_on_kernel,
)
from live.guest_code import Assembler, Reg, access_program
from live.report import RealRefusalError, availability, compare_logs, real_result
from live.stats import Snapshot
from live.vm import DEVICE_ENV, KvmVm
from scenarios import load_builtin_text

EMULATED = "the kernel emulated these accesses: its dirty-log ioctls were checked, its MMU was not"

UNAVAILABLE = availability()
needs_kvm = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no usable KVM device: {UNAVAILABLE}")
needs_new_ops = pytest.mark.skipif(
    "clear_dirty_log" not in STEP_OPS or "reset_dirty_ring" not in STEP_OPS,
    reason="the scenario format has no clear_dirty_log / reset_dirty_ring yet",
)


def scenario(
    steps: list[dict[str, Any]],
    *,
    vcpus: int = 1,
    memslots: list[dict[str, Any]] | None = None,
) -> Scenario:
    """A scenario on the spec example's VM: one 2 MiB slot (id 1) at gfn 0x200, unless told otherwise."""
    return parse_scenario(
        {
            "format": "sptelab-scenario",
            "version": 1,
            "vm": {"vcpus": vcpus},
            "memslots": memslots or [{"id": 1, "base_gfn": "0x200", "npages": 512}],
            "steps": steps,
        }
    )


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def mapping_count() -> int:
    return len(Path("/proc/self/maps").read_text().splitlines())


# ---------------------------------------------------------------------------------------------------------
# The ABI: ioctl numbers as the uapi header's macros compute them, structure sizes


def test_ioctl_numbers_are_the_uapi_values() -> None:
    assert abi.KVM_GET_API_VERSION == 0xAE00
    assert abi.KVM_CREATE_VM == 0xAE01
    assert abi.KVM_CHECK_EXTENSION == 0xAE03
    assert abi.KVM_GET_VCPU_MMAP_SIZE == 0xAE04
    assert abi.KVM_CREATE_VCPU == 0xAE41
    assert abi.KVM_GET_DIRTY_LOG == 0x4010AE42
    assert abi.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert abi.KVM_SET_TSS_ADDR == 0xAE47
    assert abi.KVM_ENABLE_CAP == 0x4068AEA3
    assert abi.KVM_CLEAR_DIRTY_LOG == 0xC018AEC0
    assert abi.KVM_RESET_DIRTY_RINGS == 0xAEC7
    assert abi.KVM_RUN == 0xAE80
    assert abi.KVM_GET_REGS == 0x8090AE81
    assert abi.KVM_SET_REGS == 0x4090AE82
    assert abi.KVM_GET_SREGS == 0x8138AE83
    assert abi.KVM_SET_SREGS == 0x4138AE84


def test_structures_have_the_uapi_sizes_and_offsets() -> None:
    assert ctypes.sizeof(abi.KvmSregs) == 312
    assert abi.KvmSregs.cr0.offset == 8 * 24 + 2 * 16
    assert abi.KvmRunHeader.exit_reason.offset == 8
    assert ctypes.sizeof(abi.KvmDirtyGfn) == 16
    assert abi.KvmClearDirtyLog.first_page.offset == 8


# ---------------------------------------------------------------------------------------------------------
# The assembler: each instruction against its known encoding


@pytest.mark.parametrize(
    ("emit", "encoding"),
    [
        (lambda a: a.mov_imm(Reg.ESI, 0x210000), "be 00 00 21 00"),
        (lambda a: a.mov_imm(Reg.ECX, 1), "b9 01 00 00 00"),
        (lambda a: a.mov_imm(Reg.EAX, 0x5A5A5A5A), "b8 5a 5a 5a 5a"),
        (lambda a: a.store(Reg.ESI, Reg.EAX), "89 06"),
        (lambda a: a.load(Reg.EAX, Reg.ESI), "8b 06"),
        (lambda a: a.store(Reg.EBX, Reg.ECX), "89 0b"),
        (lambda a: a.add_imm(Reg.ESI, 0x1000), "81 c6 00 10 00 00"),
        (lambda a: a.add_imm(Reg.EAX, 0xFFFFFFFF), "81 c0 ff ff ff ff"),
        (lambda a: a.dec(Reg.ECX), "49"),
        (lambda a: a.hlt(), "f4"),
    ],
)
def test_instruction_encodings(emit: Any, encoding: str) -> None:
    asm = Assembler()
    emit(asm)
    assert asm.bytes() == bytes.fromhex(encoding)


def test_jnz_back_to_a_label_takes_the_short_form_when_it_fits_else_the_near_form() -> None:
    asm = Assembler()
    asm.label("top")
    asm.dec(Reg.ECX)
    asm.jnz("top")
    assert asm.bytes() == bytes.fromhex("49 75 fd")  # back over itself (2) and dec (1)
    far = Assembler()
    far.label("top")
    for _ in range(200):
        far.dec(Reg.ECX)
    far.jnz("top")
    assert far.bytes()[200:] == bytes.fromhex("0f 85") + (-206).to_bytes(4, "little", signed=True)


def test_base_registers_that_need_a_sib_byte_or_displacement_are_refused() -> None:
    with pytest.raises(ValueError, match="SIB"):
        Assembler().store(Reg.ESP, Reg.EAX)
    with pytest.raises(ValueError, match="SIB"):
        Assembler().load(Reg.EAX, Reg.EBP)


def test_access_program_is_the_documented_loop() -> None:
    assert access_program(0x250, 3, 2, True) == bytes.fromhex(
        "be 00 00 25 00"  # mov esi, 0x250000
        "b9 03 00 00 00"  # mov ecx, 3
        "b8 5a 5a 5a 5a"  # mov eax, 0x5a5a5a5a
        "89 06"  # again: mov [esi], eax
        "81 c6 00 20 00 00"  # add esi, 0x2000
        "49"  # dec ecx
        "75 f5"  # jnz again
        "f4"  # hlt
    )
    read = access_program(0x250, 1, 7, False)
    assert read[15:17] == bytes.fromhex("8b 06")
    assert read[17:23] == bytes.fromhex("81 c6 00 00 00 00")  # one access: the stride is not used


def test_access_program_refuses_addresses_at_or_above_4_gib() -> None:
    with pytest.raises(ValueError, match="4 GiB"):
        access_program(0xFFFFF, 2, 1, True)


# ---------------------------------------------------------------------------------------------------------
# What the backend refuses, and where it puts its own page


@pytest.mark.parametrize(
    ("memslots", "steps", "expected"),
    [
        (
            [{"id": 1, "base_gfn": "0x100000", "npages": 1}],
            [],
            "memslots[0] (slot 1, gfns 0x100000-0x100000) reaches gfn 0x100000 (4 GiB) or above, which the"
            " live backend's 32-bit guest code cannot address",
        ),
        (
            [{"id": 1, "base_gfn": "0xfec00", "npages": 1}],
            [],
            "memslots[0] (slot 1, gfns 0xfec00-0xfec00) overlaps gfns 0xfe000-0xfffff, which the live VM"
            " keeps for the APICs and KVM's own pages (identity map, TSS)",
        ),
        (
            [{"id": 32765, "base_gfn": "0x200", "npages": 1}],
            [],
            "memslots[0] (slot 32765, gfns 0x200-0x200): slot ids from 32764 up are KVM's own on x86",
        ),
        (
            [
                {"id": 1, "base_gfn": "0x0", "npages": MAX_LIVE_PAGES},
                {"id": 2, "base_gfn": hex(MAX_LIVE_PAGES), "npages": 1},
            ],
            [],
            f"the memslots hold {MAX_LIVE_PAGES + 1} pages; the live backend runs at most {MAX_LIVE_PAGES}"
            " (1 GiB of guest memory)",
        ),
        (
            None,
            [{"op": "write", "gfn": "0x200"}, {"op": "flush_tlb"}],
            "step 1 (flush_tlb): userspace has no ioctl that flushes a VM's TLBs (the kernel flushes when"
            " it needs to)",
        ),
        (
            None,
            [{"op": "zap_all"}],
            "step 0 (zap_all): userspace has no ioctl that zaps every spte (the kernel does it on its own,"
            " e.g. when a memslot is deleted)",
        ),
    ],
)
def test_refusals_name_what_the_live_backend_cannot_express(
    memslots: list[dict[str, Any]] | None, steps: list[dict[str, Any]], expected: str
) -> None:
    parsed = scenario(steps, memslots=memslots)
    assert refusal(parsed) == expected
    with pytest.raises(UnsupportedScenarioError) as raised:
        run_on_kernel(parsed, device="/nonexistent/kvm")  # refused before the device is opened
    assert str(raised.value) == expected


def test_an_unknown_mode_is_refused_and_everything_else_of_the_library_is_accepted() -> None:
    assert refusal(scenario([]), "pml") == (
        "dirty-log mode 'pml' is unknown (known: bitmap, manual_clear, initially_set, ring)"
    )
    from scenarios import builtin_scenarios

    # The shadow-paging lessons are the shadow agreement's to judge (tests/test_live_shadow_*.py).
    refused = {
        name for name, parsed in builtin_scenarios() if parsed.vm.mmu == "tdp" and refusal(parsed) is not None
    }
    assert refused == {"zap-all"}


def test_the_code_page_goes_below_the_reserved_window_where_no_slot_is() -> None:
    assert code_gfn([(0x200, 512)]) == 0xFDFFF
    assert code_gfn([(0xFD000, 0x1000)]) == 0xFCFFF
    assert code_gfn([(0xFC000, 0x1000), (0xFD000, 0x1000), (0x0, 0x10)]) == 0xFBFFF
    assert code_slot_id([1, 2]) == 0
    assert code_slot_id([0, 1, 3]) == 2


# ---------------------------------------------------------------------------------------------------------
# The result of contract §3


def test_compare_lists_the_steps_whose_sets_differ() -> None:
    kernel = [None, [0x250, 0x260], [0x300], None]
    engine = [None, [0x250, 0x260], [0x2C0, 0x300], None]
    assert compare_logs(kernel, engine) == {
        "agrees": False,
        "differences": [{"step": 2, "kernel_only": [], "engine_only": [0x2C0]}],
    }
    assert compare_logs(kernel, kernel) == {"agrees": True, "differences": []}


def test_real_result_has_the_contract_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = parse_scenario(load_builtin_text("worked-example"))
    kernel: list[list[int] | None] = [None] * len(parsed.steps)
    kernel[7], kernel[10], kernel[11] = [0x250, 0x260, 0x2C0], [0x250, 0x300, 0x301], []
    quiet = Snapshot(vm={}, vcpus=({},))
    step_stats = [
        Snapshot(vm={}, vcpus=({"insn_emulation": 8, "exits": 1},)) if step.op in ("read", "write") else quiet
        for step in parsed.steps
    ]
    run = KernelRun(
        logs=kernel,
        step_stats=step_stats,
        totals=Snapshot(vm={"pages_4k": 0}, vcpus=({"insn_emulation": 64, "exits": 8, "pf_taken": 0},)),
        stats_missing=None,
        guest_accesses=8,
        pages_touched=6,
    )
    monkeypatch.setattr("live.report.run_with_stats", lambda *args, **kwargs: run)
    result: dict[str, Any] = real_result(parsed, ["lazy"])
    assert list(result) == ["format", "version", "kernel", "steps", "compare", "live"]
    assert (result["format"], result["version"], result["kernel"]) == ("sptelab-real", 1, os.uname().release)
    assert [(s["index"], s["dirty_log"]) for s in result["steps"]] == list(enumerate(kernel))
    four = {"insn_emulation": 8, "exits": 1}
    assert result["steps"][4]["live"] == {"stats": {"vm": {}, "vcpus": {"0": four}}}
    assert result["steps"][7]["live"] == {"stats": {"vm": {}, "vcpus": {"0": {}}}}
    assert result["compare"] == {
        "lazy": {"agrees": False, "differences": [{"step": 10, "kernel_only": [0x301], "engine_only": []}]}
    }
    live = result["live"]
    assert {key: live[key] for key in ("execution", "mmu_exercised", "checked")} == {
        "execution": "emulated",
        "mmu_exercised": False,
        "checked": "dirty_log_ioctls",
    }
    assert (live["emulated_instructions"], live["page_faults"], live["guest_accesses"]) == (64, 0, 8)
    assert live["headline"] == EMULATED
    assert "insn_emulation grew by 64 for 8 guest accesses" in live["reason"]
    # The emulated guest logs exactly what the worked example writes: 0x301 is the kernel's alone.
    assert live["oracle"] == {
        "agrees": False,
        "differences": [{"step": 10, "kernel_only": [0x301], "engine_only": []}],
    }
    totals = {"exits": 8, "insn_emulation": 64, "pf_taken": 0}
    assert live["stats"] == {"vm": {"pages_4k": 0}, "vcpus": {"0": totals}}
    assert live["stats_missing"] is None
    json.dumps(result)  # plain JSON values only


def _made_up_run(parsed: Scenario, *, native: bool) -> KernelRun:
    """The worked example's kernel logs, with the counters of an emulated run or of one through the MMU."""
    kernel: list[list[int] | None] = [None] * len(parsed.steps)
    kernel[7], kernel[10], kernel[11] = [0x250, 0x260, 0x2C0], [0x250, 0x300], []
    counters = {"pf_taken": 6, "insn_emulation": 8} if native else {"pf_taken": 0, "insn_emulation": 64}
    return KernelRun(
        logs=kernel,
        step_stats=[Snapshot(vm={}, vcpus=({},)) for _ in parsed.steps],
        totals=Snapshot(vm={"pages_4k": 6 if native else 0}, vcpus=({**counters, "exits": 8},)),
        stats_missing=None,
        guest_accesses=8,
        pages_touched=6,
    )


@pytest.mark.parametrize("native", [False, True])
def test_cli_real_claims_agreement_with_an_mmu_only_when_the_mmu_ran(
    native: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = parse_scenario(load_builtin_text("worked-example"))
    run = _made_up_run(parsed, native=native)
    monkeypatch.setattr("live.report.run_with_stats", lambda *args, **kwargs: run)
    monkeypatch.setattr("cli.real.availability", lambda *args: None)
    monkeypatch.setattr("live.report.host_mmu", lambda: "tdp")  # a host whose MMU `modern` models
    assert main(["real", "worked-example", "--compare", "lazy-buggy,lazy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].startswith("  why: pf_taken ")
    said = {" ".join(line.split()) for line in lines}
    assert "emulated guest agrees" in said
    if native:
        assert lines[2] == (
            "the kernel's MMU ran these accesses: the presets' dirty logs were compared with the kernel's MMU"
        )
        assert "lazy agrees" in said
        assert lines[-2:] == ["lazy-buggy: differs at 2 steps", "lazy: agrees at every step"]
    else:
        assert lines[2] == EMULATED
        assert "lazy's MMU would log the same" in said
        assert lines[-3:] == [
            "what each preset's MMU would log, not checked against the kernel's MMU:",
            "lazy-buggy: other pages at 2 steps",
            "lazy: the same pages at every step",
        ]
        assert not any(line.endswith("  agrees") and "emulated guest" not in line for line in lines)


def test_availability_names_a_device_that_does_not_open() -> None:
    assert availability("/nonexistent/kvm") == "cannot open /nonexistent/kvm: No such file or directory"
    with pytest.raises(RealRefusalError, match="cannot open /nonexistent/kvm"):
        real_result(scenario([]), ["lazy"], device="/nonexistent/kvm")


# ---------------------------------------------------------------------------------------------------------
# The CLI


def test_cli_real_refuses_an_unopenable_device_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DEVICE_ENV, "/nonexistent/kvm")
    assert main(["real", "worked-example", "--compare", "lazy"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "sptelab real: cannot open /nonexistent/kvm: No such file or directory\n"


def test_cli_real_refuses_an_inexpressible_scenario_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["real", "zap-all"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sptelab real: step ") and "(zap_all): userspace has no ioctl" in err
    assert err.count("\n") == 1


def test_cli_real_refuses_an_unknown_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["real", "worked-example", "--compare", "lazy,nope"]) == 2
    assert capsys.readouterr().err.startswith("sptelab real: unknown variant 'nope'")


def test_cli_real_refuses_an_oversized_scenario_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = json.loads(load_builtin_text("worked-example"))
    data["description"] = "x" * (1 << 20)
    path = tmp_path / "big.json"
    path.write_text(json.dumps(data))
    assert main(["real", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("sptelab real: ") and captured.err.count("\n") == 1
    assert "1 MiB" in captured.err or "too large" in captured.err


@needs_kvm
def test_cli_real_json_and_text_of_the_emulated_guest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["real", "worked-example", "--json", "--guest", "emulated"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["compare"]) == ["modern"]
    assert set(result["compare"]["modern"]) == {"agrees", "differences"}
    assert result["live"]["oracle"] == {"agrees": True, "differences": []}
    assert result["live"]["guest"] == "emulated" and not result["live"]["traced"]
    emulated = ["--guest", "emulated"]
    assert main(["real", "worked-example", "--compare", "modern", "--compare", "zap", *emulated]) == 0
    text = capsys.readouterr().out
    assert "step   7  migrate_round: kernel [0x250, 0x260, 0x2c0]" in text
    assert "          emulated guest  agrees" in text
    assert "emulated guest: agrees with the kernel at every step" in text
    if result["live"]["mmu_exercised"]:  # a host with EPT/NPT runs even this guest natively
        assert text.splitlines()[2].startswith("the kernel's MMU ran these accesses")
        return
    lines = text.splitlines()
    assert lines[2] == EMULATED
    assert lines[3].startswith("  why: pf_taken stayed 0 although the guest touched 6 pages")
    assert lines[4].startswith("  stats over the run: pf_taken 0, ")
    assert lines[5].startswith("  guest: emulated (32-bit, paging off); host MMU: ")
    assert lines[5].endswith("; kernel tracepoints not read: the guest was emulated")
    assert "          zap's MMU       would log the same" in text
    assert "what each preset's MMU would log, not checked against the kernel's MMU:" in text
    assert "zap: the same pages at every step" in text
    verdicts = text.replace("emulated guest: agrees with the kernel at every step", "")
    assert "agrees at every step" not in verdicts and "  agrees" not in verdicts.replace("guest  agrees", "")
    # The 3.x presets' MMUs log a read of a logged page; the emulated guest and the kernel do not.
    assert main(["real", "read-mostly-logging", "--compare", "modern,lazy", "--guest", "emulated"]) == 0
    text = capsys.readouterr().out
    assert "emulated guest: agrees with the kernel at every step" in text
    assert "lazy: other pages at 1 step" in text
    assert "lazy's MMU      would log other pages: kernel only [], engine only [" in text


@needs_kvm
def test_cli_real_escapes_control_characters_in_the_title(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = json.loads(load_builtin_text("worked-example"))
    data["title"] = "evil \x1b[31mred"
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    assert main(["real", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "evil \\x1b[31mred" in out


# ---------------------------------------------------------------------------------------------------------
# The live kernel: the spec's live-kernel note, one fact per test


@needs_kvm
def test_worked_example_on_the_kernel() -> None:
    logs = run_on_kernel(parse_scenario(load_builtin_text("worked-example")))
    assert logs[7] == [0x250, 0x260, 0x2C0]
    assert logs[10] == [0x250, 0x300]
    assert logs[11] == []
    assert [i for i, log in enumerate(logs) if log is not None] == [7, 10, 11]


@needs_kvm
def test_a_read_of_a_logged_page_is_not_dirty_even_when_prefaulted() -> None:
    logs = run_on_kernel(
        scenario(
            [
                {"op": "write", "gfn": "0x200", "count": 512},
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "read", "gfn": "0x200", "count": 512},
                {"op": "get_dirty_log", "slot": 1},
            ]
        )
    )
    assert logs[3] == []


@needs_kvm
def test_write_storm_logs_every_page_then_only_the_rewritten_half() -> None:
    logs = run_on_kernel(
        scenario(
            [
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "write", "gfn": "0x200", "count": 512},
                {"op": "get_dirty_log", "slot": 1},
                {"op": "write", "gfn": "0x200", "count": 256, "stride": 2},
                {"op": "get_dirty_log", "slot": 1},
            ]
        )
    )
    assert logs[2] == list(range(0x200, 0x400))
    assert logs[4] == list(range(0x200, 0x400, 2))


@needs_kvm
def test_two_vcpus_log_exactly_their_pages() -> None:
    logs = run_on_kernel(
        scenario(
            [
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "write", "gfn": "0x211", "vcpu": 0},
                {"op": "write", "gfn": "0x300", "vcpu": 1},
                {"op": "get_dirty_log", "slot": 1},
            ],
            vcpus=2,
        )
    )
    assert logs[3] == [0x211, 0x300]


@needs_kvm
def test_disable_then_reenable_logs_only_the_new_write() -> None:
    logs = run_on_kernel(
        scenario(
            [
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "write", "gfn": "0x250"},
                {"op": "disable_dirty_log", "slot": 1},
                {"op": "write", "gfn": "0x260"},
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "write", "gfn": "0x201"},
                {"op": "get_dirty_log", "slot": 1},
            ]
        )
    )
    assert logs[6] == [0x201]


@needs_kvm
def test_two_slots_migrate_and_end_disables_only_what_begin_enabled() -> None:
    memslots = [{"id": 1, "base_gfn": "0x200", "npages": 512}, {"id": 7, "base_gfn": "0x1000", "npages": 64}]
    logs = run_on_kernel(
        scenario(
            [
                {"op": "enable_dirty_log", "slot": 7},
                {"op": "migrate_begin"},
                {"op": "write", "gfn": "0x1003"},
                {"op": "write", "gfn": "0x210"},
                {"op": "migrate_round"},
                {"op": "write", "gfn": "0x1004"},
                {"op": "migrate_end"},
                {"op": "write", "gfn": "0x1005"},
                {"op": "write", "gfn": "0x211"},
                {"op": "get_dirty_log", "slot": 7},
            ],
            memslots=memslots,
        )
    )
    assert logs[4] == [0x210, 0x1003]
    assert logs[6] == [0x1004]
    assert logs[9] == [0x1005]  # slot 7 stayed logged; slot 1's logging ended with the migration


@needs_kvm
@needs_new_ops
@pytest.mark.parametrize("mode", ["bitmap", "manual_clear", "initially_set"])
def test_clear_dirty_log_clears_in_every_bitmap_mode(mode: str) -> None:
    logs = run_on_kernel(
        scenario(
            [
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "write", "gfn": "0x210"},
                {"op": "write", "gfn": "0x250"},
                {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 64},
                {"op": "get_dirty_log", "slot": 1},
                {"op": "write", "gfn": "0x210"},
                {"op": "get_dirty_log", "slot": 1},
            ]
        ),
        mode,
    )
    assert logs[3] is None
    if mode == "initially_set":
        assert logs[4] == list(range(0x240, 0x400))  # pages 64.. are still initially set
    else:
        assert logs[4] == [0x250]
    # Manual protection: the GET before did not clear 0x250; plain bitmap: it did.
    assert logs[6] == ([0x210] if mode == "bitmap" else sorted({0x210, *logs[4]}))


@needs_kvm
def test_manual_protect_get_only_copies() -> None:
    logs = run_on_kernel(
        scenario(
            [
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "write", "gfn": "0x210"},
                {"op": "get_dirty_log", "slot": 1},
                {"op": "get_dirty_log", "slot": 1},
            ]
        ),
        "manual_clear",
    )
    assert logs[2] == logs[3] == [0x210]


@needs_kvm
def test_initially_set_first_get_returns_every_page_of_the_slot() -> None:
    logs = run_on_kernel(
        scenario([{"op": "enable_dirty_log", "slot": 1}, {"op": "get_dirty_log", "slot": 1}]),
        "initially_set",
    )
    assert logs[1] == list(range(0x200, 0x400))


@needs_kvm
@needs_new_ops
def test_ring_harvests_unique_gfns_and_refuses_the_bitmap_ioctls() -> None:
    logs = run_on_kernel(
        scenario(
            [
                {"op": "enable_dirty_log", "slot": 1},
                {"op": "write", "gfn": "0x300", "vcpu": 1},
                {"op": "write", "gfn": "0x211", "count": 3, "stride": 0},
                {"op": "read", "gfn": "0x212"},
                {"op": "get_dirty_log", "slot": 1},
                {"op": "clear_dirty_log", "slot": 1, "first": 0, "num": 512},
                {"op": "reset_dirty_ring"},
                {"op": "write", "gfn": "0x211"},
                {"op": "reset_dirty_ring"},
                {"op": "reset_dirty_ring"},
            ],
            vcpus=2,
        ),
        "ring",
    )
    assert logs[4] is None  # KVM_GET_DIRTY_LOG: ENXIO
    assert logs[6] == [0x211, 0x300]
    assert logs[8] == [0x211]
    assert logs[9] == []


@needs_new_ops
def test_ring_mode_refuses_more_writes_between_harvests_than_half_the_ring() -> None:
    steps: list[dict[str, Any]] = [
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "write", "gfn": "0x211", "count": RING_WRITE_BUDGET, "stride": 0},
        {"op": "reset_dirty_ring"},
        {"op": "write", "gfn": "0x211", "count": RING_WRITE_BUDGET - 1, "stride": 0},
        {"op": "write", "gfn": "0x212", "vcpu": 1},
    ]
    assert refusal(scenario(steps, vcpus=2), "ring") is None
    assert refusal(scenario([*steps, {"op": "write", "gfn": "0x212", "count": 2}], vcpus=2), "ring") == (
        f"step 5 (write): vCPU 0 writes {RING_WRITE_BUDGET + 1} times since the last harvest; in ring mode"
        f" the live backend allows at most {RING_WRITE_BUDGET}, half its 65536-entry ring (each write can"
        " take an entry)"
    )
    assert refusal(scenario([*steps, {"op": "write", "gfn": "0x212", "count": 2}], vcpus=2)) is None


@needs_kvm
@needs_new_ops
def test_reset_dirty_ring_without_a_ring_has_no_log() -> None:
    logs = run_on_kernel(scenario([{"op": "reset_dirty_ring"}]))
    assert logs == [None]  # KVM_RESET_DIRTY_RINGS: EINVAL


@needs_kvm
def test_runs_leak_no_fds_and_no_mappings() -> None:
    parsed = parse_scenario(load_builtin_text("worked-example"))
    run_on_kernel(parsed)  # warm up: imports, libc's first allocations
    fds, maps = open_fds(), mapping_count()
    for mode in ("bitmap", "ring"):
        run_on_kernel(parsed, mode)
    with KvmVm(2) as vm:
        vm.add_slot(1, 0x200, 512)
        vm.close()  # closing twice is harmless
    assert open_fds() == fds
    assert mapping_count() <= maps


@needs_kvm
def test_a_failing_setup_releases_what_it_opened() -> None:
    fds = open_fds()
    with pytest.raises(OSError, match="vCPUs per VM"):
        KvmVm(100_000)
    with KvmVm(1) as vm, pytest.raises(OSError, match="KVM_SET_USER_MEMORY_REGION"):
        vm.add_slot(1, 0x200, 512)
        vm.add_slot(2, 0x300, 16)  # overlaps slot 1
    assert open_fds() == fds
