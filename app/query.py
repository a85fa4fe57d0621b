"""The player's and the compare view's query, checked before any engine work.

`PlayerQuery` is a page's query: the scenario, the preset and switches, the step (clamped into range),
the selected spte and the player's modes (app.modes); a bad value is a 400 naming the parameter, and a
step beyond the run budget a 413 (app.run_budget.check_budget).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from app.errors import bad_request
from app.links import Links
from app.modes import Modes, parse_modes
from app.render import base_path
from app.run_budget import check_budget
from app.sources import Source
from app.views.text import Location, parse_location
from engine.policy import (
    DEFAULT_PRESET,
    PRESETS,
    SWITCH_VALUES,
    Policy,
    PolicyError,
    make_policy,
    variant_of,
)

if TYPE_CHECKING:
    from app.store import Store


def _switch_text(value: str | bool) -> str:
    return str(value).lower()


def parse_policy_param(text: str) -> dict[str, str]:
    """`K=V,K=V` into overrides, each switch at most once; each is checked by make_policy later."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise bad_request(
                f"policy={text[:80]!r}: expected SWITCH=VALUE pairs separated by commas, e.g. wp_large=zap"
            )
        name = name.strip()
        if name in out:
            # A link that says two things about one switch is refused, not read as the last of them.
            raise bad_request(
                f"policy={text[:80]!r}: the switch {name[:40]!r} is given twice; give each switch once"
            )
        out[name] = value.strip()
    return out


def resolve_policy(variant: str, overrides: Mapping[str, str | bool]) -> tuple[Policy, dict[str, str]]:
    """The policy, and the overrides that really change the preset, in switch order, as text."""
    try:
        policy = make_policy(variant, overrides)
    except PolicyError as error:
        raise bad_request(str(error)) from None
    preset = PRESETS[variant].as_json()
    mine = policy.as_json()
    canonical = {
        name: _switch_text(mine[name])
        for name in SWITCH_VALUES
        if name in overrides and mine[name] != preset[name]
    }
    return policy, canonical


_WHOLE = re.compile(r"-?[0-9]+")


def parse_step(raw: str | None, total: int) -> tuple[int, str]:
    """The step to show, and a notice when the asked one was out of range (then it is clamped)."""
    if raw is None or raw.strip() == "":
        return 0, ""
    text = raw.strip()
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses.
    if not _WHOLE.fullmatch(text) or len(text) > 12:
        raise bad_request(f"step={raw[:20]!r}: must be a whole number from 0 to {total}")
    step = int(text)
    if step < 0:
        return 0, f"Step {step} is before the start; showing step 0."
    if step > total:
        return total, f"Step {step} is past the end; showing the last step, {total}."
    return step, ""


@dataclass(frozen=True, slots=True)
class PlayerQuery:
    source: Source
    variant: str
    overrides: dict[str, str]
    policy: Policy
    step: int
    notice: str = ""
    selected: Location | None = None
    modes: Modes = field(default_factory=Modes)
    # The root path behind a reverse proxy, in front of every link (app.render.base_path).
    base: str = ""
    links: Links = field(init=False)

    def __post_init__(self) -> None:
        modes = self.modes
        object.__setattr__(
            self,
            "links",
            Links(
                self.source.param,
                self.variant,
                self.overrides,
                self.selected,
                predict=modes.predict,
                score=modes.score,
                present=modes.present,
                focus=modes.focus,
                live=modes.live,
                base=self.base,
            ),
        )

    @property
    def predict(self) -> bool:
        return self.modes.predict

    @property
    def answer(self) -> str | None:
        return self.modes.answer

    @property
    def score(self) -> tuple[int, int]:
        return self.modes.score

    @property
    def present(self) -> bool:
        return self.modes.present

    @property
    def focus(self) -> str:
        return self.modes.focus

    @property
    def live(self) -> bool:
        return self.modes.live

    @property
    def total(self) -> int:
        return self.source.total

    @property
    def variant_label(self) -> str:
        return variant_of(self.policy) or "custom"


def query_param(request: Request, name: str) -> str | None:
    """A query parameter given at most once: a URL that says two things is refused, not guessed at."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise bad_request(f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def player_query(request: Request, store: Store) -> PlayerQuery:
    """The query of /play: scenario=NAME|s=CODE, variant, step, policy, spte, and the modes: mode,
    answer, score, present, focus, live."""
    modes = parse_modes(
        *(query_param(request, name) for name in ("mode", "answer", "score", "present", "focus", "live"))
    )
    source = store.sources.resolve(query_param(request, "scenario"), query_param(request, "s"))
    variant = query_param(request, "variant") or DEFAULT_PRESET
    policy, overrides = resolve_policy(variant, parse_policy_param(query_param(request, "policy") or ""))
    step, notice = parse_step(query_param(request, "step"), source.total)
    selected = None
    spte = query_param(request, "spte")
    if spte:
        try:
            selected = parse_location(spte)
        except ValueError as error:
            raise bad_request(str(error)) from None
    # The summary pass runs to the step shown, one further in predict mode (the question about it).
    upto = min(step + int(modes.predict), source.total)
    check_budget(
        store.settings,
        source.scenario,
        source.work_to(upto),
        steps=upto,
        doing=f"showing step {step} of this scenario",
        earlier=True,
    )
    return PlayerQuery(
        source, variant, overrides, policy, step, notice, selected, modes, base_path(request.scope)
    )


def whatif_overrides(request: Request, variant: str) -> dict[str, str]:
    """The what-if form's `sw.SWITCH=VALUE` fields as overrides (all of them; resolve_policy keeps the
    ones that change the preset)."""
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("sw."):
            out[key.removeprefix("sw.")] = value
    return out


def compare_variants(raw: str | None, default: Sequence[str] = tuple(PRESETS)) -> list[str]:
    """`variants=a,b` (or the API's list joined): known presets, first mention kept, never none;
    `default` when none is asked for."""
    if raw is None or not raw.strip():
        return list(default)
    names: list[str] = []
    for item in raw.split(","):
        name = item.strip()
        if not name:
            continue
        if name not in PRESETS:
            raise bad_request(f"unknown variant {name[:40]!r} (known: {', '.join(PRESETS)})")
        if name not in names:
            names.append(name)
    if not names:
        raise bad_request("variants= names no preset")
    return names
