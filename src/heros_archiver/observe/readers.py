"""Read one archived item back where its location says it is: what ``verify`` checks an item against.

A location (``outcomes.Location``, a catalog row) names a file, or a member of a container and an index range
in it. ``ContainerReader.read`` opens the file or store **read-only** while an archiver may still write it,
reads the item and returns an ``ItemReading`` with the checksum in the convention of ``outcomes`` (the whole
file for a file; the item's raw bytes in C order, in the byte order stored, for an item inside a container),
so that ``reading.checksum == location.checksum`` is the check. Where the item cannot be read as its location
says, it raises ``ItemUnreadableError`` with the reason (``missing``, ``beyond_end``, ``unreadable``,
``other_item``), what was expected, what was found, and where (file, member, index).

The kind of container is told by the path itself, not its name (a template may name an HDF5 file ``.nxs``):
a directory with a ``zarr.json`` is a Zarr store, a file starting with the HDF5 signature is HDF5, with a TIFF
byte-order mark a TIFF stack, with ``PAR1`` Parquet; anything else with ``member`` None is a plain file.

* **HDF5** (``member``: the dataset path, ``index``: along axis 0): opened with ``swmr=True`` and without
  HDF5's file locking, so it works while a SWMR writer appends (and on a file a killed writer left); an index
  at or past the stack's ``archive/committed_length`` (what a reopen trusts) is ``beyond_end``; a chunk that
  does not decode is ``unreadable``. ``index`` None with a group (what an acquisition marker became) checks
  that the group is there (no checksum).
* **Zarr** (``path``: the store or group directory; ``member``: the array path; ``index`` along axis 0, or
  None for a whole array of ``ZarrArchiver``): ``zarr.open_array(mode="r")``, length from its ``zarr.json``
  (the commit point of the append container); every chunk (shard) object the item lies in must exist (zarr
  would read a missing one as fill values, silently); the values are turned back into the byte order stored.
* **TIFF stack** (``member``: ``"pages"``): the linked page chain, walked as the container's reopen walks it
  (``containers.tiff_ifd.read_chain``: complete pages only, so a cut-off page is ``beyond_end``), and the
  page's pixels read as stored. It needs no tifffile; tests compare the result with tifffile's.
* **Parquet** (``member``: ``"rows"``, ``index``: the first row, ``count`` rows): Parquet rows have no raw
  bytes of their own (``checksum`` None): the rows must exist, belong to one item (one ``item_key`` for all
  of them) and, when the caller knows it, hold the ``key`` expected. ``ItemReading.row`` gives the archiver's
  own columns of the first row (``source_name``, ``sequence``, ``received``, ``item_key``), for a caller to
  compare with its catalog. Row groups are read one at a time, the last one kept.

``ContainerReader`` keeps each container it opened open (at most ``max_open``, the least recently used closed
first), so verifying 10,000 frames of one file opens it once. It is not thread-safe: one per thread. The heavy
libraries are imported when a container of their kind is first read (``extras.require_extra``).
"""

from __future__ import annotations

import bisect
import datetime as dt
import errno
import itertools
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import ArchiverError, InvalidTargetError, ItemUnreadableError
from ..extras import require_extra
from ..storage.objectstore import ObjectLocation, ObjectStore, is_object_url
from .outcomes import array_bytes, checksum

