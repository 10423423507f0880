"""The container sink of ``Hdf5Archiver``: which file and stack an item goes to, rollover, open-file limits.

One instance per writer lane; it alone opens the files of the items routed to that lane (``Item.route`` is
the rendered, confined file path), so each HDF5 file has one writer. Per rendered path it keeps a
*series*: the file it writes now and how many rollover parts came before. A file is rolled over (closed,
committed first) once it holds ``max_frames`` frames or ``max_bytes`` bytes; the next part is
``name-1.h5``, ``name-2.h5``, ... beside it, under the same ``on_exists`` policy. A file unused for
``idle_timeout`` seconds is closed, and at most ``max_open_files`` are open (the least recently used is
closed first); a file this run made is reopened with ``append`` (its committed frames and keys recovered).
A file holds one stack open at a time (decision 0017): an item for another dataset of an open file closes
the one open and reopens the file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PathConfinementError, PayloadError, StorageError, storage_error
from ..pipeline.queueing import Item
from ..storage.confinement import open_directory
from .base import CommitFailure, ContainerSink, Settled
from .containers import ItemKey
from .containers.hdf5 import Hdf5Container, OnExists

log = logging.getLogger("heros_archiver")


@dataclass(frozen=True)
class Hdf5SinkSettings:
    """How the sink writes (validated by ``Hdf5Archiver``)."""

    root: str
    compression: Any
    frames_per_chunk: int | None
    on_exists: OnExists
    fsync: bool
    flush_frames: int
    flush_seconds: float
    flush_bytes: int
    flush_idle: float | None
    max_frames: int | None
    max_bytes: int | None
    idle_timeout: float
    max_open_files: int
    sequence_key: str | None


@dataclass
class _Series:
    """The files of one rendered path: the part written now (None until opened) and its number."""

    part: int = 0
    current: Path | None = None


@dataclass
class _Open:
    container: Hdf5Container
    dataset: str
    waiting: list[Item] = field(default_factory=list)
    nbytes: int = 0
    pending_bytes: int = 0
    first_pending: float | None = None
    used: float = field(default_factory=time.monotonic)

    @property
    def path(self) -> Path:
        return self.container.path


class Hdf5Sink(ContainerSink):
    """See the module docstring. ``dataset_of(item)`` renders the item's dataset path."""

    def __init__(self, settings: Hdf5SinkSettings, dataset_of: Callable[[Item], str]) -> None:
        self._settings = settings
        self._dataset_of = dataset_of
        self.flush_frames = settings.flush_frames
        self.flush_seconds = settings.flush_seconds
        self.flush_bytes = settings.flush_bytes
        self.flush_idle = settings.flush_idle
        self._series: dict[str, _Series] = {}
        self._open: OrderedDict[str, _Open] = OrderedDict()
        #: what a call settled before it raised, reported with the next one
        self._unreported = Settled()

    # ------------------------------------------------------------------ the ContainerSink interface
    @property
    def pending(self) -> int:
        return sum(len(o.waiting) for o in self._open.values())

    @property
    def pending_bytes(self) -> int:
        return sum(o.pending_bytes for o in self._open.values())

    @property
    def oldest_pending(self) -> float | None:
        times = [o.first_pending for o in self._open.values() if o.first_pending is not None]
        return min(times) if times else None

    def append(self, item: Item) -> Settled:
        """``_append``; what it settled before it raised (a file committed and closed, then the next one cannot
        be opened) is kept and reported with the next call, so that no committed item goes unaccounted."""
        settled, self._unreported = self._unreported, Settled()
        try:
            self._append(item, settled)
        except BaseException:
            self._unreported = settled
            raise
        return settled

    def _append(self, item: Item, settled: Settled) -> Settled:
        """Append ``item`` to its file (see ``append``), adding what that settled to ``settled``."""
        route = item.lane_key
        dataset = self._dataset_of(item)
        key = item.key if item.key is not None else self._key(item)
        item.key = key
        opened = self._open.get(route)
        if opened is not None and opened.dataset != dataset:
            settled.add(self._close(route))
            opened = None
        if opened is not None and self._full(opened, item):
            settled.add(self._roll_over(route))
            opened = None
        while opened is None:
            opened = self._opened(route, dataset)
            if self._full(opened, item) and opened.container.committed_length > 0:  # reopened a full part
                settled.add(self._roll_over(route))
                opened = None
        self._open.move_to_end(route)
        if len(self._open) > self._settings.max_open_files:
            settled.add(self._limit_open_files())
        opened.used = time.monotonic()
        container = opened.container
        try:
            index = container.append(key, item.payload, item.metadata, received=item.received)
        except StorageError as exc:  # HDF5 failed writing (creating the stack): the file is not touched again
            failed = self._abandon(route, exc)
            failed.failed[0].items.append(item)
            return settled.add(failed)
        if index < container.committed_length:  # resumed, and already committed before the crash
            settled.archived.append(item)
            return settled
        if opened.first_pending is None:
            opened.first_pending = time.monotonic()
        opened.waiting.append(item)
        opened.pending_bytes += item.nbytes
        opened.nbytes += int(getattr(item.payload, "nbytes", 0))
        return settled

    def commit(self) -> Settled:
        settled, self._unreported = self._unreported, Settled()
        for route in [r for r, o in self._open.items() if o.waiting]:
            settled.add(self._commit(route))
        return settled

    def expire(self, now: float) -> Settled:
        settled, self._unreported = self._unreported, Settled()
        for route in [r for r, o in self._open.items() if now - o.used >= self._settings.idle_timeout]:
            settled.add(self._close(route))
        return settled

    def close(self) -> Settled:
        settled, self._unreported = self._unreported, Settled()
        for route in list(self._open):
            settled.add(self._close(route))
        return settled

    # ------------------------------------------------------------------ files
    def _key(self, item: Item) -> ItemKey:
        """The item's key, a pure function of what arrived (the spool keeps all of it exactly, receive time
        included), so a resumed item gets the same key in any run; computed here, on the writer, to keep
        hashing off Zenoh's thread. With a sequence value: a hash of the content (a frame sent again is found);
        without one: the receive time (two equal frames are two frames; decision 0020)."""
        sequence_key = self._settings.sequence_key
        value = item.metadata.get(sequence_key) if sequence_key is not None else None
        sequence = value if isinstance(value, int) and not isinstance(value, bool) else None
        if not hasattr(item.payload, "dtype"):
            raise PayloadError(
                f"item from {item.source!r} for {item.lane_key}: expected a numpy array (a frame), "
                f"got {type(item.payload).__name__}"
            )
        if sequence is None:
            return ItemKey.of_arrival(item.source, None, item.received)
        return ItemKey.of(item.source, item.payload, item.metadata, sequence)

    def _full(self, opened: _Open, item: Item) -> bool:
        """True when ``item`` would take the open part past ``max_frames`` or ``max_bytes``."""
        container = opened.container
        frames = container.committed_length + container.pending
        if self._settings.max_frames is not None and frames >= self._settings.max_frames:
            return True
        size = int(getattr(item.payload, "nbytes", 0))
        limit = self._settings.max_bytes
        return limit is not None and frames > 0 and opened.nbytes + size > limit

    def _opened(self, route: str, dataset: str) -> _Open:
        """Open (or reopen) the current part of ``route``'s series for ``dataset``."""
        settings = self._settings
        series = self._series.setdefault(route, _Series())
        policy: OnExists
        if series.current is not None:  # made by this run: continue it
            path, policy = series.current, "append"
        elif settings.on_exists == "unique":
            path, policy = Path(route), "unique"  # the first free name among name, name-1, name-2, ...
        else:
            path, policy = _part_path(Path(route), series.part), settings.on_exists
        _check_confined(path, settings.root)
        existed = path.exists()
        short = _space_shortage(path, SPACE_MARGIN)
        if short is not None:
            raise short
        try:
            container = Hdf5Container(
                path, dataset, compression=settings.compression, frames_per_chunk=settings.frames_per_chunk,
                on_exists=policy, fsync=settings.fsync, **self._container_options(route),
            )  # fmt: skip
        except StorageError:
            if not existed and policy != "unique":  # created by us just now (exclusively) and left half-made
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        series.current = container.path
        size = 0
        if existed and policy == "append":  # frames from before count by the file's size (their bytes, roughly)
            with contextlib.suppress(OSError):
                size = container.path.stat().st_size
        opened = _Open(container, dataset, nbytes=size)
        self._open[route] = opened
        return opened

    def _container_options(self, route: str) -> dict[str, Any]:
        """More keywords for the container of ``route`` (a subclass adds attributes; none here)."""
        return {}

    def _roll_over(self, route: str) -> Settled:
        """Close the part of ``route`` written now and go on with the next one (once: a part abandoned by
        ``_abandon`` while closing has moved the series on already)."""
        series = self._series[route]
        part = series.part
        settled = self._close(route)
        if series.part == part:
            series.part += 1
            series.current = None
        return settled

    def _limit_open_files(self) -> Settled:
        """Close the least recently used files beyond ``max_open_files`` (committed first)."""
        settled = Settled()
        while len(self._open) > self._settings.max_open_files:
            settled.add(self._close(next(iter(self._open))))
        return settled

    def _commit(self, route: str) -> Settled:
        opened = self._open[route]
        margin = SPACE_MARGIN if opened.container.committed_length else FIRST_COMMIT_MARGIN
        short = _space_shortage(opened.path, 2 * opened.pending_bytes + margin)
        if short is not None:  # before HDF5 sees ENOSPC (see _abandon): the file stays as its last commit left it
            return self._set_back(route, short)
        try:
            opened.container.commit()
        except StorageError as exc:
            return self._abandon(route, exc)
        return self._committed(opened)

    def _set_back(self, route: str, error: StorageError) -> Settled:
        """A commit that cannot fit: forget its frames and close the file cleanly (nothing of the commit was
        written), so that they are appended again after the backoff (the reopened file knows its keys)."""
        opened = self._open.pop(route)
        opened.container.discard()
        try:
            opened.container.close()
        except Exception as exc:  # noqa: BLE001 - then it is treated as a file whose write failed
            _ABANDONED.append(opened.container)
            self._series[route].part += 1
            self._series[route].current = None
            log.error("closing %s without a commit failed: %s; its series continues in a new part", opened.path, exc)
        return Settled(failed=[CommitFailure(str(opened.path), opened.waiting, error)])

    def _close(self, route: str) -> Settled:
        """Commit, then close: a file whose commit failed is never closed (see ``_abandon``)."""
        opened = self._open.get(route)
        if opened is None:
            return Settled()
        settled = self._commit(route)
        if settled.failed:
            return settled
        del self._open[route]
        try:
            opened.container.close()
        except Exception as exc:  # noqa: BLE001 - its frames are committed; the file may need its flags cleared
            log.error("closing %s failed after its last commit (its frames are committed): %s", opened.path, exc)
        return settled

    def _committed(self, opened: _Open) -> Settled:
        """The items ``opened`` held, now committed (a commit reports every pending item)."""
        archived, opened.waiting = opened.waiting, []
        opened.pending_bytes = 0
        opened.first_pending = None
        return Settled(archived=archived)

    def _abandon(self, route: str, error: BaseException) -> Settled:
        """A write to the file failed: HDF5 cannot be trusted with that open file any more (measured: after
        ENOSPC every later flush fails, also once space is free, and closing it crashed the interpreter in
        h5py's ``_close_open_objects``). It is left as its last commit left it, never closed by this process
        (kept referenced, with its writer lock, until the process ends), and the series goes on in its next
        part (``name-N.h5``): the waiting items are returned, to be appended there after the backoff."""
        opened = self._open.pop(route)
        _ABANDONED.append(opened.container)
        series = self._series[route]
        series.part += 1
        series.current = None
        log.error(
            "%s: a write failed (%s); the file keeps the frames of its last commit and is not written again, "
            "its series continues in a new part",
            opened.path,
            error,
        )
        return Settled(failed=[CommitFailure(str(opened.path), opened.waiting, error)])


