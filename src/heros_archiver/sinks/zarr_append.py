"""The container sink of ``ZarrAppendArchiver``: which store and array an item goes to, rollover, idle arrays.

One instance per writer lane; the items of one store are routed to one lane (``Item.route`` is the
rendered, confined store path), so each store has one writer. Per (store, array) it keeps a *series*:
the store part written now and its number; an array is rolled over (committed, closed) once it holds
``max_frames`` frames, and continues in ``name-1.zarr``, ``name-2.zarr``, ... beside the store (under
``on_exists="unique"``: the next free name, as the HDF5 sink does). A store part this sink made (or took
under ``append``) is joined by the other arrays routed to it; only a store found at its first use is
subject to ``on_exists``. An array unused for ``idle_timeout`` seconds is
committed and closed (reopened when needed: its committed frames and keys are recovered).

Unlike an HDF5 file, a Zarr store is only files: a failed commit (a full disk) leaves the store as its
last commit left it, the container is let go, and the next append reopens it from the store.

With ``locate``, each frame's location is set when it is appended (again at a retry's append): the store's
directory, the frames' array path inside it, the frame's index along axis 0 (its existing one for a frame
found by its key), and the checksum of its raw bytes in the byte order stored (the order it arrived in).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import PayloadError, StorageError
from ..observe.logs import log_fields
from ..pipeline.queueing import Item
from .base import CommitFailure, Settled
from .containers import ItemKey
from .containers.zarr_append import ZarrAppendContainer
from .containers.zarr_places import LOCKS_AREA, ObjectPlace
from .containers.zarr_shards import Compression
from .routed import OnExists, OpenPart, RoutedSink, RoutedSinkSettings, Series, sequence_of, would_overflow

if TYPE_CHECKING:
    from ..archivers.object_root import ObjectRoot

log = logging.getLogger("heros_archiver")


def object_place(objects: ObjectRoot, key: Path) -> ObjectPlace:
    """The store at ``key`` (a route: a key in the bucket) of an object-store root, its writer locks in the
    root's own area (``<prefix>/.heros-archiver/locks/``)."""
    return ObjectPlace(objects.store, str(key), objects.location.state_prefix + LOCKS_AREA + "/")


@dataclass(frozen=True, kw_only=True)
class ZarrAppendSinkSettings(RoutedSinkSettings):
    """How the sink writes (validated by ``ZarrAppendArchiver``)."""

    compression: Compression
    frames_per_chunk: int
    frames_per_shard: int | None
    #: the object store the stores are prefixes of (routes are then keys in its bucket); None: local files
    objects: ObjectRoot | None = None


@dataclass
class _Open(OpenPart[ZarrAppendContainer]):
    """An open array of a store part, and the index in it of each waiting item (an item found by its key among
    the pending frames, sent twice, shares that frame's)."""

    indices: list[int] = field(default_factory=list, kw_only=True)

    def hold_at(self, item: Item, index: int) -> None:
        """Hold ``item``, whose frame is at ``index``: a commit of part of the pending frames reports by it."""
        self.hold(item, _held_bytes(item))
        self.indices.append(index)

    def committed(self) -> Settled:
        self.indices = []
        return super().committed()

    def committed_below(self, stop: int) -> Settled:
        """The waiting items whose frames are committed now that the array's length is ``stop``, as far as they
        lead (a later one waits for the next commit); the rest stay held, their flush clock started now."""
        count = next((number for number, index in enumerate(self.indices) if index >= stop), len(self.indices))
        if count == len(self.waiting):
            return self.committed()
        archived, self.waiting, self.indices = self.waiting[:count], self.waiting[count:], self.indices[count:]
        self.pending_bytes = sum(_held_bytes(item) for item in self.waiting)
        self.first_pending = time.monotonic()
        return Settled(archived=archived)


