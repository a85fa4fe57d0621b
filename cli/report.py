"""Text for people: the step-by-step report of `sptelab run` and the difference list of `sptelab compare`.

Everything here turns engine values into lines and decides nothing about the run. Colour is a `Style`
handed in, so the words are the same with and without it: a violation says "violation" in any terminal,
and red only repeats it.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, ClassVar

from engine.invariants import Violation
from engine.kvm import FaultRecord
from engine.mmu import PFERR_PRESENT_MASK, PFERR_WRITE_MASK
from engine.ops.registry import Step, describe, op_spec
from engine.policy import PRESET_DESCRIPTIONS, Policy
from engine.scenario import Scenario
from engine.simulation import SpteChange, StepResult
from engine.spte import SpteMasks, level_name, spte_flags
from engine.trace import DirtyRingFull, GuestAccess

_WIDTH = 100


class Style:
    """How the terminal can show things: ANSI colour or none, and a real arrow or an ASCII one."""

    _CODES: ClassVar[dict[str, str]] = {
        "bold": "1",
        "dim": "2",
        "red": "31",
        "green": "32",
        "yellow": "33",
        "cyan": "36",
    }

    def __init__(self, colour: bool = False, unicode: bool = True) -> None:
        self.colour = colour
        self.arrow = "→" if unicode else "->"

    @classmethod
    def for_stream(cls, stream: IO[str]) -> Style:
        """Colour only for a terminal, and never when NO_COLOR is set to anything (no-color.org)."""
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        colour = tty and not os.environ.get("NO_COLOR")
        encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            "→".encode(encoding)
            unicode = True
        except (UnicodeEncodeError, LookupError):
            unicode = False
        return cls(colour=colour, unicode=unicode)

    def _paint(self, name: str, text: str) -> str:
        if not self.colour or not text:
            return text
        return f"\x1b[{self._CODES[name]}m{text}\x1b[0m"

    def bold(self, text: str) -> str:
        return self._paint("bold", text)

    def dim(self, text: str) -> str:
        return self._paint("dim", text)

    def red(self, text: str) -> str:
        return self._paint("red", text)

    def green(self, text: str) -> str:
        return self._paint("green", text)

    def yellow(self, text: str) -> str:
        return self._paint("yellow", text)

    def cyan(self, text: str) -> str:
        return self._paint("cyan", text)


# ---------------------------------------------------------------------------------------------------------
# Small pieces


def gfn_list(gfns: Iterable[int], limit: int | None = None, style: Style | None = None) -> str:
    """Gfns in hex, space-separated; "none" for an empty list.

    With `limit`, a longer list keeps its first and last `limit` gfns around a count of the rest: a
    slot of 1 GiB dirties 262 144 pages, and a line of them all is read by nobody."""
    items = [f"{gfn:#x}" for gfn in gfns]
    if limit is not None and len(items) > 2 * limit + 1:
        hidden = len(items) - 2 * limit
        gap = f"{ellipsis(style)} {count_text(hidden)} more gfns {ellipsis(style)}"
        items = [*items[:limit], gap, *items[-limit:]]
    return " ".join(items) or "none"


def count_text(count: int) -> str:
    """`262 100`: a count with its thousands apart, so a big one reads at a glance."""
    return f"{count:,}".replace(",", " ")


def ellipsis(style: Style | None) -> str:
    return "…" if style is None or style.arrow == "→" else "..."


# How many rows (faults, spte writes) and gfns the readable report of `run` shows at each end of a long
# listing, unless `--all` asks for every one. The JSON always holds all of them.
REPORT_ROWS = 10


def capped(
    rows: Sequence[Sequence[str]], limit: int | None, noun: str, indent: str, style: Style
) -> list[str]:
    """The lines of `rows` (each one or more lines), or of the first and last `limit` rows around one line
    that says how many are left out and how to see them."""
    if limit is None or len(rows) <= 2 * limit + 1:
        return [line for row in rows for line in row]
    hidden = len(rows) - 2 * limit
    gap = indent + style.dim(
        f"{ellipsis(style)} {count_text(hidden)} more {noun} (use --all to list every one)"
    )
    head = [line for row in rows[:limit] for line in row]
    tail = [line for row in rows[-limit:] for line in row]
    return [*head, gap, *tail]


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def terminal_text(text: object) -> str:
    """Scenario text (a title, a note) for a terminal: whitespace runs as one space, and every character
    that does not print spelled as its escape. A shared scenario is someone else's text, and an ESC in it
    would be a command to the terminal; a bidi override would reorder what the reader sees."""
    words = " ".join(str(text).split())
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in words)


def flags_text(spte: int, masks: SpteMasks) -> str:
    """The contract's flag letters, or "-" for an spte with none set (not present)."""
    return " ".join(spte_flags(spte, masks)) or "-"


