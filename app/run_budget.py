"""What one request may ask of the runs, priced before anything runs.

`check_budget` refuses (413) a request whose price (engine.estimate.estimate_work) exceeds
`Settings.run_budget` (the workshop's budget in workshop mode, app/workshop.py), saying what makes it
big and how to shrink it; `too_heavy_to_write` says whether a run's full-detail result
(engine.estimate.estimate_result) is small enough to write out (`Settings.result_work`). Units of work,
not bytes: the bytes the caches hold are app.budget_bytes' concern.
"""

from __future__ import annotations

from app.errors import AppError
from app.settings import Settings
from engine.estimate import estimate_result, estimate_work
from engine.policy import Policy
from engine.scenario import Scenario

_SHRINK = {
    "accesses": "most of it guest accesses: lower the counts of its read and write steps",
    "slot_pages": (
        "most of it dirty-log, flush and migration steps, per memslot and per page: use fewer or smaller"
        " memslots, or fewer enable_dirty_log, get_dirty_log, clear_dirty_log and migrate steps"
    ),
    "huge": (
        "most of it huge pages split when logging starts and recovered when it stops: toggle logging"
        " less often on slots mapped with 2M or 1G pages"
    ),
    "steps": "most of it the steps themselves: use fewer steps, and fewer zap_all",
    "setup": "most of it creating the memslots: make them smaller",
}


def check_budget(
    settings: Settings,
    scenario: Scenario,
    per_run: int,
    *,
    steps: int,
    runs: int = 1,
    doing: str,
    earlier: bool = False,
) -> None:
    """Refuse (413), before anything runs, a request that would make the engine do more than
    `Settings.run_budget`: `runs` runs of the scenario's first `steps` steps, each estimated at `per_run`
    (engine.estimate.estimate_work; the caller usually has it precomputed). The message says what it
    would cost, what makes it big and how to shrink it; `earlier` offers showing an earlier step."""
    budget, setting = settings.run_budget, "SPTELAB_RUN_BUDGET"
    if settings.workshop:  # a room shares the server (app/workshop.py)
        budget, setting = settings.workshop_budget or settings.run_budget // 4, "SPTELAB_WORKSHOP_BUDGET"
    need = per_run * runs
    if need <= budget:
        return
    estimate = estimate_work(scenario, steps)
    parts = {
        "accesses": estimate.accesses,
        "slot_pages": estimate.slot_pages,
        "steps": estimate.steps,
        "setup": estimate.setup,
        "huge": estimate.huge,
    }
    biggest = max(parts, key=lambda name: parts[name])
    times = f"{runs} runs of about {per_run:,} each, " if runs > 1 else ""
    instead = "show an earlier step, or " if earlier else ""
    raise AppError(
        413,
        f"too much work for this server: {doing} needs about {need:,} units of work ({times}one unit is"
        f" about one guest access), and one request may ask for at most {budget:,} ({setting});"
        f" {_SHRINK[biggest]}. Or {instead}run it on your own machine with the command line, which has"
        " no such budget: sptelab run FILE.",
        hint="Download the scenario and run it with the command line (sptelab run FILE), or ask whoever"
        f" runs this server to raise {setting}.",
    )


def too_heavy_to_write(scenario: Scenario, policy: Policy, limit: int) -> str:
    """Why the full-detail result of this scenario is too large to write out in a response ("" when it is
    not), priced before anything runs (engine.estimate.estimate_result): the run in full detail, a row per
    fault, spte write, trace event and harvested slot of every step, and the final state's rows."""
    price = estimate_result(scenario, full=True, policy=policy)
    if price <= limit:
        return ""
    return f"running it in full detail and writing its result costs about {price:,} units of work"
