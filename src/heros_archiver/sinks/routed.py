"""What the container sinks that route items to files share (``Hdf5Sink``, ``TiffStackSink``, ``ZarrAppendSink``).

Each keeps, per route, a *series* (the part written now and its number) and the containers open now, with
the items waiting for their commit; the ContainerSink answers about those items (pending, bytes, oldest),
the commit, idle and close loops over the open containers, the open-file limit (least recently used closed
first), and the checks before a file is opened (confinement, free space) are the same logic in all three.
Kept here once so that a fix to one (a loop that skips a route, a limit off by one) reaches them all; what
differs (how a commit fails, what a rollover does after a failure, the keys) stays in each sink.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from ..errors import PathConfinementError, StorageError, storage_error
from ..observe.outcomes import array_location
from ..pipeline.queueing import Item
from ..storage.confinement import open_directory
from .base import ContainerSink, Settled
from .containers import Container

#: The ``on_exists`` policies of the containers (each container module names the same ``Literal``).
OnExists = Literal["error", "append", "unique"]

#: Free bytes a commit needs beyond its frames' bytes (chunks rewritten, metadata), and a new file needs.
SPACE_MARGIN = 256 << 10


@dataclass(frozen=True, kw_only=True)
class RoutedSinkSettings:
    """The settings every routed sink has (validated by its archiver); each sink's settings add their own."""

    root: str
    on_exists: OnExists
    fsync: bool
    flush_frames: int
    flush_seconds: float
    flush_bytes: int
    max_frames: int | None
    idle_timeout: float
    sequence_key: str | None
    #: also commit once no item has arrived for this many seconds (None: never)
    flush_idle: float | None = None


@dataclass
class Series:
    """The parts of one route: the part written now (None until opened) and its number."""

    part: int = 0
    current: Path | None = None

    def advance(self) -> None:
        """Go on with the next part (its path is chosen when it is opened)."""
        self.part += 1
        self.current = None

    def choose(self, route: str, on_exists: OnExists) -> tuple[Path, OnExists]:
        """The path and policy to open the current part with: the part this run made is continued
        (``append``); under ``unique`` the container takes the first free name among name, name-1, ...;
        otherwise the part's own name under ``on_exists``."""
        if self.current is not None:
            return self.current, "append"
        if on_exists == "unique":
            return Path(route), "unique"
        return part_path(Path(route), self.part), on_exists


C = TypeVar("C", bound=Container)


@dataclass
class OpenPart(Generic[C]):
    """An open container and what a sink keeps about it: the items waiting for its next commit, their
    bytes, when the first of them came (the flush clock) and when it was last used (LRU, idle)."""

    container: C
    waiting: list[Item] = field(default_factory=list, kw_only=True)
    pending_bytes: int = field(default=0, kw_only=True)
    first_pending: float | None = field(default=None, kw_only=True)
    used: float = field(default_factory=time.monotonic, kw_only=True)
    #: the container's path as its items' locations name it (absolute)
    where: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.where = self.container.location

    def locate(self, item: Item, member: str, index: int) -> None:
        """Set ``item.locations``: frame ``index`` of ``member`` here, with its raw bytes' size and checksum
        (``observe.outcomes``). Called by a sink with ``locate`` set, when the container gave the index."""
        item.locations = (array_location(self.where, member, index, item.payload),)

    @property
    def frames(self) -> int:
        """The frames in the part: committed, and appended since (what ``max_frames`` counts)."""
        return self.container.committed_length + self.container.pending

    def hold(self, item: Item, nbytes: int) -> None:
        """Count ``item`` (``nbytes`` of it) as waiting for the next commit."""
        if self.first_pending is None:
            self.first_pending = time.monotonic()
        self.waiting.append(item)
        self.pending_bytes += nbytes

    def committed(self) -> Settled:
        """The items held, now committed (a commit reports every pending item), and the counts reset."""
        archived, self.waiting = self.waiting, []
        self.pending_bytes = 0
        self.first_pending = None
        return Settled(archived=archived)


K = TypeVar("K", bound=Hashable)
P = TypeVar("P", bound=OpenPart[Any])


