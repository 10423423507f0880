"""Verify's check of one cataloged object of an ``s3://`` root: there, of its size, of its checksum.

The catalog of such a root lives in its local state directory and names each object by its URL; the store
is the one the state directory records (``state.object_state``), reached with the credentials of verify's
environment. When it cannot be reached or no store is recorded, each object is reported ``unreadable`` with
that reason, never ``missing``: verify did not look.
"""

from __future__ import annotations

from collections.abc import Callable

import xxhash

from ..errors import ArchiverError
from ..state.object_state import RecordedStore
from ..storage.objectstore import SCHEME
from .outcomes import CHECKSUM_ALGORITHM
from .problems import Problem
from .verify_catalog import Entry

__all__ = ["check_object", "is_object_entry"]


def is_object_entry(entry: Entry) -> bool:
    """Whether ``entry`` names an object (an ``s3://`` URL) rather than a file under the root."""
    return entry.path.startswith(SCHEME)


def check_object(objects: RecordedStore | str, entry: Entry, advance: Callable[[int], None]) -> Problem | None:
    """The problem of one cataloged object (None: it is as cataloged). ``objects``: the recorded store, or why
    there is none to read from."""
    expected = f"an object of {entry.nbytes} bytes"
    if isinstance(objects, str):
        return Problem("unreadable", entry.path, expected, f"not checked: {objects}")
    if not entry.path.startswith(objects.url + "/"):
        return Problem("unreadable", entry.path, expected, f"outside the location {objects.url} this root records")
    key = entry.path[len(f"{SCHEME}{objects.store.bucket}/") :]
    try:
        info = objects.store.head(key)
        if info is None:
            return Problem("missing", entry.path, expected, "no object")
        if info.size != entry.nbytes:
            kind = "truncated" if info.size < entry.nbytes else "modified"
            return Problem(kind, entry.path, f"{entry.nbytes} bytes", f"{info.size} bytes")
        if entry.checksum is None or not entry.checksum.startswith(f"{CHECKSUM_ALGORITHM}:"):
            return None
        data = objects.store.get(key)
    except ArchiverError as exc:
        return Problem("unreadable", entry.path, expected, f"{type(exc).__name__}: {exc}")
    advance(len(data))
    found = f"{CHECKSUM_ALGORITHM}:{xxhash.xxh3_128_hexdigest(data)}"
    return None if found == entry.checksum else Problem("modified", entry.path, entry.checksum, found)
