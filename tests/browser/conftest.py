"""Fixtures for the browser tests: a live server, headless Chromium, and a page that fails on script errors.

The server is the real app as the project serves it, started once per test run as `python -m app` on a
free loopback port, with its output in `test-artifacts/server.log`. The browser is the distribution's
Chromium driven through the PyPI `playwright` package; Playwright's own browser download is never used, so
the tests run on a machine that only reaches package registries. The browser is `/usr/bin/chromium`, or
the executable `SPTELAB_CHROMIUM` names (another Chromium build, a distribution that installs it elsewhere).
Without it the tests skip, except under CI (the `CI` environment variable set), where a missing browser is a
failure: CI installs it (`.ci/run`).

Every test gets a fresh browser context. Console errors and uncaught page errors are collected while it runs
and fail it: a page whose script breaks must not pass because the hooks it already rendered look right.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, ViewportSize, expect, sync_playwright

from .pagehooks import EXPECT_TIMEOUT_MS, Screenshot

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
SERVER_LOG = ARTIFACTS / "server.log"

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ENV = "SPTELAB_CHROMIUM"


def chromium_path(environ: Mapping[str, str]) -> Path:
    """The Chromium the tests drive: `SPTELAB_CHROMIUM` when set and not empty, else Debian's."""
    return Path(environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM)


CHROMIUM = chromium_path(os.environ)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# The projector size the pages are designed for (style.md, "Pages").
VIEWPORT: ViewportSize = {"width": 1280, "height": 720}

STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
ACTION_TIMEOUT_MS = 10_000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            return f"(no server log: {error})"
        return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


def _healthy(url: str) -> bool:
    try:
        response = httpx.get(f"{url}/healthz", timeout=1.0, trust_env=False)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    try:
        body: Any = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("status") == "ok"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    """The app on a free loopback port, answering `GET /healthz`; stopped when the test run ends."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "app"]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "SPTELAB_HOST": "127.0.0.1",
        "SPTELAB_PORT": str(port),
        "SPTELAB_WORKERS": "1",
    }
    with SERVER_LOG.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )
        server = LiveServer(url, process, SERVER_LOG)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not _healthy(url):
                if process.poll() is not None:
                    pytest.fail(
                        f"the app server exited with status {process.returncode} before answering /healthz;"
                        f" {SERVER_LOG} ends with:\n{server.log_tail()}",
                        pytrace=False,
                    )
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"the app server did not answer GET {url}/healthz within {STARTUP_TIMEOUT_S:.0f} s;"
                        f" {SERVER_LOG} ends with:\n{server.log_tail()}",
                        pytrace=False,
                    )
                time.sleep(0.1)
            yield server
        finally:
            _stop(process)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium; skips without it, except under CI, which must have installed it."""
    if not CHROMIUM.is_file():
        reason = f"no Chromium at {CHROMIUM} (install Debian's chromium, or set {CHROMIUM_ENV} to one)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI installs it through .ci/run's SYSTEM_PACKAGES", pytrace=False)
        print(f"\nbrowser tests skipped: {reason}", file=sys.stderr)
        pytest.skip(reason)
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class PageProblems:
    """Console errors and uncaught exceptions a page produced during one test."""

    seen: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            at = f"{where.get('url')}:{where.get('lineNumber')}"
            self.seen.append(f"console error: {message.text} (at {at})")

    def on_page_error(self, error: Error) -> None:
        self.seen.append(f"page error: {error.name}: {error.message}")


@pytest.fixture
def page_problems() -> PageProblems:
    return PageProblems()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so the page fixture knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def save_screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot at `test-artifacts/screenshots/NAME.png`."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{_safe_name(name)}.png"
    # Keep the caret as it is: hiding it injects a <style> that the app's Content-Security-Policy refuses,
    # and the refusal would surface as a console error on a later swap.
    page.screenshot(path=str(path), full_page=True, caret="initial")
    return path


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    """`test-artifacts/screenshots/`, created, and emptied of an earlier run's screenshots."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink(missing_ok=True)
    return SCREENSHOTS


@pytest.fixture
def screenshot(screenshot_dir: Path) -> Screenshot:
    """Save a screenshot of a page under `test-artifacts/screenshots/`."""
    return save_screenshot


@pytest.fixture
def page(
    browser: Browser,
    live_server: LiveServer,
    page_problems: PageProblems,
    screenshot_dir: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Page]:
    """A fresh page on the live server (relative URLs work), failing its test on any script error."""
    context = browser.new_context(base_url=live_server.url, viewport=VIEWPORT)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    tab = context.new_page()
    tab.on("console", page_problems.on_console)
    tab.on("pageerror", page_problems.on_page_error)
    try:
        yield tab
        call_report = getattr(request.node, "report_call", None)
        if call_report is not None and call_report.failed:
            try:
                save_screenshot(tab, f"FAILED-{request.node.name}")
            except Error as error:  # a crashed page has no picture; the failure says what happened
                print(f"no screenshot of the failed page: {error.message}", file=sys.stderr)
    finally:
        context.close()
    problems = page_problems.seen
    if problems:
        pytest.fail(
            "the page reported errors while the test ran:\n  " + "\n  ".join(problems),
            pytrace=False,
        )
