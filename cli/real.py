"""`sptelab real`: the scenario on this machine's kernel (live/), beside each preset's MMU, and what the
kernel's dirty log says at every harvesting step."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import IO, Any

from cli.common import EXIT_OK, CliError, UsageError, load_scenario, one_line, preset_list, write_lines
from cli.report import describe_op
from engine.canonical import dumps
from engine.policy import PRESETS, make_policy, parse_policy_args
from engine.scenario import Scenario
from live.backend import refusal
from live.report import RealRefusalError, availability, dirty_log_mode_of, real_result

REAL_DEFAULT_PRESET = "modern"


def _gfn_list(gfns: Sequence[int]) -> str:
    """`[0x250, 0x300-0x3ff]`: ascending gfns with runs of three or more written as a range."""
    parts: list[str] = []
    start = 0
    while start < len(gfns):
        end = start
        while end + 1 < len(gfns) and gfns[end + 1] == gfns[end] + 1:
            end += 1
        if end - start >= 2:
            parts.append(f"{gfns[start]:#x}-{gfns[end]:#x}")
        else:
            parts.extend(f"{gfn:#x}" for gfn in gfns[start : end + 1])
        start = end + 1
    return "[" + ", ".join(parts) + "]"


def _is_preset_list(word: str) -> bool:
    names = [name.strip() for name in word.split(",")]
    return all(name in PRESETS for name in names)


def real_file_and_presets(args: argparse.Namespace) -> tuple[str, list[str]]:
    """FILE and the presets of `real`, wherever FILE was written.

    Contract §3 writes `real FILE --compare P ...`: `--compare` takes the words that follow it, so
    `real FILE --compare zap lazy` compares both. Written the other way round, `real --compare zap lazy
    FILE`, argparse gives FILE to `--compare` too; the last word is FILE again when it is not a preset (or
    a comma-separated list of them). With no such word, FILE is missing, and the line says so."""
    groups: list[list[str]] = [list(group) for group in args.compare or []]  # one per --compare
    file: str | None = args.file
    for group in groups:
        if file is None and not _is_preset_list(group[-1]):
            file = group.pop()
            if not group:
                raise UsageError(
                    f"{args.prog}: --compare: expected a preset before FILE (see {args.prog} --help)"
                )
    compare = [word for group in groups for word in group]
    if file is None:
        if compare:
            raise UsageError(
                f"{args.prog}: FILE is missing: every word after --compare ({' '.join(compare)}) is a preset;"
                f" name the scenario too, e.g. {args.prog} FILE --compare {','.join(compare)}"
            )
        raise UsageError(f"{args.prog}: the following arguments are required: FILE (see {args.prog} --help)")
    return file, preset_list(compare, (REAL_DEFAULT_PRESET,), "--compare")


def cmd_real(args: argparse.Namespace, out: IO[str]) -> int:
    file, presets = real_file_and_presets(args)
    scenario = load_scenario(file)
    overrides = parse_policy_args(list(args.policy or []))
    mode = dirty_log_mode_of(overrides)
    for name in presets:
        make_policy(name, overrides)  # refuse a bad preset or switch before touching the device
    reason = refusal(scenario, mode) or availability()
    if reason is not None:
        raise CliError(reason)
    try:
        result = real_result(
            scenario, presets, mode, overrides=overrides, guest=args.guest, trace=not args.no_trace
        )
    except RealRefusalError as error:
        raise CliError(str(error)) from None
    if args.json:
        out.write(dumps(result))
        return EXIT_OK
    write_lines(out, _real_text(scenario, result, presets, mode))
    return EXIT_OK


# The counters `sptelab real` prints over the whole run, where the kernel has them: the vCPUs' (summed) and
# the VM's. The JSON has every counter.
_REAL_VCPU_STATS = ("pf_taken", "pf_fixed", "pf_fast", "insn_emulation", "exits")
_REAL_VM_STATS = ("pages_4k", "pages_2m", "pages_1g", "mmu_shadow_zapped", "remote_tlb_flush")


def _real_stats_line(live: dict[str, Any]) -> str:
    totals = live["stats"]
    vcpus = totals["vcpus"].values()
    parts = [
        f"{name} {sum(c[name] for c in vcpus)}" for name in _REAL_VCPU_STATS if any(name in c for c in vcpus)
    ]
    parts += [f"{name} {totals['vm'][name]:+d}" for name in _REAL_VM_STATS if name in totals["vm"]]
    return "stats over the run: " + ", ".join(parts) if parts else f"no stats: {live['stats_missing']}"


def _real_text(scenario: Scenario, result: dict[str, Any], presets: Sequence[str], mode: str) -> list[str]:
    """What the kernel ran and checked, then per harvesting step the kernel's log beside the emulated
    guest's and each preset's.

    Only a run whose MMU ran the guest and is modelled by a preset (live.checked "mmu") says a preset
    agrees with the kernel; else a
    preset's line is what its MMU would log, set beside the kernel's as data."""
    live = result["live"]
    native = live["checked"] == "mmu"
    lines = [
        f"{one_line(scenario.title or 'untitled scenario')}",
        f"kernel {one_line(result['kernel'])}, dirty-log mode {mode}, compared with {', '.join(presets)}",
        live["headline"],
        f"  why: {live['reason']}",
        f"  {_real_stats_line(live)}",
        f"  {_guest_line(live)}",
        "",
    ]
    oracle = {entry["step"]: entry for entry in live["oracle"]["differences"]}
    differences = {
        name: {entry["step"]: entry for entry in result["compare"][name]["differences"]} for name in presets
    }
    labels = {name: name if native else f"{name}'s MMU" for name in presets}
    width = max(len(label) for label in [*labels.values(), "emulated guest"])

    def line(label: str, diff: dict[str, Any] | None, same: str, differs: str) -> str:
        if diff is None:
            return f"          {label:<{width}}  {same}"
        return (
            f"          {label:<{width}}  {differs}kernel only {_gfn_list(diff['kernel_only'])},"
            f" engine only {_gfn_list(diff['engine_only'])}"
        )

    for entry in result["steps"]:
        index = entry["index"]
        log = entry["dirty_log"]
        if log is None and index not in oracle and not any(index in differences[n] for n in presets):
            continue
        op = describe_op(scenario.steps[index])
        shown = _gfn_list(log) if log is not None else "no log"
        lines.append(f"step {index:>3}  {op}: kernel {shown}")
        if not live["oracle"].get("not_run"):
            lines.append(line("emulated guest", oracle.get(index), "agrees", "differs: "))
        for name in presets:
            diff = differences[name].get(index)
            if native:
                lines.append(line(labels[name], diff, "agrees", "differs: "))
            else:
                lines.append(line(labels[name], diff, "would log the same", "would log other pages: "))
    lines.append("")
    count = len(oracle)
    if live["oracle"].get("not_run"):
        lines.append(f"emulated guest: not run: {live['oracle']['not_run']}")
    else:
        lines.append(
            "emulated guest: "
            + ("agrees with the kernel at every step" if count == 0 else f"differs at {_steps(count)}")
        )
    shadow = live.get("scenario_mmu") == "shadow"
    if not native:
        lines.append("what each preset's MMU would log, not checked against the kernel's MMU:")
    for name in presets:
        count = len(differences[name])
        if native and shadow:
            verdict = (
                "the kernel's dirty logs at every step" if count == 0 else f"other logs at {_steps(count)}"
            )
        elif native:
            verdict = "agrees at every step" if count == 0 else f"differs at {_steps(count)}"
        else:
            verdict = "the same pages at every step" if count == 0 else f"other pages at {_steps(count)}"
        lines.append(f"{name}: {verdict}")
    lines += _host_check_lines(live)
    if live["traced"]:
        lines += ["", "what the kernel's MMU did, by its tracepoints:"]
        lines += _trace_lines(scenario, result["steps"])
    return lines


# The differences of a shadow-paging run's step-by-step check that the text lists one by one.
_HOST_CHECK_SHOWN = 32


def _host_check_lines(live: dict[str, Any]) -> list[str]:
    """A shadow-paging scenario's check of the host's preset against the kernel, step by step."""
    check = live.get("host_check")
    if not check:
        return []
    preset, differences = check["preset"], check["differences"]
    lines = ["", f"{preset} against the kernel's shadow MMU, step by step ({', '.join(live['compared'])}):"]
    if check["agrees"]:
        lines.append(f"  {preset} did what the kernel did at every step")
    lines += [
        f"  {difference['text']}"
        + (f" (known: {check['tolerated'][difference['tolerated']]})" if difference.get("tolerated") else "")
        for difference in differences[:_HOST_CHECK_SHOWN]
    ]
    if len(differences) > _HOST_CHECK_SHOWN:
        lines.append(f"  ... and {len(differences) - _HOST_CHECK_SHOWN} more (--json lists them all)")
    return lines


def _guest_line(live: dict[str, Any]) -> str:
    native = live["guest"] == "native"
    guest = "native (64-bit, its own page tables)" if native else "emulated (32-bit, paging off)"
    if live.get("scenario_mmu") == "shadow":
        guest = "native (64-bit, on the scenario's own page tables)"
    traced = "read" if live["traced"] else f"not read: {live['trace_missing']}"
    return f"guest: {guest}; host MMU: {live['host_mmu']}; kernel tracepoints {traced}"


# The sptes a step's line lists one by one; the rest are counted.
_TRACE_SHOWN = 4


def _trace_lines(scenario: Scenario, steps: Sequence[dict[str, Any]]) -> list[str]:
    """Per step that set an spte or made or zapped a table: what, in the kernel's own values."""
    lines: list[str] = []
    for entry in steps:
        live = entry["live"]
        sptes, created, zapped = live["sptes_set"], live["tables_created"], live["tables_zapped"]
        if not (sptes or created or zapped):
            continue
        lines.append(f"step {entry['index']:>3}  {describe_op(scenario.steps[entry['index']])}")
        for spte in sptes[:_TRACE_SHOWN]:
            writable = "W" if int(spte["spte"], 16) & 0x2 else "read-only"
            mine = any(slot.base_gfn <= spte["gfn"] < slot.end_gfn for slot in scenario.memslots)
            own = "" if mine else ", the live VM's own page"
            lines.append(
                f"          set L{spte['level']}[{spte['index']:#x}] gfn {spte['gfn']:#x}: {spte['spte']}"
                f" ({writable}{own}) in table {spte['table']}"
            )
        if len(sptes) > _TRACE_SHOWN:
            lines.append(f"          and {len(sptes) - _TRACE_SHOWN} more sptes set")
        for word, tables in (("new", created), ("zapped", zapped)):
            for table in tables:
                kind = "direct" if table["direct"] else "shadowing the guest table at"
                lines.append(f"          {word} L{table['level']} table, {kind} gfn {table['gfn']:#x}")
        if live["overrun"]:
            lines.append("          (the trace buffer overflowed: events of this step were lost)")
    return lines


def _steps(count: int) -> str:
    return f"{count} step{'s' * (count != 1)}"
