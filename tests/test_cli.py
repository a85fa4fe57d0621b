"""The `sptelab` command line of contract §3, checked against the worked example of kvm-mmu.md §7.

Most tests call `cli.main.main` in-process; a few run `python -m cli.main` / `python -m cli` to check what
only a real process shows: the exit status, a closed pipe, and stdin.
"""

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

import cli.main
import cli.real
import engine.policy
from cli.main import main
from cli.report import Style
from engine.codec import decode_code
from engine.policy import PRESETS
from engine.scenario import parse_scenario
from live.report import RealRefusalError
from scenarios import LESSONS, builtin_names, builtin_scenarios, load_builtin_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "worked-example"
# kvm-mmu.md §7.2: lazy-buggy's migration loses every page the guest writes once logging is on.
LOST_BY_LAZY_BUGGY = [0x250, 0x260, 0x2C0, 0x300]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    status, out, err = run_cli(capsys, *argv, "--json")
    assert (status, err) == (0, "")
    result: dict[str, Any] = json.loads(out)
    return result


def example() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(load_builtin_text(EXAMPLE))
    return data


def step_block(report: str, index: int) -> str:
    """The lines of the text report that belong to step `index`."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"step {index}  "))
    end = next(
        (i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")),
        len(lines),
    )
    return "\n".join(lines[start:end])


def process(
    *argv: str, stdin: bytes | None = None, module: str = "cli.main"
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


# ---------------------------------------------------------------------------------------------------------
# The scenario library


def test_builtin_library_lists_and_parses_the_worked_example() -> None:
    assert EXAMPLE in builtin_names()
    assert builtin_names() == list(LESSONS)  # the library's teaching order, worked example first
    parsed = dict(builtin_scenarios())
    assert parsed[EXAMPLE].title == "One 2 MiB region, three behaviours"
    assert parse_scenario(load_builtin_text(EXAMPLE)) == parsed[EXAMPLE]


def test_unknown_builtin_is_a_lookup_error_naming_the_known_ones() -> None:
    with pytest.raises(LookupError, match=EXAMPLE):
        load_builtin_text("no-such-scenario")
    with pytest.raises(LookupError):
        load_builtin_text("../pyproject")


# ---------------------------------------------------------------------------------------------------------
# run --json: the verdicts of kvm-mmu.md §7


def test_lazy_buggy_loses_the_pages_the_spec_names(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "run", EXAMPLE, "--variant", "lazy-buggy")
    assert result["format"] == "sptelab-result"
    assert result["variant"] == "lazy-buggy"
    assert result["final"]["migration"]["lost"] == LOST_BY_LAZY_BUGGY
    invariants = {v["invariant"] for v in result["final"]["violations"]}
    assert "written_not_logged" in invariants
    not_logged = {v["gfn"] for v in result["final"]["violations"] if v["invariant"] == "written_not_logged"}
    assert not_logged == set(LOST_BY_LAZY_BUGGY)
    # The decisive write: the fast path makes the 2M spte writable and logs gfn 0x200, not 0x250.
    step4 = result["steps"][4]
    assert step4["fault_counts"] == {"fast": 1, "slow": 0}
    assert step4["marked_dirty"] == [0x200]
    assert step4["spte_changes"] == [
        {"level": 2, "sp_gfn": 0, "index": 1, "old": "0x80000ff5", "new": "0x80000ff7"}
    ]
    assert result["steps"][7]["dirty_log"] == [0x200]


@pytest.mark.parametrize("variant", ["zap", "lazy"])
def test_zap_and_lazy_lose_nothing_and_violate_nothing(
    capsys: pytest.CaptureFixture[str], variant: str
) -> None:
    result = run_json(capsys, "run", EXAMPLE, "--variant", variant)
    assert result["final"]["migration"]["lost"] == []
    assert result["final"]["violations"] == []
    assert all(step["violations"] == [] for step in result["steps"])
    assert result["steps"][7]["dirty_log"] == [0x250, 0x260, 0x2C0]
    assert result["steps"][10]["dirty_log"] == [0x250, 0x300]


def test_default_variant_is_lazy(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "run", EXAMPLE)
    assert result["variant"] == "lazy"
    assert result["policy"] == PRESETS["lazy"].as_json()


def test_policy_switch_overrides_the_preset(capsys: pytest.CaptureFixture[str]) -> None:
    # lazy with 3.14's zapping write-protect: step 2 now zaps the 2M spte.
    result = run_json(capsys, "run", EXAMPLE, "--policy", "wp_large=zap")
    assert result["variant"] == "custom"
    assert result["policy"]["wp_large"] == "zap"
    assert result["steps"][2]["spte_changes"][0]["new"] == "0x0"


def test_json_is_byte_identical_across_runs(capsys: pytest.CaptureFixture[str]) -> None:
    first = run_cli(capsys, "run", EXAMPLE, "--variant", "lazy-buggy", "--json")
    second = run_cli(capsys, "run", EXAMPLE, "--variant", "lazy-buggy", "--json")
    assert first == second
    assert first[1].endswith("}\n")


def test_summary_detail_omits_the_per_fault_rows(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "run", EXAMPLE, "--detail", "summary")
    for step in result["steps"]:
        assert {"faults", "spte_changes", "events"}.isdisjoint(step)
        assert {"fault_counts", "marked_dirty", "dirty_log", "tlb_flushes", "violations"} <= set(step)
    status, out, _ = run_cli(capsys, "run", EXAMPLE, "--detail", "summary")
    assert status == 0
    assert "faults: 0 fast, 1 slow; marked dirty: 1" in step_block(out, 4)
    assert "spte " not in out


def test_until_stops_after_that_step(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "run", EXAMPLE, "--variant", "lazy-buggy", "--until", "4")
    assert [step["index"] for step in result["steps"]] == [0, 1, 2, 3, 4]
    assert result["final"]["stats"]["lpages"] == 1
    status, out, _ = run_cli(capsys, "run", EXAMPLE, "--until", "4")
    assert status == 0
    assert "step 4  write gfn 0x250" in out
    assert "step 5 " not in out
    assert "stopped after step 4" in out


# ---------------------------------------------------------------------------------------------------------
# run: the readable report


def test_report_shows_the_fast_path_bailing_under_lazy(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "run", EXAMPLE, "--variant", "lazy")
    assert (status, err) == (0, "")
    assert out.startswith("One 2 MiB region, three behaviours\nvariant: lazy")
    block = step_block(out, 4)
    assert "bail_large" in block
    assert "slow" in block
    # drop_large_spte clears L2[1], then the walk links an L1 sp and maps gfn 0x250 alone.
    assert "L2[0x1] (sp gfn 0x0): 0x80000ff5 → 0x0" in block
    assert "R X PS A D HW MW → -" in block
    assert "L1[0x50] (sp gfn 0x200): 0x0 → 0x80050d77" in block
    assert "marked dirty: 0x250" in block
    assert "tlb flushes: 1" in block
    assert "migration: 3 rounds, 517 pages sent, no page lost" in out
    assert "violations: 0" in out
    assert "\x1b[" not in out  # not a terminal: no colour


def test_report_shows_the_fast_path_fixing_a_large_spte_under_lazy_buggy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run_cli(capsys, "run", EXAMPLE, "--variant", "lazy-buggy")
    assert status == 0
    block = step_block(out, 4)
    assert "fast (fixed)" in block
    assert "→ 2M" in block
    assert "R X PS A D HW MW → R W X PS A D HW MW" in block
    assert "marked dirty: 0x200" in block
    assert "violation  no_writable_large_while_logging" in block
    assert "no exit" in step_block(out, 5)
    assert "dirty log returned: 0x200" in step_block(out, 7)
    assert "4 pages LOST: 0x250 0x260 0x2c0 0x300" in out
    assert "violations: 6" in out


def test_colour_only_for_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert Style.for_stream(Terminal()).colour
    assert not Style.for_stream(io.StringIO()).colour
    monkeypatch.setenv("NO_COLOR", "1")
    assert not Style.for_stream(Terminal()).colour
    assert Style(colour=True).red("lost") == "\x1b[31mlost\x1b[0m"
    assert Style(colour=False).red("lost") == "lost"


# ---------------------------------------------------------------------------------------------------------
# run --strict


@pytest.mark.parametrize(("variant", "status"), [("lazy-buggy", 1), ("lazy", 0), ("zap", 0)])
def test_strict_fails_only_on_violations(
    capsys: pytest.CaptureFixture[str], variant: str, status: int
) -> None:
    assert run_cli(capsys, "run", EXAMPLE, "--variant", variant, "--strict")[0] == status
    assert run_cli(capsys, "run", EXAMPLE, "--variant", variant, "--strict", "--json")[0] == status
    # Without --strict, violations are data: the run succeeds.
    assert run_cli(capsys, "run", EXAMPLE, "--variant", variant)[0] == 0


# ---------------------------------------------------------------------------------------------------------
# compare


def test_compare_json_reports_the_decisive_write(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "compare", EXAMPLE)
    assert data["format"] == "sptelab-compare"
    assert data["version"] == 1
    assert data["variants"] == list(PRESETS)
    faults = [d for d in data["differences"] if (d["step"], d["field"]) == (4, "faults")]
    assert len(faults) == 1
    paths = {
        name: [(f["path"], f["fast_result"], f["level"]) for f in rows]
        for name, rows in faults[0]["values"].items()
    }
    assert paths == {
        "zap": [("slow", None, 1)],
        "lazy-buggy": [("fast", "fixed", 2)],
        "lazy": [("slow", "bail_large", 1)],
        # Eager splitting left a read-only 4K spte there (§5.2): a fast fault on it.
        "modern": [("fast", "fixed", 1)],
    }
    assert {
        "step": 4,
        "field": "marked_dirty",
        "values": {"zap": [0x250], "lazy-buggy": [0x200], "lazy": [0x250], "modern": [0x250]},
    } in (data["differences"])
    # Steps 0 and 1 happen before logging starts: the 3.x variants do the same; modern differs only by its
    # spte values, in the 6.x layout and built dirty (spec §5.7), so its step-1 store changes no spte.
    early = [d for d in data["differences"] if d["step"] < 2]
    assert [(d["step"], d["field"]) for d in early] == [(0, "spte_changes"), (1, "spte_changes")]
    for d in early:
        zap, buggy, lazy, modern = (d["values"][name] for name in PRESETS)
        assert zap == buggy == lazy != modern
    assert early[1]["values"]["modern"] == []
    assert data["final"]["lazy-buggy"]["lost"] == LOST_BY_LAZY_BUGGY
    assert data["final"]["zap"] == {**data["final"]["zap"], "lost": [], "violations": 0}
    assert data["final"]["lazy"]["violations"] == 0
    assert data["final"]["lazy-buggy"]["stats"]["lpages"] == 1
    # migrate_end's disable recovers modern's 2M page in place (spec §5.7); 3.x leaves the 4K table (§2).
    assert data["final"]["modern"]["stats"]["pages_2m"] == data["final"]["modern"]["stats"]["lpages"] == 1
    assert data["final"]["lazy"]["stats"]["lpages"] == 0
    assert (
        run_cli(capsys, "compare", EXAMPLE, "--json")[1] == run_cli(capsys, "compare", EXAMPLE, "--json")[1]
    )


def test_compare_text_prints_only_the_differences(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "compare", EXAMPLE, "--variant", "zap", "--variant", "lazy-buggy,lazy")
    assert (status, err) == (0, "")
    assert "variants: zap, lazy-buggy, lazy" in out
    assert "step 0 " not in out
    block = step_block(out, 4)
    assert "bail_large" in block
    assert "fast (fixed)" in block
    assert "lazy-buggy  0x250 0x260 0x2c0 0x300" in out


def test_compare_of_one_variant_has_no_differences(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "compare", EXAMPLE, "--variant", "lazy")
    assert data["variants"] == ["lazy"]
    assert data["differences"] == []


# ---------------------------------------------------------------------------------------------------------
# check, url, scenarios, serve, real


def test_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_cli(capsys, "check", EXAMPLE) == (0, "ok: One 2 MiB region, three behaviours (12 steps)\n", "")
    path = tmp_path / "one.json"
    path.write_text(json.dumps({**example(), "title": "t", "steps": [{"op": "read", "gfn": 512}]}))
    assert run_cli(capsys, "check", str(path)) == (0, "ok: t (1 step)\n", "")


def test_check_reads_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(load_builtin_text(EXAMPLE).encode("utf-8")), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert run_cli(capsys, "check", "-")[0] == 0


def test_url_decodes_back_to_the_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "url", EXAMPLE)
    assert status == 0
    url = urlsplit(out.strip())
    assert (url.scheme, url.netloc, url.path) == ("http", "127.0.0.1:8000", "/play")
    query = parse_qs(url.query)
    assert set(query) == {"s"}
    assert decode_code(query["s"][0]) == parse_scenario(load_builtin_text(EXAMPLE)).canonical()


def test_url_with_variant_step_and_base(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(
        capsys, "url", EXAMPLE, "--variant", "lazy-buggy", "--step", "5", "--base", "https://sptelab.example/"
    )
    assert status == 0
    assert out.startswith("https://sptelab.example/play?s=1.")
    assert out.endswith("&variant=lazy-buggy&step=5\n")


def test_scenarios_lists_the_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "scenarios")
    assert status == 0
    # One line per built-in, names padded to the longest one so the titles line up.
    width = max(len(name) for name in builtin_names())
    assert out.splitlines()[builtin_names().index(EXAMPLE)] == (
        f"{EXAMPLE:<{width}}  One 2 MiB region, three behaviours"
    )
    assert [line[:width].rstrip() for line in out.splitlines()] == builtin_names()
    status, out, _ = run_cli(capsys, "scenarios", "--json")
    assert {"name": EXAMPLE, "title": "One 2 MiB region, three behaviours"} in json.loads(out)


# The settings `sptelab serve` reads from the environment (app/settings.py); each test starts without them.
SERVE_ENV = (
    "SPTELAB_HOST", "SPTELAB_PORT", "SPTELAB_WORKERS", "SPTELAB_ROOT_PATH", "SPTELAB_WORKSHOP",
    "SPTELAB_PROXY_HEADERS", "SPTELAB_FORWARDED_ALLOW_IPS", "SPTELAB_ACCESS_LOG", "SPTELAB_PUBLIC_URL",
    "SPTELAB_HEADER_TIMEOUT", "SPTELAB_HEADER_BYTES", "SPTELAB_BODY_TIMEOUT",
)


@pytest.fixture
def server_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, object]]]]:
    """granian's Server replaced by a recorder of the options it was given (with whether the cyclic
    collector was on when it served); the serving settings cleared from the environment, and restored
    afterwards whatever `serve` set."""
    import gc

    import app.serving
    from app.settings import get_settings

    for name in SERVE_ENV:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    calls: list[tuple[str, dict[str, object]]] = []

    class Recorder:
        def __init__(self, target: str, **kw: object) -> None:
            settings = kw.pop("http1_settings")
            kw["header_read_timeout"] = getattr(settings, "header_read_timeout", None)
            kw["max_buffer_size"] = getattr(settings, "max_buffer_size", None)
            self.call = (target, kw)

        def serve(self) -> None:
            calls.append((self.call[0], {**self.call[1], "gc": gc.isenabled()}))

    monkeypatch.setattr(app.serving, "Server", Recorder)
    yield calls
    get_settings.cache_clear()


def serving(**changed: object) -> dict[str, object]:
    """The options granian is given by default, with `changed`."""
    from granian.constants import HTTPModes, Interfaces

    options: dict[str, object] = {
        "address": "127.0.0.1",
        "port": 8000,
        "workers": 1,
        "interface": Interfaces.ASGI,
        "factory": True,
        "http": HTTPModes.http1,
        "websockets": False,
        "log_access": False,
        "url_path_prefix": None,
        "respawn_failed_workers": True,
        "header_read_timeout": 10_000,
        "max_buffer_size": 65_536,
        "gc": True,
    }
    return {**options, **changed}


def test_serve_runs_one_granian_worker_on_the_app(
    capsys: pytest.CaptureFixture[str], server_calls: list[tuple[str, dict[str, object]]]
) -> None:
    calls = server_calls
    assert run_cli(capsys, "serve", "--host", "127.0.0.1", "--port", "8123")[0] == 0
    # The server runs with the cyclic collector on, unlike the simulations of the other commands.
    assert calls == [("app.serving:served_app", serving(port=8123))]
    assert run_cli(capsys, "serve", "--access-log")[0] == 0
    assert calls[-1][1]["log_access"] is True
    argv = ["serve", "--header-timeout", "2.5", "--header-bytes", "20000", "--body-timeout", "7"]
    assert run_cli(capsys, *argv)[0] == 0
    # (Each run leaves its settings in the environment, where the next one reads them.)
    expected = serving(port=8123, log_access=True, header_read_timeout=2500, max_buffer_size=20_000)
    assert calls[-1][1] == expected
    assert os.environ["SPTELAB_BODY_TIMEOUT"] == "7.0"  # the app's own: every worker reads it
    status, _, err = run_cli(capsys, "serve", "--port", "70000")
    assert status == 2 and "--port 70000" in err and err.count("\n") == 1
    assert os.environ["SPTELAB_WORKSHOP"] == "0"  # nothing asked for it


def test_serve_flags_override_the_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    server_calls: list[tuple[str, dict[str, object]]],
) -> None:
    monkeypatch.setenv("SPTELAB_PORT", "9000")
    monkeypatch.setenv("SPTELAB_WORKERS", "3")
    monkeypatch.setenv("SPTELAB_ROOT_PATH", "/from-env")
    monkeypatch.setenv("SPTELAB_FORWARDED_ALLOW_IPS", "*")
    assert run_cli(capsys, "serve")[0] == 0
    assert server_calls[-1][1] == serving(port=9000, workers=3, url_path_prefix="/from-env")
    assert os.environ["SPTELAB_FORWARDED_ALLOW_IPS"] == "*"
    argv = [
        "serve", "--host", "0.0.0.0", "--workers", "2", "--root-path", "/sptelab/", "--workshop",
        "--no-proxy-headers", "--forwarded-allow-ips", "10.0.0.1,10.0.0.2",
        "--public-url", "https://Sptelab.example.org/",
    ]  # fmt: skip
    assert run_cli(capsys, *argv)[0] == 0
    assert server_calls[-1][1] == serving(
        address="0.0.0.0", port=9000, workers=2, url_path_prefix="/sptelab"  # without the trailing slash
    )
    # The app's own settings: every worker reads them from the environment.
    assert os.environ["SPTELAB_WORKSHOP"] == "1"
    assert os.environ["SPTELAB_PROXY_HEADERS"] == "0"
    assert os.environ["SPTELAB_FORWARDED_ALLOW_IPS"] == "10.0.0.1,10.0.0.2"
    assert os.environ["SPTELAB_PUBLIC_URL"] == "https://sptelab.example.org"
    assert run_cli(capsys, "serve", "--no-workshop")[0] == 0
    assert os.environ["SPTELAB_WORKSHOP"] == "0"


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--workers", "0"], {}, "--workers 0"),
        (["--workers", "65"], {}, "--workers 65"),
        (["--root-path", "/a b"], {}, "--root-path /a b"),
        (["--root-path", "/a/../b"], {}, "--root-path /a/../b"),
        (["--root-path", "sptelab"], {}, "--root-path sptelab"),
        ([], {"SPTELAB_WORKERS": "many"}, "SPTELAB_WORKERS"),
        ([], {"SPTELAB_ROOT_PATH": "/a?b"}, "SPTELAB_ROOT_PATH"),
        ([], {"SPTELAB_WORKSHOP": "perhaps"}, "SPTELAB_WORKSHOP"),
        (["--public-url", "https://evil.example/path"], {}, "--public-url https://evil.example/path"),
        (["--header-timeout", "0"], {}, "--header-timeout 0.0"),
        (["--header-bytes", "100"], {}, "--header-bytes 100"),
        ([], {"SPTELAB_PUBLIC_URL": "ftp://x"}, "SPTELAB_PUBLIC_URL"),
    ],
)
def test_serve_refuses_a_bad_option_in_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    server_calls: list[tuple[str, dict[str, object]]],
    argv: list[str],
    env: dict[str, str],
    named: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, _, err = run_cli(capsys, "serve", *argv)
    assert status == 2 and err.startswith(f"sptelab serve: {named}: ") and err.count("\n") == 1
    assert server_calls == []


def test_real_is_listed_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert " real " in capsys.readouterr().out
    assert main(["real", "--help"]) == 0
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage.startswith("usage: sptelab real [-h] FILE [--json] [--compare P[,P...] ...]")


# ---------------------------------------------------------------------------------------------------------
# Refusals: status 2, one line on stderr, no traceback


def _scenario_file(tmp_path: Path, data: object) -> str:
    path = tmp_path / "scenario.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _with_step(index: int, step: dict[str, object]) -> dict[str, Any]:
    data = example()
    data["steps"][index] = step
    return data


REFUSALS: list[tuple[str, list[str], object, list[str]]] = [
    # (id, argv with {file} for the scenario file, the file's content or None, words the line must hold)
    ("missing file", ["run", "no/such/file.json"], None, ["sptelab run: no/such/file.json: no such file"]),
    ("invalid json", ["run", "{file}"], '{"format": ', ["sptelab run: scenario: not valid JSON (line 1"]),
    ("unknown op", ["run", "{file}"], _with_step(0, {"op": "frob"}), ["step 0", "unknown op 'frob'"]),
    (
        "gfn outside memslot",
        ["check", "{file}"],
        _with_step(1, {"op": "write", "gfn": "0x400"}),
        ["sptelab check: step 1 (write): gfn 0x400 is outside every memslot"],
    ),
    (
        "unknown variant",
        ["run", EXAMPLE, "--variant", "nope"],
        None,
        ["unknown variant 'nope'", "lazy-buggy"],
    ),
    ("unknown switch", ["run", EXAMPLE, "--policy", "nope=1"], None, ["unknown policy switch 'nope'"]),
    ("bad switch value", ["run", EXAMPLE, "--policy", "wp_large=maybe"], None, ["wp_large", "'maybe'"]),
    ("malformed policy", ["run", EXAMPLE, "--policy", "foo"], None, ["--policy 'foo'", "SWITCH=VALUE"]),
    ("until not a number", ["run", EXAMPLE, "--until", "x"], None, ["sptelab run: argument --until"]),
    ("until past the end", ["run", EXAMPLE, "--until", "12"], None, ["--until 12", "0 to 11"]),
    ("until negative", ["run", EXAMPLE, "--until", "-1"], None, ["--until -1"]),
    ("bad detail", ["run", EXAMPLE, "--detail", "most"], None, ["argument --detail"]),
    ("unknown subcommand", ["frob"], None, ["sptelab: ", "invalid choice: 'frob'"]),
    ("no subcommand", [], None, ["sptelab: ", "required"]),
    ("run without a file", ["run"], None, ["sptelab run: ", "FILE"]),
    (
        "compare unknown variant",
        ["compare", EXAMPLE, "--variant", "zap,nope"],
        None,
        ["sptelab compare: ", "'nope'"],
    ),
    ("url unknown variant", ["url", EXAMPLE, "--variant", "nope"], None, ["sptelab url: unknown variant"]),
    ("url step past the end", ["url", EXAMPLE, "--step", "13"], None, ["sptelab url: --step 13"]),
    ("url bad base", ["url", EXAMPLE, "--base", "javascript:x"], None, ["sptelab url: --base"]),
    ("unknown builtin", ["check", "no-such-scenario"], None, ["no built-in scenario", EXAMPLE]),
]


@pytest.mark.parametrize(
    ("argv", "content", "words"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusals_are_one_line_with_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], content: object, words: list[str]
) -> None:
    if content is not None:
        file = _scenario_file(tmp_path, content)
        argv = [file if arg == "{file}" else arg for arg in argv]
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n")
    assert err.startswith("sptelab")
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_an_unimplemented_switch_value_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every value the switch table lists is implemented today; the refusal is for the next one.
    monkeypatch.setitem(engine.policy.NOT_IMPLEMENTED, ("eager_split", True), "eager page splitting")
    status, out, err = run_cli(capsys, "run", EXAMPLE, "--policy", "eager_split=true")
    assert (status, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("sptelab") and "Traceback" not in err
    assert "eager_split" in err and "not implemented" in err


def test_keyboard_interrupt_exits_130_quietly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.main, "cmd_run", interrupted)
    assert run_cli(capsys, "run", EXAMPLE) == (130, "", "")


def test_an_engine_bug_is_not_passed_off_as_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> int:
        raise IndexError("list index out of range")

    monkeypatch.setattr(cli.main, "cmd_run", broken)
    with pytest.raises(IndexError):
        main(["run", EXAMPLE])


# ---------------------------------------------------------------------------------------------------------
# Real processes


def test_process_json_matches_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    done = process("run", EXAMPLE, "--variant", "lazy-buggy", "--json")
    assert (done.returncode, done.stderr) == (0, b"")
    assert (
        done.stdout.decode("utf-8") == run_cli(capsys, "run", EXAMPLE, "--variant", "lazy-buggy", "--json")[1]
    )


def test_process_reads_stdin_and_refuses_in_one_line() -> None:
    good = process("check", "-", stdin=load_builtin_text(EXAMPLE).encode("utf-8"), module="cli")
    assert (good.returncode, good.stdout) == (0, b"ok: One 2 MiB region, three behaviours (12 steps)\n")
    bad = process("run", "-", "--strict", stdin=b"[1, 2", module="cli")
    assert bad.returncode == 2
    assert bad.stdout == b""
    assert bad.stderr.startswith(b"sptelab run: scenario: not valid JSON")
    assert bad.stderr.count(b"\n") == 1


def test_process_strict_status() -> None:
    assert (
        process("run", EXAMPLE, "--variant", "lazy-buggy", "--strict", "--detail", "summary").returncode == 1
    )


def test_process_closed_pipe_is_quiet(tmp_path: Path) -> None:
    # Enough output to overflow a pipe buffer, so the writer meets the closed reader.
    data = {**example(), "steps": [{"op": "read", "gfn": "0x200", "count": 1, "stride": 0}] * 2000}
    path = tmp_path / "long.json"
    path.write_text(json.dumps(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-m", "cli.main", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        child.stdout.read(100)
        child.stdout.close()
        err = child.stderr.read()
        status = child.wait(timeout=60)
    assert err == b""
    assert status == 141


def test_scenario_text_cannot_drive_the_terminal(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A shared scenario is someone else's text: an ESC sequence or a bidi override in its title or a note
    # is printed as its escape, never written raw to the terminal.
    data = _with_step(0, {"op": "note", "text": "look \x1b]0;owned\x07 here \u202e"})
    data["title"] = "\x1b[2J\x1b[31mred title"
    path = _scenario_file(tmp_path, data)
    for argv in (("run", path), ("check", path)):
        status, out, err = run_cli(capsys, *argv)
        assert status == 0, err
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert "\\x1b[2J\\x1b[31mred title" in out
    status, out, _ = run_cli(capsys, "run", path)
    assert "note: look \\x1b]0;owned\\x07 here \\u202e" in out


# ---------------------------------------------------------------------------------------------------------
# --version, the comma form of --policy, and where `real` finds FILE


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    try:
        expected = metadata.version("sptelab")
    except metadata.PackageNotFoundError:
        expected = cli.main.package_version()
    assert run_cli(capsys, "--version") == (0, f"sptelab {expected}\n", "")


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib
    from importlib import metadata

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with (ROOT / "pyproject.toml").open("rb") as file:
        assert cli.main.package_version() == tomllib.load(file)["project"]["version"]


def test_process_version() -> None:
    done = process("--version", module="cli")
    assert done.returncode == 0 and done.stderr == b""
    assert done.stdout.decode().startswith("sptelab ") and done.stdout.count(b"\n") == 1


@pytest.mark.parametrize(
    "spelled",
    [
        ["--policy", "pml=true,dirty_log_mode=ring"],
        ["--policy", "pml=true", "--policy", "dirty_log_mode=ring"],
        ["--policy", "dirty_log_mode=ring,", "--policy", " pml=true"],
    ],
    ids=["commas", "repeated", "combined"],
)
def test_policy_takes_the_webs_comma_form(capsys: pytest.CaptureFixture[str], spelled: list[str]) -> None:
    result = run_json(capsys, "run", EXAMPLE, "--variant", "lazy", *spelled)
    assert result["variant"] == "custom"
    assert (result["policy"]["pml"], result["policy"]["dirty_log_mode"]) == (True, "ring")
    compared = run_json(capsys, "compare", EXAMPLE, "--variant", "zap,lazy", *spelled)
    assert compared["policy"] == {"dirty_log_mode": "ring", "pml": "true"}


@pytest.mark.parametrize("command", ["run", "compare", "real"])
@pytest.mark.parametrize(
    "spelled",
    [
        ["--policy", "pml=true,pml=false"],
        ["--policy", "pml=true", "--policy", "dirty_log_mode=ring,pml=false"],
        ["--policy", "pml=true,eager_split=true", "--policy", "pml=true"],
    ],
    ids=["in-one", "across-two", "same-value"],
)
def test_a_switch_given_twice_is_refused_by_name(
    capsys: pytest.CaptureFixture[str], command: str, spelled: list[str]
) -> None:
    status, out, err = run_cli(capsys, command, EXAMPLE, *spelled)
    assert (status, out) == (2, "")
    assert err.startswith(f"sptelab {command}: --policy ") and err.count("\n") == 1
    assert "the switch 'pml' is given twice" in err


@pytest.mark.parametrize("spelled", ["", ",", "pml=true,,nope"])
def test_a_malformed_comma_policy_is_refused(capsys: pytest.CaptureFixture[str], spelled: str) -> None:
    status, out, err = run_cli(capsys, "run", EXAMPLE, "--policy", spelled)
    assert (status, out) == (2, "")
    assert err.startswith("sptelab run: ") and err.count("\n") == 1
    assert "SWITCH=VALUE" in err or "unknown policy switch 'nope'" in err


@pytest.fixture
def real_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], str, dict[str, str]]]:
    """`real` with the kernel left out: what it would have run, recorded; no device needed."""
    calls: list[tuple[str, list[str], str, dict[str, str]]] = []

    def recorded(
        scenario: Any, presets: list[str], mode: str, *, overrides: dict[str, str], guest: str, trace: bool
    ) -> object:
        assert (guest, trace) == ("native", True)  # the defaults of `real`
        calls.append((scenario.title, list(presets), mode, dict(overrides)))
        raise RealRefusalError("recorded")

    monkeypatch.setattr(cli.real, "availability", lambda *args: None)
    monkeypatch.setattr(cli.real, "real_result", recorded)
    return calls


@pytest.mark.parametrize(
    "argv",
    [
        [EXAMPLE, "--compare", "zap", "lazy"],
        ["--compare", "zap", "lazy", EXAMPLE],
        ["--compare", "zap,lazy", EXAMPLE],
        ["--compare", "zap", "--compare", "lazy", EXAMPLE],
        ["--compare", "zap", EXAMPLE, "--compare", "lazy"],
        ["--compare", "zap,lazy", "--json", EXAMPLE],
        [EXAMPLE, "--compare", "zap,lazy", "zap"],
    ],
)
def test_real_finds_file_wherever_compare_is(
    capsys: pytest.CaptureFixture[str],
    real_calls: list[tuple[str, list[str], str, dict[str, str]]],
    argv: list[str],
) -> None:
    status, _, err = run_cli(capsys, "real", *argv, "--policy", "dirty_log_mode=ring,pml=true")
    assert (status, err) == (2, "sptelab real: recorded\n")
    title = parse_scenario(load_builtin_text(EXAMPLE)).title
    assert real_calls == [(title, ["zap", "lazy"], "ring", {"dirty_log_mode": "ring", "pml": "true"})]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--compare", "zap", "lazy"], ["FILE is missing", "(zap lazy) is a preset", "--compare zap,lazy"]),
        (["--compare", "zap,lazy"], ["FILE is missing"]),
        ([], ["required: FILE"]),
        (["--compare", EXAMPLE], ["--compare: expected a preset before FILE"]),
        (["--compare", "zap", "nope", EXAMPLE], ["unknown variant 'nope'"]),
    ],
)
def test_real_without_file_or_preset_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str],
    real_calls: list[tuple[str, list[str], str, dict[str, str]]],
    argv: list[str],
    words: list[str],
) -> None:
    status, out, err = run_cli(capsys, "real", *argv)
    assert (status, out, real_calls) == (2, "", [])
    assert err.startswith("sptelab real: ") and err.count("\n") == 1
    for word in words:
        assert word in err


# ---------------------------------------------------------------------------------------------------------
# A long listing in the readable report of `run`: its first and last rows, unless --all


def _busy_scenario(tmp_path: Path) -> str:
    """A 2M page split eagerly (513 spte writes under modern), then 100 writes in a row."""
    data = {
        **example(),
        "title": "busy",
        "steps": [
            {"op": "read", "gfn": "0x200"},
            {"op": "migrate_begin"},
            {"op": "write", "gfn": "0x200", "count": 100},
            {"op": "migrate_round"},
            {"op": "migrate_end"},
        ],
    }
    return _scenario_file(tmp_path, data)


def test_run_report_caps_long_listings_unless_all(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _busy_scenario(tmp_path)
    result = run_json(capsys, "run", path, "--variant", "modern")
    writes = len(result["steps"][1]["spte_changes"])
    assert writes > 500
    status, capped, _ = run_cli(capsys, "run", path, "--variant", "modern")
    assert status == 0
    status, whole, _ = run_cli(capsys, "run", path, "--variant", "modern", "--all")
    assert status == 0
    assert "more" not in whole and "--all" not in whole
    assert len(whole.splitlines()) > 2 * writes

    step1 = step_block(capped, 1).splitlines()
    # The step's first and last 10 writes (two lines each), as --all prints them, around the count.
    whole1 = step_block(whole, 1).splitlines()
    assert step1[1:21] == whole1[1:21]
    hidden = f"{writes - 20:,}".replace(",", " ")
    assert step1[21] == f"  … {hidden} more spte writes (use --all to list every one)"
    assert step1[22:] == whole1[-len(step1[22:]) :]
    step2 = step_block(capped, 2)
    assert "… 80 more faults and accesses (use --all to list every one)" in step2
    assert step2.count("fault  vcpu 0") == 20
    marked = " ".join(f"{0x200 + i:#x}" for i in range(10))
    tail = " ".join(f"{0x200 + i:#x}" for i in range(90, 100))
    assert f"marked dirty: {marked} … 80 more gfns … {tail}\n" in step2 + "\n"
    # Each step: its head, at most 21 fault rows, 41 spte-write lines and a few of dirty logs and flushes.
    for index in range(5):
        assert len(step_block(capped, index).splitlines()) <= 1 + 21 + 41 + 5


def test_run_report_caps_the_lost_pages_too(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _busy_scenario(tmp_path)
    lost = run_json(capsys, "run", path, "--variant", "lazy-buggy")["final"]["migration"]["lost"]
    assert len(lost) > 21
    out = run_cli(capsys, "run", path, "--variant", "lazy-buggy")[1]
    verdict = next(line for line in out.splitlines() if "LOST" in line)
    assert f"{len(lost)} pages LOST: {lost[0]:#x} " in verdict
    assert f"… {len(lost) - 20} more gfns … " in verdict and verdict.endswith(f" {lost[-1]:#x}")
    whole = run_cli(capsys, "run", path, "--variant", "lazy-buggy", "--all")[1]
    assert " ".join(f"{gfn:#x}" for gfn in lost) in whole


def test_run_all_changes_nothing_in_a_short_report(capsys: pytest.CaptureFixture[str]) -> None:
    # The 3.x presets' worked example has no listing longer than 21 rows (modern splits a 2M page).
    for variant in ("zap", "lazy-buggy", "lazy"):
        assert run_cli(capsys, "run", EXAMPLE, "--variant", variant) == run_cli(
            capsys, "run", EXAMPLE, "--variant", variant, "--all"
        )


def test_run_json_ignores_all(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _busy_scenario(tmp_path)
    assert run_cli(capsys, "run", path, "--variant", "modern", "--json") == run_cli(
        capsys, "run", path, "--variant", "modern", "--json", "--all"
    )


def test_mmu_runs_a_scenario_under_the_other_mmu(capsys: pytest.CaptureFixture[str]) -> None:
    """`--mmu shadow` runs the side-by-side lesson under shadow paging, where caf6900f loses nothing; a
    scenario without the guest's tables is refused in one line."""
    argv = ("run", "tdp-vs-shadow", "--variant", "lazy-buggy", "--json")
    code, out, _ = run_cli(capsys, *argv, "--mmu", "shadow")
    assert code == 0
    result = json.loads(out)
    logs = [step["dirty_log"] for step in result["steps"] if step["op"]["op"] == "get_dirty_log"]
    assert logs == [[0x450, 0x460, 0x470]] and result["final"]["violations"] == []
    code, out, _ = run_cli(capsys, *argv)
    assert [s["dirty_log"] for s in json.loads(out)["steps"] if s["op"]["op"] == "get_dirty_log"] == [[0x400]]
    code, out, err = run_cli(capsys, "run", "worked-example", "--mmu", "shadow")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "guest's page tables" in err
