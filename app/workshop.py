"""Workshop mode (SPTELAB_WORKSHOP=1): a server a room shares, safe to leave open to it.

What only the room's own links need stays on: the built-in scenarios, share links, the player, compare,
the exports, /api/decode and the read-only API. What lets one visitor spend the server on their own
input is off, with a 403 that says so: the editor (app/routes/pages.py), POST /api/run, POST /api/encode,
and running a scenario on this machine's kernel (/real, POST /api/real: a real VM per request, one at a
time, for the whole room). Every request that does run the engine is held to `workshop_budget`, a
quarter of `run_budget` by default (app.run_budget.check_budget).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, Request

from app.errors import AppError

WORKSHOP_OFF_HINT = (
    "Play one of the built-in scenarios, or open a share link (a /play?s=… URL) someone gave you; for"
    " the rest, run sptelab on your own machine (sptelab serve, or the command line)."
)


def workshop_off(what: str) -> Any:
    """A route dependency: 403 in workshop mode, naming what is off, before the handler reads anything."""

    def refuse(request: Request) -> None:
        if request.app.state.settings.workshop:
            raise AppError(
                403, f"this server runs in workshop mode, which turned off {what}", hint=WORKSHOP_OFF_HINT
            )

    dependency: Callable[[Request], None] = refuse
    return Depends(dependency)
