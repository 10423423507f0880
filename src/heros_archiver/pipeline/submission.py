"""The intake side of the pipeline: items in under the overflow policy (block, spill, drop), the spool read
back in order, and rejected items dead-lettered by a thread of ours, never by the receive thread.
"""

from __future__ import annotations

import time

from ..errors import ArchiverError, UnfaithfulError
from ..observe.logs import log_fields
from ..observe.outcomes import Dropped
from ..state.spool import Damaged
from .control import Control
from .queueing import Item
from .setaside import LOST_LOG_INTERVAL, log


class Submission(Control):
    """``submit`` and ``reject``, and the threads that serve the spool and the rejects' backlog."""

    def submit(self, item: Item) -> None:
        """Accept one item under the overflow policy; waits (``block``, or a spool that just failed) at most
        ``block_limit`` seconds. While paused, items go to the spool (or are dropped: ``pause(drop=True)``)."""
        if self._control.paused:
            self._submit_paused(item)
        elif self.options.overflow == "drop":
            if self._spilling:  # only after a pause: behind the items it spooled, in order
                self._put_or_spill(item, 0.0)
            elif not self._queue.put(item, block=False):
                self._drop(item)
        elif self.options.overflow == "spill":
            self._put_or_spill(item, self.options.block_limit)
        else:
            self._block_then_spill(item)

    def reject(self, item: Item, error: ArchiverError) -> None:
        """An item that cannot be archived as it is (a bad payload): to the dead-letter store, by a thread of
        ours (``_reject_loop``), never on the receive thread, so a flood of garbage cannot hold up intake.

        When that thread's backlog is full the item is counted as lost (``lost_reject_backlog``) and logged.
        """
        if self._rejects.put(item, error):
            return
        if self._rejects.closed:  # stopping: nothing serves the backlog any more
            self._dead_letter(item, error)
            return
        self._lose(
            item,
            "lost_reject_backlog",
            f"{type(error).__name__}: {error}; not dead-lettered: {len(self._rejects)} rejected items already wait "
            f"for the dead-letter store {self.dead_letters.directory}",
        )

    def _reject_loop(self) -> None:
        """Dead-letter the rejected items, oldest first, until the backlog is closed and empty."""
        while True:
            entry = self._rejects.get(timeout=0.2)
            if entry is None:
                if self._rejects.closed:
                    return
                continue
            item, error = entry
            self._dead_letter(item, error, persist=True)

    def _block_then_spill(self, item: Item) -> None:
        """Wait for room up to ``block_limit`` (back-pressure), then spool: a sender that waited longer
        would have its link closed by Zenoh and lose what waited. Once spilling, later items follow
        through the spool, so the order stays. While the spool refuses items, nothing waits (decision 0015)."""
        limit = self.options.block_limit
        with self._spool_lock:
            spilling, failing = self._spilling, self._spool_failing
        if not spilling and not failing and self._queue.put(item, block=True, timeout=limit):
            return
        if self._queue.closed:
            self._set_aside(item, ArchiverError("arrived while the archiver was stopping"))
            return
        if not spilling and not failing:
            log.warning(
                "%s (event %s): the queue has been full for %s s; items go to the spool at %s until there is "
                "room (a sender held back longer would have its link closed by Zenoh)",
                item.source,
                self._event,
                limit,
                self.spool.directory,
                extra=log_fields(item.source, self._event, self.spool.directory),
            )
        self._put_or_spill(item, limit if spilling else 0.0)

    def _put_or_spill(self, item: Item, may_wait: float | None) -> None:
        """Queue ``item`` if there is room and nothing older waits in the spool; spool it otherwise.

        If the spool refuses it (a full disk), the item may wait ``may_wait`` more seconds for room (None:
        as long as it takes), and is then lost, counted and logged: the receive thread is never held past
        ``block_limit``. Until the spool takes an item again or the queue has room again, items that find the
        queue full are lost at once, without waiting: a full disk refuses at once, so trying the spool for
        each one costs little (decision 0015). An item the spool cannot keep exactly as it arrived (a type
        outside its faithful encoding) waits the same, and is then dead-lettered as what it is, by the
        rejects thread: described, and counted as a loss there.
        """
        unspoolable: UnfaithfulError | None = None
        with self._spool_lock:
            failing = self._spool_failing
            if (not self._spilling or failing) and self._queue.put(item, block=False):
                self._spool_failing = False  # room again: the next full queue may hold the sender back again
                return  # while the spool fails, overtaking what it holds beats losing the item
            try:
                self.spool.put(item)
            except UnfaithfulError as exc:  # not a disk fault: this item cannot be kept in the spool as it is
                unspoolable = exc
            except OSError as exc:
                error = exc
                self._spool_failing = True
            else:
                self._spilling = True
                self._spilled += 1
                self._spool_failing = False
                if failing:
                    log.warning(
                        "event %s: the spool %s takes items again",
                        self._event,
                        self.spool.directory,
                        extra=log_fields(event=self._event, path=self.spool.directory),
                    )
                return
        if unspoolable is not None:
            if may_wait != 0 and self._queue.put(item, block=True, timeout=may_wait):
                return
            self.reject(item, unspoolable)
            return
        if not failing:
            now = time.monotonic()
            if self._spool_error_logged_at is None or now - self._spool_error_logged_at >= LOST_LOG_INTERVAL:
                self._spool_error_logged_at = now
                log.error(
                    "%s (event %s): cannot spill to %s (%s); while it fails, items that find the queue full are "
                    "LOST (give spool_dir a file system other than the archive's)",
                    item.source,
                    self._event,
                    self.spool.directory,
                    error,
                    extra=log_fields(item.source, self._event, self.spool.directory, error),
                )
            if may_wait != 0 and self._queue.put(item, block=True, timeout=may_wait):
                return
        if self._queue.closed:
            self._set_aside(item, ArchiverError("arrived while the archiver was stopping"))
            return
        self._lose(item, "lost_spool_full", f"the queue is full and the spool {self.spool.directory} failed: {error}")

    def _unspool_loop(self) -> None:
        """Hand spooled items back to the queue, oldest first, as room frees up; an entry that cannot be
        read is moved aside and counted (``Spool.take``), and the entries after it go on. Nothing is handed back
        while paused: the spool keeps what the pause spooled until ``resume``."""
        while not self._queue.closed:
            if self._control.paused:
                self._control.idle()
                continue
            with self._spool_lock:
                if len(self.spool) == 0:
                    self._spilling = False
            try:
                item = self.spool.take(timeout=0.2)
            except Exception as exc:  # noqa: BLE001 - this thread must outlive any fault: it alone empties the spool
                log.error(
                    "event %s: reading the spool %s failed: %s",
                    self._event,
                    self.spool.directory,
                    exc,
                    extra=log_fields(event=self._event, path=self.spool.directory, error=exc),
                )
                self._abort.wait(0.2)
                continue
            if isinstance(item, Damaged):
                self._count_damaged(item)
                continue
            if item is None:
                continue
            if self._control.paused:  # paused while it was read: it stays first in the spool
                self.spool.give_back(item)
                continue
            if item.spool_entry in self._resumed:  # spooled by an earlier run: may have been written already
                self._resumed.discard(item.spool_entry)
                item.resumed = True
                self._accounting.received(item.source, item.metadata)
            if self._route is not None and not self._routed(item):
                continue
            if not self._queue.put(item, block=True):
                self.spool.give_back(item)
                return

    def _routed(self, item: Item) -> bool:
        """Give a spooled item its route again (the spool keeps what arrived, not where it goes); False when
        that fails for the item's own reason: it is then dead-lettered and leaves the spool."""
        assert self._route is not None
        try:
            self._route(item)
        except ArchiverError as exc:
            self._dead_letter(item, exc, persist=True)
            self.spool.done(item)
            return False
        return True

    def _count_damaged(self, damaged: Damaged) -> None:
        """A spool entry that cannot be read: counted (per source if this run spooled it), logged, gone on."""
        self._resumed.discard(damaged.entry)
        self._quarantined += 1
        if damaged.source is not None:  # counted as received when it arrived: it ends here, not in flight
            self._accounting.add(damaged.source, "quarantined")
        where = f"moved to {damaged.moved_to}" if damaged.moved_to else "left in place for the next start"
        log.error(
            "%s (event %s): spool entry %s cannot be read back, %s, its item not archived: %s",
            damaged.source or "source unknown",
            self._event,
            damaged.entry,
            where,
            damaged.error,
            extra=log_fields(damaged.source, self._event, damaged.moved_to or damaged.entry, damaged.error),
        )

    def _drop(self, item: Item) -> None:
        if self._queue.closed:
            self._dead_letter(item, ArchiverError("arrived while the archiver was stopping"))
            return
        self._accounting.add(item.source, "dropped")
        if self.hub.active:
            self.hub.publish([self._outcome(Dropped, item, why="queue full, overflow='drop'")])
        with self._count_lock:
            self._drop_logged += 1
            dropped = self._drop_logged
        if dropped == 1 or dropped % 100 == 0:
            items, nbytes = self._queue.depth()
            log.warning(
                "%s (event %s): queue full (%d items, %d bytes), overflow='drop': item dropped (%d dropped so far)",
                item.source,
                self._event,
                items,
                nbytes,
                dropped,
                extra=log_fields(item.source, self._event, error="queue full, overflow='drop'"),
            )
