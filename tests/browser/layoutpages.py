"""The pages the layout and accessibility tests visit: every kind of page the app serves, in the states
that stress the layout most (a writable 2M spte with the page it loses, the write storm's big tree, four
presets side by side, presentation and predict modes, an spte in the inspector, an error page).
"""

from __future__ import annotations

from dataclasses import dataclass

from playwright.sync_api import Page

from .conftest import PageProblems
from .pagehooks import compare_url, player_url

# kvm-mmu.md §7.2: after step 5 (write 0x250) lazy-buggy's 2M spte L2[1] is writable while logged, and
# 0x250 is written but not dirty.
LARGE_STEP = 5
LARGE_SPTE = "2:0:1"  # LEVEL:SPGFN:INDEX of L2[1], the 2M spte over gfns 0x200-0x3ff
STORM = "write-storm-2m"


@dataclass(frozen=True)
class Visit:
    name: str
    url: str
    status: int = 200
    # The page shows a large spte (a 2M mapping, the longest row of the tree).
    large: bool = False


def _player(step: int, extra: str = "", scenario: str = "worked-example") -> str:
    return player_url("lazy-buggy", step, scenario) + extra


VISITS: tuple[Visit, ...] = (
    Visit("landing", "/"),
    Visit("player-2m", _player(LARGE_STEP), large=True),
    Visit("player-spte", _player(LARGE_STEP, f"&spte={LARGE_SPTE}"), large=True),
    Visit("present", _player(LARGE_STEP, "&present=1"), large=True),
    Visit("present-trace-spte", _player(12, f"&present=1&focus=trace&spte={LARGE_SPTE}"), large=True),
    Visit("predict", _player(4, "&mode=predict&score=0-0"), large=True),
    Visit("present-predict", _player(4, "&mode=predict&score=0-0&present=1"), large=True),
    # The write storm: lazy-buggy keeps the 2M spte, read-only, and the storm makes it writable again.
    Visit("storm-2m", _player(4, scenario=STORM), large=True),
    Visit("storm-4k", player_url("zap", 8, STORM)),
    # A 1G page: a changed pointer's tag on the amber of "changed".
    Visit("one-gig", player_url("modern", 3, "one-gig-page")),
    Visit("compare-4", compare_url(("zap", "lazy-buggy", "lazy", "modern"), 10)),
    Visit("real", "/real?scenario=worked-example"),
    Visit("real-tables", "/real?scenario=worked-example&tables=5#kernel-tables"),
    # Live mode: the kernel's tables beside the preset's (or, without a device, why not).
    Visit("player-live", _player(5, "&live=1"), large=True),
    Visit("error", "/play?scenario=no-such-scenario", 404),
)


def visit(page: Page, problems: PageProblems, target: Visit) -> None:
    """Load the page; an error page's own status is the one console error Chromium logs that is expected."""
    response = page.goto(target.url)
    assert response is not None and response.status == target.status, target
    if target.status != 200:
        logged = f"the server responded with a status of {target.status}"
        mine = [seen for seen in problems.seen if logged in seen]
        assert len(mine) == 1, problems.seen
        problems.seen.remove(mine[0])
