"""Containers: many items appended into one file, with explicit commit points.

A file-per-item sink is done with an item when its file is renamed into place. A container (an HDF5
file with a stack of frames, later a Zarr array or a Parquet file) is not: an appended item is only in
memory or half on disk until the container *commits*. This small interface says what the pipeline may
rely on, shaped after models engineers trust: zarr-python v3's ``Store`` ABC with class-level capability
flags, ophyd-async's writers that report a monotonic count of indices written, and suitcase's file
manager that reports what it wrote.

The contract, for every container:

* ``append`` gives each item the next index in arrival order and returns it; an item whose ``ItemKey`` is
  already in the container (committed, or appended and not yet committed) is not written again and gets
  the index it already has. Keys are stored in the container, so this holds after a crash and a reopen.
* ``commit`` is the commit point: everything appended before it is as durable as the format allows and
  visible to readers; its ``CommitReport`` names the indices (and keys) that became committed. Only then
  does an item count as archived; until then the caller keeps it (spool or journal).
* ``committed_length`` never decreases while the container is open, and a reopened container starts
  from the committed length found in the file (anything appended after the last commit is gone).
* A bad item (another shape or dtype than the container's) raises ``ItemMismatchError`` and changes
  nothing: the container takes the next item as if the bad one had never arrived.

Nothing here imports a format library: ``heros_archiver.sinks.containers.hdf5`` imports h5py when used.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, ClassVar, NamedTuple

import numpy as np
import orjson

from ...errors import ConfigurationError, PayloadError, StorageError

__all__ = [
    "CommitReport",
    "Container",
    "ContainerBusyError",
    "ContainerCapabilities",
    "FrameStack",
    "ItemKey",
    "ItemMismatchError",
    "PendingFrame",
    "Row",
    "STORABLE_KINDS",
    "check_frame",
]


class ItemKey(NamedTuple):
    """What makes an item the same item again (resumed from the spool after a crash, or sent again).

    ``source`` is the HERO that sent it, ``sequence`` its sequence value (e.g. the ``frame`` metadata) or
    None when it has none, ``digest`` what tells it apart from other items of that source and sequence
    value: a hash of its content and metadata (``ItemKey.of``), or its receive time (``ItemKey.of_arrival``).
    De-duplication compares whole keys, never bytes; two items with equal keys are the same item.
    """

    source: str
    sequence: int | None
    digest: str

    @classmethod
    def of(
        cls, source: str, data: np.ndarray, metadata: Mapping[str, Any] | None = None, sequence: int | None = None
    ) -> ItemKey:
        """The key of an item from its content: XXH3-128 over dtype, shape, bytes and the metadata.

        Equal content and metadata give equal keys, so a frame sent again (a camera that repeats a run after
        the archiver restarted) is found, and a counter that restarts (``frame`` from 0 at every ``arm()``)
        does not make two different frames one. XXH3, not SHA-256: 50 us instead of 1.3 ms per 2 MiB frame
        here, and it keeps the GIL (SHA-256 releases it for every 8 KiB frame, which then waited ~0.6 ms to
        get it back while the receive thread was busy; decision 0020). Not cryptographic: a sender could make
        two of its own frames collide, as it could send the same frame twice.
        """
        array = np.ascontiguousarray(data)
        form = (array.dtype, array.shape)
        header = _HEADERS.get(form)
        if header is None:
            if len(_HEADERS) >= 256:
                _HEADERS.clear()
            header = _HEADERS[form] = f"{array.dtype.str}{array.shape}".encode()  # ~3.5 us to format each time
        digest = _xxhash().xxh3_128(header)
        try:
            digest.update(array.data.cast("B"))
        except (TypeError, ValueError):  # a format memoryview cannot cast (complex numbers): the same bytes
            digest.update(array.reshape(-1).view(np.uint8).data)
        if metadata:
            digest.update(_hashable_json(metadata))
        return cls(source, sequence, digest.hexdigest())

    @classmethod
    def of_arrival(cls, source: str, sequence: int | None, received: float) -> ItemKey:
        """The key of an item by its receive time (seconds since the epoch, exactly: ``float.hex``).

        For items whose content cannot tell them apart: two equal frames of one source without a sequence
        value (dark frames) are two items, where a content hash would make them one and archive one frame for
        two. The spool keeps the receive time exactly, so a resumed item gets the same key; an item sent again
        is a new item (``Hdf5Archiver`` makes the receive times of one source strictly increasing)."""
        return cls(source, sequence, f"t{float(received).hex()}")

    def key_id(self) -> str:
        """A fixed-size id of the whole key (32 hex digits), what a container stores and looks up."""
        sequence = "" if self.sequence is None else str(self.sequence)
        return hashlib.sha256(f"{self.source}\0{sequence}\0{self.digest}".encode()).hexdigest()[:32]


#: (dtype, shape) -> the header bytes ``ItemKey.of`` hashes before the frame's bytes
_HEADERS: dict[tuple[np.dtype[Any], tuple[int, ...]], bytes] = {}


#: The two records below are made on the writer thread for every frame: slotted, not frozen (a frozen
#: dataclass sets each field through ``object.__setattr__``, 2.4x slower to make). Never change one.
@dataclass(slots=True)
class Row:
    """What one frame adds to a stack's columns (kept in memory until the commit writes it)."""

    key: ItemKey
    received: float
    metadata: Mapping[str, Any]
    #: ``key.key_id()``, computed once by the container
    key_id: str


