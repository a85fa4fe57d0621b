"""The app's settings, read once from the environment (prefix SPTELAB_, e.g. SPTELAB_CACHE_RUNS=8)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPTELAB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # Runs (one scenario under one policy) kept in memory, least recently used dropped first ...
    cache_runs: int = Field(default=16, ge=1)
    # ... and the bytes all their stored states may take together (snapshots exactly, live states
    # estimated).
    cache_bytes: int = Field(default=2 << 30, ge=1 << 20)
    # A copy of the VM state is kept every this many steps ...
    checkpoint_interval: int = Field(default=256, ge=1)
    # ... or sooner, once the steps since the last copy did this much work (guest accesses plus spte
    # writes), so that going back in a heavy scenario replays a bounded amount.
    checkpoint_work: int = Field(default=200_000, ge=1)
    # Copies of recently shown states kept per run, so that stepping forward is one step of work.
    cursors_per_run: int = Field(default=16, ge=0)
    # Rendered step views kept (they are small: every list in them is capped).
    cache_views: int = Field(default=256, ge=0)
    # Rendered pages kept, by URL (a player page is about 100 KB).
    cache_pages: int = Field(default=128, ge=0)
    # Parsed scenarios kept, by share code or built-in name.
    cache_scenarios: int = Field(default=64, ge=1)

    # A step whose summary pass did more work than this is shown without its full trace.
    trace_step_limit: int = Field(default=20_000, ge=0)
    # Trace events kept and shown for one step.
    trace_events: int = Field(default=60, ge=10)
    # Sptes drawn one by one in the page-table tree; the rest are summarised.
    tree_sptes: int = Field(default=64, ge=20)
    # Dirty-bitmap cells drawn one by one per slot; longer runs of identical cells are summarised.
    bitmap_cells: int = Field(default=512, ge=64)
    # /result.json (every step in full detail) is refused for a run doing more work than this, counted as
    # the summary pass counts it (guest accesses, spte writes, 8 per fault, harvested pages): about 200
    # bytes of result and 40 µs of server time per unit, so the bound is about 10 MB and 2 s.
    result_work: int = Field(default=50_000, ge=0)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
