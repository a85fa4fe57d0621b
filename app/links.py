"""Every URL a page links to or pushes, always with the same parameters in the same order, so that
equal states have equal URLs (and share one entry of the page cache)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from urllib.parse import urlencode

from app.budget_bytes import SOURCE_QUERY_ENTRIES
from app.modes import DEFAULT_FOCUS, PREDICT_MODE
from app.views.text import Location, location_param
from engine.policy import PRESETS


@lru_cache(maxsize=SOURCE_QUERY_ENTRIES)
def _source_query(source: tuple[str, str]) -> str:
    """The scenario's part of a link, `s=<code>` or `scenario=<name>`: a share code is kilobytes, and a
    page holds dozens of links to the same scenario, so it is quoted once."""
    return urlencode([source], safe=":,=")


@dataclass(frozen=True, slots=True)
class Links:
    """Every URL of one player state; parameters always in the same order, and the root path (`base`,
    '' unless behind a reverse proxy under a prefix) in front of the path."""

    source: tuple[str, str]
    variant: str
    overrides: Mapping[str, str]
    selected: Location | None
    # The modes, kept by every player link: predict mode with the running score to carry on, and
    # presentation mode with its enlarged panel.
    predict: bool = False
    score: tuple[int, int] = (0, 0)
    present: bool = False
    focus: str = DEFAULT_FOCUS
    live: bool = False  # the kernel's own tables beside the model's
    base: str = ""

    def url(self, path: str) -> str:
        """A path of the app as the browser must ask for it: with the root path in front."""
        return self.base + path

    @property
    def policy_param(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.overrides.items())

    @property
    def score_param(self) -> str:
        return f"{self.score[0]}-{self.score[1]}"

    def play(
        self, step: int, *, spte: str | None = None, keep_spte: bool = True, answer: str | None = None
    ) -> str:
        """The player at `step`; `answer` (predict mode only) answers the question about step `step - 1`."""
        modes = self.mode_fields(answer)
        tail = "&" + urlencode(modes, safe=":,=") if modes else ""
        return self.base + "/play?" + self._state(step, spte, keep_spte) + tail

    def mode_fields(self, answer: str | None = None) -> list[tuple[str, str]]:
        """The modes' parameters, in their fixed order after the state's: mode, answer, score, present,
        focus, live (each only when it applies; the default panel is left out)."""
        params: list[tuple[str, str]] = []
        if self.predict:
            params.append(("mode", PREDICT_MODE))
            if answer is not None:
                params.append(("answer", answer))
            params.append(("score", self.score_param))
        if self.present:
            params.append(("present", "1"))
            if self.focus != DEFAULT_FOCUS:
                params.append(("focus", self.focus))
        if self.live:
            params.append(("live", "1"))
        return params

    def with_score(self, score: tuple[int, int]) -> Links:
        return replace(self, score=score)

    def predicting(self, on: bool) -> Links:
        """Entering predict mode starts the score afresh; leaving it drops the score."""
        return replace(self, predict=on, score=(0, 0))

    def presenting(self, on: bool) -> Links:
        return replace(self, present=on)

    def living(self, on: bool) -> Links:
        return replace(self, live=on)

    def focused(self, panel: str) -> Links:
        return replace(self, focus=panel)

    def export_svg(self, step: int) -> str:
        """The player's view of `step` as an SVG picture: the player's own query on another path."""
        return self.base + "/export.svg?" + self._state(step, None, True)

    def result(self) -> str:
        """The whole run's result JSON: the scenario and the policy; no step, no spte."""
        params = [("variant", self.variant)]
        if self.overrides:
            params.append(("policy", self.policy_param))
        return self.base + "/result.json?" + _source_query(self.source) + "&" + urlencode(params, safe=":,=")

    def _state(self, step: int, spte: str | None, keep_spte: bool) -> str:
        params = [("variant", self.variant), ("step", str(step))]
        if self.overrides:
            params.append(("policy", self.policy_param))
        if spte is not None:
            params.append(("spte", spte))
        elif keep_spte and self.selected is not None:
            params.append(("spte", location_param(self.selected)))
        return _source_query(self.source) + "&" + urlencode(params, safe=":,=")

    def compare(self, step: int, variants: list[str] | None = None) -> str:
        params = [("variants", ",".join(variants or list(PRESETS))), ("step", str(step))]
        return self.base + "/compare?" + _source_query(self.source) + "&" + urlencode(params, safe=":,=")

    def download(self) -> str:
        return self.base + "/download?" + urlencode([self.source])

    def real(self) -> str:
        """The scenario on this machine's kernel beside every preset. Of the player's what-if switches
        only the dirty-log mode travels: it chooses how the live VM logs, the others are the engine's."""
        mode = self.overrides.get("dirty_log_mode")
        params = [("policy", f"dirty_log_mode={mode}")] if mode else []
        tail = "&" + urlencode(params, safe=":,=") if params else ""
        return self.base + "/real?" + _source_query(self.source) + tail

    def with_variant(self, variant: str) -> Links:
        return replace(self, variant=variant, overrides={})
