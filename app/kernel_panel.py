"""The player's live mode (`live=1`): this machine's kernel's own tables after the step shown, beside the
tables of the preset on screen, swapped with the other panels at every step.

The kernel runs the scenario once (the native guest, traced where the server can read tracepoints:
`app.livekernel.live_result`, cached and serialised like `/real`'s runs); each step then only replays
the run's trace up to it (`app.views.kernel_tree`). Whatever keeps the kernel out (workshop mode, no
device, a scenario the live backend cannot express, a run over the budget, no tracepoints) is said in
the panel, never as an error page: the player stays usable.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from app.errors import AppError
from app.links import Links
from app.livekernel import kernel_unavailable, live_result
from app.query import PlayerQuery
from app.store import get_store
from app.views.kernel_tree import CONTRAST_PRESET, kernel_tree_view
from live.backend import refusal as live_refusal


def kernel_panel(request: Request, query: PlayerQuery, links: Links) -> dict[str, Any] | None:
    """The panel's context, or None outside live mode."""
    if not query.live:
        return None
    step = query.step
    real_url = links.real() + (f"&tables={step}#kernel-tables" if step else "")
    panel: dict[str, Any] = {"hide_url": links.living(False).play(step), "real_url": real_url}
    settings = request.app.state.settings
    scenario = query.source.scenario
    mode = str(query.policy.dirty_log_mode)
    reason = (
        "workshop mode turns the live kernel off"
        if settings.workshop
        else kernel_unavailable(settings) or live_refusal(scenario, mode)
    )
    if reason is not None:
        panel["error"] = f"The kernel's tables cannot be shown: {reason}."
        return panel
    overrides = {"dirty_log_mode": mode} if mode != "bitmap" else {}
    try:
        result = live_result(settings, query.source.code, scenario, [CONTRAST_PRESET], overrides)
    except AppError as refused:
        panel["error"] = f"The kernel's tables cannot be shown: {refused.message}"
        return panel
    panel["live"] = result["live"]
    if step == 0:
        panel["note"] = "Before the first step: the kernel has built nothing for the scenario yet."
        return panel
    label = query.variant_label
    tree = get_store(request).read_state(
        query.source,
        query.policy,
        step,
        lambda state: kernel_tree_view(result, scenario, step, (label, state.sim, state.result)),
    )
    if tree is None:
        panel["note"] = f"The kernel's tracepoints were not read: {result['live']['trace_missing']}."
    panel["tree"] = tree
    return panel