@dataclass(slots=True)
class PendingFrame:
    """A frame appended to a stack and not yet committed, with its row of the columns."""

    frame: np.ndarray
    row: Row


def _xxhash() -> ModuleType:
    """The xxhash module (a dependency of heros-archiver), or a ConfigurationError that says so."""
    try:
        import xxhash
    except ImportError as exc:
        raise ConfigurationError(
            f"container item keys need xxhash, a dependency of heros-archiver, which is not installed ({exc}); "
            "install it: pip install 'xxhash>=3,<5'"
        ) from exc
    return xxhash


def lossless_json(value: Any, *, sort_keys: bool = False) -> bytes:
    """JSON of metadata from the network that never fails and changes nothing JSON can hold.

    The standard library, not orjson: it keeps NaN and infinities (orjson writes null), integers beyond
    64 bits and lone surrogates (escaped). Keys become strings; anything else JSON cannot hold, its repr.
    """
    return json.dumps(_plain(value), sort_keys=sort_keys, default=repr).encode("ascii")


def _hashable_json(value: Mapping[Any, Any]) -> bytes:
    """Canonical bytes of metadata for a hash: orjson (~10x faster on small dicts), else ``lossless_json``."""
    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS
    try:
        return orjson.dumps(value, option=options, default=repr)
    except (orjson.JSONEncodeError, TypeError):
        return lossless_json(value, sort_keys=True)


def _plain(value: Any) -> Any:
    """``value`` with every mapping key a string (the standard library refuses tuples and other keys)."""
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            result[repr(key) if name in result else name] = _plain(item)  # {1: a, "1": b} keeps both
        return result
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


@dataclass(frozen=True)
class ContainerCapabilities:
    """What a kind of container can do, so that the pipeline can check a configuration before it runs."""

    #: A reader in another process can open the container while it grows and sees every committed item.
    supports_swmr: bool
    #: An existing container can be reopened and appended to (``on_exists="append"``), after a crash too.
    supports_append: bool
    #: At most one writer may have a container open; the pipeline routes all of its items to one writer.
    needs_single_writer: bool
    #: A committed item survives the writer's process being killed (not necessarily a power loss).
    commit_survives_process_kill: bool


@dataclass(frozen=True)
class CommitReport:
    """What one commit made durable: indices ``start`` to ``stop - 1`` and their keys, in order.

    ``stop`` is the container's committed length after the commit. An empty report (``start == stop``)
    means nothing was pending.
    """

    path: Path
    dataset: str
    start: int
    stop: int
    keys: tuple[ItemKey, ...] = field(default=())

    @property
    def count(self) -> int:
        """Items newly committed."""
        return self.stop - self.start


class ItemMismatchError(PayloadError):
    """An item does not fit the container: another shape or dtype than the one its first item fixed.

    Permanent (the same item will never fit), and the container is unchanged: the next item appends.
    """

    def __init__(
        self,
        *,
        path: Path,
        dataset: str,
        expected_shape: tuple[int, ...],
        expected_dtype: str,
        shape: tuple[int, ...],
        dtype: str,
        source: str = "",
    ) -> None:
        self.path = path
        self.dataset = dataset
        self.expected_shape = expected_shape
        self.expected_dtype = expected_dtype
        self.shape = shape
        self.dtype = dtype
        origin = f" from {source!r}" if source else ""
        super().__init__(
            f"item{origin} of shape {shape} and dtype {dtype} does not fit dataset {dataset!r} in {path}, whose "
            f"frames have shape {expected_shape} and dtype {expected_dtype} (fixed by its first frame)"
        )