__all__ = ["ContainerReader", "FrameRecord", "ItemReading", "read_item"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_TIFF_MARKS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_PARQUET_MAGIC = b"PAR1"
#: Bytes read at a time for the checksum of a whole file.
_FILE_BLOCK = 1 << 20
#: The columns of a Parquet row that say which item it is (``ParquetArchiver`` writes them on every row).
_ROW_COLUMNS = ("item_key", "source_name", "sequence", "received")


@dataclass(frozen=True)
class ItemReading:
    """What was found where a location points."""

    #: the file or store, absolute
    path: str
    member: str | None
    index: int | None
    count: int
    #: bytes read: the file's, or the item's raw data (None where there is none to count: rows, a group)
    nbytes: int | None
    #: ``xxh3-128:<hex>`` in the convention of ``outcomes`` (None: rows, a group)
    checksum: str | None
    #: Parquet: the archiver's own columns of the item's first row (``source_name``, ``sequence``,
    #: ``received``, ``item_key``); None for other containers
    row: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class FrameRecord:
    """What a container keeps beside one frame: who sent it, its sequence value, when it arrived, its metadata."""

    source: str
    sequence: int | None
    received: float
    metadata: dict[str, Any]


class ContainerReader:
    """Reads items back from the containers under ``root``, each container opened once (see the module docstring).

    ``path`` may be relative to ``root`` (as the catalog keeps it) or absolute (as a ``Location`` holds it).
    Use as a context manager, or call ``close``.
    """

    def __init__(self, root: str | os.PathLike[str], *, max_open: int = 32, objects: ObjectStore | None = None) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open!r}")
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.max_open = max_open
        #: the object store of ``s3://`` paths (a Zarr store of an object-store root); None: local paths only
        self.objects = objects
        self._open: OrderedDict[str, _Opened] = OrderedDict()

    def read(
        self,
        path: str,
        member: str | None = None,
        index: int | None = None,
        count: int = 1,
        *,
        key: bytes | None = None,
    ) -> ItemReading:
        """The item at ``member`` [``index`` .. ``index + count - 1``] of ``path`` (``member`` None: the whole file).

        ``key``: for Parquet rows, the ``item_key`` the rows must hold (None: not checked). Raises
        ItemUnreadableError (see the module docstring).
        """
        full = self._full(path)
        if count < 1:
            raise ItemUnreadableError("other_item", full, member, index, f"expected a count of 1 or more, got {count}")
        if member is None:  # a file of its own: read whole, nothing kept open
            _kind(full, None, index)
            return _File(full).read(None, None, 1, None)
        return self._container(full, member, index).read(member, index, count, key)

    def committed(self, path: str, member: str) -> int:
        """How many frames the stack or array ``member`` of the HDF5 file, Zarr store or TIFF stack ``path`` holds
        committed (what a reopen of its container trusts). Raises ItemUnreadableError (also for kinds without
        one)."""
        return self._container(self._full(path), member, None).committed(member)

    def frame_record(self, path: str, member: str, index: int) -> FrameRecord:
        """What the HDF5, Zarr-append or TIFF-stack container keeps of frame ``index`` beside it (archive and
        metadata columns, a page's record; for Parquet rows the archiver's own columns and no metadata). Raises
        ItemUnreadableError (also for kinds that keep none)."""
        return self._container(self._full(path), member, index).frame_record(member, index)

    def spans(self, path: str, member: str, start: int) -> list[tuple[int, int]]:
        """The items of ``member`` of ``path`` from index ``start`` to its committed end, as ``(index, count)``:
        one index each for frames; for Parquet rows, each item's consecutive rows (one ``item_key``)."""
        return self._container(self._full(path), member, start).spans(member, start)

    def _full(self, path: str) -> str:
        """``path`` as the containers are kept: an ``s3://`` URL as it is, else absolute under the root."""
        return path if is_object_url(path) else os.path.abspath(self.root / path)

    def _container(self, full: str, member: str, index: int | None) -> _Opened:
        """The container at ``full``, opened once (the most recently used kept longest)."""
        opened = self._open.get(full)
        if opened is None:
            return self._opened(full, member, index)
        self._open.move_to_end(full)
        return opened

    def _opened(self, full: str, member: str, index: int | None) -> _Opened:
        opened: _Opened
        if is_object_url(full):
            if self.objects is None:
                raise ItemUnreadableError("unreadable", full, member, index, "an object-store URL: no store given")
            opened = _Zarr(full, self.objects)
        else:
            opened = _KINDS[_kind(full, member, index)](full)
        self._open[full] = opened
        while len(self._open) > self.max_open:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return opened

    def close(self) -> None:
        """Close every container opened."""
        while self._open:
            _, opened = self._open.popitem()
            opened.close()

    def __enter__(self) -> ContainerReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_item(
    root: str | os.PathLike[str],
    path: str,
    member: str | None = None,
    index: int | None = None,
    count: int = 1,
    *,
    key: bytes | None = None,
) -> ItemReading:
    """One item read back (``ContainerReader.read``), its container opened and closed again."""
    with ContainerReader(root) as reader:
        return reader.read(path, member, index, count, key=key)


