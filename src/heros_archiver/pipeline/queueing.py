"""A queue bounded in items *and* bytes, with one lane per writer thread.

Bounding by bytes is what bounds memory: 1,000 small readings and 1,000 camera frames are very
different amounts. Items are assigned to a lane by their source (or their ``route``: a container's
file), so one writer handles each source (or container) and its items are written in the order they arrived.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..observe.outcomes import Location


@dataclass(slots=True)
class Item:
    """One received event on its way to storage."""

    source: str
    payload: Any
    metadata: dict[str, Any]
    nbytes: int
    received: float = field(default_factory=time.time)
    attempts: int = 0
    #: the spool entry this item was loaded from (removed once the item is archived or dead-lettered)
    spool_entry: Path | None = None
    #: True when an earlier run may already have written it (resumed from its spool)
    resumed: bool = False
    #: what decides its writer (lane): None for its source; a container archiver sets its rendered file path,
    #: so that every item of one container is written by one writer, in arrival order
    route: str | None = None
    #: a container sink's item key (``containers.ItemKey``), computed once by its writer
    key: Any = None
    #: the event it came from when that is not the archiver's own (e.g. ``acquisition_started``: a marker)
    event: str | None = None
    #: what the archiver added on receipt for its templates (e.g. the acquisition it belongs to): not part of
    #: the metadata that arrived, kept beside it (also in the spool and the dead-letter store)
    context: dict[str, Any] | None = None
    #: where its sink put it (set by the sink when it is written or committed; ``observe.outcomes``)
    locations: tuple[Location, ...] = ()
    #: a file sink's files for it, named and encoded ahead (``FileSink.plan_ahead``), used by its next write
    planned: Any = None

    @property
    def lane_key(self) -> str:
        """The text that picks this item's lane: its ``route``, else its source."""
        return self.source if self.route is None else self.route

    def sequence(self, key: str | None) -> int | None:
        """Its metadata's value of the archiver's ``sequence_key`` (None: no key, or the value is no integer)."""
        value = None if key is None else self.metadata.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value


