"""How long a presenter waits between pressing → and seeing the next step: key to settled page.

The wire benchmark counts bytes and the latency benchmark times the server; what a room feels is the sum
of both and of the browser's work: the key handler, the htmx request, the out-of-band swaps of every
panel, and htmx's settle. This script starts the app as `sptelab serve` runs it (benchmarks/web_latency.py's
`Server`), opens the player in the distribution's headless Chromium (`/usr/bin/chromium`, or the browser
`SPTELAB_CHROMIUM` names) and, for the lessons `worked-example` and `write-storm-2m` under every preset:

- presses → once per step from step 0 to the last, waiting for each step to settle, and times each from
  the `keydown` to the last `htmx:afterSettle` (the first pass builds every step on the server: *cold*);
- goes back to step 0 and does it again (every page is in the server's page cache: *warm*, the browser's
  and the wire's share);
- from step 0, presses → five times in a burst and times the first `keydown` to the page settled five
  steps on (keys pressed during a request are queued and replayed one by one after it settles).

It prints, per lesson and preset, the median and the largest time of each kind. It is a measurement, not a
test: it always exits 0 (a missing browser is reported and skipped). Requests go to 127.0.0.1 only.

    python3 benchmarks/stepping.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from playwright.sync_api import Page

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chromium import CHROMIUM, chromium  # noqa: E402
from web_latency import PRESETS, Server, play_path  # noqa: E402
from wire import steps_of  # noqa: E402

LESSONS = ("worked-example", "write-storm-2m")
BURST = 5
TIMEOUT_MS = 30_000

# Installed in every page: the time of the latest keydown and of the latest settle, in ms.
_PROBE = """() => {
    window.__keyAt = null;
    window.__settledAt = null;
    document.addEventListener('keydown', () => {
        if (window.__keyAt === null) { window.__keyAt = performance.now(); }
    }, true);
    document.addEventListener('htmx:afterSettle', () => { window.__settledAt = performance.now(); });
}"""

# Settled at a step: the position shows it and no htmx request, swap or settle is in flight.
_AT_STEP = """(step) => {
    const position = document.querySelector('[data-step][data-steps]');
    return position && position.getAttribute('data-step') === String(step)
        && (new URLSearchParams(location.search).get('step') ?? '0') === String(step)
        && !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling');
}"""


def press_and_time(page: Page, presses: int, target: int) -> float:
    """Milliseconds from the first of `presses` → to the page settled at step `target`."""
    page.evaluate("() => { window.__keyAt = null; window.__settledAt = null; }")
    for _ in range(presses):
        page.keyboard.press("ArrowRight")
    page.wait_for_function(_AT_STEP, arg=target, timeout=TIMEOUT_MS, polling=10)
    key_at, settled_at = page.evaluate("() => [window.__keyAt, window.__settledAt]")
    return float(settled_at) - float(key_at)


def ms(values: list[float]) -> str:
    return f"{statistics.median(values):>8.0f}{max(values):>8.0f}"


def run() -> None:
    if not CHROMIUM.exists():
        print(f"skipped: no Chromium at {CHROMIUM} (set SPTELAB_CHROMIUM)")
        return
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    server = Server(artifacts / "stepping-server.log")
    server.start()
    try:
        print(f"server: {server.url}, browser {CHROMIUM}\n")
        print("key → settled page, ms (median, max)")
        print(f"    {'lesson':<16}{'preset':<12}{'steps':>6}{'cold p50':>9}{'max':>7}"
              f"{'warm p50':>9}{'max':>7}{'burst of 5':>11}")  # fmt: skip
        with chromium() as browser:
            for lesson in LESSONS:
                last = steps_of(lesson)
                for variant in PRESETS:
                    page = browser.new_page(viewport={"width": 1366, "height": 768})
                    page.goto(server.url + play_path(None, variant, 0, scenario=lesson))
                    page.evaluate(_PROBE)
                    passes: list[list[float]] = []
                    for _ in range(2):
                        times = [press_and_time(page, 1, step) for step in range(1, last + 1)]
                        passes.append(times)
                        page.keyboard.press("Home")
                        page.wait_for_function(_AT_STEP, arg=0, timeout=TIMEOUT_MS, polling=10)
                    burst = press_and_time(page, BURST, min(BURST, last))
                    page.close()
                    cold, warm = ms(passes[0]), ms(passes[1])
                    print(f"    {lesson:<16}{variant:<12}{last:>6}{cold}{warm}{burst:>11.0f}")
    finally:
        server.stop()


if __name__ == "__main__":
    run()