# ---------------------------------------------------------------------------------------------------- kinds
def _kind(full: str, member: str | None, index: int | None) -> str:
    """``zarr``, ``hdf5``, ``tiff``, ``parquet`` or ``file``, from what is at ``full``."""
    if os.path.isdir(full):
        if member is None:
            raise ItemUnreadableError("missing", full, None, index, "a directory: expected a file of its own")
        if os.path.isfile(os.path.join(full, "zarr.json")):
            return "zarr"
        raise ItemUnreadableError(
            "missing", full, member, index, "a directory without zarr.json: expected a Zarr store"
        )
    try:
        with open(full, "rb") as handle:
            start = handle.read(8)
    except FileNotFoundError:
        raise ItemUnreadableError("missing", full, member, index, "no such file or store") from None
    except OSError as exc:
        raise ItemUnreadableError("unreadable", full, member, index, f"cannot be opened: {exc}") from exc
    if member is None:
        return "file"
    if start.startswith(_HDF5_SIGNATURE):
        return "hdf5"
    if start[:4] in _TIFF_MARKS:
        return "tiff"
    if start.startswith(_PARQUET_MAGIC):
        return "parquet"
    raise ItemUnreadableError(
        "unreadable", full, member, index,
        f"expected an HDF5, TIFF or Parquet file to hold the member, found a file starting {start!r}",
    )  # fmt: skip


