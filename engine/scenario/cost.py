"""What a scenario may cost: the limits of contract §1, and the refusal of a text too large to read.

The limits keep one run small enough to answer an HTTP request and to draw in a page; the hardware's
limits (a 4-level EPT walk, a 40-bit pfn) bound the numbers a slot may hold.
"""

from engine.scenario.wording import ErrorKind, ScenarioError

# Limits of contract §1.
MAX_SCENARIO_BYTES = 1 << 20
MAX_VCPUS = 8
MAX_MEMSLOTS = 64
MAX_TOTAL_PAGES = 1 << 20  # 4 GiB of guest memory in all slots together
MAX_STEPS = 100_000
MAX_COUNT = 1 << 20
MAX_ACCESSES = 1 << 22  # guest accesses in the whole scenario: the sum of every read/write count
# The text a scenario shows, in characters. Each is shown on every page of the scenario (the title in the
# heading and the window title, the description beside the player, the current note in the narration),
# and a share code compresses repeated text a thousandfold: without a cap, a link of 1.6 KB made a 2 MB
# page. The built-in lessons use at most 64, 3 524 and 485 characters; the caps leave room for two
# screens of description and a long paragraph of narration per step.
MAX_TITLE_CHARS = 200
MAX_DESCRIPTION_CHARS = 8192
MAX_NOTE_CHARS = 2048

# The hardware's limits, not policy: a 4-level EPT walk covers 48 bits of guest-physical address, and an
# spte holds a 40-bit pfn (bits 12..51).
MAX_GFN_END = 1 << 36
MAX_PFN_END = 1 << 40

MAX_SLOT_ID = 32767
DEFAULT_BASE_PFN = 0x80000
DEFAULT_BASE_PFN_STRIDE = 0x100000


class ScenarioTooLargeError(ScenarioError):
    """A scenario text over MAX_SCENARIO_BYTES: refused for its size alone, so that a shell can answer
    "too large" (HTTP 413) rather than "invalid" without reading the message."""

    default_kind = ErrorKind.SIZE
