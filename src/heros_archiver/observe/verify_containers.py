"""Verify's container check: every cataloged item of one container (HDF5 file, Zarr store, TIFF stack, Parquet
file), the container opened once, by the thread that checks it.

The items are read by ``observe.readers.ContainerReader``, which knows each kind of container and returns an
item's checksum in the convention of ``outcomes.checksum`` (its raw bytes, C order, whatever the compression),
or raises ``ItemUnreadableError`` with a reason, which becomes the problem's kind: ``missing`` (no container,
or no such member in it), ``beyond_end`` (``truncated``: the container ends before the item), ``unreadable``
(a damaged chunk, page or row group) and ``other_item`` (``modified``: a Parquet row holds another item).
An item without a checksum (Parquet rows, an acquisition's group) is checked for its presence, and rows for
the source and sequence value the catalog has for them.

A Parquet file is published (given its name) only when it is closed; until then its committed rows are in
its journal (``sinks.containers.parquet``), which names the file. Such a file is not missing while an
archiver writes it: ``unpublished_parquet`` finds them, and verify counts their items as pending.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ItemUnreadableError
from ..state.object_state import RecordedStore
from ..storage.objectstore import is_object_url
from .problems import Problem
from .readers import ContainerReader
from .verify_catalog import Entry
from .verify_files import confined

__all__ = ["check_container", "unpublished_parquet"]

#: The member of a Parquet file's rows (the catalog's schema).
PARQUET_ROWS = "rows"
#: The problem kind of each reason ``ItemUnreadableError`` gives.
_KIND_OF_REASON = {
    "missing": "missing",
    "beyond_end": "truncated",
    "unreadable": "unreadable",
    "other_item": "modified",
}


def check_container(
    root: str,
    path: str,
    entries: list[Entry],
    advance: Callable[[int], None],
    objects: RecordedStore | str | None = None,
) -> list[tuple[Entry, Problem]]:
    """The problems of the cataloged ``entries`` of the container at ``path`` (relative to ``root``, or the
    ``s3://`` URL of a Zarr store in ``objects``: the store the root records, or why there is none);
    ``advance(n)`` is told of the bytes of each item checked."""
    store = None
    if is_object_url(path):
        if not isinstance(objects, RecordedStore):
            why = objects or "no object store"
            return [(e, _problem(e, "unreadable", None, f"not checked: {why}")) for e in entries]
        if not path.startswith(objects.url + "/"):
            found = f"outside the location {objects.url} this root records"
            return [(e, _problem(e, "unreadable", None, found)) for e in entries]
        store = objects.store
    else:
        absolute = confined(root, path)
        if absolute is None:
            return [(e, _problem(e, "unreadable", "a path under the root", f"{path!r} leaves it")) for e in entries]
        if not os.path.lexists(absolute):
            found = "no file or store"
            return [(e, _problem(e, "missing", f"a container holding {e.member}", found)) for e in entries]
    problems: list[tuple[Entry, Problem]] = []
    with ContainerReader(root, max_open=1, objects=store) as reader:
        for number, entry in enumerate(entries):
            try:
                reading = reader.read(path, entry.member, entry.index, entry.count)
            except ItemUnreadableError as exc:
                kind = _KIND_OF_REASON.get(exc.reason, "unreadable")
                found = str(exc).split(f"{exc.path}: ", 1)[-1]
                if exc.index is None and entry.index is not None:  # the container's, not this item's: all of them
                    return problems + [(e, _problem(e, kind, None, found)) for e in entries[number:]]
                problems.append((entry, _problem(entry, kind, None, found)))
                continue
            finally:
                if entry.checksum is not None:
                    advance(entry.nbytes)
            problem = _compare(entry, reading.checksum, reading.row)
            if problem is not None:
                problems.append((entry, problem))
    return problems


def unpublished_parquet(root: str, containers: Mapping[str, list[Entry]]) -> set[str]:
    """The cataloged Parquet files (their rows' entries, by path relative to ``root``) that are not on disk
    because an archiver still writes them: a journal names them."""
    wanted = {
        path
        for path, entries in containers.items()
        if entries[0].member == PARQUET_ROWS and not os.path.lexists(os.path.join(root, path))
    }
    if not wanted:
        return set()
    from ..sinks.containers.parquet import JOURNAL_SUBDIR, journal_target  # pyarrow: only for Parquet archives

    journals = os.path.join(root, JOURNAL_SUBDIR)
    names = os.listdir(journals) if os.path.isdir(journals) else []
    return wanted & {journal_target(os.path.join(journals, name)) for name in names}


def _compare(entry: Entry, found: str | None, row: Mapping[str, Any] | None) -> Problem | None:
    if entry.checksum is not None:
        return None if found == entry.checksum else _problem(entry, "modified", entry.checksum, str(found))
    if row is not None:
        held = (row.get("source_name"), row.get("sequence"))
        if held != (entry.source, entry.sequence):
            return _problem(entry, "modified", _rows_of(entry.source, entry.sequence), _rows_of(*held))
    return None


def _rows_of(source: object, sequence: object) -> str:
    return f"rows of source {source!r}, sequence {sequence!r}"


def _problem(entry: Entry, kind: str, expected: str | None, found: str) -> Problem:
    return Problem(kind, entry.path, expected, found, entry.member, entry.index, entry.count)