class _Opened:
    """One open container (or file) of a kind."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self, member: str | None, index: int | None, count: int, key: bytes | None) -> ItemReading:
        raise NotImplementedError

    def committed(self, member: str) -> int:
        raise self.error("unreadable", member, None, "expected an HDF5 stack, a Zarr array or a TIFF stack of frames")

    def frame_record(self, member: str, index: int) -> FrameRecord:
        raise self.error("unreadable", member, index, "expected an HDF5 stack, a Zarr array or a TIFF stack")

    def spans(self, member: str, start: int) -> list[tuple[int, int]]:
        return [(index, 1) for index in range(start, self.committed(member))]

    def close(self) -> None:
        """Release what is held open (nothing by default)."""

    def error(self, reason: str, member: str | None, index: int | None, message: str) -> ItemUnreadableError:
        return ItemUnreadableError(reason, self.path, member, index, message)

    def reading(
        self, member: str | None, index: int | None, count: int, data: Any, row: Mapping[str, Any] | None = None
    ) -> ItemReading:
        """The reading of an array ``data`` (None: nothing to checksum) at ``member`` [``index``]."""
        if data is None:
            return ItemReading(self.path, member, index, count, None, None, row)
        raw = array_bytes(data)
        return ItemReading(self.path, member, index, count, raw.nbytes, checksum([raw]), row)


class _File(_Opened):
    """A file of its own: the checksum of all its bytes (read when asked, never kept open)."""

    def read(self, member: str | None, index: int | None, count: int, key: bytes | None) -> ItemReading:
        try:
            with open(self.path, "rb") as handle:
                blocks = iter(lambda: handle.read(_FILE_BLOCK), b"")
                sizes: list[int] = []
                value = checksum(_counted(blocks, sizes))
        except FileNotFoundError:
            raise self.error("missing", None, None, "no such file (it was there when first read)") from None
        except OSError as exc:
            raise self.error("unreadable", None, None, f"cannot be read: {exc}") from exc
        return ItemReading(self.path, None, None, 1, sum(sizes), value)


def _counted(blocks: Any, sizes: list[int]) -> Any:
    for block in blocks:
        sizes.append(len(block))
        yield block


@dataclass
class _Stack:
    """A frames dataset of an HDF5 file, opened once, with its ``committed_length`` dataset and the committed
    length as last read."""

    frames: Any
    marker: Any
    length: int = -1


class _Hdf5(_Opened):
    """An HDF5 file, open read-only for SWMR reading (works while a SWMR writer appends).

    Each stack's datasets are opened once, kept and refreshed through that one handle: refreshing a second
    handle of a dataset while the first is open reads the frames of a chunk allocated since from the previous
    chunk's place (measured with h5py 3.16: frame 53 of a stack of 34-frame chunks read as frame 19), and a handle
    is easily kept open without meaning to (a caller keeping an exception keeps what its traceback saw)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        from ..sinks.containers.hdf5_files import load_h5py

        self._h5py, _ = load_h5py()  # hdf5plugin too: compressed stacks need its filters
        self._file = self._open(path)
        self._stacks: dict[str, _Stack] = {}

    def _open(self, path: str) -> Any:
        """The file, read-only: as a SWMR reader without file locking (a writer's lock does not stop it), else
        with the locking of a writer in this same process (HDF5 refuses to open one file twice with different
        locking), else not as SWMR (a file of an older format)."""
        File = self._h5py.File
        attempts: list[dict[str, Any]] = [
            {"libver": "latest", "swmr": True, "locking": False},
            {"libver": "latest", "swmr": True},
            {"locking": False},
            {},
        ]
        for options in attempts:
            try:
                return File(path, "r", **options)
            except OSError as exc:
                error = exc
        raise self.error("unreadable", None, None, f"expected an HDF5 file it can open, got: {error}") from error

    def committed(self, member: str) -> int:
        stack = self._stack(member, None)
        stack.length = self._committed(stack)
        return stack.length

    def frame_record(self, member: str, index: int) -> FrameRecord:
        from ..sinks.containers.hdf5_columns import read_archive_row, read_metadata

        group = self._stack(member, index).frames.parent
        try:
            row, metadata = read_archive_row(group, index), read_metadata(group, index)
        except (OSError, RuntimeError, ValueError, KeyError, IndexError) as exc:
            raise self.error(
                "unreadable", member, index, f"its archive and metadata columns do not read: {exc}"
            ) from exc
        return FrameRecord(row["source_name"], row["sequence"], row["received"], metadata)

    def _stack(self, member: str, index: int | None, node: Any = None) -> _Stack:
        """The stack of ``member``, opened once (``node``: its dataset, when the caller has it open already: a
        second handle of one dataset must not be made)."""
        stack = self._stacks.get(member)
        if stack is None:
            node = self._node(member, index) if node is None else node
            if not isinstance(node, self._h5py.Dataset) or not node.shape:
                raise self.error("missing", member, index, "expected a dataset of frames along axis 0, found a group")
            stack = self._stacks[member] = _Stack(node, node.parent.get("archive/committed_length"))
        return stack

    def read(self, member: str | None, index: int | None, count: int, key: bytes | None) -> ItemReading:
        assert member is not None
        stack = self._stacks.get(member)
        if stack is None:
            node = self._node(member, index)
            if index is None:  # a whole dataset, or a group (what a marker became)
                data = None if isinstance(node, self._h5py.Group) else self._values(node, member, None, ())
                return self.reading(member, None, count, data)
            stack = self._stack(member, index, node)
        if index is None:
            return self.reading(member, None, count, self._values(stack.frames, member, None, ()))
        if index + count > stack.length:
            stack.length = self._committed(stack)
        if index + count > stack.length:
            raise self.error(
                "beyond_end", member, index,
                f"expected {count} frame(s) from index {index}, the stack holds {stack.length}",
            )  # fmt: skip
        return self.reading(
            member, index, count, self._values(stack.frames, member, index, slice(index, index + count))
        )

    def _node(self, member: str, index: int | None) -> Any:
        try:
            node = self._file.get(member)
        except (OSError, RuntimeError, ValueError) as exc:
            raise self.error("unreadable", member, index, f"cannot be opened: {exc}") from exc
        if node is None:
            raise self.error("missing", member, index, "no such dataset or group in the file")
        return node

    def _values(self, node: Any, member: str, index: int | None, region: Any) -> np.ndarray:
        try:
            return np.asarray(node[region])
        except (OSError, RuntimeError, ValueError) as exc:
            raise self.error(
                "unreadable", member, index, f"its data does not read back (a damaged chunk?): {exc}"
            ) from exc

    def _committed(self, stack: _Stack) -> int:
        """The frames a reopen trusts: ``archive/committed_length`` beside the stack (its shape without one),
        as the writer's last commit left them. The marker is read first: the frames it counts were flushed
        before it was, so the frames' refresh after it sees them all (and drops chunks cached partly filled)."""
        swmr = self._file.swmr_mode
        committed = None
        if stack.marker is not None:
            if swmr:
                stack.marker.refresh()
            committed = int(stack.marker[0])
        if swmr:
            stack.frames.refresh()
        length = int(stack.frames.shape[0])
        return length if committed is None else min(length, committed)

    def close(self) -> None:
        self._stacks.clear()
        self._file.close()


