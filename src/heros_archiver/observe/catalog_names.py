"""The names of the catalog's journals, and whether the process that writes one still runs.

A journal is ``<pid>-<start>-<n>-<segment>.jsonl`` under ``<root>/.heros-archiver/catalog-journal/``: the
process, its start time in clock ticks since boot (so that a journal of a dead process is told from one of a
live process that got the same PID), the archiver within that process, and the segment (a journal goes on in
a new file past ``catalog_journal.SEGMENT_BYTES``). Its own module, so that the applier process
(``catalog_process``) imports neither numpy nor the rest of the journal's writing side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..storage.temporaries import pid_running

__all__ = ["JournalName", "owner_alive", "process_start"]

_NAME = re.compile(r"(\d+)-(\d+)-(\d+)-(\d+)\.jsonl$")


def process_start(pid: int) -> int:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), 0 where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def owner_alive(pid: int, start: int) -> bool:
    """True while the process that made a journal (``pid``, started at ``start``) runs."""
    if start:
        return process_start(pid) == start
    return pid_running(pid)


@dataclass(frozen=True)
class JournalName:
    """What a journal's file name says: its process, the archiver within it, the segment."""

    pid: int
    start: int
    instance: int
    segment: int

    @classmethod
    def parse(cls, name: str) -> JournalName | None:
        """The parts of a journal's file name (None: not a journal's name)."""
        match = _NAME.match(name)
        if match is None:
            return None
        pid, start, instance, segment = (int(part) for part in match.groups())
        return cls(pid, start, instance, segment)

    @property
    def text(self) -> str:
        """The file name."""
        return f"{self.pid}-{self.start}-{self.instance}-{self.segment:06d}.jsonl"

    @property
    def journal(self) -> tuple[int, int, int]:
        """Which journal (all segments alike)."""
        return self.pid, self.start, self.instance

    @property
    def prefix(self) -> str:
        """The start of the names of all the journal's segments (``<pid>-<start>-<n>``)."""
        return f"{self.pid}-{self.start}-{self.instance}"

    def alive(self) -> bool:
        """Whether its process still runs."""
        return owner_alive(self.pid, self.start)