def error_code_text(error_code: int) -> str:
    names = [
        name
        for name, bit in (("PRESENT", PFERR_PRESENT_MASK), ("WRITE", PFERR_WRITE_MASK))
        if error_code & bit
    ]
    return "|".join(names) or "0"


def describe_op(step: Step) -> str:
    """A step's op as one short line, in the web's words (`write gfn 0x250`, `get_dirty_log slot 1`,
    `clear_dirty_log slot 1 pages 0x0+64`), and a note's text after its name (`note: ...`)."""
    note = op_spec(step).note(step)
    if note is not None:
        return f"{describe(step)}: {terminal_text(note.text)}"
    return describe(step)


def spte_change_text(change: SpteChange, style: Style) -> str:
    """`L2[0x1] (sp gfn 0x0): 0x80000ff5 → 0x0`, the name the invariants and the page use too."""
    return (
        f"L{change.level}[{change.index:#x}] (sp gfn {change.sp_gfn:#x}): "
        f"{change.old:#x} {style.arrow} {change.new:#x}"
    )


def fault_text(fault: FaultRecord, style: Style) -> str:
    access = "write" if fault.write else "read "
    if fault.path == "fast":
        path = style.green(f"fast ({fault.fast_result or 'fixed'})")
    elif fault.fast_tried:
        path = style.yellow(f"slow (fast path: {fault.fast_result or 'not fixed'})")
    else:
        path = style.yellow("slow (fast path not tried)")
    level = level_name(fault.level) if fault.level is not None else "unmapped"
    return (
        f"fault  vcpu {fault.vcpu}  gfn {fault.gfn:#x}  {access}  error {error_code_text(fault.error_code)}"
        f"  {path}  {style.arrow} {level}"
    )


def access_text(access: GuestAccess, style: Style) -> str:
    """An access that completed without a fault (or never completed), which the fault lines do not show."""
    head = f"access vcpu {access.vcpu}  gfn {access.gfn:#x}  {'write' if access.write else 'read '}"
    if access.via == "livelock":
        return head + "  " + style.red(f"livelock: still faulting after {plural(access.faults, 'fault')}")
    source = "the TLB" if access.via == "tlb" else "an EPT walk"
    return head + f"  no exit (translated by {source})"


def violation_text(violation: Violation, style: Style) -> str:
    where = f" gfn {violation.gfn:#x}" if violation.gfn is not None else ""
    return style.red(f"violation  {violation.invariant}{where}: {violation.message}")


# ---------------------------------------------------------------------------------------------------------
# sptelab run


def policy_text(policy: Policy) -> list[str]:
    switches = ", ".join(f"{name}={str(value).lower()}" for name, value in policy.as_json().items())
    return textwrap.wrap(f"policy: {switches}", width=_WIDTH, subsequent_indent="        ")