class ZarrAppendSink(RoutedSink[tuple[str, str], _Open]):
    """See the module docstring. ``array_of(item)`` renders the item's array path inside its store.

    Its series and open arrays are keyed by (store path, array path)."""

    def __init__(self, settings: ZarrAppendSinkSettings, array_of: Callable[[Item], str]) -> None:
        super().__init__(settings)
        self._settings = settings
        self._array_of = array_of
        #: per (route, part) the store this sink made or took: other arrays of that part join it
        self._made: dict[tuple[str, int], Path] = {}

    # ------------------------------------------------------------------ the ContainerSink interface
    def append(self, item: Item) -> Settled:
        settled = Settled()
        target = (item.lane_key, self._array_of(item))
        key = item.key if item.key is not None else self._key(item)
        item.key = key
        opened = self._open.get(target)
        if opened is not None and self._full(opened):
            settled.add(self._roll_over(target))
            opened = None
        while opened is None:
            opened = self._opened(target, item)
            if self._full(opened):  # reopened a full part
                settled.add(self._roll_over(target))
                opened = None
        opened.used = time.monotonic()
        container = opened.container
        try:
            index = container.append(key, item.payload, item.metadata, received=item.received)
        except StorageError:  # writing the new array failed: let it go, the retry reopens the store
            self._open.pop(target)
            container.release()
            raise
        self._appended(opened, item, container.array_path, index)
        if index < container.committed_length:  # resumed, and already committed before the crash
            settled.archived.append(item)
            return settled
        opened.hold_at(item, index)
        return settled

    # ------------------------------------------------------------------ stores and arrays
    def _key(self, item: Item) -> ItemKey:
        """The item's key: a pure function of what arrived (so a resumed item gets the same key in any run);
        computed here, on the writer, to keep hashing off Zenoh's thread."""
        sequence = sequence_of(item, self._settings.sequence_key)
        if not hasattr(item.payload, "dtype"):
            raise PayloadError(
                f"item from {item.source!r} for {item.lane_key}: expected a numpy array (a frame), "
                f"got {type(item.payload).__name__}"
            )
        return ItemKey.of(item.source, item.payload, item.metadata, sequence)

    def _full(self, opened: _Open) -> bool:
        """True when one more frame would take the open part past ``max_frames``."""
        return would_overflow(opened.frames, 0, 0, self._settings.max_frames, None)

    def _opened(self, target: tuple[str, str], item: Item) -> _Open:
        """Open (or reopen) the current part of ``target``'s series."""
        settings = self._settings
        series = self._series.setdefault(target, Series())
        route, array = target
        policy: OnExists
        made = self._made.get((route, series.part))
        if series.current is None and made is not None:  # another array of this store part made it: join it
            path, policy = made, "append"
        else:
            path, policy = series.choose(route, settings.on_exists)
        frame_bytes = max(1, int(getattr(item.payload, "nbytes", 1)))
        shard = settings.frames_per_shard or max(1, min(settings.flush_frames, settings.flush_bytes // frame_bytes))
        place = path if settings.objects is None else object_place(settings.objects, path)
        container = ZarrAppendContainer(
            place, array, root=settings.root, compression=settings.compression,
            frames_per_chunk=settings.frames_per_chunk, frames_per_shard=shard, on_exists=policy,
            fsync=settings.fsync,
        )  # fmt: skip
        series.current = container.path
        self._made.setdefault((route, series.part), container.path)
        opened = _Open(container)
        self._open[target] = opened
        return opened

    def _roll_over(self, target: tuple[str, str]) -> Settled:
        """Close the part of ``target`` written now and go on with the next one."""
        settled = self._close(target)
        if not settled.failed:
            self._series[target].advance()
        return settled

    def _commit(self, target: tuple[str, str], frames: int | None = None) -> Settled:
        """Commit the pending frames of ``target`` (the first ``frames`` of them; None: all)."""
        opened = self._open[target]
        try:
            opened.container.commit(frames)
        except Exception as exc:  # noqa: BLE001 - any failure: the store keeps its last commit, retried later
            return self._let_go(target, exc)
        if frames is None:
            return self._committed(opened)
        return opened.committed_below(opened.container.committed_length)

    def _commit_for_room(self, target: tuple[str, str]) -> Settled:
        """Commit only the pending frames that end whole shards (none: nothing now), so that a producer waiting
        for room does not make the sink write a shard now and again, longer, at the next commit (measured: 1.67
        times the frames' bytes written for 2 MiB frames in shards of 16, 1.0 this way)."""
        frames = self._open[target].container.whole_shard_frames
        return self._commit(target, frames) if frames else Settled()

    def _let_go(self, target: tuple[str, str], error: BaseException) -> Settled:
        """A commit failed: release the array (the store is as its last commit left it) and hand the waiting
        items back, to be appended again after the backoff into the reopened array (which knows its keys)."""
        opened = self._open.pop(target)
        opened.container.release()
        log.warning(
            "%s: commit failed (%s); the store keeps its last commit",
            opened.container.location,
            error,
            extra=log_fields(path=opened.container.location, error=error),
        )
        return Settled(failed=[CommitFailure(opened.container.location, opened.waiting, error)])


def _held_bytes(item: Item) -> int:
    """What a pending frame counts in the sink's pending bytes: its pixels."""
    return int(getattr(item.payload, "nbytes", 0))
