"""Verify's container check: every cataloged item of one container (HDF5 file, Zarr store, TIFF stack, Parquet
file), the container opened once.

The items are read by ``observe.readers``, which knows each container kind and returns an item's checksum
in the convention of ``outcomes.checksum`` (its raw bytes, C order, whatever the compression), or raises a
typed error: the item is beyond the container's end, or it cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .problems import Problem
from .verify_catalog import Entry
from .verify_files import confined

__all__ = ["check_container"]


def check_container(
    root: str, path: str, entries: list[Entry], advance: Callable[[int], None]
) -> list[tuple[Entry, Problem]]:
    """The problems of the cataloged ``entries`` of the container at ``path`` (relative to ``root``)."""
    absolute = confined(root, path)
    if absolute is None:
        return [(e, _problem(e, "unreadable", "a path under the root", f"{path!r} leaves it")) for e in entries]
    if not os.path.lexists(absolute):
        return [(e, _problem(e, "missing", f"a container holding {e.member}", "no file")) for e in entries]
    raise NotImplementedError("container items: waiting for observe.readers")


def _problem(entry: Entry, kind: str, expected: str, found: str) -> Problem:
    return Problem(kind, entry.path, expected, found, entry.member, entry.index, entry.count)