def format_header(
    scenario: Scenario,
    *,
    variant: str,
    base: str,
    overrides: Mapping[str, str],
    policy: Policy,
    style: Style,
) -> list[str]:
    """The scenario, the VM, the memslots and the policy the run uses."""
    lines = [style.bold(terminal_text(scenario.title) or "(untitled scenario)")]
    if overrides:
        switches = ", ".join(f"{name}={value}" for name, value in overrides.items())
        lines.append(f"variant: {variant} ({base} with {switches})")
    else:
        lines.append(f"variant: {variant} ({PRESET_DESCRIPTIONS.get(variant, 'custom')})")
    lines.extend(policy_text(policy))
    vm = scenario.vm
    if vm.mmu == "shadow":
        guest = scenario.guest
        paging = (
            f"guest page tables from gfn {guest.tables_at:#x}"
            if guest is not None and guest.paging and guest.tables_at is not None
            else "guest paging off (nonpaging_map)"
        )
        lines.append(
            f"vm: {plural(vm.vcpus, 'vCPU')}, largest mapping {vm.max_page_level}, shadow paging, {paging}"
        )
    else:
        lines.append(
            f"vm: {plural(vm.vcpus, 'vCPU')}, largest mapping {vm.max_page_level},"
            f" EPT A/D bits {'on' if vm.ept_ad else 'off'}"
        )
    for slot in scenario.memslots:
        lines.append(
            f"memslot {slot.id}: gfns {slot.base_gfn:#x}-{slot.end_gfn - 1:#x}"
            f" ({plural(slot.npages, 'page')}),"
            f" {slot.host_page} host pages from pfn {slot.base_pfn:#x},"
            f" host {'writable' if slot.host_writable else _cow_text(slot.host_cow)}"
        )
    lines.append(plural(len(scenario.steps), "step"))
    return lines


def _cow_text(host_cow: str) -> str:
    if host_cow == "copy":
        return "read-only until a write copies it (shared copy-on-write)"
    return "read-only until a write makes it writable in place (owned alone)"


def format_step(step: StepResult, style: Style, masks: SpteMasks, limit: int | None = None) -> list[str]:
    """One step: its op, then everything it did. With detail "summary" the step holds counts only.
    `masks` is the spte layout the run's kernel generation uses, to read the flags of its values.
    `limit`: show the first and last `limit` faults, spte writes and gfns of a longer listing (None: all).
    """
    lines = [style.bold(f"step {step.index}  {describe_op(step.op)}")]
    indent = "  "
    if step.faults is None:
        return [*lines, indent + summary_counts(step, style)]
    faults = list(step.faults)
    accesses: list[list[str]] = []
    for event in step.events or []:
        if not isinstance(event, GuestAccess):
            continue
        # The faults an access took are recorded before the access completes: print them first.
        taken, faults = faults[: event.faults], faults[event.faults :]
        accesses.extend([indent + fault_text(fault, style)] for fault in taken)
        if event.via != "fault":
            accesses.append([indent + access_text(event, style)])
    accesses.extend([indent + fault_text(fault, style)] for fault in faults)
    lines += capped(accesses, limit, "faults and accesses", indent, style)
    writes: list[list[str]] = []
    for change in step.spte_changes or []:
        old, new = flags_text(change.old, masks), flags_text(change.new, masks)
        writes.append(
            [
                indent + "spte   " + spte_change_text(change, style),
                indent + "       " + style.dim(f"{old} {style.arrow} {new}"),
            ]
        )
    lines += capped(writes, limit, "spte writes", indent, style)
    if step.marked_dirty:
        lines.append(indent + style.cyan(f"marked dirty: {gfn_list(step.marked_dirty, limit, style)}"))
    if step.dirty_log is not None:
        lines.append(indent + style.cyan(f"dirty log returned: {gfn_list(step.dirty_log, limit, style)}"))
    if step.error is not None:
        lines.append(indent + style.red(f"ioctl failed: {step.error}"))
    for event in step.events or []:
        if isinstance(event, DirtyRingFull):
            lines.append(
                indent + style.red(f"vCPU {event.vcpu}: dirty ring full, {event.skipped} accesses not made")
            )
    if step.tlb_flushes:
        lines.append(indent + f"tlb flushes: {step.tlb_flushes}")
    for violation in step.violations:
        lines.append(indent + violation_text(violation, style))
    return lines


