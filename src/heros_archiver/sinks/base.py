"""Where items go: one small interface, two kinds behind it (decision 0018).

* **File per item** (``FileSink``): ``store(item)`` writes the item's file(s) and returns; the item is archived
  then (or once its files reached the device, with a writeback window). Today's npy and JSON archivers.
* **Container** (``ContainerSink``): many items appended to one file or store (an HDF5 stack). ``append``
  puts an item in its container; only a **commit** makes it archived, so the pipeline keeps it (and its
  spool entry) until a commit reports it. The pipeline commits every ``flush_frames`` items, ``flush_bytes``
  bytes or ``flush_seconds`` after the oldest pending item, and at drain (``close``).

Shaped after zarr-python v3's ``Store`` (a small ABC with class-level capability flags the pipeline checks)
and ophyd-async's writers (what was written is reported, never assumed). A container sink is made once per
writer lane and is only ever called by that lane's thread; the pipeline routes every item of one container
to one lane (``Item.route``), so a container has a single writer and sees its items in arrival order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from ..pipeline.queueing import Item

__all__ = ["AcquisitionCheck", "CommitFailure", "ContainerSink", "FileSink", "Settled", "Sink", "SinkCapabilities"]


@dataclass(frozen=True)
class SinkCapabilities:
    """What a kind of sink needs from the pipeline (checked by it, as zarr's store flags are)."""

    #: Items count as archived only at commit points the pipeline asks for (not when the call returns).
    commit_points: bool
    #: All items of one target (container) must be written by one writer: the archiver sets ``Item.route``.
    single_writer: bool


class Sink(ABC):
    """Where items go; see the module docstring."""

    capabilities: ClassVar[SinkCapabilities]


class FileSink(Sink):
    """File per item: ``store(item)`` writes it (or raises); the pipeline retries and accounts, unchanged.

    ``plan_ahead(items)``, if given, is called by the writer with the item it took and those waiting behind it:
    it may name and encode their files now and journal their intent records in one write (``Item.planned``),
    which ``store`` then uses; it never raises (an item it could not plan is planned again by ``store``)."""

    capabilities = SinkCapabilities(commit_points=False, single_writer=False)

    def __init__(self, store: Callable[[Item], None], plan_ahead: Callable[[list[Item]], None] | None = None) -> None:
        self.store = store
        self.plan_ahead = plan_ahead


@dataclass
class CommitFailure:
    """Items of one container whose commit failed; the container was released (reopened at the next append,
    which recovers its committed length), so they are appended again, or dead-lettered."""

    target: str
    items: list[Item]
    error: BaseException


@dataclass(frozen=True)
class AcquisitionCheck:
    """An acquisition's end, checked: its file holds ``held`` frames, its camera said it emitted ``expected``
    (None: it did not say). Reported once, with the end marker's item, when that is archived."""

    source: str
    path: str
    expected: int | None
    held: int


@dataclass
class Settled:
    """What a sink call settled: items now committed (archived), commits that failed, acquisitions checked."""

    archived: list[Item] = field(default_factory=list)
    failed: list[CommitFailure] = field(default_factory=list)
    checks: list[AcquisitionCheck] = field(default_factory=list)

    def add(self, other: Settled) -> Settled:
        """Both together (returns self)."""
        self.archived.extend(other.archived)
        self.failed.extend(other.failed)
        self.checks.extend(other.checks)
        return self


class ContainerSink(Sink):
    """Items appended to containers, archived at commit points; one instance per writer lane.

    ``append`` raises the item's own error and leaves the item out: a ``PayloadError`` (another shape) or
    another permanent ``ArchiverError`` is dead-lettered at once, a ``StorageError`` (or the container busy
    with another writer) is retried with backoff. The arrays appended must not change until committed.
    """

    capabilities = SinkCapabilities(commit_points=True, single_writer=True)

    #: set ``Item.locations`` of every item a commit reports (someone listens: ``observe``); the pipeline
    #: sets it before the first append
    locate: bool = False
    #: told ``(item, path, member)`` when the first item of a container's member (index 0: a new stack, array or
    #: file) is appended, before its first commit: the catalog's intent record of a new container, so that a kill
    #: after that commit and before its commit line still lets a later start find and read it back (decision
    #: 0041); set by the archiver, must not raise
    intend: Callable[[Item, str, str], None] | None = None

    #: commit once this many items are pending ...
    flush_frames: int
    #: ... or this many bytes (held in memory, and counted within the queue's byte bound until committed) ...
    flush_bytes: int
    #: ... or this many seconds after the oldest pending item arrived at the sink ...
    flush_seconds: float
    #: ... or once no item has arrived for this many seconds (None: never; the end of a burst is committed
    #: at once instead of ``flush_seconds`` later)
    flush_idle: float | None = None

    @abstractmethod
    def append(self, item: Item) -> Settled:
        """Append ``item`` to its container (opening, rolling over or closing others as needed); what that
        settled (an item already committed, e.g. resumed after a crash, is archived at once)."""

    @abstractmethod
    def commit(self) -> Settled:
        """Commit every container with pending items."""

    def commit_for_room(self) -> Settled:
        """A producer waits for room in the queue, which the pending items count against: commit what can be
        committed without writing anything twice (the default: everything pending, as ``commit``). A sink whose
        partial units are rewritten at the next commit (a Zarr shard) commits only whole ones and keeps the
        rest pending: the writer takes more items meanwhile (the queue holds them), and the size, time and
        drain commits still commit everything."""
        return self.commit()

    @abstractmethod
    def expire(self, now: float) -> Settled:
        """Close the containers unused since ``now - idle_timeout`` (``time.monotonic()``), committing first."""

    @abstractmethod
    def close(self) -> Settled:
        """Commit and close every container (at drain)."""

    def rollover(self) -> Settled | None:
        """Commit and close the parts written now, so that the next item of each container starts its next part
        (``name-1.ext``, ...): the archiver's ``rollover()``. None: this sink has no parts (the default)."""
        return None

    @property
    @abstractmethod
    def pending(self) -> int:
        """Items appended and not yet committed."""

    @property
    @abstractmethod
    def pending_bytes(self) -> int:
        """Bytes of the pending items (``Item.nbytes``: payload and metadata, as the queue counts them)."""

    @property
    @abstractmethod
    def oldest_pending(self) -> float | None:
        """``time.monotonic()`` when the oldest pending item was appended (None: nothing pending)."""
