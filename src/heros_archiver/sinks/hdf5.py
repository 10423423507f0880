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

With ``locate`` (someone listens: ``observe``), each frame's location is set when it is appended (and set
again if a failed commit appends it again, so it names where its commit put it): the file (absolute, the
part's final name), the frames' dataset path in it, the frame's index along axis 0 (the index it already has
for a frame resumed after a crash and found by its key), and the checksum of its raw bytes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PayloadError, StorageError
from ..observe.logs import log_fields
from ..pipeline.queueing import Item
from .base import CommitFailure, Settled
from .containers import ItemKey
from .containers.hdf5 import Hdf5Container
from .routed import (
    SPACE_MARGIN,
    OpenPart,
    RoutedSink,
    RoutedSinkSettings,
    Series,
    check_before_opening,
    sequence_of,
    space_shortage,
    would_overflow,
)

log = logging.getLogger("heros_archiver")


@dataclass(frozen=True, kw_only=True)
class Hdf5SinkSettings(RoutedSinkSettings):
    """How the sink writes (validated by ``Hdf5Archiver``)."""

    compression: Any
    frames_per_chunk: int | None
    max_bytes: int | None
    max_open_files: int


@dataclass
class _Open(OpenPart[Hdf5Container]):
    dataset: str
    #: bytes of the part's frames (the file's size for frames from before): ``max_bytes``
    nbytes: int = 0

    @property
    def path(self) -> Path:
        return self.container.path


class Hdf5Sink(RoutedSink[str, _Open]):
    """See the module docstring. ``dataset_of(item)`` renders the item's dataset path."""

    def __init__(self, settings: Hdf5SinkSettings, dataset_of: Callable[[Item], str]) -> None:
        super().__init__(settings)
        self._settings = settings
        self._dataset_of = dataset_of

    # ------------------------------------------------------------------ the ContainerSink interface
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
            settled.add(self._limit_open_files(self._settings.max_open_files))
        opened.used = time.monotonic()
        container = opened.container
        try:
            index = container.append(key, item.payload, item.metadata, received=item.received)
        except StorageError as exc:  # HDF5 failed writing (creating the stack): the file is not touched again
            failed = self._abandon(route, exc)
            failed.failed[0].items.append(item)
            return settled.add(failed)
        self._appended(opened, item, container.dataset_path, index)
        if index < container.committed_length:  # resumed, and already committed before the crash
            settled.archived.append(item)
            return settled
        opened.hold(item, item.nbytes)
        opened.nbytes += int(getattr(item.payload, "nbytes", 0))
        return settled

    # ------------------------------------------------------------------ files
    def _key(self, item: Item) -> ItemKey:
        """The item's key, a pure function of what arrived (the spool keeps all of it exactly, receive time
        included), so a resumed item gets the same key in any run; computed here, on the writer, to keep
        hashing off Zenoh's thread. With a sequence value: a hash of the content (a frame sent again is found);
        without one: the receive time (two equal frames are two frames; decision 0020)."""
        sequence = sequence_of(item, self._settings.sequence_key)
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
        settings, size = self._settings, int(getattr(item.payload, "nbytes", 0))
        return would_overflow(opened.frames, opened.nbytes, size, settings.max_frames, settings.max_bytes)

    def _opened(self, route: str, dataset: str) -> _Open:
        """Open (or reopen) the current part of ``route``'s series for ``dataset``."""
        settings = self._settings
        series = self._series.setdefault(route, Series())
        path, policy = series.choose(route, settings.on_exists)
        check_before_opening(path, settings.root)
        existed = path.exists()
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
            series.advance()
        return settled

    def _commit(self, route: str) -> Settled:
        opened = self._open[route]
        margin = SPACE_MARGIN if opened.container.committed_length else FIRST_COMMIT_MARGIN
        short = space_shortage(opened.path, 2 * opened.pending_bytes + margin)
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
            self._series[route].advance()
            log.error(
                "closing %s without a commit failed: %s; its series continues in a new part",
                opened.path,
                exc,
                extra=log_fields(path=opened.path, error=exc),
            )
        return Settled(failed=[CommitFailure(str(opened.path), opened.waiting, error)])

    def _close_container(self, opened: _Open) -> None:
        """Close a committed file (a file whose commit failed is never closed: see ``_abandon``)."""
        try:
            opened.container.close()
        except Exception as exc:  # noqa: BLE001 - its frames are committed; the file may need its flags cleared
            log.error(
                "closing %s failed after its last commit (its frames are committed): %s",
                opened.path,
                exc,
                extra=log_fields(path=opened.path, error=exc),
            )

    def _abandon(self, route: str, error: BaseException) -> Settled:
        """A write to the file failed: HDF5 cannot be trusted with that open file any more (measured: after
        ENOSPC every later flush fails, also once space is free, and closing it crashed the interpreter in
        h5py's ``_close_open_objects``). It is left as its last commit left it, never closed by this process
        (kept referenced, with its writer lock, until the process ends), and the series goes on in its next
        part (``name-N.h5``): the waiting items are returned, to be appended there after the backoff."""
        opened = self._open.pop(route)
        _ABANDONED.append(opened.container)
        self._series[route].advance()
        log.error(
            "%s: a write failed (%s); the file keeps the frames of its last commit and is not written again, "
            "its series continues in a new part",
            opened.path,
            error,
            extra=log_fields(path=opened.path, error=error),
        )
        return Settled(failed=[CommitFailure(str(opened.path), opened.waiting, error)])


#: Containers whose file failed a write: never closed (closing such a file crashed h5py), kept until exit.
_ABANDONED: list[Hdf5Container] = []


#: Free bytes the first commit of a stack needs beyond twice its frames' bytes (``routed.SPACE_MARGIN`` for
#: later ones): it allocates every per-frame dataset (measured: 375 KB for two frames of 16 KiB, of which
#: 32 KiB frames).
FIRST_COMMIT_MARGIN = 1 << 20