def summary_counts(step: StepResult, style: Style) -> str:
    counts = step.fault_counts
    parts = [
        f"faults: {counts.get('fast', 0)} fast, {counts.get('slow', 0)} slow",
        f"marked dirty: {len(step.marked_dirty)}",
    ]
    if step.dirty_log is not None:
        parts.append(f"dirty log: {plural(len(step.dirty_log), 'page')}")
    if step.error is not None:
        parts.append(style.red(f"failed: {step.error}"))
    parts.append(f"tlb flushes: {step.tlb_flushes}")
    violations = f"violations: {len(step.violations)}"
    parts.append(style.red(violations) if step.violations else violations)
    return "; ".join(parts)


def verdict_text(migration: object, finished: bool, style: Style, limit: int | None = None) -> str:
    """The migration verdict from the result's `final.migration` (None when nothing migrated).

    `finished`: whether migrate_end has compared the destination yet; before that there is no verdict.
    """
    if not isinstance(migration, Mapping):
        return "migration: none in this scenario"
    rounds = plural(int(migration.get("rounds", 0)), "round")
    head = f"migration: {rounds}, {migration.get('pages_sent', 0)} pages sent"
    if not finished:
        return head + ", no verdict yet (migrate_end compares the destination)"
    lost = [gfn for gfn in migration.get("lost", []) if isinstance(gfn, int)]
    if lost:
        return head + ", " + style.red(f"{plural(len(lost), 'page')} LOST: {gfn_list(lost, limit, style)}")
    return head + ", " + style.green("no page lost")


def format_footer(
    final: Mapping[str, object],
    *,
    ran: int,
    total: int,
    migration_finished: bool,
    style: Style,
    limit: int | None = None,
) -> list[str]:
    """Final stats, the migration verdict and the violation total, from the result's `final` object.

    `ran` of `total` steps ran (fewer with --until); `limit` caps each gfn list as `format_step` does.
    """
    lines = [style.bold("final")]
    if ran < total:
        lines.append(f"  stopped after step {ran - 1} of steps 0-{total - 1} (--until)")
    stats = final.get("stats")
    if isinstance(stats, Mapping):
        # The kernel's counters under kvm_stat's names; the result's `lpages` is the "large" count below.
        shown = sorted((name, value) for name, value in stats.items() if name != "lpages")
        lines.append("  stats: " + ", ".join(f"{name} {value}" for name, value in shown))
    sptes = final.get("sptes")
    if isinstance(sptes, list):
        large = sum(1 for spte in sptes if isinstance(spte, Mapping) and spte.get("large"))
        lines.append(f"  sptes: {len(sptes)} present, {large} large")
    bitmaps = final.get("dirty_bitmaps")
    if isinstance(bitmaps, Mapping):
        for slot, gfns in sorted(bitmaps.items(), key=lambda item: int(item[0])):
            lines.append(f"  dirty bitmap of slot {slot}: {gfn_list(gfns, limit, style)}")
    rings = final.get("dirty_rings")
    if isinstance(rings, Mapping):
        for vcpu, gfns in sorted(rings.items(), key=lambda item: int(item[0])):
            lines.append(f"  dirty ring of vCPU {vcpu}: {gfn_list(gfns, limit, style)}")
    lines.append("  " + verdict_text(final.get("migration"), migration_finished, style, limit))
    violations = final.get("violations")
    count = len(violations) if isinstance(violations, list) else 0
    if count:
        names: dict[str, int] = {}
        for violation in violations if isinstance(violations, list) else []:
            name = str(violation.get("invariant"))
            names[name] = names.get(name, 0) + 1
        detail = ", ".join(f"{name} {n}" for name, n in sorted(names.items()))
        lines.append("  " + style.red(f"violations: {count} ({detail})"))
    else:
        lines.append("  " + style.green("violations: 0"))
    return lines


# ---------------------------------------------------------------------------------------------------------
# sptelab compare

# A compared value longer than this many items is cut short in the text; the JSON always holds all of it.
_MAX_ITEMS = 12


def _shorten(items: Sequence[str]) -> str:
    shown = list(items[:_MAX_ITEMS])
    if len(items) > _MAX_ITEMS:
        shown.append(f"... and {len(items) - _MAX_ITEMS} more")
    return "; ".join(shown)


