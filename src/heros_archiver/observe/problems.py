"""What verify finds wrong with an archive: one ``Problem`` per file, container item or sequence range.

The kinds, in the order they are shown:

* ``missing``: a cataloged file, or the container of a cataloged item, is not there;
* ``truncated``: a file is shorter than cataloged, or a container ends before a cataloged item;
* ``modified``: a file of the cataloged size or larger, or an item in its container, has another checksum
  (or a file is larger than cataloged);
* ``unreadable``: the file or item is there but cannot be read (an I/O error, a damaged container, a path in
  the catalog that would leave the root);
* ``orphan``: a file under the root that no entry names (and that is not inside a cataloged container);
* ``gap``: sequence values of one stream missing between its smallest and largest cataloged value.

``repeat`` (a sequence value held by more than one item) is shown as a note, never counted as a problem
(``sequences``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "NOTE_KINDS", "Problem"]

#: Every kind of problem, in the order they are shown and counted.
KINDS = ("missing", "truncated", "modified", "unreadable", "orphan", "gap")
#: Findings that are shown but do not make an archive fail.
NOTE_KINDS = ("repeat",)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong: where (a file, a container item, or a stream's sequence range), expected and found."""

    kind: str
    #: the file or container, relative to the root ('/' separators); empty for a sequence range
    path: str
    #: what the catalog says, in words (a checksum, a size, the sequence values); None when ``found`` says both
    #: (a container reader's message: "expected 1 frame(s) from index 5, the stack holds 5")
    expected: str | None
    #: what is there, in words
    found: str
    #: the dataset / array inside the container (None: a file of its own)
    member: str | None = None
    #: the item's first index along axis 0 of ``member``, and how many indices
    index: int | None = None
    count: int = 1
    #: the stream of a ``gap`` or ``repeat``: archiver, source and event, and the range of values
    archiver: str | None = None
    source: str | None = None
    event: str | None = None
    first: int | None = None
    last: int | None = None

    @property
    def where(self) -> str:
        """``path``, ``path[member@index]`` (``@first-last`` for several indices), or the stream of a range."""
        if self.member is not None:
            span = f"{self.index}" if self.count == 1 else f"{self.index}-{(self.index or 0) + self.count - 1}"
            return f"{self.path}[{self.member}@{span}]"
        if self.path:
            return self.path
        return f"{self.source} {self.event} (archiver {self.archiver})"

    @property
    def line(self) -> str:
        """The problem in one line: kind, where, expected and found."""
        said = self.found if self.expected is None else f"expected {self.expected}, found {self.found}"
        return f"{self.kind} {self.where}: {said}"

    def as_dict(self) -> dict[str, Any]:
        """Plain types, for ``--json``."""
        return {
            "kind": self.kind,
            "where": self.where,
            "path": self.path or None,
            "member": self.member,
            "index": self.index,
            "count": self.count if self.member is not None else None,
            "archiver": self.archiver,
            "source": self.source,
            "event": self.event,
            "first": self.first,
            "last": self.last,
            "expected": self.expected,
            "found": self.found,
            "line": self.line,
        }