class _Zarr(_Opened):
    """A Zarr store (or group) directory, read-only; its arrays opened once and again when they grew. With
    ``objects``, ``path`` is an ``s3://`` URL and the store is the objects under that prefix (an object-store
    root's Zarr append store, ``sinks.containers.zarr_places``)."""

    def __init__(self, path: str, objects: ObjectStore | None = None) -> None:
        super().__init__(path)
        self._zarr = require_extra("zarr", "zarr")
        self._objects = objects
        if objects is not None:
            self._prefix = ObjectLocation.parse(path).prefix
            self._store = objects.zarr_store(self._prefix)
        else:
            self._store = self._zarr.storage.LocalStore(path, read_only=True)
        #: per array path: the array as last opened and the numpy dtype of its values as stored
        self._arrays: dict[str, tuple[Any, np.dtype[Any]]] = {}

    def read(self, member: str | None, index: int | None, count: int, key: bytes | None) -> ItemReading:
        assert member is not None
        array, dtype = self._arrays.get(member) or self._array(member, index)
        if index is not None and (not array.shape or index + count > array.shape[0]):
            array, dtype = self._array(member, index)  # it may have grown since it was opened
        if index is None:
            region: tuple[slice, ...] = tuple(slice(0, n) for n in array.shape)
        elif not array.shape or index + count > array.shape[0]:
            length = array.shape[0] if array.shape else 0
            raise self.error(
                "beyond_end", member, index, f"expected {count} frame(s) from index {index}, the array holds {length}"
            )
        else:
            region = (slice(index, index + count), *(slice(0, n) for n in array.shape[1:]))
        self._check_chunks(array, member, index, region)
        try:
            values = np.asarray(array[region] if region else array[...])
        except ArchiverError:
            raise
        except Exception as exc:
            raise self.error(
                "unreadable", member, index, f"its data does not decode (a damaged chunk or shard?): {exc!r}"
            ) from exc
        return self.reading(member, index, count, values.astype(dtype, copy=False))

    def committed(self, member: str) -> int:
        array, _ = self._array(member, None)  # opened again: its zarr.json's shape is the commit point
        return int(array.shape[0]) if array.shape else 0

    def frame_record(self, member: str, index: int) -> FrameRecord:
        from ..sinks.containers.zarr_columns import read_archive_row, read_metadata

        parent = member.rsplit("/", 1)[0] if "/" in member else ""
        try:
            group = self._zarr.open_group(store=self._store, path=parent, mode="r")
            row, metadata = read_archive_row(group, index), read_metadata(group, index)
        except ArchiverError:
            raise
        except Exception as exc:  # zarr's own errors for a column that is not there or does not decode
            raise self.error(
                "unreadable", member, index, f"its archive and metadata columns do not read: {exc!r}"
            ) from exc
        return FrameRecord(row["source_name"], row["sequence"], row["received"], metadata)

    def _array(self, member: str, index: int | None) -> tuple[Any, np.dtype[Any]]:
        from ..sinks.containers.zarr_append import stored_dtype

        try:
            raw = self._object(f"{member}/zarr.json")
            if raw is None:
                raise FileNotFoundError(member)
            document = json.loads(raw)
        except FileNotFoundError:
            raise self.error("missing", member, index, "no such array in the store (no zarr.json)") from None
        except (OSError, ValueError) as exc:
            raise self.error("unreadable", member, index, f"its zarr.json does not read: {exc}") from exc
        if not isinstance(document, dict) or document.get("node_type") != "array":
            found = document.get("node_type") if isinstance(document, dict) else type(document).__name__
            raise self.error("missing", member, index, f"expected an array, found {found!r}")
        try:
            array = self._zarr.open_array(store=self._store, path=member, mode="r")
            dtype = stored_dtype(self._zarr, document)
        except Exception as exc:
            raise self.error("unreadable", member, index, f"cannot be opened as a Zarr array: {exc!r}") from exc
        self._arrays[member] = (array, dtype)
        return array, dtype

    def _check_chunks(self, array: Any, member: str, index: int | None, region: tuple[slice, ...]) -> None:
        """Every chunk object (a shard, for a sharded array) ``region`` lies in is there: zarr would read a
        missing one as fill values without a word."""
        metadata = array.metadata
        encode = getattr(metadata, "encode_chunk_key", None)
        if encode is None or 0 in array.shape:
            return
        shape = tuple(array.metadata.chunk_grid.chunk_shape) if region else ()
        ranges = [
            range(part.start // size, (part.stop - 1) // size + 1) for part, size in zip(region, shape, strict=True)
        ]
        for coords in itertools.product(*ranges):
            chunk = encode(tuple(coords))
            if not self._exists(f"{member}/{chunk}"):
                raise self.error(
                    "unreadable", member, index,
                    f"its chunk object {chunk!r} is missing (zarr would read it as fill values)",
                )  # fmt: skip

    def _object(self, key: str) -> bytes | None:
        """The object ``key`` of the store (relative to it), or None when there is none."""
        if self._objects is None:
            try:
                with open(os.path.join(self.path, *key.split("/")), "rb") as handle:
                    return handle.read()
            except FileNotFoundError:
                return None
        try:
            return self._objects.get(f"{self._prefix}/{key}")
        except InvalidTargetError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def _exists(self, key: str) -> bool:
        if self._objects is None:
            return os.path.isfile(os.path.join(self.path, *key.split("/")))
        return self._objects.exists(f"{self._prefix}/{key}")


class _Tiff(_Opened):
    """A TIFF stack of this package: its linked chain of complete pages, read again when an index is past it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self.error("unreadable", None, None, f"cannot be opened: {exc}") from exc
        self._pages: list[Any] = []
        self._read_chain()

    def _read_chain(self) -> None:
        from ..sinks.containers.tiff_ifd import NotAStackError, read_chain

        try:
            self._pages = read_chain(self._fd).pages
        except (NotAStackError, OSError) as exc:
            raise self.error("unreadable", None, None, f"expected a BigTIFF stack, got: {exc}") from exc

    def read(self, member: str | None, index: int | None, count: int, key: bytes | None) -> ItemReading:
        from ..sinks.containers.tiff import PAGES

        if member != PAGES:
            raise self.error("missing", member, index, f"a TIFF stack has one member, {PAGES!r}")
        if index is None:
            raise self.error("missing", member, index, "expected a page index (a stack's items are its pages)")
        if index + count > len(self._pages):
            self._read_chain()  # the stack may have grown since it was read
        if index + count > len(self._pages):
            raise self.error(
                "beyond_end", member, index,
                f"expected {count} page(s) from index {index}, the stack links {len(self._pages)} complete page(s)",
            )  # fmt: skip
        buffers = []
        for page in self._pages[index : index + count]:
            try:
                data = os.pread(self._fd, page.data_bytes, page.data_offset)
            except OSError as exc:
                raise self.error("unreadable", member, index, f"its pixels cannot be read: {exc}") from exc
            if len(data) != page.data_bytes:
                raise self.error(
                    "beyond_end", member, index,
                    f"expected {page.data_bytes} bytes of pixels at offset {page.data_offset}, read {len(data)}",
                )  # fmt: skip
            buffers.append(data)
        nbytes = sum(map(len, buffers))
        return ItemReading(self.path, member, index, count, nbytes, checksum(buffers))

    def committed(self, member: str) -> int:
        self._read_chain()  # the linked chain of complete pages is the commit point
        return len(self._pages)

    def frame_record(self, member: str, index: int) -> FrameRecord:
        if index >= len(self._pages):
            self._read_chain()
        if index >= len(self._pages):
            raise self.error("beyond_end", member, index, f"the stack links {len(self._pages)} complete page(s)")
        try:
            record = json.loads(self._pages[index].extra or b"{}")
            metadata = record.get("metadata") or {}
            return FrameRecord(str(record["source"]), record.get("sequence"), float(record["received"]), metadata)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self.error("unreadable", member, index, f"its page's record does not read: {exc!r}") from exc

    def close(self) -> None:
        os.close(self._fd)


class _Parquet(_Opened):
    """A published Parquet file: its row groups' offsets, and the archiver's own columns of one group at a time."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        pa = require_extra("parquet", "pyarrow")
        import pyarrow.parquet

        self._pq = pyarrow.parquet
        self._arrow_error = pa.ArrowException
        try:
            self._file = self._pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise self.error("unreadable", None, None, f"expected a Parquet file with its footer, got: {exc}") from exc
        metadata = self._file.metadata
        self.rows = int(metadata.num_rows)
        self._starts = list(
            itertools.accumulate((metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)), initial=0)
        )
        names = set(self._file.schema_arrow.names)
        self._columns = [name for name in _ROW_COLUMNS if name in names]
        self._group: tuple[int, dict[str, list[Any]]] | None = None

    def read(self, member: str | None, index: int | None, count: int, key: bytes | None) -> ItemReading:
        if index is None:
            raise self.error("missing", member, index, "expected a row index (a file's items are rows)")
        self._rows_member(member, index)
        if index + count > self.rows:
            raise self.error(
                "beyond_end", member, index, f"expected {count} row(s) from row {index}, the file has {self.rows}"
            )
        rows = [self._row(number, member, index) for number in range(index, index + count)]
        keys = {row["item_key"] for row in rows}
        if len(keys) != 1:
            raise self.error(
                "other_item", member, index, f"expected the rows of one item (one item_key), found {len(keys)} keys"
            )
        if key is not None and rows[0]["item_key"] != key:
            found = rows[0]["item_key"]
            raise self.error(
                "other_item", member, index,
                f"expected item_key {key.hex()}, found {found.hex() if isinstance(found, bytes) else found!r}",
            )  # fmt: skip
        return self.reading(member, index, count, None, rows[0])

    def committed(self, member: str) -> int:
        self._rows_member(member, None)
        return self.rows

    def spans(self, member: str, start: int) -> list[tuple[int, int]]:
        from ..sinks.containers.parquet import key_spans

        self._rows_member(member, start)
        keys = [self._row(number, member, start)["item_key"] for number in range(start, self.rows)]
        return sorted((span.first + start, span.count) for span in key_spans(self.path, keys).values())

    def frame_record(self, member: str, index: int) -> FrameRecord:
        self._rows_member(member, index)
        row = self._row(index, member, index)
        received = row.get("received")  # a timestamp column, never null
        when = received.timestamp() if isinstance(received, dt.datetime) else 0.0
        return FrameRecord(str(row.get("source_name")), row.get("sequence"), when, {})

    def _rows_member(self, member: str | None, index: int | None) -> None:
        from ..sinks.containers.parquet import ROWS

        if member != ROWS:
            raise self.error("missing", member, index, f"a Parquet file has one member, {ROWS!r}")
        if "item_key" not in self._columns:
            raise self.error(
                "unreadable", member, index, "the file has no item_key column (not written by ParquetArchiver?)"
            )

    def _row(self, number: int, member: str | None, index: int) -> dict[str, Any]:
        group = bisect.bisect_right(self._starts, number) - 1
        if self._group is None or self._group[0] != group:
            try:
                table = self._file.read_row_group(group, columns=self._columns)
            except (OSError, self._arrow_error) as exc:
                raise self.error("unreadable", member, index, f"row group {group} does not read back: {exc}") from exc
            self._group = (group, {name: table.column(name).to_pylist() for name in self._columns})
        values = self._group[1]
        offset = number - self._starts[group]
        return {name: values[name][offset] for name in self._columns}

    def close(self) -> None:
        self._file.close()


#: The containers by kind (a file of its own is read by ``_File``, never kept open).
_KINDS: dict[str, type[_Opened]] = {"hdf5": _Hdf5, "zarr": _Zarr, "tiff": _Tiff, "parquet": _Parquet}