#: Containers whose file failed a write: never closed (closing such a file crashed h5py), kept until exit.
_ABANDONED: list[Hdf5Container] = []


#: Free bytes a commit needs beyond twice its frames' bytes (chunks rewritten, metadata), and a new file needs.
SPACE_MARGIN = 256 << 10
#: ... and the first commit of a stack, which allocates every per-frame dataset (measured: 375 KB for two
#: frames of 16 KiB, of which 32 KiB frames).
FIRST_COMMIT_MARGIN = 1 << 20


def _space_shortage(path: Path, needed: int) -> StorageError | None:
    """A StorageError (ENOSPC) when the file system of ``path`` has less than ``needed`` bytes free for us.

    HDF5 must not meet a full disk in an open file: after one failed flush every later one fails, and
    closing the file crashed the interpreter (decision 0018), so a commit checks first (one statvfs).
    """
    try:
        stats = os.statvfs(path.parent)
    except OSError:
        return None  # the write itself will say what is wrong
    free = stats.f_bavail * stats.f_frsize
    if free >= needed:
        return None
    return StorageError(
        errno.ENOSPC,
        f"{os.strerror(errno.ENOSPC)}: {path} needs about {needed} bytes free to commit, {free} are (frames kept "
        "for a retry; the file keeps its last commit)",
    )


def _part_path(path: Path, part: int) -> Path:
    """Rollover part ``part`` of ``path``: the path itself, then ``name-1.h5``, ``name-2.h5``, ..."""
    return path if part == 0 else path.with_name(f"{path.stem}-{part}{path.suffix}")


def _check_confined(path: Path, root: str) -> None:
    """Make ``path``'s directory beneath ``root`` without following a symlink (``confinement.open_directory``),
    and refuse a file name that is a symlink: the file opens by name, so nothing planted may lead out."""
    try:
        handle = open_directory(root, str(path.parent))
    except OSError as exc:
        if isinstance(exc, PathConfinementError):
            raise
        raise storage_error(exc.errno or errno.EIO, f"cannot make the directory of {path}: {exc}") from exc
    try:
        linked = stat.S_ISLNK(os.stat(path.name, dir_fd=handle, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        linked = False
    finally:
        os.close(handle)
    if linked:
        raise PathConfinementError(f"{path} is a symbolic link; expected a file under the archive root {root}")
