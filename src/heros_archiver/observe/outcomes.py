"""Outcomes: what became of an item, and where it went (decision 0030).

Every item the pipeline accepted ends in exactly one outcome: ``Archived`` (once it is committed: its file
linked and on the device when that is asked for, its container committed), ``DeadLettered`` (with the
entry that keeps it) or ``Dropped`` (with why). An outcome holds what listeners need and nothing heavy:
the metadata dict (shared, never copied or changed) but not the payload, so a listener queue of outcomes
costs kilobytes, not frames.

Checksums are xxh3-128 (``checksum``), written ``xxh3-128:<32 hex digits>``: 28 GiB/s on this machine and it
releases the GIL, against 2.7 GiB/s for BLAKE3 and 1.3 for SHA-256 (``benchmarks/checksums.py``). It finds
damage (a flipped bit, a truncated or rewritten file), not tampering: it is no cryptographic hash.

* A file (``Location.member`` None): the checksum of the whole file, as written.
* An item inside a container (``member``: the dataset or array path inside the file or store; ``index``:
  the first index along axis 0; ``count``: how many indices): the checksum of the item's raw bytes, C order,
  the dtype's byte order as stored (what ``numpy.ascontiguousarray(frame).data`` holds), so it does not depend
  on the container's compression or chunking. ``None`` where a sink has no such bytes (a Parquet row).
* A whole member of a container (``index`` None): a Zarr array of ``ZarrArchiver`` (``path`` the group,
  ``member`` the array's key: the checksum of its raw bytes as stored), or what a marker became (an HDF5
  acquisition's ``configuration`` or ``acquisition`` group: no checksum, ``nbytes`` the item's own).
* An item that left nothing to point at (a Parquet item of no readings, a TIFF acquisition marker) is
  archived with no location at all (``locations == ()``).

Where each container sink puts what: ``docs/architecture.md`` (Sinks), and each sink's module docstring;
``observe.readers`` reads one item back to check it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

__all__ = [
    "Archived",
    "CHECKSUM_ALGORITHM",
    "DeadLettered",
    "ItemOutcome",
    "Dropped",
    "Location",
    "Outcome",
    "array_bytes",
    "array_location",
    "checksum",
]

#: The prefix of every checksum this package writes.
CHECKSUM_ALGORITHM = "xxh3-128"


#: xxhash gives the GIL up while it hashes a buffer of more than about 64 KiB. That lets ``verify``'s threads
#: hash in parallel; but a writer thread that gives the GIL up waits to get it back behind a busy intake thread,
#: up to the interpreter's switch interval (5 ms) for each frame: 0.8-5 ms per call measured here against a
#: spinning thread, for 75 us of hashing. The writers' checksums (``keep_gil``) hash in pieces of this size,
#: which xxhash hashes holding the GIL (~4 us each).
GIL_PIECE = 64 * 1024


def checksum(buffers: Iterable[bytes | memoryview], keep_gil: bool = False) -> str:
    """The checksum of ``buffers`` read in order, as one byte string (``xxh3-128:<hex>``); with ``keep_gil`` (on a
    writer thread) without giving the GIL up (``GIL_PIECE``)."""
    if isinstance(buffers, list) and len(buffers) == 1 and not (keep_gil and _nbytes(buffers[0]) > GIL_PIECE):
        return f"{CHECKSUM_ALGORITHM}:{xxhash.xxh3_128_hexdigest(buffers[0])}"  # the one-shot call: 3x faster
    hasher = xxhash.xxh3_128()
    for buffer in buffers:
        if keep_gil and _nbytes(buffer) > GIL_PIECE:
            _update_in_pieces(hasher, buffer)
        else:
            hasher.update(buffer)
    return f"{CHECKSUM_ALGORITHM}:{hasher.hexdigest()}"


def _nbytes(buffer: bytes | memoryview) -> int:
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


def _update_in_pieces(hasher: Any, buffer: bytes | memoryview) -> None:
    """``hasher.update(buffer)`` in pieces of ``GIL_PIECE`` bytes (the same digest: xxh3 streams)."""
    try:
        view = memoryview(buffer).cast("B")
    except TypeError:  # not C-contiguous: hashed whole, as it is
        hasher.update(buffer)
        return
    for start in range(0, view.nbytes, GIL_PIECE):
        hasher.update(view[start : start + GIL_PIECE])


def array_bytes(array: Any) -> memoryview:
    """The raw bytes of ``array`` in C order, in its dtype's byte order: what the checksum of an item inside a
    container is taken over (a copy only when the array is not C-contiguous)."""
    contiguous = np.ascontiguousarray(array)
    try:
        return contiguous.data.cast("B")
    except (TypeError, ValueError):  # no buffer format to cast (complex, datetime64): the same bytes as uint8
        return contiguous.reshape(-1).view(np.uint8).data


#: Outcomes are made on the writer thread for every item: plain slotted dataclasses, whose constructor is 2.4x
#: faster than a frozen one's (which sets each field through ``object.__setattr__``). Never change one.
@dataclass(slots=True, unsafe_hash=True)
class Location:
    """Where (part of) an item went: a file, or indices of a member (dataset, array) of a container."""

    #: the file, directory store or object written, as an absolute path
    path: str
    #: bytes of the file, or of the item's raw data inside the container
    nbytes: int
    #: ``xxh3-128:<hex>`` of those bytes (see the module docstring), None where the sink has none
    checksum: str | None
    #: the dataset / array inside a container (None: ``path`` is the item's own file)
    member: str | None = None
    #: the first index along axis 0 of ``member`` (None for a file)
    index: int | None = None
    #: how many indices from ``index`` on
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        """Plain types, for events, JSON lines and the catalog."""
        return {
            "path": self.path,
            "member": self.member,
            "index": self.index,
            "count": self.count,
            "nbytes": self.nbytes,
            "checksum": self.checksum,
        }


@dataclass(slots=True)
class ItemOutcome:
    """What every outcome says of its item."""

    source: str
    event: str
    #: the value of the archiver's ``sequence_key`` in the metadata (None: no key, or not an integer)
    sequence: int | None
    #: the merged metadata the item was named from (shared with the item: never change it)
    metadata: Mapping[str, Any]
    #: wall-clock time the item was received (``time.time()``)
    received: float
    #: payload and metadata bytes, as the queue counted them
    nbytes: int


@dataclass(slots=True)
class Archived(ItemOutcome):
    """An item committed to storage, and where."""

    locations: tuple[Location, ...]
    #: wall-clock time of the commit
    committed: float = field(default_factory=time.time)


@dataclass(slots=True)
class DeadLettered(ItemOutcome):
    """An item kept in the dead-letter store instead of archived."""

    #: the dead-letter entry (a directory) that holds it
    entry: str
    #: ``ErrorType: message``
    error: str
    time: float = field(default_factory=time.time)


@dataclass(slots=True)
class Dropped(ItemOutcome):
    """An item not archived and not kept: a ``drop`` policy, or a loss (counted and logged as LOST)."""

    #: why, in words (the LOST log line's reason)
    why: str
    time: float = field(default_factory=time.time)


def array_location(path: str, member: str, index: int | None, array: Any) -> Location:
    """Where an array went inside a container: ``member`` of ``path``, at ``index`` along axis 0 (None: the whole
    member is the item), with its raw bytes' size and checksum (see the module docstring)."""
    if (
        type(array) is np.ndarray
        and array.dtype.kind in "biufc"
        and array.flags.c_contiguous
        and array.nbytes <= GIL_PIECE
    ):
        # the usual frame: hashed as it is (its buffer is those bytes), ~2x faster than through ``array_bytes``
        digest = xxhash.xxh3_128_hexdigest(array.data)
        return Location(path, array.nbytes, f"{CHECKSUM_ALGORITHM}:{digest}", member, index)
    data = array_bytes(array)
    return Location(path, data.nbytes, checksum([data], keep_gil=True), member, index)


Outcome = Archived | DeadLettered | Dropped