class LaneQueue:
    """Bounded multi-lane FIFO. ``put`` blocks (or refuses) when items or bytes would exceed the bounds.

    An item larger than ``max_bytes`` on its own is admitted when the queue is empty, so it cannot
    deadlock; memory is then bounded by the largest single item.

    A writer may also declare items it has taken and still holds (``hold``: a container sink's items wait
    in memory for their commit); they count against both bounds until it declares them gone. A producer
    that waits for room while writers hold items raises ``room_wanted``, on which a container writer commits
    (and so lets go of what it holds) at once: an item is let in over the bounds only when nothing is queued
    or held, and the bounds hold for queued and held items together.
    """

    def __init__(self, lanes: int, max_items: int, max_bytes: int) -> None:
        self._lanes: list[deque[Item]] = [deque() for _ in range(lanes)]
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items = 0
        self._bytes = 0
        #: per lane, (items, bytes) its writer holds outside the queue (``hold``), and their totals
        self._held = [(0, 0)] * lanes
        #: per lane, ``time.monotonic()`` when its writer took the oldest item it still holds (None: none held)
        self._held_since: list[float | None] = [None] * lanes
        self._held_items = 0
        self._held_bytes = 0
        #: producers waiting in ``put`` for room
        self._waiting_producers = 0
        self._closed = False
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._not_empty = [threading.Condition(self._lock) for _ in range(lanes)]

    def lane_of(self, lane_key: str) -> int:
        """The lane (writer) that handles ``lane_key`` (an item's source or route): stable across runs, spread
        evenly."""
        return zlib.crc32(lane_key.encode()) % len(self._lanes)

    @property
    def room_wanted(self) -> bool:
        """A producer waits for room, and writers hold items whose commit would make it."""
        return self._waiting_producers > 0 and self._held_items > 0

    def _fits(self, nbytes: int) -> bool:
        if self._items == 0 and self._held_items == 0:  # nothing waits: no writer needs this item to make room
            return True
        items, size = self._items + self._held_items, self._bytes + self._held_bytes
        return items < self.max_items and size + nbytes <= self.max_bytes

    def hold(self, lane: int, items: int, nbytes: int, since: float | None = None) -> None:
        """Declare that ``lane``'s writer now holds ``items`` taken items of ``nbytes`` bytes (replacing what
        it declared before), so that what waits for a commit stays within the bounds too; ``since``: the
        ``time.monotonic()`` the oldest of them was taken (its sink's ``oldest_pending``), for ``oldest_age``."""
        with self._lock:
            self._held_since[lane] = since if items else None
            old_items, old_bytes = self._held[lane]
            if (old_items, old_bytes) == (items, nbytes):
                return
            self._held[lane] = (items, nbytes)
            self._held_items += items - old_items
            self._held_bytes += nbytes - old_bytes
            if items < old_items or nbytes < old_bytes:
                self._not_full.notify_all()

    def put(self, item: Item, block: bool = True, timeout: float | None = None) -> bool:
        """Enqueue ``item``; False if it did not fit (non-blocking, timed out, or the queue closed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._not_full:
            while not self._closed and not self._fits(item.nbytes):
                if not block:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._waiting_producers += 1
                if self._held_items:
                    for condition in self._not_empty:  # a writer that holds items commits them (room_wanted)
                        condition.notify()
                try:
                    self._not_full.wait(remaining)
                finally:
                    self._waiting_producers -= 1
            if self._closed:
                return False
            lane = self.lane_of(item.lane_key)
            self._lanes[lane].append(item)
            self._items += 1
            self._bytes += item.nbytes
            self._not_empty[lane].notify()
            return True

    def get(self, lane: int, timeout: float) -> Item | None:
        """The next item of ``lane``, or None after ``timeout`` seconds without one."""
        with self._not_empty[lane]:
            if not self._lanes[lane] and not self._closed:  # closed: nothing more can come
                self._not_empty[lane].wait(timeout)
            if not self._lanes[lane]:
                return None
            item = self._lanes[lane].popleft()
            self._items -= 1
            self._bytes -= item.nbytes
            self._not_full.notify_all()
            return item

    def peek(self, lane: int, max_items: int, max_bytes: int) -> list[Item]:
        """The items of ``lane`` waiting now, oldest first, up to ``max_items`` and ``max_bytes``, left in the queue
        (and in its bounds): what its one writer takes next, in this order."""
        with self._not_empty[lane]:
            waiting = self._lanes[lane]
            taken: list[Item] = []
            nbytes = 0
            for item in waiting:
                if len(taken) >= max_items or nbytes + item.nbytes > max_bytes:
                    break
                taken.append(item)
                nbytes += item.nbytes
            return taken

    def get_many(self, lane: int, max_items: int, max_bytes: int, timeout: float, hold: bool = False) -> list[Item]:
        """The items of ``lane`` waiting now, oldest first, up to ``max_items`` or until ``max_bytes`` are
        reached (at least one); waits up to ``timeout`` seconds for the first. With ``hold``, they are added
        to what the lane's writer holds (``hold``), in the same step, so they never leave the bounds."""
        with self._not_empty[lane]:
            waiting = self._lanes[lane]
            if not waiting and timeout > 0 and not self._closed:  # closed: nothing more can come
                self._not_empty[lane].wait(timeout)
            items: list[Item] = []
            nbytes = 0
            while waiting and len(items) < max_items and nbytes < max_bytes:
                item = waiting.popleft()
                items.append(item)
                nbytes += item.nbytes
            if items and hold:
                held_items, held_bytes = self._held[lane]
                self._held[lane] = (held_items + len(items), held_bytes + nbytes)
                self._held_items += len(items)
                self._held_bytes += nbytes
            if items:
                self._items -= len(items)
                self._bytes -= nbytes
                self._not_full.notify_all()
            return items

    def close(self) -> None:
        """Refuse new items from now on and wake every waiting producer and consumer."""
        with self._lock:
            self._closed = True
            self._not_full.notify_all()
            for cond in self._not_empty:
                cond.notify_all()

    def wake(self) -> None:
        """Wake every writer waiting for an item, to look at its control requests (``pipeline.control``)."""
        with self._lock:
            for cond in self._not_empty:
                cond.notify_all()

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    def drain(self) -> Iterator[Item]:
        """Remove and yield every item still queued (used at shutdown)."""
        while True:
            with self._lock:
                lane = next((q for q in self._lanes if q), None)
                if lane is None:
                    return
                item = lane.popleft()
                self._items -= 1
                self._bytes -= item.nbytes
                self._not_full.notify_all()
            yield item

    def depth(self) -> tuple[int, int]:
        """(items, bytes) currently queued, or held by a writer (``hold``)."""
        with self._lock:
            return self._items + self._held_items, self._bytes + self._held_bytes

    def oldest_age(self) -> float | None:
        """Seconds the oldest waiting item has waited (None: nothing waits): a queued item since it was received,
        one a container writer holds since the writer took it (``hold``'s ``since``). Looks at the head of each
        lane only (a lane is in arrival order), so it costs nothing per item."""
        now, monotonic = time.time(), time.monotonic()
        ages: list[float] = []
        with self._lock:
            ages.extend(now - lane[0].received for lane in self._lanes if lane)
            ages.extend(monotonic - since for since in self._held_since if since is not None)
        return max(ages, default=None)


class RejectQueue:
    """Items refused on the receive path, each with its error, for a thread that dead-letters them.

    Bounded in items and bytes, and never blocking: the receive thread must not wait for disk work, so
    what does not fit is the caller's to count as lost.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._entries: deque[tuple[Item, BaseException]] = deque()
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._bytes = 0
        self._closed = False
        self._ready = threading.Condition()

    def put(self, item: Item, error: BaseException) -> bool:
        """Add ``item``; False (nothing added) when the queue is full or closed."""
        with self._ready:
            full = len(self._entries) >= self.max_items or self._bytes + item.nbytes > self.max_bytes
            if self._closed or (full and self._entries):
                return False
            self._entries.append((item, error))
            self._bytes += item.nbytes
            self._ready.notify()
            return True

    def get(self, timeout: float) -> tuple[Item, BaseException] | None:
        """The oldest entry, or None after ``timeout`` seconds without one."""
        with self._ready:
            if not self._entries:
                self._ready.wait(timeout)
            if not self._entries:
                return None
            entry = self._entries.popleft()
            self._bytes -= entry[0].nbytes
            return entry

    def close(self) -> None:
        """Refuse new entries from now on; wake the thread waiting in ``get``."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    def __len__(self) -> int:
        """Entries waiting."""
        return len(self._entries)
