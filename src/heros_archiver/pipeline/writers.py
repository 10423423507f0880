"""The writing side of the pipeline: one writer thread per lane, writing items one by one, in batches
through helper processes, or into containers; retries with backoff, the writeback window settled.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
import time

from ..errors import ArchiverError, StorageError
from ..observe.logs import log_fields
from ..saferepr import safe_str
from ..sinks.batching import BATCH_BYTES, BATCH_ITEMS, Batch, BatchWriter, Inline, Outcome
from ..storage.writeback import Ticket
from .container_writer import ContainerWriter
from .control import Control, RequestKind
from .queueing import Item
from .setaside import log

#: Items a file writer archives before it tells the listeners (and removes their spool entries) together: while
#: items wait in its lane, one outcome batch per this many, or per ``OUTCOME_DELAY`` seconds of writing since the
#: first of them began (the catalog journals a batch with one write, ~10 us per item less than one each, decision
#: 0045); at once when the lane is empty. An item slower to write than the delay is told at once, alone.
OUTCOME_BATCH = 64
OUTCOME_DELAY = 0.01
#: A file writer plans this many items at most (the one it took and those behind it, ``FileSink.plan_ahead``),
#: of ``PLAN_AHEAD_BYTES`` at most: planned content holds views of the payloads, not copies, and the items
#: planned stay in the queue's bounds until taken.
PLAN_AHEAD_ITEMS = 64
PLAN_AHEAD_BYTES = 4 << 20


class Writers(Control):
    """The writer threads' loops (``_write_loop`` per lane) and how one item is stored and settled."""

    def _write_loop(self, lane: int) -> None:
        _lower_priority(self.options.writer_nice)
        if self._container_sinks is not None:
            ContainerWriter(self, lane, self._container_sinks[lane]).run()
            return
        if self._batch_writer is not None:
            self._write_batches(lane, self._batch_writer)
            return
        archived: list[Item] = []  # written, not yet told to the listeners (OUTCOME_BATCH)
        handle = functools.partial(self._file_request, lane, archived=archived)
        plan_ahead = getattr(self._sink, "plan_ahead", None)  # a wrapper in front of the file sink has none
        began = 0.0  # when the write of the first of them began
        try:
            while not self._abort.is_set():
                if archived and self._control.paused:
                    self._settle_archived(archived)  # not held back while the writer waits for the resume
                self._serve_requests(lane, handle)
                if self._holding(lane):  # paused: what is on its way to the device still settles
                    self._settle_written_back(lane)
                    continue
                self._settle_written_back(lane)
                closed = self._queue.closed  # before taking: only a lane found empty after closing is done for good
                item = self._queue.get(lane, timeout=0.0 if archived else 0.2)
                if item is None:
                    if archived:
                        self._settle_archived(archived)
                        continue
                    if not self._flush_writeback() and closed and not self._unsettled[lane]:
                        return
                    continue
                if plan_ahead is not None and item.planned is None:
                    plan_ahead([item, *self._queue.peek(lane, PLAN_AHEAD_ITEMS - 1, PLAN_AHEAD_BYTES - item.nbytes)])
                if not archived:
                    began = time.monotonic()
                if self._process(item, archived=archived) and not (archived and archived[-1] is item):
                    self.spool.done(item)  # dead-lettered (archived ones are done with their outcome batch)
                if archived and (len(archived) >= OUTCOME_BATCH or time.monotonic() - began >= OUTCOME_DELAY):
                    self._settle_archived(archived)
        finally:
            self._settle_archived(archived)

    def _write_batches(self, lane: int, batch_writer: BatchWriter) -> None:
        """Take what waits in the lane, hand it to the batch writer, and settle the previous batch while
        its helper works on this one: naming and encoding overlap with creating files."""
        pending: Batch | None = None
        handle = functools.partial(self._file_request, lane)
        while True:
            self._settle_written_back(lane)
            if pending is not None and self._control.has_requests(lane):  # answered once nothing is in flight
                self._settle_batch(batch_writer.collect(pending))
                pending = None
            if pending is None:
                self._serve_requests(lane, handle)
                if self._holding(lane):
                    continue
            items: list[Item] = []
            # read before taking: the collect below waits for a helper, while more may be queued and the queue
            # closed; only a lane found empty after the queue was closed is done for good
            closed = self._queue.closed
            if not self._abort.is_set() and not (self._control.paused and not closed):
                items = self._queue.get_many(lane, BATCH_ITEMS, BATCH_BYTES, 0.0 if pending else 0.2)
            batch = batch_writer.send(lane, items) if items else None
            if pending is not None:
                self._settle_batch(batch_writer.collect(pending))
            pending = batch
            if pending is None and not items and self._flush_writeback():
                continue
            finished = not items and closed and not self._unsettled[lane]
            if pending is None and (self._abort.is_set() or finished):
                return

    def _settle_batch(self, results: list[tuple[Item, Outcome]]) -> None:
        """Account for a batch's items in order; each run of items the helper archived is counted and told to
        the listeners together (one outcome batch: the catalog journals it with one write, not one per file)."""
        archived: list[Item] = []
        for item, outcome in results:
            if outcome is None:
                item.attempts += 1
                archived.append(item)
                continue
            self._settle_archived(archived)
            self._settle(item, outcome)
        self._settle_archived(archived)

    def _settle_archived(self, items: list[Item]) -> None:
        """Count ``items`` (archived) and remove their spool entries, then forget them."""
        if items:
            self._archived(items)
            for item in items:
                self.spool.done(item)
            items.clear()

    def _file_request(self, lane: int, kind: RequestKind, archived: list[Item] | None = None) -> tuple[int, bool]:
        """A control request to a file writer (``pipeline.control``): its items are archived as they are written,
        so ``flush`` and ``pause`` only report those written and not yet told (``archived``), push the writeback
        window to the device and settle what reached it; a file-per-item sink has no parts to roll over."""
        if kind == "rollover":
            return 0, False
        told = 0
        if archived:
            told = len(archived)
            self._settle_archived(archived)
        self._flush_writeback()
        return told + self._settle_written_back(lane), True

    def _settle(self, item: Item, outcome: Outcome) -> None:
        """One item of a batch the helper did not archive: write it here (the helper did not), or retry it."""
        if isinstance(outcome, Inline):
            settled = self._process(item)
        else:
            item.attempts += 1
            settled = self._process(item, outcome)
        if settled:
            self.spool.done(item)

    def _process(self, item: Item, failure: BaseException | None = None, archived: list[Item] | None = None) -> bool:
        """Store ``item``, retrying transient failures with backoff; ``failure``: how the attempt already
        made (by a batch's helper, or the device in writeback) failed.

        True once the item is settled (archived or dead-lettered); False while files it was written to are
        still on their way to the device: it is then settled by ``_settle_written_back``. With ``archived``, an
        item archived now is appended to it instead of being counted and told to the listeners: the caller does
        that for the list (``_settle_archived``), and removes its spool entry then.
        """
        window = self._writeback if self._writeback is not None and self._writeback.enabled else None
        while True:
            if failure is None:
                item.attempts += 1
                ticket = Ticket(functools.partial(self._on_written_back, item)) if window is not None else None
                try:
                    if window is not None and ticket is not None:
                        with window.tracking(ticket):
                            self._sink.store(item)
                    else:
                        self._sink.store(item)
                except Exception as exc:  # noqa: BLE001 - every failure is retried or dead-lettered, never raised
                    if window is not None and ticket is not None:
                        window.release(ticket, cancel=True)
                    failure = exc
                else:
                    if window is not None and ticket is not None:
                        if not window.release(ticket):
                            with self._count_lock:
                                self._unsettled[self._queue.lane_of(item.lane_key)] += 1
                            return False
                        if ticket.errors:
                            failure = _writeback_failure(ticket.errors)
                    if failure is None:
                        if archived is None:
                            self._archived([item])
                        else:
                            archived.append(item)
                        return True
            if archived:  # the items written before this one are not held back by its backoff
                self._settle_archived(archived)
            if not self._wait_for_retry(item, failure):
                return True
            failure = None

    def _on_written_back(self, item: Item, ticket: Ticket) -> None:
        """The window finished the last file of ``item`` (on any thread): its writer settles it."""
        self._written_back[self._queue.lane_of(item.lane_key)].append((item, ticket.errors))

    def _settle_written_back(self, lane: int) -> int:
        """Count the items of ``lane`` whose files reached the device as archived; write those again whose
        writeback failed (or dead-letter them, once their retries are used up). Returns how many were archived."""
        done = self._written_back[lane]
        archived = 0
        while done:
            item, errors = done.popleft()
            with self._count_lock:
                self._unsettled[lane] -= 1
            if not errors:
                self._archived([item])
                archived += 1
            elif not self._process(item, _writeback_failure(errors)):
                continue  # written again, and on its way to the device again
            self.spool.done(item)
        return archived

    def _flush_writeback(self) -> bool:
        """Push what the window holds to the device (a writer with nothing to do), so that its items settle;
        True if there was something."""
        if self._writeback is None or not self._writeback.in_flight:
            return False
        self._writeback.flush()
        return True

    def _wait_for_retry(self, item: Item, failure: BaseException) -> bool:
        """After a failed attempt: True once the backoff has passed, or False when the item was dead-lettered
        (a permanent failure, the retries used up, or shutdown cutting the wait short)."""
        permanent = isinstance(failure, ArchiverError) and failure.permanent
        if permanent or item.attempts > self._max_retries():
            self._dead_letter(item, failure, persist=True)
            return False
        delay = self._backoff(item.attempts)
        self._accounting.retried(item.source, f"store failed: {type(failure).__name__}: {safe_str(failure)}")
        log.warning(
            "%s (event %s): store failed (attempt %d of %d), retrying in %.2f s: %s",
            item.source,
            self._event,
            item.attempts,
            self._max_retries() + 1,
            delay,
            failure,
            extra=log_fields(item.source, item.event or self._event, error=failure),
        )
        if self._abort.wait(delay):
            self._dead_letter(item, failure)
            return False
        return True

    def _settle_after_writers(self) -> None:
        """Writers cut short by the drain timeout may leave items whose files are in the window: finish them,
        count those on the device as archived, set the others aside."""
        self._flush_writeback()
        for done in self._written_back:
            while done:
                item, errors = done.popleft()
                if errors:
                    self._set_aside(item, _writeback_failure(errors))
                else:
                    self._archived([item])
                    self.spool.done(item)


def _writeback_failure(errors: list[str]) -> StorageError:
    """The error of an item whose files the device failed to write back (retried like any storage error)."""
    return StorageError(errno.EIO, "; ".join(errors))


def _lower_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's niceness (Linux: per thread), so that receiving wins the CPU.

    A trade-off, off by default (decision 0008): it protects bursts from a best-effort sender on a busy
    machine, and it slows writing when the CPU is short for a long time.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except OSError as exc:
        log.debug("cannot lower the writer's priority: %s", exc)
