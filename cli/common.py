"""What every `sptelab` command shares: its exit statuses, the refusals main() prints on one line,
and reading the scenario FILE names (a path, `-` for stdin, or a built-in's name)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import IO

from cli.report import terminal_text
from engine.policy import PRESETS, PolicyError
from engine.scenario import MAX_SCENARIO_BYTES, Scenario, parse_scenario
from scenarios import builtin_names, load_builtin_text

EXIT_OK = 0
EXIT_VIOLATED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports `cat` whose reader went away


class CliError(Exception):
    """A refusal worded for the user; main() prints it after the command's name, on one line."""


class UsageError(CliError):
    """argparse's refusal, already prefixed with the (sub)parser's name."""


def one_line(text: str) -> str:
    return terminal_text(text)


# ---------------------------------------------------------------------------------------------------------
# Reading a scenario


def read_scenario_text(source: str) -> bytes | str:
    """The scenario text behind FILE: `-` is stdin, an existing path is that file, else a built-in name."""
    if source == "-":
        stream = getattr(sys.stdin, "buffer", None)
        if stream is not None:
            data: bytes | str = stream.read(MAX_SCENARIO_BYTES + 1)
        else:
            data = sys.stdin.read(MAX_SCENARIO_BYTES + 1)
        return data
    if os.path.exists(source):
        try:
            with open(source, "rb") as file:
                # One byte past the limit is enough for the parser to refuse the file as too large.
                return file.read(MAX_SCENARIO_BYTES + 1)
        except OSError as error:
            raise CliError(f"{source}: {error.strerror or error}") from None
    if source in builtin_names():
        return load_builtin_text(source)
    known = ", ".join(builtin_names()) or "none"
    raise CliError(f"{source}: no such file, and no built-in scenario of that name (known: {known})")


def load_scenario(source: str) -> Scenario:
    return parse_scenario(read_scenario_text(source))


def preset_list(raw: Sequence[str] | None, default: Sequence[str], flag: str) -> list[str]:
    """`FLAG a FLAG b,c` as [a, b, c], first spelling first, each once; `default` when none is named."""
    names: list[str] = []
    for item in raw or []:
        for spelled in item.split(","):
            name = spelled.strip()
            if not name:
                raise CliError(f"{flag} {item!r}: empty preset name")
            if name not in PRESETS:
                raise PolicyError(f"unknown variant {name!r} (known: {', '.join(PRESETS)})")
            if name not in names:
                names.append(name)
    return names or list(default)


def write_lines(out: IO[str], lines: Sequence[str]) -> None:
    out.write("".join(line + "\n" for line in lines))
