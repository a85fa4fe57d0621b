"""The app's settings, read once from the environment (prefix SPTELAB_, e.g. SPTELAB_CACHE_RUNS=8)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_ROOT_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)*")


def normalize_root_path(value: str) -> str:
    """A reverse proxy's path prefix as the app writes it in front of every URL: '' for none, else
    `/a/b` (a trailing slash dropped). Only plain path segments: the prefix lands in every link, form
    and Location header, so nothing in it may need quoting."""
    text = value.strip().rstrip("/")
    if not _ROOT_PATH.fullmatch(text) or any(part in (".", "..") for part in text.split("/")):
        raise ValueError(
            f"{value[:80]!r} is not a path prefix such as /sptelab: '/' and segments of letters, digits,"
            " '.', '_', '~' and '-'"
        )
    return text


_ORIGIN = re.compile(r"(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


def normalize_public_url(value: str) -> str:
    """The public address as the app writes it in front of a link: '' for none, else `scheme://host` or
    `scheme://host:port`, lowercase, without a trailing slash. Only an origin: the root path is a setting
    of its own (SPTELAB_ROOT_PATH), and a link must not carry a user, a query or a fragment."""
    text = value.strip().rstrip("/")
    if not text:
        return ""
    match = _ORIGIN.fullmatch(text)
    if match is None or (match.group(3) and not 0 < int(match.group(3)[1:]) < 65536):
        raise ValueError(
            f"{value[:80]!r} is not an address such as https://sptelab.example.org: http or https, a host"
            " name or address, an optional port, and no path (the path prefix is SPTELAB_ROOT_PATH)"
        )
    return text.lower()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPTELAB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Serving: `sptelab serve` and `python -m app` hand these to granian (the flags of `sptelab serve`
    # override them). Each worker is a process with its own caches: a run is computed once per worker.
    workers: int = Field(default=1, ge=1, le=64)
    # The path prefix behind a reverse proxy (granian's --url-path-prefix): every URL the app writes starts
    # with it. The proxy strips it before passing a request on.
    root_path: Annotated[str, AfterValidator(normalize_root_path)] = ""
    # Trust X-Forwarded-For/-Proto from these addresses (comma-separated, or *): the share links then
    # carry the scheme the visitor used.
    proxy_headers: bool = True
    forwarded_allow_ips: str = "127.0.0.1"
    # Log every request: off by default, since every player URL carries its scenario's share code.
    access_log: bool = False
    # The address the visitors reach the app at, `scheme://host[:port]` (the root path is added to it):
    # share links and the SVG export's link are built from it, never from the request's Host header,
    # which any client can set. Unset: the page's share box holds the link without scheme and host (the
    # browser shows it whole, from its own address bar), and an export names the server's own address.
    public_url: Annotated[str, AfterValidator(normalize_public_url)] = ""
    # The sockets, for a server that faces a room directly (benchmarks/sockets.py measured them): a
    # request's head (request line and headers) must arrive whole within header_timeout seconds of the
    # connection's start or of the previous answer, and within header_bytes; a connection that sends
    # nothing is closed after the same time. A body must arrive whole within body_timeout seconds of
    # the head, else 408.
    header_timeout: float = Field(default=10.0, gt=0, le=60)
    header_bytes: int = Field(default=65_536, ge=16_384, le=1 << 20)
    body_timeout: float = Field(default=30.0, gt=0, le=600)
    # Workshop mode, read by the app: no editor and no upload, built-in scenarios and share links only.
    workshop: bool = False

    # Runs (one scenario under one policy) kept in memory, least recently used dropped first ...
    # 64: the landing page alone shows every built-in lesson under every preset, 52 runs (13 × 4), and a
    # workshop's players and compare views need the same runs again, so a smaller cache evicts and
    # rebuilds constantly (benchmarks/load.py, with 11 lessons × 3 presets: p95 75 ms at 16, 46 ms at
    # 48, same memory).
    cache_runs: int = Field(default=64, ge=1)
    # ... and the bytes all their stored states may take together (snapshots exactly, live states
    # estimated).
    cache_bytes: int = Field(default=2 << 30, ge=1 << 20)
    # A copy of the VM state is kept every this many steps ...
    checkpoint_interval: int = Field(default=256, ge=1)
    # ... or sooner, once the steps since the last copy did this much work (guest accesses plus spte
    # writes), so that going back in a heavy scenario replays a bounded amount.
    checkpoint_work: int = Field(default=200_000, ge=1)
    # ... but never before the steps since the last copy did this much work per shadow page of the state
    # (pickling a table and its rmaps takes as long as about 1000 units of stepping), so that copying a
    # big state costs at most a few times the run, however many steps it has. 0: the two rules above.
    checkpoint_copy_work: int = Field(default=250, ge=0)
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
    # /result.json and POST /api/run with "detail": "full" are refused (413, before anything runs) when
    # running the scenario in full detail and writing its result is priced over this (engine.estimate:
    # the run, a row per fault, spte write, trace event and harvested slot, and the final state's rows).
    # A unit is about 10 µs of one core and 70-150 bytes of result (benchmarks/budget.py), so the bound
    # is about 1 s and 7-15 MB; every built-in lesson fits under every preset but one-gig-page under
    # `modern` (a row per spte of the gigabyte it splits and recovers).
    result_work: int = Field(default=100_000, ge=0)
    # The most work one request may make the engine do, priced from the scenario before anything runs
    # (engine.estimate.estimate_work: about 10 µs of one core per unit, calibrated by
    # benchmarks/budget.py): the player's run to the step shown, one run per preset on /compare (the
    # sum), the whole run and its final state for POST /api/run. Beyond it the request is refused with
    # 413 (the command line has no budget). 1 000 000 is about 10 s of one core, far above the built-in
    # lessons (the largest, one-gig-page, is priced at about 41 000 per run) and above the 10 000-step
    # scenario of benchmarks/web_latency.py.
    run_budget: int = Field(default=1_000_000, ge=1)
    # The same bound in workshop mode, where a room shares one server and any share link may be heavy:
    # 0 is a quarter of run_budget (250 000 by default: every built-in plays and compares whole, the
    # heaviest, one-gig-page, at about 41 000 per preset).
    workshop_budget: int = Field(default=0, ge=0)
    # The room's scheduler (app/room.py): at most this many builds admitted at once (a client has at
    # most one), so the thread pool always has threads left for cheap requests ...
    room_slots: int = Field(default=4, ge=1, le=32)
    # ... and the turn, in seconds, a build runs while another waits before it lets that one go first.
    room_turn: float = Field(default=0.05, gt=0, le=10)
    # A client's share of the interpreter, in seconds of builds lately (their use halves every 30 s): a
    # client over it gets 429 for anything not already built until its use has decayed. 0: no limit.
    # Workshop mode uses workshop_client_share instead: a room's visitor stepping the built-in lessons
    # uses a few seconds a minute, a laptop sending heavy links keeps using more.
    client_share: float = Field(default=0.0, ge=0)
    workshop_client_share: float = Field(default=15.0, ge=0)
    # Offer "run on this machine's kernel" (/real, POST /api/real) when the server can open this KVM
    # device; off, or without the device (a container started without --device /dev/kvm), the player
    # shows no button and both routes answer 503 with the reason.
    live_kernel: bool = True
    kvm_device: str = "/dev/kvm"


    @property
    def effective_client_share(self) -> float:
        """The share of the interpreter each client gets, in the mode the server runs in."""
        return self.workshop_client_share if self.workshop else self.client_share


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
