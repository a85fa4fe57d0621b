"""The built-in scenario library: the `scenarios/*.json` files shipped beside this module.

The same files feed the CLI (`sptelab run NAME`, `sptelab scenarios`), the web app's menu and the golden
tests, so a scenario is written once and means the same everywhere. They are package data, read through
`importlib.resources`, so an installed wheel finds them as a checkout does, without a path on disk.

Every list of them (the landing page, `sptelab scenarios`, `GET /api/scenarios`) comes in the teaching
order `LESSONS` declares, not alphabetically: a first-time visitor meets the worked example first, then
the lessons that build on it, and today's kernel and the heaviest lesson last.
"""

from importlib.resources import files
from importlib.resources.abc import Traversable

from engine.scenario import Scenario, ScenarioError, parse_scenario

_SUFFIX = ".json"

# The teaching order, and what each lesson teaches in one line (the landing page's cards say it).
# A file not listed here still plays; it is listed after these, by name (a test keeps the two in step).
LESSONS: dict[str, str] = {
    "worked-example": "The whole story on one 2 MiB region: zapped, lost, dropped lazily, split.",
    "migration-verdict": "What a page lost to the migration is, and how the verdict finds it.",
    "write-storm-2m": "The bug at scale: one fast fault, and 511 writes missing from the log.",
    "read-mostly-logging": "What the patch is for: reads under dirty logging cost nothing.",
    "presets-agree": "The conditions the bug needs, and a run where none of them holds.",
    "two-vcpus-tlb-flush": "Why write protection must flush every vCPU's TLB.",
    "migration-many-rounds": "Pre-copy rounds: the buggy kernel re-sends a page nobody wrote.",
    "cow-large-spte": "A large spte the fast path may never fix: copy-on-write host pages.",
    "disable-dirty-log": "Logging switched off: which kernels bring the huge page back, and when.",
    "zap-all": "A memslot change drops everything, even the buggy writable 2M spte.",
    "todays-kernel": "Linux 6.13 and later: split when logging starts, recovered in place when it stops.",
    "clear-dirty-log": "KVM_CLEAR_DIRTY_LOG: re-arming the log one chunk at a time.",
    "tdp-vs-shadow": "The same accesses under TDP and under shadow paging, side by side.",
    "shadow-large-spte": "Shadow paging: a 2M spte over a page table the guest starts using.",
    "shadow-dirty-pde-read": "Shadow paging: a read is logged when the guest's PDE is dirty.",
    "shadow-page-directory-logged": "Shadow paging: setting D in a guest PDE logs the page directory.",
    "shadow-flush-rule": "Shadow paging: the stale shadow the new flush rule prevents.",
    "shadow-sync-reports": "Shadow paging: a CR3 reload reports pages nobody wrote.",
    "shadow-paging-off": "Shadow paging: caf6900f's lost pages with a paging-off guest.",
    "one-gig-page": "The same bug with 1 GiB pages: one dirty bit for a gigabyte.",
}


def _library() -> dict[str, Traversable]:
    """Every built-in scenario file, by name (the file name without `.json`)."""
    found: dict[str, Traversable] = {}
    for entry in files(__name__).iterdir():
        if entry.name.endswith(_SUFFIX) and entry.is_file():
            found[entry.name.removesuffix(_SUFFIX)] = entry
    return found


def builtin_names() -> list[str]:
    """The names of the built-in scenarios in teaching order: `LESSONS`' order, then any other by name."""
    found = _library()
    return [name for name in LESSONS if name in found] + sorted(set(found) - set(LESSONS))


def lesson_teaches(name: str) -> str:
    """What the built-in lesson `name` teaches, in one line ("" for one `LESSONS` does not list)."""
    return LESSONS.get(name, "")


def load_builtin_text(name: str) -> str:
    """The JSON text of the built-in scenario `name`.

    Raise LookupError, naming the known scenarios, for a name that is not one of them. Only names that
    `builtin_names()` lists are looked up, so a name cannot reach outside the library ("../x").
    """
    library = _library()
    if name not in library:
        known = ", ".join(sorted(library)) or "none"
        raise LookupError(f"no built-in scenario named {name!r} (known: {known})")
    return library[name].read_text(encoding="utf-8")


def builtin_scenarios() -> list[tuple[str, Scenario]]:
    """Every built-in scenario, parsed, as (name, scenario) in teaching order.

    Raise ScenarioError naming the file if one of them does not parse.
    """
    out: list[tuple[str, Scenario]] = []
    for name in builtin_names():
        try:
            out.append((name, parse_scenario(load_builtin_text(name))))
        except ScenarioError as error:
            raise ScenarioError(f"built-in scenario {name!r}: {error}") from None
    return out


__all__ = ["LESSONS", "builtin_names", "builtin_scenarios", "lesson_teaches", "load_builtin_text"]