def _fault_item(fault: Mapping[str, object], style: Style) -> str:
    path = str(fault.get("path"))
    if fault.get("fast_result"):
        path += f" ({fault['fast_result']})"
    if fault.get("path") == "fast":
        path = style.green(path)
    level = fault.get("level")
    mapped = level_name(level) if isinstance(level, int) else "unmapped"
    gfn = fault.get("gfn")
    where = f"{gfn:#x}" if isinstance(gfn, int) else "?"
    return f"{'write' if fault.get('write') else 'read'} {where} {path} {style.arrow} {mapped}"


def _change_item(change: Mapping[str, object], style: Style) -> str:
    """`L2[0x1]@0x0 0x80000ff7→0x0`: which spte (level, index, sp gfn) went from which value to which."""
    index, sp_gfn = change.get("index"), change.get("sp_gfn")
    where = f"L{change.get('level')}[{index:#x}]" if isinstance(index, int) else "?"
    if isinstance(sp_gfn, int):
        where += f"@{sp_gfn:#x}"
    return f"{where} {change.get('old')}{style.arrow}{change.get('new')}"


def _violation_item(violation: Mapping[str, object], style: Style) -> str:
    gfn = violation.get("gfn")
    where = f" {gfn:#x}" if isinstance(gfn, int) else ""
    return style.red(f"{violation.get('invariant')}{where}")


def _value_text(field: str, value: object, style: Style) -> str:
    """One variant's value of a compared field, as the compare JSON holds it."""
    if value is None:
        return "no verdict" if field == "lost" else "-"
    if isinstance(value, list):
        if not value:
            return "none"
        if field == "faults":
            fast = sum(1 for fault in value if isinstance(fault, Mapping) and fault.get("path") == "fast")
            counts = f"{fast} fast, {len(value) - fast} slow"
            items = [_fault_item(fault, style) for fault in value if isinstance(fault, Mapping)]
            return f"{counts}: {_shorten(items)}"
        if field == "violations":
            return _shorten([_violation_item(item, style) for item in value if isinstance(item, Mapping)])
        if field == "spte_changes":
            return _shorten([_change_item(item, style) for item in value if isinstance(item, Mapping)])
        text = _shorten([f"{gfn:#x}" if isinstance(gfn, int) else str(gfn) for gfn in value]).replace(
            "; ", " "
        )
        return style.red(text) if field == "lost" else text
    if field == "violations" and value:
        return style.red(str(value))
    return str(value)


def _values_lines(
    field: str, values: Mapping[str, object], variants: Sequence[str], style: Style
) -> list[str]:
    width = max(len(name) for name in variants)
    return [f"    {name:<{width}}  {_value_text(field, values.get(name), style)}" for name in variants]


def format_compare(data: Mapping[str, Any], ops: Sequence[Step], style: Style) -> list[str]:
    """Where the variants differ, step by step, then their verdicts and differing stats side by side.

    `data` is the compare JSON; `ops` are the scenario's steps.
    """
    variants: list[str] = list(data["variants"])
    title = data["scenario"]["title"] or "(untitled scenario)"
    lines = [style.bold(f"compare: {title}"), "variants: " + ", ".join(variants), ""]
    step = None
    if not data["differences"]:
        lines.append("no differences in any step")
    for difference in data["differences"]:
        if difference["step"] != step:
            step = difference["step"]
            lines.append(style.bold(f"step {step}  {describe_op(ops[step])}"))
        lines.append("  " + str(difference["field"]).replace("_", " "))
        lines.extend(_values_lines(difference["field"], difference["values"], variants, style))
    final = data["final"]
    lines += ["", style.bold("final")]
    for field in ("lost", "violations"):
        lines.append(f"  {field}")
        lines.extend(_values_lines(field, {name: final[name][field] for name in variants}, variants, style))
    stats = sorted({stat for name in variants for stat in final[name]["stats"]})
    for stat in stats:
        values = {name: final[name]["stats"].get(stat) for name in variants}
        if len({repr(value) for value in values.values()}) > 1:
            lines.append(f"  stats.{stat}")
            lines.extend(_values_lines(stat, values, variants, style))
    return lines