class RoutedSink(ContainerSink, Generic[K, P]):
    """The bookkeeping of a sink with one open container per key ``K`` (a route, or a route and an array).

    A subclass appends, and says how one key is committed (``_commit``: a commit that fails also takes the
    key out of ``_open``, its container set back, abandoned or let go) and how a committed container is
    closed (``_close_container``); the loops over the open containers are here. What a call settled before
    it raised is kept in ``_unreported`` (a subclass that can raise mid-way puts it there) and reported first
    by the next call, so that no committed item goes unaccounted.
    """

    def __init__(self, settings: RoutedSinkSettings) -> None:
        self.flush_frames = settings.flush_frames
        self.flush_seconds = settings.flush_seconds
        self.flush_bytes = settings.flush_bytes
        self.flush_idle = settings.flush_idle
        self._idle_timeout = settings.idle_timeout
        self._series: dict[K, Series] = {}
        #: open containers, least recently used first
        self._open: OrderedDict[K, P] = OrderedDict()
        self._unreported = Settled()

    def _appended(self, opened: P, item: Item, member: str, index: int) -> None:
        """``item`` was appended to ``member`` of ``opened`` at ``index``: its location (``locate``), and for the
        member's first item the intent record of a new member (``intend``)."""
        if self.locate:
            opened.locate(item, member, index)
        if index == 0 and self.intend is not None:
            self.intend(item, opened.where, member)

    # The writer asks these three after every item; one open container (the usual case) is answered without
    # the loop, which cost ~1 us each.
    @property
    def pending(self) -> int:
        if len(self._open) == 1:
            (only,) = self._open.values()
            return len(only.waiting)
        return sum(len(o.waiting) for o in self._open.values())

    @property
    def pending_bytes(self) -> int:
        if len(self._open) == 1:
            (only,) = self._open.values()
            return only.pending_bytes
        return sum(o.pending_bytes for o in self._open.values())

    @property
    def oldest_pending(self) -> float | None:
        if len(self._open) == 1:
            (only,) = self._open.values()
            return only.first_pending
        times = [o.first_pending for o in self._open.values() if o.first_pending is not None]
        return min(times) if times else None

    def commit(self) -> Settled:
        settled, self._unreported = self._unreported, Settled()
        for key in [k for k, o in self._open.items() if o.waiting]:
            settled.add(self._commit(key))
        return settled

    def commit_for_room(self) -> Settled:
        settled, self._unreported = self._unreported, Settled()
        for key in [k for k, o in self._open.items() if o.waiting]:
            settled.add(self._commit_for_room(key))
        return settled

    def _commit_for_room(self, key: K) -> Settled:
        """Commit the container of ``key`` for a producer that waits for room (``commit_for_room``); here as any
        commit (a subclass whose partial commits cost more may commit less)."""
        return self._commit(key)

    def expire(self, now: float) -> Settled:
        settled, self._unreported = self._unreported, Settled()
        for key in [k for k, o in self._open.items() if now - o.used >= self._idle_timeout]:
            settled.add(self._close(key))
        return settled

    def close(self) -> Settled:
        settled, self._unreported = self._unreported, Settled()
        for key in list(self._open):
            settled.add(self._close(key))
        return settled

    def rollover(self) -> Settled:
        """Every part written now is committed and closed, and its series goes on with the next part at its next
        item; so does a series whose part was closed (idle, open-file limit) and would be reopened. A part that
        holds nothing yet is already new and stays."""
        settled, self._unreported = self._unreported, Settled()
        closed = [key for key, series in self._series.items() if key not in self._open and series.current is not None]
        for key, opened in list(self._open.items()):
            if opened.frames or opened.waiting:
                settled.add(self._roll_over(key))
        for key in closed:
            self._series[key].advance()
        return settled

    def _limit_open_files(self, most: int) -> Settled:
        """Close the least recently used containers beyond ``most`` open (committed first)."""
        settled = Settled()
        while len(self._open) > most:
            settled.add(self._close(next(iter(self._open))))
        return settled

    def _commit(self, key: K) -> Settled:
        """Commit the container of ``key`` (open, with items waiting)."""
        raise NotImplementedError

    def _roll_over(self, key: K) -> Settled:
        """Close the part of ``key`` written now (committed first) and go on with the next one."""
        raise NotImplementedError

    def _close(self, key: K) -> Settled:
        """Commit, then close the container of ``key`` (nothing when none is open). A container whose commit
        failed is not closed here: the failed commit has dealt with it (see ``_commit``)."""
        opened = self._open.get(key)
        if opened is None:
            return Settled()
        settled = self._commit(key)
        if settled.failed:
            return settled
        del self._open[key]
        self._close_container(opened)
        return settled

    def _close_container(self, opened: P) -> None:
        """Close a container just committed (a hook: a subclass may log a failure instead of raising)."""
        opened.container.close()

    def _committed(self, opened: P) -> Settled:
        """The items ``opened`` held, now committed (a hook: a subclass records more about the commit)."""
        return opened.committed()


def sequence_of(item: Item, sequence_key: str | None) -> int | None:
    """The item's sequence value: an int (not a bool) under ``sequence_key`` in its metadata, else None."""
    value = item.metadata.get(sequence_key) if sequence_key is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def would_overflow(frames: int, nbytes: int, size: int, max_frames: int | None, max_bytes: int | None) -> bool:
    """True when one more frame of ``size`` bytes would take a part of ``frames`` frames and ``nbytes`` bytes
    past ``max_frames`` or ``max_bytes`` (a part takes at least one frame, however large)."""
    if max_frames is not None and frames >= max_frames:
        return True
    return max_bytes is not None and frames > 0 and nbytes + size > max_bytes


def check_before_opening(path: Path, root: str) -> None:
    """Before a container opens or creates ``path``: its directory made beneath ``root`` with nothing planted
    leading out (``check_confined``), and ``SPACE_MARGIN`` bytes free, so that a new file's first writes do
    not meet a full disk (``space_shortage``). Raises the PathConfinementError or StorageError."""
    check_confined(path, root)
    short = space_shortage(path, SPACE_MARGIN)
    if short is not None:
        raise short


def space_shortage(path: Path, needed: int) -> StorageError | None:
    """A StorageError (ENOSPC) when the file system of ``path`` has less than ``needed`` bytes free for us.

    A container should not meet a full disk mid-commit: HDF5 cannot recover an open file after one failed
    flush, and closing it crashed the interpreter (decision 0018); a TIFF stack would be cut back. So a
    commit, and the opening of a file, check first (one statvfs).
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


def part_path(path: Path, part: int) -> Path:
    """Rollover part ``part`` of ``path``: the path itself, then ``name-1.ext``, ``name-2.ext``, ..."""
    return path if part == 0 else path.with_name(f"{path.stem}-{part}{path.suffix}")


def check_confined(path: Path, root: str) -> None:
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