class ContainerBusyError(StorageError):
    """Another writer has the container open; retrying later can help (it may finish)."""


class Container(ABC):
    """Many items appended to one file or store, committed at explicit points; see the module docstring.

    A container is opened for one path that the caller has already rendered and confined to the archive
    root; it is written by one thread (items of one container are written by one writer, in arrival order).
    """

    #: What this kind of container can do (class level, like zarr's store flags).
    capabilities: ClassVar[ContainerCapabilities]

    #: The file or store the container writes (with ``on_exists="unique"``, the name it picked); for a store
    #: in an object store, its key in the bucket.
    path: Path

    @property
    def location(self) -> str:
        """The file or store as locations and messages name it: its absolute path, or its ``s3://`` URL."""
        return os.path.abspath(self.path)

    @abstractmethod
    def append(
        self, key: ItemKey, data: np.ndarray, metadata: Mapping[str, Any], *, received: float | None = None
    ) -> int:
        """Append one item (``received``: its receive time, seconds since the epoch; now if None).

        Returns its index, or the index it already has when ``key`` is in the container. Raises
        ``ItemMismatchError`` when it does not fit; the item is then not in the container.
        """

    @abstractmethod
    def commit(self) -> CommitReport:
        """Make everything appended durable and visible to readers; report what became committed."""

    @property
    @abstractmethod
    def committed_length(self) -> int:
        """Items committed so far (monotonic while open; recovered from the container at reopen)."""

    @property
    @abstractmethod
    def pending(self) -> int:
        """Items appended and not yet committed."""

    @abstractmethod
    def close(self) -> CommitReport:
        """Commit what is pending, release the container, and report that last commit."""

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


#: dtype kinds a frame stack stores: booleans, integers, floats, complex
STORABLE_KINDS = "biufc"


class FrameStack(Container):
    """A container of frames that keeps those appended since its last commit in ``_pending`` (each with its
    array as ``.frame``) and counts the committed ones in ``_committed``: what every such container reports
    the same way, kept here once (HDF5, Zarr append, TIFF stack)."""

    _pending: list[Any]
    _committed: int

    @property
    def committed_length(self) -> int:
        """Frames committed (monotonic while open; recovered from the container at reopen)."""
        return self._committed

    @property
    def pending(self) -> int:
        """Frames appended and not yet committed (held in memory until ``commit``)."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the frames waiting for the next commit (the caller's measure for committing early)."""
        return sum(p.frame.nbytes for p in self._pending)


def check_frame(
    data: Any,
    source: str,
    path: Path,
    dataset: str,
    fixed: tuple[tuple[int, ...], np.dtype[Any]] | None,
    no_empty_axes: str,
    *,
    member: str = "dataset",
    location: str | None = None,
) -> None:
    """Refuse what a stack of numeric frames cannot hold: not a numeric array, a first frame with an empty axis
    (``no_empty_axes`` says why the format cannot), or another shape or dtype than ``fixed`` (the first frame's).

    Messages name the stack as "``member`` 'dataset' in ``location``" (default: ``path``), e.g. "dataset
    'cam/data' in run.h5"; they are made only when one is raised, as this runs for every frame."""
    if not isinstance(data, np.ndarray) or data.dtype.kind not in STORABLE_KINDS or data.dtype.fields:
        arrived = f"{type(data).__name__}" + (f" of dtype {data.dtype}" if isinstance(data, np.ndarray) else "")
        where = f"{member} {dataset!r} in {location or path}"
        raise PayloadError(
            f"item from {source!r} for {where}: expected a numpy array of numbers or booleans, got {arrived}"
        )
    if fixed is None:
        if 0 in data.shape:
            where = f"{member} {dataset!r} in {location or path}"
            raise PayloadError(
                f"item from {source!r} for {where}: expected a first frame without empty axes ({no_empty_axes}), "
                f"got shape {data.shape}"
            )
        return
    shape, dtype = fixed
    if data.shape != shape or data.dtype != dtype:
        raise ItemMismatchError(
            path=path, dataset=dataset, source=source, expected_shape=shape, expected_dtype=str(dtype),
            shape=tuple(data.shape), dtype=str(data.dtype),
        )  # fmt: skip
