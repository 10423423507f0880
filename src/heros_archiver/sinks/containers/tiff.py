"""Frames appended as the pages of one BigTIFF stack that Fiji (Bio-Formats), napari and tifffile open.

Every page is a complete TIFF page (its own IFD, one uncompressed strip) carrying the item's key, source,
sequence value, receive time and metadata as JSON in a private tag (``tiff_ifd.METADATA_TAG``), so the
file alone says what each frame is, and a crash can never separate a frame from its metadata. The first
page holds the ImageJ hyperstack description (``images=N``, ``frames=N``): tifffile's ``is_imagej`` is
true and ``series[0]`` is the ``(N, height, width)`` stack.

The commit protocol (decision 0024): ``append`` keeps frames in memory; ``commit`` writes their pages past
the end of the chain (nothing reachable is touched), then links them (one 8-byte write of the last
committed page's next-IFD field: the commit point), then rewrites the fixed-size ImageJ description with
the new count. A reader sees the pages of the last link; after a kill the file is a valid TIFF of every
linked page. A reopen (``on_exists="append"``) walks the chain, keeps the complete pages, cuts off what an
unfinished commit left after them, sets the description's count to the pages found, and appends.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from ...errors import ConfigurationError, PayloadError, StorageError, TargetExistsError, storage_error
from ...observe.logs import log_fields
from ...storage.atomic import unique_names
from ...storage.confinement import open_directory
from . import (
    CommitReport,
    ContainerBusyError,
    ContainerCapabilities,
    FrameStack,
    ItemKey,
    ItemMismatchError,
    lossless_json,
)
from .tiff_ifd import (
    HEADER_BYTES,
    ITEM_SIZES,
    SAMPLE_FORMATS,
    NotAStackError,
    encode_page,
    file_byteorder,
    header,
    imagej_description,
    link_bytes,
    read_chain,
)

__all__ = ["PAGES", "TiffStackContainer", "check_page", "read_records"]

log = logging.getLogger("heros_archiver")

OnExists = Literal["error", "append", "unique"]
#: The "dataset" of a stack's commit reports: a TIFF has one series of pages.
PAGES = "pages"
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REOPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


def check_page(data: Any, where: str) -> np.ndarray:
    """``data`` as a frame one TIFF page holds (a non-empty 2-D array of a TIFF sample type), or PayloadError.

    ``where`` names the item and the file for the message.
    """
    if not isinstance(data, np.ndarray):
        raise PayloadError(f"{where}: expected a numpy array (a 2-D frame), got {type(data).__name__}")
    dtype = data.dtype
    if dtype.kind not in SAMPLE_FORMATS or dtype.fields is not None or dtype.itemsize not in ITEM_SIZES[dtype.kind]:
        raise PayloadError(
            f"{where}: expected a frame of unsigned or signed integers, floats or complex floats (TIFF sample "
            f"formats; Fiji shows uint8, uint16, int16 and float32), got dtype {dtype} of shape {data.shape}"
        )
    if data.ndim != 2 or 0 in data.shape:
        raise PayloadError(
            f"{where}: expected a 2-D frame (height, width) with no empty axis, one page of the stack, got shape "
            f"{data.shape} of dtype {dtype} (TiffArchiver without stack=True writes any shape, one file per item)"
        )
    return data


@dataclass(frozen=True)
class _Pending:
    frame: np.ndarray
    key: ItemKey
    extra: bytes


class TiffStackContainer(FrameStack):
    """Frames of one stack appended as pages of one BigTIFF; see the module docstring.

    ``path`` is the file, already rendered and confined by the caller; with ``root`` its directory is also
    opened beneath the root's handle (no symlink followed) and the file relative to it. ``on_exists``:
    ``error`` refuses an existing file (TargetExistsError), ``append`` reopens it (after a crash too),
    ``unique`` takes the first free name among ``name``, ``name-1.tif``, ... ``fsync`` makes each commit
    survive a power loss too (two fdatasyncs per commit); without it a commit survives the writer's
    process being killed. ``writeback_window``: bytes of committed pages that may be in the page cache
    before the oldest are waited for on the device and dropped from it (0: the kernel decides; see
    ``_Writeback``).
    """

    capabilities = ContainerCapabilities(
        supports_swmr=True, supports_append=True, needs_single_writer=True, commit_survives_process_kill=True
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        root: str | None = None,
        on_exists: OnExists = "error",
        fsync: bool = False,
        writeback_window: int = 32 << 20,
    ) -> None:
        if on_exists not in get_args(OnExists):
            raise ConfigurationError(f"on_exists must be one of error, append, unique, got {on_exists!r}")
        self.fsync = fsync
        self._pending: list[_Pending] = []
        self._index: dict[str, int] = {}
        self._committed = 0
        self._byteorder = "<"
        self._frame_shape: tuple[int, int] | None = None
        self._dtype: np.dtype | None = None
        self._end = 0  # where the next page starts (0: the file is empty, the header comes first)
        self._last_next_field = 0  # the next-IFD field a commit links its first page into
        self._description_offset = 0
        self._closed = False
        self.path, self._fd, existed = _open(Path(path), on_exists, root)
        self._writeback = _Writeback(self._fd, writeback_window, self.path)
        try:
            _lock(self._fd, self.path)
            if existed:
                self._recover()
        except BaseException:
            os.close(self._fd)
            self._closed = True
            raise

    # ------------------------------------------------------------------------------------------ reopening
    def _recover(self) -> None:
        """Continue an existing stack: keep its complete pages, cut off the rest, fix the ImageJ count."""
        try:
            chain = read_chain(self._fd)
        except NotAStackError as exc:
            raise ConfigurationError(f"{self.path} is not a stack written by heros-archiver: {exc}") from exc
        except OSError as exc:
            raise storage_error(exc.errno or errno.EIO, f"cannot read {self.path} to append to it: {exc}") from exc
        pages = chain.pages
        if not pages:  # created, but killed before its first commit ended
            self._write_at(b"", 0, truncate=0)
            return
        first = pages[0]
        if first.extra is None or first.description_offset is None:
            raise ConfigurationError(
                f"{self.path} is a BigTIFF but not a stack written by heros-archiver (expected the ImageJ "
                "description and the item tag in its first page)"
            )
        for number, page in enumerate(pages):  # the archiver never writes one: refuse rather than cut it off
            if page.frame_shape != first.frame_shape or page.dtype != first.dtype:
                raise ConfigurationError(
                    f"{self.path}: page {number} has shape {page.frame_shape} and dtype {page.dtype}, page 0 "
                    f"{first.frame_shape} and {first.dtype}: not a stack written by heros-archiver (left untouched)"
                )
        self._byteorder = chain.byteorder
        self._frame_shape, self._dtype = first.frame_shape, first.dtype
        self._description_offset = first.description_offset
        for index, page in enumerate(pages):
            key = _key_of(page.extra)
            if key is not None:
                self._index.setdefault(key, index)
        last = pages[-1]
        self._committed = len(pages)
        self._end, self._last_next_field = last.end, last.next_field
        if last.next_offset:  # it pointed at a page that was not complete
            self._write_at(link_bytes(self._byteorder, 0), last.next_field)
        self._write_at(imagej_description(self._committed), self._description_offset, truncate=last.end)
        self._sync()

    # ------------------------------------------------------------------------------------------ writing
    def append(
        self,
        key: ItemKey,
        data: np.ndarray,
        metadata: Mapping[str, Any],
        *,
        received: float | None = None,
        acquisition: Mapping[str, Any] | None = None,
    ) -> int:
        """Give the frame the next index (or the one its key already has); written at the next commit.

        ``acquisition`` (the camera acquisition's number, start and configuration) goes into the page's record
        as ``acquisition``; the TIFF acquisition sink gives it to the first page of each stack. The container
        keeps a reference to ``data`` until the commit: the caller must not change it.
        """
        self._check_open()
        known = self._index.get(key.key_id())
        if known is not None:
            return known
        frame = check_page(data, f"item from {key.source!r} for {self.path}")
        if self._dtype is None or self._frame_shape is None:
            self._dtype, self._frame_shape = frame.dtype, (frame.shape[0], frame.shape[1])
            self._byteorder = file_byteorder(frame.dtype)
        elif frame.shape != self._frame_shape or frame.dtype != self._dtype:
            raise ItemMismatchError(
                path=self.path, dataset=PAGES, source=key.source, expected_shape=self._frame_shape,
                expected_dtype=str(self._dtype), shape=tuple(frame.shape), dtype=str(frame.dtype),
            )  # fmt: skip
        when = received if received is not None else time.time()
        record = {
            "key": key.key_id(), "source": key.source, "sequence": key.sequence, "digest": key.digest,
            "received": when, "metadata": metadata,
        }  # fmt: skip
        if acquisition is not None:
            record["acquisition"] = acquisition
        index = self._committed + len(self._pending)
        self._pending.append(_Pending(np.ascontiguousarray(frame), key, lossless_json(record)))
        self._index[key.key_id()] = index
        return index

    def commit(self) -> CommitReport:
        """Write the pending pages past the chain, link them (the commit point), then fix the ImageJ count."""
        self._check_open()
        start = self._committed
        if not self._pending:
            return CommitReport(self.path, PAGES, start, start)
        assert self._dtype is not None and self._frame_shape is not None
        stop = start + len(self._pending)
        first_commit = self._end == 0
        position = HEADER_BYTES if first_commit else self._end
        buffers: list[tuple[int, bytes | memoryview]] = []
        first_page, last_next_field, description_offset = position, 0, self._description_offset
        for number, pending in enumerate(self._pending):
            page = encode_page(
                self._byteorder, position, self._frame_shape, self._dtype, pending.extra,
                stop if first_commit and number == 0 else None,
            )  # fmt: skip
            if page.description_offset is not None:
                description_offset = page.description_offset
            head = page.head
            following = page.data_offset + pending.frame.nbytes
            if number < len(self._pending) - 1:  # link the pages of this commit to each other
                cut = page.next_field - position
                head = head[:cut] + link_bytes(self._byteorder, following) + head[cut + 8 :]
            buffers += [(position, head), (page.data_offset, pending.frame.reshape(-1).view(np.uint8).data)]
            position, last_next_field = following, page.next_field
        try:
            # last page first: the file has its new size from the first write on. A reader (tifffile) takes the
            # size when it opens the file and stops at a page beyond it; had it opened while the first pages were
            # written and walked the chain once linked, it would have seen part of this commit
            for offset, buffer in reversed(buffers):
                self._write_at(buffer, offset)
            self._sync()
            if first_commit:  # the header is the first commit's link: until it is written, no TIFF at all
                self._write_at(header(self._byteorder), 0)
            else:
                self._write_at(link_bytes(self._byteorder, first_page), self._last_next_field)
                self._write_at(imagej_description(stop), description_offset)
            self._sync()
        except OSError as exc:
            raise storage_error(
                exc.errno or errno.EIO,
                f"commit of frames {start}..{stop - 1} to {self.path} failed (they stay pending; the file keeps its "
                f"{start} committed pages): {exc}",
            ) from exc
        keys = tuple(p.key for p in self._pending)
        self._pending.clear()
        self._writeback.committed(self._end, position, last_next_field)
        self._committed, self._end = stop, position
        self._last_next_field, self._description_offset = last_next_field, description_offset
        return CommitReport(self.path, PAGES, start, stop, keys)

    def _write_at(self, data: bytes | memoryview, offset: int, truncate: int | None = None) -> None:
        """All of ``data`` at ``offset`` (continuing short writes); then cut the file at ``truncate``."""
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
        if truncate is not None and os.fstat(self._fd).st_size > truncate:
            os.ftruncate(self._fd, truncate)

    def _sync(self) -> None:
        if self.fsync:
            os.fdatasync(self._fd)

    def discard(self) -> int:
        """Forget the frames appended since the last commit (the file is not touched); how many."""
        dropped = len(self._pending)
        for pending in self._pending:
            self._index.pop(pending.key.key_id(), None)
        self._pending.clear()
        return dropped

    def close(self) -> CommitReport:
        """Commit what is pending and close the file (also when that commit fails); idempotent."""
        if self._closed:
            return CommitReport(self.path, PAGES, self._committed, self._committed)
        try:
            return self.commit()
        finally:
            self._closed = True
            self._writeback.close()
            os.close(self._fd)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"stack {self.path} is closed (expected an open one)")

    def __repr__(self) -> str:
        return f"TiffStackContainer({str(self.path)!r}, committed={self._committed})"


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per page of a stack, in order, the record stored with it: ``key`` (the item key id), ``source``,
    ``sequence``, ``digest``, ``received`` (seconds since the epoch) and ``metadata`` (as it arrived, in JSON);
    with ``acquisitions=True`` the first page's also has ``acquisition`` (number, start, configuration).

    Reads the pages a reader sees (the linked chain, complete pages only), without tifffile; with tifffile
    the same text is ``json.loads(page.tags[65000].value)``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pages = read_chain(fd).pages
    finally:
        os.close(fd)
    return [json.loads(page.extra) if page.extra else {} for page in pages]


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """``sync_file_range(fd, offset, length, flags)`` from the C library (Linux), returning 0 or an errno."""
    if sys.platform != "linux" or not hasattr(os, "posix_fadvise"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def call(fd: int, offset: int, length: int, flags: int) -> int:
        return 0 if function(fd, offset, length, flags) == 0 else ctypes.get_errno()

    return call


_SYNC_FILE_RANGE = _load_sync_file_range()
_WRITE, _WAIT = 2, 1 | 2 | 4  # SYNC_FILE_RANGE_WRITE; WAIT_BEFORE | WRITE | WAIT_AFTER
_PAGE = 4096


class _Writeback:
    """Start writeback of each commit's pages at once; drop them from the page cache once on the device,
    ``window`` bytes behind the end (decision 0009 for files, here by ranges of one growing file).

    Left to the kernel, a stack fills the page cache with gigabytes of dirty pages, and then every write
    pays for fresh page-cache memory and for the kernel's throttling. The range holding the last page's
    IFD stays cached: the next commit writes its link there (dropping it would make that 8-byte write read
    the block back from the disk). A writeback error of the device is logged (the pages are committed: a
    reader of this machine sees them; ``fsync="file"`` is what makes them durable).
    """

    def __init__(self, fd: int, window: int, path: Path) -> None:
        self._fd, self._window, self._path = fd, window, path
        self._ranges: deque[tuple[int, int]] = deque()
        self._bytes = 0
        self.enabled = window > 0 and _SYNC_FILE_RANGE is not None

    def committed(self, start: int, stop: int, keep_from: int) -> None:
        """Bytes ``start`` to ``stop`` were just committed; ``keep_from``: the offset the next link is written at."""
        if not self.enabled or _SYNC_FILE_RANGE is None or stop <= start:
            return
        error = _SYNC_FILE_RANGE(self._fd, start, stop - start, _WRITE)
        if error:  # e.g. a file system without it: leave the page cache to the kernel from now on
            reason = os.strerror(error)
            log.warning("sync_file_range on %s failed (%s); writeback left to the kernel", self._path, reason)
            self.enabled = False
            self.close()
            return
        self._ranges.append((start, stop))
        self._bytes += stop - start
        limit = keep_from // _PAGE * _PAGE
        while self._bytes > self._window and self._ranges and self._ranges[0][1] <= limit:
            self._finish(*self._ranges.popleft())

    def close(self) -> None:
        """Leave what is in flight to the kernel (the file is closed; nothing is waited for)."""
        self._ranges.clear()
        self._bytes = 0

    def _finish(self, start: int, stop: int) -> None:
        self._bytes -= stop - start
        assert _SYNC_FILE_RANGE is not None
        error = _SYNC_FILE_RANGE(self._fd, start, stop - start, _WAIT)
        if error:
            message = os.strerror(error)
            log.error(
                "%s: the device failed writing bytes %d..%d back: %s",
                self._path,
                start,
                stop,
                message,
                extra=log_fields(path=self._path, error=message),
            )
        first = max(start, _PAGE)  # the header's page (and the ImageJ count) stays cached: it is rewritten
        if stop > first:
            os.posix_fadvise(self._fd, first, stop - first, os.POSIX_FADV_DONTNEED)


def _key_of(extra: bytes | None) -> str | None:
    """The item key id a page's JSON holds (None when it holds none: the page stays, without a key)."""
    if extra is None:
        return None
    try:
        record = json.loads(extra)
    except ValueError:
        return None
    key = record.get("key") if isinstance(record, dict) else None
    return key if isinstance(key, str) else None


def _open(path: Path, on_exists: OnExists, root: str | None) -> tuple[Path, int, bool]:
    """Open or create the stack's file per ``on_exists`` in its directory's handle; (path, fd, existed)."""
    try:
        handle = open_directory(root, str(path.parent)) if root else os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise storage_error(exc.errno or errno.EIO, f"cannot open the directory of {path}: {exc}") from exc
    try:
        candidates = unique_names(path) if on_exists == "unique" else iter([path])
        for candidate in candidates:
            try:
                if on_exists == "append":
                    with contextlib.suppress(FileNotFoundError):
                        return candidate, os.open(candidate.name, _REOPEN, dir_fd=handle), True
                return candidate, os.open(candidate.name, _CREATE, 0o666, dir_fd=handle), False
            except FileExistsError:
                if on_exists == "error":
                    raise TargetExistsError(
                        f"{candidate} exists and on_exists='error' (expected no file there)"
                    ) from None
                if on_exists == "append":  # made by someone else in between: open that
                    return candidate, os.open(candidate.name, _REOPEN, dir_fd=handle), True
            except OSError as exc:
                raise storage_error(exc.errno or errno.EIO, f"cannot open {candidate} for the stack: {exc}") from exc
        raise TargetExistsError(f"{path}: every unique name is taken (expected a free one)")
    finally:
        os.close(handle)


def _lock(fd: int, path: Path) -> None:
    """An exclusive OFD lock on the file while this container writes it (dies with the process)."""
    request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK), request)
    except OSError as exc:
        raise ContainerBusyError(
            f"{path} is open for writing by another archiver (expected no other writer; lock refused: {exc})"
        ) from exc
