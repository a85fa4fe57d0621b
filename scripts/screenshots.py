"""The screenshots in docs/: the landing page, the player, compare and presentation mode, and the player
under shadow paging, as seen.

Starts the app as `sptelab serve` runs it (benchmarks/web_latency.py's `Server`), opens each page in the
distribution's headless Chromium (`/usr/bin/chromium`, or the browser `SPTELAB_CHROMIUM` names) and saves
a PNG under docs/screenshots/. The player, compare and presentation shots are taken at the worked
example's decisive step: the one the landing page's "Start here" link lands on.

    python3 scripts/screenshots.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from playwright.sync_api import Page

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from chromium import CHROMIUM, chromium  # noqa: E402
from web_latency import Server  # noqa: E402

from engine.codec import encode_scenario  # noqa: E402
from engine.scenario import parse_scenario  # noqa: E402

OUT = REPO / "docs" / "screenshots"
EXAMPLE = "worked-example"

# shadow-mmu.md §4's S1: a guest identity-mapped by 2M pages links gfn 0x480, inside one of them, as the
# page table of gva 0x600000; reading through it makes KVM shadow 0x480 under the 2M spte that maps it.
SHADOW_S1 = {
    "format": "sptelab-scenario",
    "version": 1,
    "title": "A large spte over a newly shadowed guest page table",
    "description": "Shadow paging (shadow-mmu.md §4, S1). The guest links gfn 0x480 as a page table;"
    " KVM must write-protect it, and a 2M spte maps it.",
    "vm": {"mmu": "shadow"},
    "memslots": [{"id": 1, "base_gfn": "0x200", "npages": "0x400", "host_page": "2M"}],
    "guest": {"tables_at": "0x200"},
    "steps": [
        {"op": "write", "gfn": "0x410"},
        {"op": "write_gpte", "table": "0x202", "index": 3, "pte": "0x480027"},
        {"op": "write_gpte", "table": "0x480", "index": 0, "pte": "0x500067"},
        {"op": "read", "gva": "0x600000"},
        {"op": "read", "gfn": "0x420"},
        {"op": "write", "gfn": "0x430"},
        {"op": "write", "gfn": "0x480"},
    ],
}
# After the read through 0x480: its shadow page exists, and 3.16 has kept the 2M spte read-only.
SHADOW_STEP = 4


def settled(page: Page) -> None:
    page.wait_for_load_state("networkidle")
    page.wait_for_function("() => !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')")


def decisive_step(page: Page, base: str) -> int:
    """The step "Start here" lands on (the first step where the presets part ways)."""
    page.goto(base + "/")
    link = page.locator("[data-start-here]")
    if link.count():
        href = link.first.get_attribute("href") or ""
        step = parse_qs(urlsplit(href).query).get("step", ["0"])[0]
        return int(step)
    return 0


def shoot(page: Page, url: str, name: str, *, full_page: bool = False, element: str | None = None) -> None:
    page.goto(url)
    settled(page)
    path = OUT / f"{name}.png"
    if element is not None:
        page.locator(element).screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=full_page)
    print(f"{path.relative_to(REPO)}  ← {url}")


def run() -> None:
    if not CHROMIUM.exists():
        sys.exit(f"screenshots: no Chromium at {CHROMIUM} (set SPTELAB_CHROMIUM)")
    OUT.mkdir(parents=True, exist_ok=True)
    server = Server(REPO / "test-artifacts" / "screenshots-server.log")
    (REPO / "test-artifacts").mkdir(exist_ok=True)
    server.start()
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            step = decisive_step(page, server.url)
            shoot(page, server.url + "/", "landing")
            player = {"scenario": EXAMPLE, "variant": "lazy-buggy", "step": step}
            shoot(page, server.url + "/play?" + urlencode(player), "player")
            compare = {"scenario": EXAMPLE, "step": step}
            shoot(page, server.url + "/compare?" + urlencode(compare), "compare")
            page.close()
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            shoot(page, server.url + "/play?" + urlencode({**player, "present": 1}), "presentation")
            page.close()
            # Shadow paging: the guest's tables beside KVM's shadow tables, and the walk through both.
            # Tall enough for the whole panel: a taller element would scroll under the sticky header.
            page = browser.new_page(viewport={"width": 1680, "height": 1900})
            shadow = {"s": encode_scenario(parse_scenario(SHADOW_S1)), "variant": "lazy", "step": SHADOW_STEP}
            shoot(page, server.url + "/play?" + urlencode(shadow), "shadow-paging", element="#panel-tree")
            page.close()
            # This machine's kernel's own tables after the first write under logging (needs /dev/kvm, and
            # root for the tracepoints; without them the section says why).
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            real = {"scenario": EXAMPLE, "tables": 5}
            shoot(page, server.url + "/real?" + urlencode(real), "kernel-tables", element="#kernel-tables")
            page.close()
    finally:
        server.stop()


if __name__ == "__main__":
    run()
