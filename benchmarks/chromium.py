"""The distribution's headless Chromium, as the scripts that drive the app in a browser launch it.

`/usr/bin/chromium` (Debian's), or the executable `SPTELAB_CHROMIUM` names; never Playwright's own
browser download, which a machine that reaches only package registries cannot fetch. The flags are the
browser tests' (tests/browser/conftest.py): no sandbox (root in CI), no GPU, nothing fetched in the
background.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path(os.environ.get("SPTELAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for the length of the block, always closed after it."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
