"""Gaps and repeats in the sequence values of one stream (one archiver, source and event), as ranges.

A gap is a run of values missing between the smallest and the largest value cataloged: what a device
numbered but the archive does not hold (it never arrived, or its item failed). A repeat is a value held by
more than one item: a device that counts again from 0 at every acquisition repeats its values on purpose,
an item archived twice does so by accident; only the person who knows the device can tell, so verify shows
repeats and does not count them as problems. One item written as several entries (an array split into
files, each with the item's value) is one item: the caller counts items, not entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SequenceRanges", "sequence_ranges"]


@dataclass(frozen=True, slots=True)
class SequenceRanges:
    """The gaps and repeats of one stream, each an inclusive ``(first, last)`` range, in increasing order."""

    #: the smallest and the largest value held
    first: int
    last: int
    #: how many distinct values are held
    values: int
    gaps: tuple[tuple[int, int], ...]
    repeats: tuple[tuple[int, int], ...]

    @property
    def missing(self) -> int:
        """How many values the gaps leave out."""
        return sum(last - first + 1 for first, last in self.gaps)


def sequence_ranges(counted: Iterable[tuple[int, int]]) -> SequenceRanges | None:
    """The gaps and repeats of ``counted``: ``(value, items holding it)`` pairs in increasing order of value,
    each value once (what ``GROUP BY sequence ORDER BY sequence`` gives). None when there is no value."""
    gaps: list[tuple[int, int]] = []
    repeats: list[tuple[int, int]] = []
    first: int | None = None
    previous = 0
    values = 0
    for value, items in counted:
        if first is None:
            first = value
        elif value <= previous:
            raise ValueError(f"sequence values must increase: {value} after {previous}")
        elif value > previous + 1:
            gaps.append((previous + 1, value - 1))
        if items > 1:
            if repeats and repeats[-1][1] == value - 1:
                repeats[-1] = (repeats[-1][0], value)
            else:
                repeats.append((value, value))
        previous = value
        values += 1
    if first is None:
        return None
    return SequenceRanges(first, previous, values, tuple(gaps), tuple(repeats))
