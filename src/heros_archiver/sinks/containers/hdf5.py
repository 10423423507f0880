"""One stack of frames in one HDF5 file: appended along axis 0, committed by flushes, readable while it grows.

What a file looks like (``dataset_path="entry/cam/data"``)::

    /                     @default = "entry"
    /entry                @NX_class = "NXentry", @default = "cam"
    /entry/cam            @NX_class = "NXdata", @signal = "data"
    /entry/cam/data       (N, *frame shape) frames, chunked along axis 0, @interpretation = "image" for 2-D frames
    /entry/cam/metadata/  one 1-D dataset per metadata key            } see hdf5_columns
    /entry/cam/archive/   item keys, source, sequence, receive time,  }
                          JSON of the rest, committed_length          }
    /entry/cam/configuration  @... the ``attributes`` given (e.g. a camera's configuration)
    /entry/cam/acquisition    @... the acquisition the frames are, and its end (``hdf5_acquisition``)

The shape and dtype of the frames and the metadata columns are fixed by the first frame, created before
SWMR starts (SWMR forbids creating objects later). ``append`` keeps items in memory; ``commit`` writes
them, flushes the file, then records ``archive/committed_length`` and flushes again, so that the length
a reopen trusts never counts a frame whose bytes may not be in the file. Between commits the file is not
touched at all: a SWMR reader sees frames appear only whole, at commits.

Reading while it grows (another process)::

    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        frames = f["entry/cam/data"]
        ...
        frames.refresh()          # the shape grows at each commit

After a crash (the writer SIGKILLed), a SWMR reader opens the file as it is; every other open needs the
status flags cleared first (``hdf5_files.clear_status_flags`` or ``h5clear -s --increment=0 FILE``), which
reopening with ``on_exists="append"`` does itself. Frames beyond ``archive/committed_length`` in a crashed
file are from a commit that did not finish; ``append`` cuts them off when it reopens the file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from ...errors import ConfigurationError, StorageError, TargetExistsError
from . import CommitReport, ContainerCapabilities, FrameStack, ItemKey, PendingFrame, Row, check_frame, lossless_json
from .hdf5_acquisition import GROUP as ACQUISITION_GROUP
from .hdf5_acquisition import check_same, write_end, write_group
from .hdf5_columns import Columns, read_archive_row, read_metadata, write_block
from .hdf5_files import OPEN_FOR_WRITE, WriterLock, clear_status_flags, load_h5py, unique_path

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "JSON_ATTRIBUTES",
    "OTHER_ATTRIBUTES",
    "Hdf5Container",
    "clear_status_flags",
    "read_archive_row",
    "read_metadata",
]

Compression = Literal["none", "lz4", "bitshuffle-lz4", "zstd", "blosc", "gzip"]
OnExists = Literal["error", "append", "unique"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
#: Chosen by measurement: docs/decisions/0017-hdf5-container.md, benchmarks/hdf5_compression.py.
DEFAULT_COMPRESSION: Compression = "none"
#: With ``frames_per_chunk=None``, a chunk holds as many frames as fit in this many bytes (at least one):
#: measured best for 8 KiB frames (8 per chunk); bigger chunks are rewritten whole at every commit that
#: ends inside them, which costs compressed files their ratio (1.63 -> 1.05 at 128 per chunk, decision 0017).
CHUNK_TARGET_BYTES = 1 << 16
_MAX_AUTO_FRAMES = 1024
_STACK_BELOW_BYTES = 1 << 16
#: Small frames are stacked into a buffer of at most this many bytes per writer thread, reused from commit to
#: commit, and written a block at a time: memory touched for the first time costs a page fault every 4 KiB
#: (on the project's VM, which gives freed memory back to its host: 0.67 GB/s against 36 GB/s for memory
#: touched before; ``np.stack`` of each commit's frames was a fifth of the writer's time on the ``small`` row).
STAGING_BYTES = 8 << 20
_staging = threading.local()


def stacked_blocks(
    frames: list[np.ndarray], shape: tuple[int, ...], dtype: np.dtype[Any]
) -> Iterator[tuple[int, np.ndarray]]:
    """``frames`` (each of ``shape`` and ``dtype``) as (offset, block) pairs: consecutive frames stacked along a
    new first axis in this thread's staging buffer (``STAGING_BYTES``), valid until the next block is asked for."""
    values = int(np.prod(shape, dtype=np.int64))
    frame_bytes = values * dtype.itemsize
    per_block = len(frames) if frame_bytes == 0 else max(1, min(len(frames), STAGING_BYTES // frame_bytes))
    needed = per_block * frame_bytes
    buffer: bytearray | None = getattr(_staging, "buffer", None)
    if buffer is None or len(buffer) < needed:
        buffer = bytearray(max(needed, len(buffer) if buffer is not None else 0))
        _staging.buffer = buffer
    for offset in range(0, len(frames), per_block):
        part = frames[offset : offset + per_block]
        block = np.frombuffer(buffer, dtype=dtype, count=len(part) * values)
        block = block.reshape((len(part), *shape))
        np.stack(part, out=block)
        yield offset, block


def compression_options(hdf5plugin: Any, compression: str) -> dict[str, Any]:
    """``create_dataset`` keywords for a compression name (gzip at level 1: the others are faster still)."""
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    filters = {
        "lz4": lambda: hdf5plugin.LZ4(),
        "bitshuffle-lz4": lambda: hdf5plugin.Bitshuffle(cname="lz4"),
        "zstd": lambda: hdf5plugin.Zstd(clevel=3),
        "blosc": lambda: hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE),
    }
    return dict(filters[compression]())


class Hdf5Container(FrameStack):
    """Frames of one stack appended to one HDF5 file, with SWMR readers and crash recovery.

    ``path`` is the file (already rendered and confined by the caller), ``dataset_path`` the frames'
    dataset inside it (at least ``group/name``: the group becomes the NXdata group). ``on_exists`` says what
    an existing file means: ``error`` refuses it (TargetExistsError), ``append`` reopens it (after a crash
    too) and continues after its committed frames, ``unique`` writes ``name-1.h5``, ``name-2.h5``, ...
    ``frames_per_chunk=None`` puts as many frames in a chunk as make 64 KiB (one frame when bigger).
    ``fsync`` makes each commit survive a power loss too (an fsync of the file per commit; without it a
    commit survives the writer's process being killed, not the machine's crash). ``compression``: one of
    ``COMPRESSIONS``; anything but ``none`` and ``gzip`` needs hdf5plugin in every reader too.
    ``attributes`` (e.g. a camera's configuration from ``acquisition_started``) become attributes of the
    stack's ``configuration`` group, written before SWMR starts (it forbids adding them later); reopening
    a stack adds the names it does not have yet and keeps the values already there. ``acquisition`` (the
    acquisition the frames are, ``hdf5_acquisition``) becomes the ``acquisition`` group; an existing file
    whose stack is of another acquisition raises ``OtherAcquisitionError``. With either, the groups are
    written when the file opens, so a file of an acquisition without frames has them too.
    """

    capabilities = ContainerCapabilities(
        supports_swmr=True, supports_append=True, needs_single_writer=True, commit_survives_process_kill=True
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        dataset_path: str,
        *,
        compression: Compression = DEFAULT_COMPRESSION,
        frames_per_chunk: int | None = None,
        on_exists: OnExists = "error",
        swmr: bool = True,
        fsync: bool = False,
        attributes: Mapping[str, Any] | None = None,
        acquisition: Mapping[str, Any] | None = None,
    ) -> None:
        self._parts = _dataset_parts(dataset_path)
        if compression not in COMPRESSIONS:
            raise ConfigurationError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        if frames_per_chunk is not None and (not isinstance(frames_per_chunk, int) or frames_per_chunk < 1):
            raise ConfigurationError(f"frames_per_chunk must be a positive integer or None, got {frames_per_chunk!r}")
        if on_exists not in get_args(OnExists):
            raise ConfigurationError(f"on_exists must be one of error, append, unique, got {on_exists!r}")
        self._h5py, hdf5plugin = load_h5py()
        self._filters = compression_options(hdf5plugin, compression)
        self.dataset_path = "/".join(self._parts)
        self.compression = compression
        self.frames_per_chunk = frames_per_chunk
        self.swmr = swmr
        self.fsync = fsync
        self._attributes = dict(attributes or {})
        self._acquisition = dict(acquisition) if acquisition is not None else None
        self._pending: list[PendingFrame] = []
        self._index: dict[str, int] = {}
        self._committed = 0
        self._frames: Any = None
        self._frame_shape: tuple[int, ...] = ()
        self._frame_dtype = np.dtype(np.uint8)
        self._columns: Columns | None = None
        self._closed = False
        existed = on_exists == "append" and Path(path).exists()
        self.path, self._file, self._lock = self._open(Path(path), on_exists)
        try:
            if existed and self._acquisition is not None:
                parent = self._file.get("/".join(self._parts[:-1]), default={})
                check_same(parent, self._acquisition, f"{self.path} ({self.dataset_path!r})")
            if self.dataset_path in self._file:
                self._reopen_stack()
            elif self._attributes or self._acquisition is not None:
                self._write_groups(self._file.require_group("/".join(self._parts[:-1])))
                _link_defaults(self._file, self._parts[:-1])
                self._file.flush()
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------------------------------ opening
    def _open(self, path: Path, on_exists: OnExists) -> tuple[Path, Any, WriterLock]:
        """Create or reopen the file per ``on_exists``; returns the path used, the open file and its lock."""
        h5py = self._h5py
        while True:
            if path.exists() and on_exists == "append":
                lock = WriterLock(path)
                try:
                    return path, self._open_existing(path), lock
                except BaseException:
                    lock.release()
                    raise
            if path.exists() and on_exists == "error":
                raise TargetExistsError(f"{path} exists and on_exists='error' (expected no file there)")
            target = unique_path(path) if on_exists == "unique" else path
            try:
                handle = h5py.File(target, "x", libver="latest")
            except FileExistsError:
                continue  # created by someone else in between: look again
            except OSError as exc:
                raise StorageError(f"cannot create HDF5 file {target}: {exc}") from exc
            try:
                return target, handle, WriterLock(target)
            except BaseException:
                handle.close()
                raise

    def _open_existing(self, path: Path) -> Any:
        """Open an existing file for appending, clearing the status flags a killed writer left."""
        try:
            return self._h5py.File(path, "a", libver="latest")
        except OSError as exc:
            if OPEN_FOR_WRITE not in str(exc):
                raise StorageError(f"cannot open {path} to append (expected an HDF5 file): {exc}") from exc
        clear_status_flags(path)  # we hold the writer lock: the writer that set them is gone
        return self._h5py.File(path, "a", libver="latest")

    def _reopen_stack(self) -> None:
        """Continue an existing stack: cut an unfinished commit off, learn the stored keys, start SWMR."""
        h5py = self._h5py
        found = self._file[self.dataset_path]
        group = found.parent
        if not isinstance(found, h5py.Dataset) or "archive" not in group or found.maxshape[0] is not None:
            raise ConfigurationError(
                f"{self.dataset_path!r} in {self.path} is not a stack written by heros-archiver "
                "(expected a resizable dataset beside an 'archive' group)"
            )
        chunk_frames = found.chunks[0]
        access = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        frame_bytes = max(1, found.dtype.itemsize * int(np.prod(found.shape[1:], dtype=np.int64)))
        access.set_chunk_cache(521, _cache_bytes(chunk_frames, frame_bytes), 1.0)
        frames = h5py.Dataset(h5py.h5d.open(group.id, found.name.rsplit("/", 1)[-1].encode(), dapl=access))
        self._set_frames(frames)
        self._columns = Columns(self._h5py, group)
        self._committed = self._columns.recover(frames.shape[0])
        frames.resize(self._committed, axis=0)
        self._index = {key: i for i, key in enumerate(self._columns.keys(self._committed))}
        self._write_groups(group)
        self._file.flush()
        self._start_swmr()

    def _create_stack(self, data: np.ndarray, metadata: Mapping[str, Any]) -> None:
        """The frames dataset, its columns and NeXus attributes, from the first frame; then SWMR starts."""
        frame_bytes = max(1, data.nbytes)
        per_chunk = self.frames_per_chunk or max(1, min(_MAX_AUTO_FRAMES, CHUNK_TARGET_BYTES // frame_bytes))
        *groups, name = self._parts
        parent = self._file.require_group("/".join(groups))
        if parent.attrs.get("NX_class") == "NXdata" or "archive" in parent:
            raise ConfigurationError(
                f"group {parent.name!r} in {self.path} already holds a stack ({parent.attrs.get('signal')!r}); "
                f"expected one stack per group for dataset {self.dataset_path!r}"
            )
        self._frames = parent.create_dataset(
            name, shape=(0, *data.shape), maxshape=(None, *data.shape), dtype=data.dtype,
            chunks=(per_chunk, *data.shape), rdcc_nbytes=_cache_bytes(per_chunk, frame_bytes), rdcc_w0=1.0,
            **self._filters,
        )  # fmt: skip
        self._set_frames(self._frames)
        if data.ndim == 2:
            self._frames.attrs["interpretation"] = "image"
        parent.attrs["NX_class"] = "NXdata"
        parent.attrs["signal"] = name
        self._columns = Columns.create(self._h5py, parent, metadata)
        self._write_groups(parent)
        _link_defaults(self._file, groups)
        self._file.flush()
        self._start_swmr()

    def _write_groups(self, parent: Any) -> None:
        """The ``configuration`` group (``attributes``) and, if given, the ``acquisition`` group: before SWMR."""
        configuration = parent.require_group("configuration")
        configuration.attrs.setdefault("NX_class", "NXcollection")
        write_attributes(configuration, self._attributes)
        if self._acquisition is not None:
            write_group(parent, self._acquisition)

    def end_acquisition(self, end: Mapping[str, Any]) -> None:
        """Record how the acquisition ended (``hdf5_acquisition.END_PLACEHOLDERS``' names) and flush; values
        change in place, so SWMR readers may keep the file open."""
        self._check_open()
        group = self._file.get("/".join(self._parts[:-1]))
        if group is None or ACQUISITION_GROUP not in group:
            raise ConfigurationError(f"{self.path} has no acquisition group for {self.dataset_path!r} (expected one)")
        try:
            write_end(group, end)
            self._flush()
        except (OSError, RuntimeError, ValueError) as exc:
            raise StorageError(f"cannot record the end of the acquisition in {self.path}: {exc}") from exc

    def _set_frames(self, frames: Any) -> None:
        """The frames dataset, with its frame shape and dtype kept (h5py's properties ask HDF5 each time)."""
        self._frames = frames
        self._frame_shape = tuple(frames.shape[1:])
        self._frame_dtype = frames.dtype

    def _start_swmr(self) -> None:
        if self.swmr and not self._file.swmr_mode:
            self._file.swmr_mode = True

    # ------------------------------------------------------------------------------------------ writing
    def append(
        self, key: ItemKey, data: np.ndarray, metadata: Mapping[str, Any], *, received: float | None = None
    ) -> int:
        """Give the frame the next index (or the one its key already has); written at the next commit.

        The container keeps a reference to ``data`` until then: the caller must not change it.
        """
        self._check_open()
        key_id = key.key_id()
        known = self._index.get(key_id)
        if known is not None:
            return known
        self._check_fits(key, data)
        if self._frames is None:
            try:
                self._create_stack(data, metadata)
            except OSError as exc:
                raise StorageError(f"cannot create dataset {self.dataset_path!r} in {self.path}: {exc}") from exc
        index = self._committed + len(self._pending)
        when = received if received is not None else time.time()
        self._pending.append(PendingFrame(data, Row(key, when, metadata, key_id)))
        self._index[key_id] = index
        return index

    def _check_fits(self, key: ItemKey, data: Any) -> None:
        fixed = None if self._frames is None else (self._frame_shape, self._frame_dtype)
        check_frame(data, key.source, self.path, self.dataset_path, fixed, "HDF5 cannot chunk them")

    def commit(self) -> CommitReport:
        """Write the pending frames and their columns, flush, record the committed length, flush again."""
        self._check_open()
        start = self._committed
        if not self._pending:
            return CommitReport(self.path, self.dataset_path, start, start)
        assert self._columns is not None
        stop = start + len(self._pending)
        try:
            frames = [p.frame for p in self._pending]
            if frames[0].nbytes < _STACK_BELOW_BYTES:
                for offset, block in stacked_blocks(frames, self._frame_shape, self._frame_dtype):
                    write_block(self._h5py, self._frames, start + offset, block)
            else:
                for offset, frame in enumerate(frames):
                    write_block(self._h5py, self._frames, start + offset, frame[np.newaxis])
            self._columns.write(start, [p.row for p in self._pending])
            self._flush()
            self._columns.mark_committed(stop)  # flushes that one value (no space allocated: no file flush)
            if self.fsync:
                os.fsync(self._file.id.get_vfd_handle())
        except (OSError, RuntimeError, ValueError) as exc:
            raise StorageError(
                f"commit of frames {start}..{stop - 1} to {self.dataset_path!r} in {self.path} failed "
                f"(they stay pending): {exc}"
            ) from exc
        keys = tuple(p.row.key for p in self._pending)
        self._pending.clear()
        self._committed = stop
        return CommitReport(self.path, self.dataset_path, start, stop, keys)

    def _flush(self) -> None:
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.id.get_vfd_handle())

    def discard(self) -> int:
        """Forget the frames appended since the last commit (the caller set them aside, e.g. dead-lettered
        them, or will append them again); the file is not touched. Returns how many were dropped."""
        dropped = len(self._pending)
        for pending in self._pending:
            self._index.pop(pending.row.key_id, None)
        self._pending.clear()
        return dropped

    def close(self) -> CommitReport:
        """Commit what is pending and close the file (also when that commit fails); idempotent."""
        if self._closed:
            return CommitReport(self.path, self.dataset_path, self._committed, self._committed)
        try:
            return self.commit()
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        try:
            self._file.close()
        finally:
            self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"container {self.dataset_path!r} in {self.path} is closed (expected an open one)")

    def __repr__(self) -> str:
        return f"Hdf5Container({str(self.path)!r}, {self.dataset_path!r}, committed={self._committed})"


#: Names of the attributes of a ``configuration`` group whose values are JSON text (not plain scalars).
JSON_ATTRIBUTES = "json_attributes"
#: JSON text of the attributes whose names HDF5 cannot hold (empty, with NUL, not UTF-8, too long), that
#: collide as text (``1`` and ``"1"``) or with the group's own (``NX_class``, these two): ``{name: value}``.
OTHER_ATTRIBUTES = "other_attributes"
#: Longest attribute name kept as a name (HDF5 refuses names beyond its object header's limits).
MAX_NAME_BYTES = 1024


def write_attributes(group: Any, attributes: Mapping[str, Any]) -> None:
    """``attributes`` on ``group``: numbers, booleans and strings as they are, anything else as JSON text
    (its name listed in the ``json_attributes`` attribute); names already there keep their values. A name
    HDF5 cannot hold (the configuration comes from the network) goes into ``other_attributes``, never lost."""
    encoded = list(group.attrs.get(JSON_ATTRIBUTES, []))
    existing = set(group.attrs)
    reserved = {JSON_ATTRIBUTES, OTHER_ATTRIBUTES, "NX_class"}
    written: set[str] = set()
    others: dict[str, Any] = {}
    for name, value in attributes.items():
        key = str(name)
        if key in reserved or not _plain_name(key) or key in written:
            others[repr(name) if key in others else key] = value
            continue
        written.add(key)
        if key in existing:
            continue
        if _plain_attribute(value):
            group.attrs[key] = value
        else:
            group.attrs[key] = lossless_json(value).decode("ascii")
            encoded.append(key)
    if encoded:
        group.attrs[JSON_ATTRIBUTES] = encoded
    if others and OTHER_ATTRIBUTES not in existing:
        group.attrs[OTHER_ATTRIBUTES] = lossless_json(others).decode("ascii")


def _plain_name(name: str) -> bool:
    """True for a name HDF5 keeps as an attribute name, unchanged."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return 0 < size <= MAX_NAME_BYTES and "\0" not in name


def _plain_attribute(value: Any) -> bool:
    """True for a value HDF5 stores as an attribute and gives back unchanged."""
    if isinstance(value, bool | float | np.bool_ | np.number):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return "\0" not in value
    return False


def _cache_bytes(frames_per_chunk: int, frame_bytes: int) -> int:
    """The chunk cache of a stack: none for one frame per chunk (HDF5 then writes each frame straight to
    the file without copying it into the cache: 1.09x on 1024x1024 uint16), room for two chunks being filled
    otherwise."""
    return 0 if frames_per_chunk == 1 else max(1 << 20, 2 * frames_per_chunk * frame_bytes)


def _dataset_parts(dataset_path: str) -> list[str]:
    parts = [p for p in str(dataset_path).split("/") if p]
    if len(parts) < 2 or any(p in (".", "..") for p in parts):
        raise ConfigurationError(
            f"dataset_path must name a dataset inside a group, e.g. 'entry/cam/data', got {dataset_path!r}"
        )
    return parts


def _link_defaults(handle: Any, groups: list[str]) -> None:
    """NeXus ``default`` attributes from the root down to the NXdata group, and NXentry on the group above
    it, so that silx and h5web open the frames as an image stack; attributes already there are kept."""
    node = handle
    for depth, name in enumerate(groups):
        node.attrs.setdefault("default", name)
        node = node[name]
        if depth == len(groups) - 2:
            node.attrs.setdefault("NX_class", "NXentry")
