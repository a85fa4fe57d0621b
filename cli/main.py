"""The `sptelab` command line of contract §3: a thin shell that reads a scenario, runs the engine, prints.

Each subcommand parses its arguments, calls the engine and hands the values to `cli.report` (text) or
`engine.result` (JSON). Anything a user can get wrong (a file, a scenario, a preset, a switch, a share
code, the usage itself) ends the command with status 2 and one line on stderr, `sptelab run: <message>`;
never a traceback, because the line is what a script or a person reads. Output depends only on the input:
no clock, no environment beyond the colour choice, JSON with sorted keys.

This module parses the command line and runs the engine's commands; `real` (the live kernel) is
`cli.real`, `serve` (the web app) `cli.serve`, and what every command shares `cli.common`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn
from urllib.parse import urlencode, urlsplit

from cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VIOLATED,
    CliError,
    UsageError,
    load_scenario,
    one_line,
    preset_list,
    write_lines,
)
from cli.real import REAL_DEFAULT_PRESET, cmd_real
from cli.report import (
    REPORT_ROWS,
    Style,
    format_compare,
    format_footer,
    format_header,
    format_step,
)
from cli.serve import cmd_serve
from engine.canonical import dumps, iterdumps
from engine.codec import MAX_URL_BYTES, CodecError, encode_scenario
from engine.collector import gc_paused
from engine.policy import DEFAULT_PRESET, PRESETS, PolicyError, make_policy, parse_policy_args, variant_of
from engine.result import final_json, result_json, step_json
from engine.scenario import Scenario, ScenarioError, under_mmu
from engine.simulation import Simulation
from scenarios import builtin_scenarios

PROG = "sptelab"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
COMPARE_FORMAT = "sptelab-compare"
COMPARE_VERSION = 1

# The per-step fields `compare` reports, in the order it reports them; values as `run --json` writes them.
COMPARED_FIELDS = ("faults", "spte_changes", "marked_dirty", "dirty_log", "tlb_flushes", "violations")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised, not printed), so main() owns every exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {one_line(message)} (see {self.prog} --help)")


# ---------------------------------------------------------------------------------------------------------
# The subcommands. Each takes the parsed arguments and stdout, and returns the exit status.


def _scenario_under(args: argparse.Namespace) -> Scenario:
    """The scenario FILE names, under the MMU `--mmu` asks for (as it stands without it)."""
    scenario = load_scenario(args.file)
    return under_mmu(scenario, args.mmu) if args.mmu else scenario


def cmd_run(args: argparse.Namespace, out: IO[str]) -> int:
    scenario = _scenario_under(args)
    overrides = parse_policy_args(list(args.policy or []))
    policy = make_policy(args.variant, overrides)
    total = len(scenario.steps)
    count = total
    if args.until is not None:
        if total == 0:
            raise CliError(f"--until {args.until}: the scenario has no steps")
        if not 0 <= args.until < total:
            raise CliError(f"--until {args.until}: the scenario's steps are numbered 0 to {total - 1}")
        count = args.until + 1

    sim = Simulation(scenario, policy, detail=args.detail)
    if args.json:
        steps = [sim.step() for _ in range(count)]
        # Written piece by piece: a big final state never exists as one string or as a dict per spte.
        with gc_paused():
            for piece in iterdumps(result_json(sim, steps, stream=True)):
                out.write(piece)
    else:
        style = Style.for_stream(out)
        variant = variant_of(policy) or "custom"
        header = format_header(
            scenario, variant=variant, base=args.variant, overrides=overrides, policy=policy, style=style
        )
        write_lines(out, header)
        out.write("\n")
        limit = None if args.all else REPORT_ROWS
        for _ in range(count):
            write_lines(out, format_step(sim.step(), style, sim.kvm.masks, limit))
        out.write("\n")
        finished = sim.migration.lost is not None
        footer = format_footer(
            final_json(sim), ran=count, total=total, migration_finished=finished, style=style, limit=limit
        )
        write_lines(out, footer)
    return EXIT_VIOLATED if args.strict and sim.violations else EXIT_OK


def compare_json(scenario: Scenario, variants: Sequence[str], overrides: dict[str, str]) -> dict[str, object]:
    """Run `scenario` under each preset (with the same overrides) and keep only what differs per step.

    The shape, ours rather than the contract's, printed with sorted keys by `compare --json`:
    `{"format": "sptelab-compare", "version": 1, "scenario": {"title"}, "policy": {overrides},
    "variants": [names], "differences": [{"step": i, "field": F, "values": {variant: value}}],
    "final": {variant: {"lost": [gfns] or null, "violations": n, "stats": {...}}}}`. Each F is one of
    COMPARED_FIELDS, its values as `run --json` writes that field; `lost` is null when the run reached
    no migration verdict.
    """
    sims: dict[str, Simulation] = {}
    steps: dict[str, list[dict[str, object]]] = {}
    for name in variants:
        sim = Simulation(scenario, make_policy(name, overrides), detail="full")
        steps[name] = [step_json(step) for step in sim.run()]
        sims[name] = sim
    differences: list[dict[str, object]] = []
    for index in range(len(scenario.steps)):
        for field in COMPARED_FIELDS:
            values = {name: steps[name][index][field] for name in variants}
            if len({json.dumps(value, sort_keys=True) for value in values.values()}) > 1:
                differences.append({"step": index, "field": field, "values": values})
    final: dict[str, object] = {}
    for name, sim in sims.items():
        final[name] = {
            # None: no migration verdict, because nothing migrated or migrate_end never ran.
            "lost": list(sim.migration.lost) if sim.migration.lost is not None else None,
            "violations": len(sim.violations),
            "stats": sim.kvm.stats(),
        }
    return {
        "format": COMPARE_FORMAT,
        "version": COMPARE_VERSION,
        "scenario": {"title": scenario.title},
        "policy": dict(sorted(overrides.items())),
        "variants": list(variants),
        "differences": differences,
        "final": final,
    }


def cmd_compare(args: argparse.Namespace, out: IO[str]) -> int:
    scenario = _scenario_under(args)
    variants = preset_list(args.variant, list(PRESETS), "--variant")
    overrides = parse_policy_args(list(args.policy or []))
    data = compare_json(scenario, variants, overrides)
    if args.json:
        out.write(dumps(data))
    else:
        write_lines(out, format_compare(data, scenario.steps, Style.for_stream(out)))
    return EXIT_OK


def cmd_check(args: argparse.Namespace, out: IO[str]) -> int:
    scenario = load_scenario(args.file)
    n = len(scenario.steps)
    title = scenario.title or args.file
    out.write(f"ok: {one_line(title)} ({n} step{'' if n == 1 else 's'})\n")
    return EXIT_OK


def cmd_url(args: argparse.Namespace, out: IO[str]) -> int:
    base = args.base.rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise CliError(f"--base {args.base!r}: expected an http(s) URL such as {DEFAULT_BASE_URL}")
    scenario = load_scenario(args.file)
    params = [("s", encode_scenario(scenario))]
    if args.variant is not None:
        make_policy(args.variant)  # refuse an unknown preset here, not when the link is opened
        params.append(("variant", args.variant))
    if args.step is not None:
        total = len(scenario.steps)
        if not 0 <= args.step <= total:
            raise CliError(f"--step {args.step}: the player's steps are 0 (before the first) to {total}")
        params.append(("step", str(args.step)))
    url = f"{base}/play?{urlencode(params)}"
    if len(url.encode("utf-8")) > MAX_URL_BYTES:
        raise CliError(
            f"the URL is {len(url.encode('utf-8'))} bytes, more than the {MAX_URL_BYTES} the web app accepts"
        )
    out.write(url + "\n")
    return EXIT_OK


def cmd_scenarios(args: argparse.Namespace, out: IO[str]) -> int:
    rows = [{"name": name, "title": scenario.title} for name, scenario in builtin_scenarios()]
    if args.json:
        out.write(dumps(rows))
        return EXIT_OK
    width = max((len(row["name"]) for row in rows), default=0)
    for row in rows:
        out.write(f"{row['name']:<{width}}  {one_line(row['title'])}\n")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# The parser


def _add_file(parser: argparse.ArgumentParser, nargs: str | None = None) -> None:
    parser.add_argument(
        "file",
        nargs=nargs,
        metavar="FILE",
        help="a scenario file, '-' for stdin, or the name of a built-in scenario (see 'sptelab scenarios')",
    )


def _add_mmu(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mmu",
        choices=("tdp", "shadow"),
        help="run the scenario under this MMU instead of its own vm.mmu (shadow paging needs the guest's"
        " page tables, `guest`, in the scenario)",
    )


def _add_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        action="append",
        metavar="K=V",
        help="set policy switches on top of the preset, e.g. wp_large=zap; repeat, or separate with commas"
        " as the web's policy= does (pml=true,dirty_log_mode=ring)",
    )


def package_version() -> str:
    """The installed package's version; in a source tree that was never installed, pyproject.toml's."""
    from importlib import metadata  # noqa: PLC0415 - only --version needs it; keep startup short

    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:
        pass
    import tomllib  # noqa: PLC0415

    pyproject = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    try:
        with open(pyproject, "rb") as file:
            version = tomllib.load(file)["project"]["version"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return "unknown"
    return str(version)


class _VersionAction(argparse.Action):
    """`--version`: argparse's own action, but the version is looked up only when asked for."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(f"{PROG} {package_version()}\n")
        parser.exit(EXIT_OK)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="A kernel-exact model of the KVM x86 TDP MMU around 'KVM: MMU: lazily drop large spte'.",
        epilog="Exit status: 0 success (violations are data), 1 'run --strict' saw a violation, 2 bad input.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--version", action=_VersionAction, nargs=0, help="print the version of sptelab and exit"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace, IO[str]], int], text: str) -> _Parser:
        sub: _Parser = commands.add_parser(name, help=text, description=text, allow_abbrev=False)
        sub.set_defaults(handler=handler, prog=sub.prog)
        return sub

    run = command("run", cmd_run, "run a scenario and print a step-by-step report, or the result JSON")
    _add_file(run)
    run.add_argument(
        "--variant",
        default=DEFAULT_PRESET,
        metavar="P",
        help=f"policy preset: {', '.join(PRESETS)} (default lazy)",
    )
    _add_policy(run)
    _add_mmu(run)
    run.add_argument("--json", action="store_true", help="print the result JSON of contract section 4")
    run.add_argument(
        "--detail",
        choices=("full", "summary"),
        default="full",
        help="full: every fault, spte write and trace event; summary: per-step counts only (default full)",
    )
    run.add_argument(
        "--until",
        type=int,
        metavar="N",
        help="stop after step N (steps count from 0; step N itself runs); the report and the JSON then"
        " describe the state at that point",
    )
    run.add_argument(
        "--all",
        action="store_true",
        help=f"list every fault, spte write and gfn in the report; without it a longer listing shows its"
        f" first and last {REPORT_ROWS} and how many are left out (--json always holds every one)",
    )
    run.add_argument("--strict", action="store_true", help="exit with status 1 if any invariant was violated")

    compare = command(
        "compare", cmd_compare, "run a scenario under several presets and print where they differ"
    )
    _add_file(compare)
    compare.add_argument(
        "--variant",
        action="append",
        metavar="P",
        help=f"a preset to compare (repeat, or separate with commas; default: {', '.join(PRESETS)})",
    )
    _add_policy(compare)
    _add_mmu(compare)
    compare.add_argument("--json", action="store_true", help="print the differences as JSON")

    check = command("check", cmd_check, "validate a scenario without running it")
    _add_file(check)

    url = command("url", cmd_url, "print the shareable player URL of a scenario")
    _add_file(url)
    url.add_argument("--variant", metavar="P", help="the preset the player opens with")
    url.add_argument(
        "--step", type=int, metavar="N", help="the step the player opens at (0 = before the first)"
    )
    url.add_argument("--base", default=DEFAULT_BASE_URL, metavar="URL", help=f"default {DEFAULT_BASE_URL}")

    listing = command("scenarios", cmd_scenarios, "list the built-in scenarios")
    listing.add_argument("--json", action="store_true", help='print [{"name": ..., "title": ...}]')

    serve = command("serve", cmd_serve, "serve the web app")
    serve.epilog = (
        "Every flag overrides a setting of the environment, SPTELAB_<NAME> (SPTELAB_HOST, SPTELAB_PORT,"
        " SPTELAB_WORKERS, SPTELAB_ROOT_PATH, SPTELAB_WORKSHOP, SPTELAB_PROXY_HEADERS,"
        " SPTELAB_FORWARDED_ALLOW_IPS, SPTELAB_ACCESS_LOG, SPTELAB_PUBLIC_URL, SPTELAB_HEADER_TIMEOUT,"
        " SPTELAB_HEADER_BYTES, SPTELAB_BODY_TIMEOUT). The server is granian, one worker by default."
    )
    serve.add_argument("--host", metavar="H", help="the address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, metavar="P", help="default 8000")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes (default 1); each has its own simulation cache, so a run is computed"
        " once per worker and memory grows with N",
    )
    serve.add_argument(
        "--root-path",
        metavar="PREFIX",
        help="the path prefix behind a reverse proxy that strips it, e.g. /sptelab: every link, form and"
        " redirect the app writes starts with it (default none)",
    )
    serve.add_argument(
        "--workshop",
        action=argparse.BooleanOptionalAction,
        help="workshop mode: no scenario editor and no upload; built-in scenarios and share links play",
    )
    serve.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        help="trust X-Forwarded-For and X-Forwarded-Proto from --forwarded-allow-ips (default on)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated addresses of the proxies to trust, or * (default 127.0.0.1)",
    )
    serve.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        help="log every request (each player URL holds its scenario; default off)",
    )
    serve.add_argument(
        "--public-url",
        metavar="URL",
        help="the address visitors reach the app at, e.g. https://sptelab.example.org: share links and"
        " exports are built from it, never from the request's Host header (default none)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        metavar="S",
        help="seconds a request's head (request line and headers) may take to arrive, and an idle"
        " connection is kept (default 10)",
    )
    serve.add_argument(
        "--header-bytes",
        type=int,
        metavar="N",
        help="the largest request head in bytes; a larger one is refused with 431 (default 65536)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        metavar="S",
        help="seconds a request's body may take to arrive after its head, else 408 (default 30)",
    )

    real = command(
        "real",
        cmd_real,
        "run a scenario's guest accesses and dirty-log steps on this machine's kernel through /dev/kvm, say"
        " from its statistics whether its MMU or its instruction emulator ran them, and compare the dirty"
        " logs it returns with the emulated guest's and the presets'",
    )
    real.epilog = (
        "The device is /dev/kvm, or $SPTELAB_KVM_DEVICE when set. Where the kernel emulates the guest (no"
        " EPT/NPT: pf_taken stays 0, insn_emulation grows), the run checks its dirty-log ioctls, not its"
        " MMU, and the presets' lines are what each preset's MMU would log. The native guest (the"
        " default) runs in 64-bit mode under its own page tables, so its accesses go through the kernel's"
        " MMU; as root, the kernel's kvmmmu tracepoints add the sptes it set to --json. flush_tlb and"
        " zap_all have no ioctl and are refused, as are gfns at or above 0xfe000 and more than 1 GiB of"
        " memslots."
    )
    # FILE may come after `--compare zap lazy`, which takes it too: real_file_and_presets sorts them out.
    # argparse would show it as optional; it is not.
    real.usage = (
        "%(prog)s [-h] FILE [--json] [--compare P[,P...] ...] [--policy K=V[,K=V...] ...]"
        " [--guest native|emulated] [--no-trace]"
    )
    _add_file(real, nargs="?")
    real.add_argument(
        "--json",
        action="store_true",
        help="print the result JSON of contract section 3 (sptelab-real), with its live object and per-step"
        " stats",
    )
    real.add_argument(
        "--compare",
        action="append",
        nargs="+",
        metavar="P",
        help="presets to set beside the kernel: --compare zap,lazy or --compare zap --compare lazy, or"
        f" after FILE --compare zap lazy (default {REAL_DEFAULT_PRESET})",
    )
    real.add_argument(
        "--policy",
        action="append",
        metavar="K=V",
        help="set policy switches on every compared preset (repeat, or separate with commas);"
        " dirty_log_mode=bitmap|manual_clear|initially_set|ring also chooses the live VM's dirty-log mode",
    )
    real.add_argument(
        "--guest",
        choices=("native", "emulated"),
        default="native",
        help="native: 64-bit with page tables, run through the kernel's MMU where the kernel runs it"
        " natively (default); emulated: 32-bit with paging off, which a shadow-MMU host emulates",
    )
    real.add_argument(
        "--no-trace",
        action="store_true",
        help="do not read the kernel's kvmmmu tracepoints (they need root and tracefs)",
    )
    return parser


# ---------------------------------------------------------------------------------------------------------
# Entry point


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run one `sptelab` command; return its exit status (0 ok, 1 `run --strict` violations, 2 bad input)."""
    prog = PROG
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper) and (out.encoding or "").lower().replace("-", "") != "utf8":
        # Keep an odd character in a title from crashing the report on a non-UTF-8 terminal.
        out.reconfigure(errors="backslashreplace")
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help: argparse has printed it
            return done.code if isinstance(done.code, int) else EXIT_OK
        prog = args.prog
        # A command is one simulation from start to end: keep the cyclic collector out of all of it.
        with gc_paused():
            status: int = args.handler(args, out)
        out.flush()
        return status
    except UsageError as error:
        print(one_line(str(error)), file=sys.stderr)
        return EXIT_USAGE
    # Only the user's mistakes: an engine bug must keep its traceback.
    except (CliError, ScenarioError, PolicyError, CodecError) as error:
        print(f"{prog}: {one_line(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
