"""The kernel's `kvmmmu` tracepoints, read from a private tracefs instance: what its MMU did, spte by spte.

`kvm_mmu_set_spte` carries the gfn, level and new value of every spte the MMU installs and the address
of the spte itself (`sptep`), whose page is the table it sits in and whose offset in that page is its
index; `kvm_mmu_get_page` and `kvm_mmu_prepare_zap_page` say when a table is created and zapped. From
them the kernel's own page tables can be rebuilt and drawn beside the model's.

Nobody else's tracing is touched. A run gets an instance of its own (`instances/sptelab-PID-N`), with
its own ring buffer, the events enabled there only and filtered to the run's own threads
(`set_event_pid`); tracefs is mounted on a private directory when it is not mounted already, and both
the instance and that mount are removed when the session closes, whatever happened. Only root can do
any of this: `unavailable()` says why a session cannot be opened, in one line.

What the tracepoints cannot tell, the rebuilt tables do not show: write protection (`spte_write_protect`,
the dirty log's re-protection) and dropping an spte fire no event, so a leaf keeps the value it was set
with until it is set again or its table is zapped.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from live.owned import Owned

# The events read, all in the `kvmmmu` group.
EVENTS = (
    "kvm_mmu_spte_requested",
    "kvm_mmu_set_spte",
    "kvm_mmu_get_page",
    "kvm_mmu_prepare_zap_page",
    "fast_page_fault",
    "kvm_mmu_split_huge_page",
    "kvm_tdp_mmu_spte_changed",
    "kvm_mmu_unsync_page",
)

# Per CPU: room for a step that sets a few hundred thousand sptes would need far more; a step's events
# past this are lost, and `TraceStep.overrun` says so.
BUFFER_KB = 8192

_counter = itertools.count()
_LINE = re.compile(r"^\s*\S.*?\s+\[\d+\]\s+\S+\s+[\d.]+:\s+(?P<event>\w+):\s+(?P<text>.*)$")
_SET_SPTE = re.compile(
    r"gfn (?P<gfn>[0-9a-f]+) spte (?P<spte>[0-9a-f]+) \((?P<flags>[-rwxu]*)\) level (?P<level>\d+) at "
    r"(?P<sptep>[0-9a-f]+)"
)
_CHANGED = re.compile(
    r"as id \d+ gfn (?P<gfn>[0-9a-f]+) level (?P<level>\d+) old_spte (?P<old>[0-9a-f]+)"
    r" new_spte (?P<new>[0-9a-f]+)"
)
_REQUESTED = re.compile(r"gfn (?P<gfn>[0-9a-f]+) pfn")
_PAGE = re.compile(r"sp gen \d+ gfn (?P<gfn>[0-9a-f]+) l(?P<level>\d)\b(?P<rest>.*)")
_FIELDS = re.compile(r"(\w+) ([0-9a-fx]+)")


@dataclass(frozen=True, slots=True)
class SpteSet:
    """kvm_mmu_set_spte: the spte at `table`[`index`] now holds `spte`, a leaf at `level` for `gfn`."""

    gfn: int
    level: int
    spte: int
    table: int  # the host physical address of the table page (sptep's page)
    index: int

    def to_json(self) -> dict[str, object]:
        return {
            "gfn": self.gfn,
            "level": self.level,
            "spte": f"{self.spte:#x}",
            "table": f"{self.table:#x}",
            "index": self.index,
        }


@dataclass(frozen=True, slots=True)
class TablePage:
    """kvm_mmu_get_page (created) or kvm_mmu_prepare_zap_page: a shadow page by its gfn and role."""

    gfn: int
    level: int
    direct: bool

    def to_json(self) -> dict[str, object]:
        return {"gfn": self.gfn, "level": self.level, "direct": self.direct}


@dataclass(frozen=True, slots=True)
class SpteChanged:
    """kvm_tdp_mmu_spte_changed (the TDP MMU only): the spte for `gfn` at `level` went from `old` to
    `new`, write protection and zapping included; it names no spte address."""

    gfn: int
    level: int
    old: int
    new: int

    def to_json(self) -> dict[str, object]:
        return {"gfn": self.gfn, "level": self.level, "old": f"{self.old:#x}", "new": f"{self.new:#x}"}


@dataclass(frozen=True, slots=True)
class TraceStep:
    """What the kernel's MMU reported while one step ran, in the order it happened."""

    sptes_set: tuple[SpteSet, ...]
    tables_created: tuple[TablePage, ...]
    tables_zapped: tuple[TablePage, ...]
    counts: dict[str, int]  # events by name, every event read (those not kept above included)
    overrun: bool  # the buffer filled: events of this step were lost
    sptes_changed: tuple[SpteChanged, ...] = ()
    # Every table a fault linked under an entry that was not present: new ones and ones the kernel still
    # had (kvm_mmu_get_page with "existing"), e.g. the direct table of a region logged once before.
    tables_linked: tuple[TablePage, ...] = ()
    # The gfn of every kvm_mmu_spte_requested: one per fault that reached the MMU's map step.
    spte_requested: tuple[int, ...] = ()

    @property
    def changes_tables(self) -> bool:
        """Whether the step set, changed, linked, created or zapped anything of the kernel's tables."""
        return bool(
            self.sptes_set
            or self.sptes_changed
            or self.tables_linked
            or self.tables_created
            or self.tables_zapped
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TraceStep:
        """The step back from its `to_json` (a result's `steps[].live`)."""
        return cls(
            tuple(
                SpteSet(s["gfn"], s["level"], int(s["spte"], 16), int(s["table"], 16), s["index"])
                for s in data["sptes_set"]
            ),
            tuple(TablePage(t["gfn"], t["level"], t["direct"]) for t in data["tables_created"]),
            tuple(TablePage(t["gfn"], t["level"], t["direct"]) for t in data["tables_zapped"]),
            dict(data.get("events", {})),
            bool(data.get("overrun", False)),
            tuple(
                SpteChanged(c["gfn"], c["level"], int(c["old"], 16), int(c["new"], 16))
                for c in data.get("sptes_changed", ())
            ),
            tuple(TablePage(t["gfn"], t["level"], t["direct"]) for t in data.get("tables_linked", ())),
            tuple(data.get("spte_requested", ())),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "sptes_set": [s.to_json() for s in self.sptes_set],
            "tables_created": [t.to_json() for t in self.tables_created],
            "tables_zapped": [t.to_json() for t in self.tables_zapped],
            "events": dict(sorted(self.counts.items())),
            "overrun": self.overrun,
            "sptes_changed": [c.to_json() for c in self.sptes_changed],
            "tables_linked": [t.to_json() for t in self.tables_linked],
            "spte_requested": list(self.spte_requested),
        }


def parse(lines: Iterable[str]) -> TraceStep:
    """The events of a `trace` file's text, comment lines and other events skipped."""
    sptes: list[SpteSet] = []
    created: list[TablePage] = []
    zapped: list[TablePage] = []
    changed: list[SpteChanged] = []
    linked: list[TablePage] = []
    requested: list[int] = []
    counts: dict[str, int] = {}
    overrun = False
    for line in lines:
        if line.startswith("#"):
            overrun |= "entries-in-buffer" in line and "/" in line and _lost(line)
            continue
        match = _LINE.match(line)
        if match is None:
            overrun |= "LOST" in line
            continue
        event, text = match["event"], match["text"]
        counts[event] = counts.get(event, 0) + 1
        if event == "kvm_mmu_set_spte":
            found = _SET_SPTE.match(text)
            if found is not None:
                sptep = int(found["sptep"], 16)
                sptes.append(
                    SpteSet(
                        gfn=int(found["gfn"], 16),
                        level=int(found["level"]),
                        spte=int(found["spte"], 16),
                        table=sptep & ~0xFFF,
                        index=(sptep & 0xFFF) // 8,
                    )
                )
        elif event == "kvm_mmu_spte_requested":
            found = _REQUESTED.match(text)
            if found is not None:
                requested.append(int(found["gfn"], 16))
        elif event == "kvm_tdp_mmu_spte_changed":
            found = _CHANGED.match(text)
            if found is not None:
                gfn, level = int(found["gfn"], 16), int(found["level"])
                changed.append(SpteChanged(gfn, level, int(found["old"], 16), int(found["new"], 16)))
        elif event in ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page"):
            page = _PAGE.match(text)
            if page is None:
                continue
            table = TablePage(int(page["gfn"], 16), int(page["level"]), " direct" in page["rest"])
            if event == "kvm_mmu_prepare_zap_page":
                zapped.append(table)
            else:
                linked.append(table)
                if text.rstrip().endswith(" new"):
                    created.append(table)
    return TraceStep(
        tuple(sptes),
        tuple(created),
        tuple(zapped),
        counts,
        overrun,
        tuple(changed),
        tuple(linked),
        tuple(requested),
    )


def _lost(header: str) -> bool:
    """`# entries-in-buffer/entries-written: 10/12`: fewer in the buffer than written means lost."""
    numbers = re.findall(r"(\d+)/(\d+)", header)
    return any(int(kept) < int(written) for kept, written in numbers)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
_libc.umount.argtypes = (ctypes.c_char_p,)


def _mount(path: Path) -> str | None:
    """mount -t tracefs nodev PATH (mount(2)); None on success, else the error's text."""
    if _libc.mount(b"nodev", str(path).encode(), b"tracefs", 0, None) == 0:
        return None
    return os.strerror(ctypes.get_errno())


def _umount(path: Path) -> None:
    _libc.umount(str(path).encode())


def _mounted_tracefs() -> Path | None:
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        return None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "tracefs":
            return Path(fields[1])
    return None


def unavailable() -> str | None:
    """None when a session can be opened here; else why not, in one line."""
    if os.geteuid() != 0:
        return "not root: tracefs (the kernel's kvmmmu tracepoints) needs root"
    root = _mounted_tracefs()
    if root is not None:
        return None if (root / "events" / "kvmmmu").is_dir() else f"{root} has no kvmmmu events"
    probe = Path(tempfile.mkdtemp(prefix="sptelab-tracefs-"))
    try:
        error = _mount(probe)
        if error is not None:
            return f"tracefs cannot be mounted here ({error}; a container without CAP_SYS_ADMIN?)"
        try:
            if not (probe / "events" / "kvmmmu").is_dir():
                return "this kernel's tracefs has no kvmmmu events"
        finally:
            _umount(probe)
    finally:
        probe.rmdir()
    return None


class TraceSession(Owned):
    """A private tracefs instance with the kvmmmu events on, for the calling process's threads.

    `take()` returns what happened since the last take and empties the buffer. Use as a context
    manager: `close()` turns the events off, removes the instance and unmounts what it mounted.
    """

    def __init__(self) -> None:
        self._mount: Path | None = None
        self._instance: Path | None = None
        try:
            root = _mounted_tracefs()
            if root is None:
                root = self._mount = Path(tempfile.mkdtemp(prefix="sptelab-tracefs-"))
                error = _mount(root)
                if error is not None:
                    raise OSError(f"cannot mount tracefs: {error}")
            instance = root / "instances" / f"sptelab-{os.getpid()}-{next(_counter)}"
            instance.mkdir()
            self._instance = instance
            (instance / "buffer_size_kb").write_text(str(BUFFER_KB))
            pids = {os.getpid(), threading.get_native_id()}
            (instance / "set_event_pid").write_text(" ".join(map(str, sorted(pids))))
            for event in EVENTS:
                enable = instance / "events" / "kvmmmu" / event / "enable"
                if enable.exists():
                    enable.write_text("1")
        except BaseException:
            self.close()
            raise

    @property
    def instance(self) -> Path | None:
        """The instance's directory while the session is open."""
        return self._instance

    def take(self) -> TraceStep:
        if self._instance is None:
            raise ValueError("the trace session is closed")
        trace = self._instance / "trace"
        text = trace.read_text(errors="replace")
        trace.write_text("")  # opened for writing with O_TRUNC: the buffer is emptied
        return parse(text.splitlines())

    def close(self) -> None:
        """Idempotent; removes everything this session created even if a step failed half way."""
        instance, self._instance = self._instance, None
        if instance is not None:
            with contextlib.suppress(OSError):
                (instance / "events" / "enable").write_text("0")
            with contextlib.suppress(OSError):
                instance.rmdir()
        mount, self._mount = self._mount, None
        if mount is not None:
            _umount(mount)
            with contextlib.suppress(OSError):
                mount.rmdir()
