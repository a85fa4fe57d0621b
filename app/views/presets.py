"""The presets' descriptions and the landing page's key to them."""

from __future__ import annotations

from dataclasses import dataclass

from engine.policy import PRESET_DESCRIPTIONS, PRESET_KERNELS


def preset_description(variant: str | None) -> str:
    return PRESET_DESCRIPTIONS.get(variant or "", "a custom combination of switches")


@dataclass(frozen=True, slots=True)
class LegendRow:
    preset: str
    kernel: str
    description: str


def preset_legend() -> list[LegendRow]:
    """The landing page's key to the presets: each one's kernel, and its whole description."""
    return [LegendRow(name, PRESET_KERNELS[name], PRESET_DESCRIPTIONS[name]) for name in PRESET_DESCRIPTIONS]
