"""The archiving pipeline: a bounded queue, writer threads, retries, spool and dead letters; no network.

``HERODataArchiver`` feeds it from Zenoh; the pipeline calls ``store(item)`` for
every item, retries transient failures with exponential backoff and jitter, and sets aside (spool or
dead-letter store) what cannot be written, so that every item it accepted is accounted for.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ArchiverError, ConfigurationError, StorageError, UnfaithfulError
from ..saferepr import safe_str
from ..sinks.base import ContainerSink, FileSink
from ..sinks.batching import BATCH_BYTES, BATCH_ITEMS, Batch, BatchWriter, Inline, Outcome
from ..state.deadletter import DeadLetterStore
from ..state.spool import Damaged, Spool
from ..storage.atomic import check_choice, check_integer
from ..storage.writeback import Ticket, WritebackWindow
from .accounting import Accounting
from .container_writer import ContainerWriter
from .queueing import Item, LaneQueue, RejectQueue

log = logging.getLogger("heros_archiver")

OVERFLOW_CHOICES: tuple[str, ...] = ("block", "spill", "drop")
DEFAULT_MAX_QUEUE_BYTES = 64 * 2**20
DEFAULT_MAX_QUEUE_ITEMS = 10_000
DEFAULT_BLOCK_LIMIT = 2.0
#: Rejected items (bad payloads, undecodable bytes) waiting for their dead-letter entry: at most this many ...
REJECT_MAX_ITEMS = 1000
#: ... and this many bytes; a flood beyond that is counted as lost instead of holding the receive thread.
REJECT_MAX_BYTES = 16 * 2**20
#: Seconds between two LOST log lines (the first is always logged; the count says how many in between).
LOST_LOG_INTERVAL = 5.0

#: store(item): writes one item or raises.
StoreFunction = Callable[[Item], None]


@dataclass(frozen=True)
class PipelineOptions:
    """How much to buffer, what to do when full, how to retry and how long to drain (checked on creation)."""

    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    max_queue_items: int = DEFAULT_MAX_QUEUE_ITEMS
    overflow: str = "block"
    writers: int = 1
    drain_timeout: float = 30.0
    retry_delay: float = 0.5
    retry_max_delay: float = 10.0
    writer_nice: int = 0
    #: ``block``: seconds a full queue may hold the sender's messages back before items go to the spool
    #: (None: as long as it takes). Zenoh closes a link whose reliable sender waited 5 s
    #: (``congestion_control/block/wait_before_close``), losing what waited, so this stays well below.
    block_limit: float | None = DEFAULT_BLOCK_LIMIT

    def __post_init__(self) -> None:
        check_choice("overflow", self.overflow, OVERFLOW_CHOICES)
        for name in ("max_queue_bytes", "max_queue_items", "writers"):
            check_integer(name, getattr(self, name), "a positive integer", 1)
        for name in ("drain_timeout", "retry_delay", "retry_max_delay"):
            _check_seconds(name, getattr(self, name), "a non-negative number of seconds")
        check_integer("writer_nice", self.writer_nice, "an integer from 0 to 19", 0, 19)
        if self.block_limit is not None:
            _check_seconds("block_limit", self.block_limit, "None or a non-negative number of seconds")


def _check_seconds(name: str, value: object, expected: str) -> None:
    """Refuse ``value`` unless it is a number >= 0 (not a bool), saying what was ``expected``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigurationError(f"{name}: expected {expected}, got {value!r}")


class Pipeline:
    """Queue, writers and the places items are set aside, for one archiver.

    Args:
        event: the event name (for log lines).
        store: writes one item; exceptions are retried or set aside, never raised.
        options: the PipelineOptions.
        accounting: the counters to update.
        dead_letters: where items go that cannot be written.
        spool: where ``overflow="spill"`` keeps items; entries found there at start are archived first.
        max_retries: returns the current retry limit (the archiver's public, mutable attribute).
        writer_settings: returns how items are written, recorded with dead letters for replay.
        batch_writer: makes, for a number of writer lanes, the BatchWriter that writes their items in
            batches through helper processes (None: each item through ``store``); closed by ``stop``.
        writeback: the window ``store`` hands large files to: an item whose files are in it counts as
            archived (and leaves the spool) only once they are on the device, and is written again if the
            device reports an error (None: an item counts as archived when ``store`` returns).
        container_sink: makes one container sink per writer lane (``sinks.ContainerSink``); items then go
            there instead of ``store``, and count as archived only once committed (``container_writer``).
        route: sets ``item.route`` of an item read back from the spool (the archiver does it in ``feed`` for
            the others), so that it reaches its container's writer; an error dead-letters the item.
    """

    def __init__(
        self,
        event: str,
        store: StoreFunction,
        options: PipelineOptions,
        accounting: Accounting,
        dead_letters: DeadLetterStore,
        spool: Spool,
        max_retries: Callable[[], int],
        writer_settings: Callable[[], dict[str, Any] | None],
        batch_writer: Callable[[int], BatchWriter] | None = None,
        writeback: WritebackWindow | None = None,
        container_sink: Callable[[], ContainerSink] | None = None,
        route: Callable[[Item], None] | None = None,
    ) -> None:
        self._event = event
        self._sink = FileSink(store)
        self._store = self._sink.store
        #: one container sink per lane, made here so that a sink that cannot be made fails the constructor
        self._container_sinks = [container_sink() for _ in range(options.writers)] if container_sink else None
        self._route = route
        self.options = options
        self._accounting = accounting
        self.dead_letters = dead_letters
        self.spool = spool
        self._max_retries = max_retries
        self._writer_settings = writer_settings
        self._queue = LaneQueue(options.writers, options.max_queue_items, options.max_queue_bytes)
        self._abort = threading.Event()
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._spilling = False
        self._spilled = 0  # items that went to the spool, in total
        self._quarantined = 0  # spool entries that could not be read back, moved to the quarantine
        self._spool_lock = threading.Lock()
        #: True from a refusal of the spool until it takes an item again or the queue has room again
        self._spool_failing = False
        self._spool_error_logged_at: float | None = None
        #: counters of this pipeline's own (``_spilled`` is under ``_spool_lock``, the rest under this)
        self._count_lock = threading.Lock()
        self._drop_logged = 0
        self._lost_count = 0
        self._lost_logged_at = -LOST_LOG_INTERVAL
        self._lost_unlogged = 0
        self._rejects = RejectQueue(REJECT_MAX_ITEMS, REJECT_MAX_BYTES)
        self._writeback = writeback
        #: per lane, items whose writeback finished, with the device's errors, waiting for their writer
        self._written_back: list[deque[tuple[Item, list[str]]]] = [deque() for _ in range(options.writers)]
        #: per lane, items written whose files are still on their way to the device (under _count_lock)
        self._unsettled = [0] * options.writers
        for entry_store in (dead_letters, spool.store):
            if removed := entry_store.remove_stale_temporaries():
                log.warning("removed %d half-written entries of a crashed run from %s", removed, entry_store.directory)
        self._batch_writer = batch_writer(options.writers) if batch_writer is not None else None
        self._resumed = set(spool.pending())
        if self._resumed:
            log.warning("resuming %d spooled item(s) from %s", len(self._resumed), spool.directory)
        self._writers = [
            threading.Thread(target=self._write_loop, args=(lane,), name=f"heros-archiver-writer-{lane}", daemon=True)
            for lane in range(options.writers)
        ]
        self._spool_reader = threading.Thread(target=self._unspool_loop, name="heros-archiver-spool", daemon=True)
        self._reject_writer = threading.Thread(target=self._reject_loop, name="heros-archiver-rejects", daemon=True)
        for thread in [*self._writers, self._spool_reader, self._reject_writer]:
            thread.start()

    # ------------------------------------------------------------------ intake
    def submit(self, item: Item) -> None:
        """Accept one item under the overflow policy; waits (``block``, or a spool that just failed) at most
        ``block_limit`` seconds."""
        if self.options.overflow == "drop":
            if not self._queue.put(item, block=False):
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
                    log.warning("event %s: the spool %s takes items again", self._event, self.spool.directory)
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
                )
            if may_wait != 0 and self._queue.put(item, block=True, timeout=may_wait):
                return
        if self._queue.closed:
            self._set_aside(item, ArchiverError("arrived while the archiver was stopping"))
            return
        self._lose(item, "lost_spool_full", f"the queue is full and the spool {self.spool.directory} failed: {error}")

    def _lose(self, item: Item, reason: str | None, message: str) -> None:
        """Count ``item`` as dropped (and under ``reason``, if given) and log it as LOST (the first always, then
        at most every ``LOST_LOG_INTERVAL`` seconds with the count since)."""
        self._accounting.lost(item.source, reason)
        now = time.monotonic()
        with self._count_lock:
            self._lost_count += 1
            self._lost_unlogged += 1
            if self._lost_count > 1 and now - self._lost_logged_at < LOST_LOG_INTERVAL:
                return
            self._lost_logged_at, unlogged, self._lost_unlogged = now, self._lost_unlogged, 0
            lost = self._lost_count
        log.error(
            "%s (event %s): LOST item: %s (%d lost since the last such line, %d in total)",
            item.source,
            self._event,
            message,
            unlogged,
            lost,
        )

    def _unspool_loop(self) -> None:
        """Hand spooled items back to the queue, oldest first, as room frees up; an entry that cannot be
        read is moved aside and counted (``Spool.take``), and the entries after it go on."""
        while not self._queue.closed:
            with self._spool_lock:
                if len(self.spool) == 0:
                    self._spilling = False
            try:
                item = self.spool.take(timeout=0.2)
            except Exception as exc:  # noqa: BLE001 - this thread must outlive any fault: it alone empties the spool
                log.error("event %s: reading the spool %s failed: %s", self._event, self.spool.directory, exc)
                self._abort.wait(0.2)
                continue
            if isinstance(item, Damaged):
                self._count_damaged(item)
                continue
            if item is None:
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
        )

    def _set_aside(self, item: Item, error: ArchiverError) -> None:
        """An item not written now: it stays in (or goes to) the spool under ``spill``, else dead letters."""
        if item.spool_entry is not None:
            return  # still in the spool: archived at the next start
        if self.options.overflow == "spill":
            try:
                self.spool.put(item)
                return
            except (OSError, UnfaithfulError) as exc:
                log.error("%s (event %s): cannot spool at shutdown: %s", item.source, self._event, exc)
        self._dead_letter(item, error)

    def _drop(self, item: Item) -> None:
        if self._queue.closed:
            self._dead_letter(item, ArchiverError("arrived while the archiver was stopping"))
            return
        self._accounting.add(item.source, "dropped")
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
            )

    # ------------------------------------------------------------------ writing
    def _write_loop(self, lane: int) -> None:
        _lower_priority(self.options.writer_nice)
        if self._container_sinks is not None:
            ContainerWriter(self, lane, self._container_sinks[lane]).run()
            return
        if self._batch_writer is not None:
            self._write_batches(lane, self._batch_writer)
            return
        while not self._abort.is_set():
            self._settle_written_back(lane)
            item = self._queue.get(lane, timeout=0.2)
            if item is None:
                if not self._flush_writeback() and self._queue.closed and not self._unsettled[lane]:
                    return
                continue
            if self._process(item):
                self.spool.done(item)

    def _write_batches(self, lane: int, batch_writer: BatchWriter) -> None:
        """Take what waits in the lane, hand it to the batch writer, and settle the previous batch while
        its helper works on this one: naming and encoding overlap with creating files."""
        pending: Batch | None = None
        while True:
            self._settle_written_back(lane)
            items: list[Item] = []
            if not self._abort.is_set():
                items = self._queue.get_many(lane, BATCH_ITEMS, BATCH_BYTES, 0.0 if pending else 0.2)
            batch = batch_writer.send(lane, items) if items else None
            if pending is not None:
                for item, outcome in batch_writer.collect(pending):
                    self._settle(item, outcome)
            pending = batch
            if pending is None and not items and self._flush_writeback():
                continue
            finished = not items and self._queue.closed and not self._unsettled[lane]
            if pending is None and (self._abort.is_set() or finished):
                return

    def _settle(self, item: Item, outcome: Outcome) -> None:
        """Account for one item of a batch; write it here if the helper did not, retry it if it failed."""
        if isinstance(outcome, Inline):
            settled = self._process(item)
        else:
            item.attempts += 1
            settled = True
            if outcome is None:
                self._accounting.archived(item.source, item.nbytes)
            else:
                settled = self._process(item, outcome)
        if settled:
            self.spool.done(item)

    def _process(self, item: Item, failure: BaseException | None = None) -> bool:
        """Store ``item``, retrying transient failures with backoff; ``failure``: how the attempt already
        made (by a batch's helper, or the device in writeback) failed.

        True once the item is settled (archived or dead-lettered); False while files it was written to are
        still on their way to the device: it is then settled by ``_settle_written_back``.
        """
        window = self._writeback if self._writeback is not None and self._writeback.enabled else None
        while True:
            if failure is None:
                item.attempts += 1
                ticket = Ticket(functools.partial(self._on_written_back, item)) if window is not None else None
                try:
                    if window is not None and ticket is not None:
                        with window.tracking(ticket):
                            self._store(item)
                    else:
                        self._store(item)
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
                        self._accounting.archived(item.source, item.nbytes)
                        return True
            if not self._wait_for_retry(item, failure):
                return True
            failure = None

    def _on_written_back(self, item: Item, ticket: Ticket) -> None:
        """The window finished the last file of ``item`` (on any thread): its writer settles it."""
        self._written_back[self._queue.lane_of(item.lane_key)].append((item, ticket.errors))

    def _settle_written_back(self, lane: int) -> None:
        """Count the items of ``lane`` whose files reached the device as archived; write those again whose
        writeback failed (or dead-letter them, once their retries are used up)."""
        done = self._written_back[lane]
        while done:
            item, errors = done.popleft()
            with self._count_lock:
                self._unsettled[lane] -= 1
            if not errors:
                self._accounting.archived(item.source, item.nbytes)
            elif not self._process(item, _writeback_failure(errors)):
                continue  # written again, and on its way to the device again
            self.spool.done(item)

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
        self._accounting.add(item.source, "retried")
        log.warning(
            "%s (event %s): store failed (attempt %d of %d), retrying in %.2f s: %s",
            item.source,
            self._event,
            item.attempts,
            self._max_retries() + 1,
            delay,
            failure,
        )
        if self._abort.wait(delay):
            self._dead_letter(item, failure)
            return False
        return True

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: half the delay fixed, half random."""
        delay = min(self.options.retry_max_delay, self.options.retry_delay * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    def _dead_letter(self, item: Item, error: BaseException, persist: bool = False) -> None:
        """Keep ``item`` in the dead-letter store; with ``persist``, retry that store until it works or we abort.

        Only storage errors are retried: writers persist (holding back their queue, and so the sender,
        while storage is broken); the receive path does not, and the item is then counted as dropped and
        logged as LOST. Anything else that goes wrong with an entry comes from the item (a key JSON cannot
        carry, a ``repr`` that recurses too deep) and would fail again: the entry is written at once as a
        description, which cannot fail that way. An item kept without its faithful copy is a loss too.
        """
        message = f"{type(error).__name__}: {safe_str(error)}"
        described = False
        attempt = 0
        while True:
            attempt += 1
            try:
                written = self.dead_letters.write(
                    source=item.source,
                    event=self._event,
                    payload=item.payload,
                    metadata=item.metadata,
                    error=message,
                    attempts=item.attempts,
                    writer=self._writer_settings(),
                    nbytes=item.nbytes,
                    received=item.received,
                    described=described,
                )
            except OSError as exc:  # storage (StorageError is one): worth retrying
                if persist and attempt == 1:
                    log.error(
                        "%s (event %s): the dead-letter store %s cannot be written (%s); retrying, queue held back",
                        item.source,
                        self._event,
                        self.dead_letters.directory,
                        exc,
                    )
                if persist and not self._abort.wait(self._backoff(attempt)):
                    continue
                self._lost(item, message, f"the dead-letter store {self.dead_letters.directory} failed too: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - from the item, not storage: never retried as it is
                if described:
                    self._lost(item, message, f"not even its description could be written: {safe_str(exc)}")
                    return
                log.error(
                    "%s (event %s): a dead-letter entry cannot hold the item as it is (%s: %s); writing a description",
                    item.source,
                    self._event,
                    type(exc).__name__,
                    safe_str(exc),
                )
                described = True
                continue
            if written.lost:
                self._lost(item, message, f"only a description is kept in {written.path}: {written.lost}")
                return
            self._accounting.add(item.source, "dead_lettered")
            log.error(
                "%s (event %s): %s; kept in the dead-letter store as %s after %d attempt(s)",
                item.source,
                self._event,
                message,
                written.path,
                item.attempts,
            )
            return

    def _lost(self, item: Item, message: str, why: str) -> None:
        """An item that could not be kept in a form that can be archived later: counted and logged as LOST."""
        self._lose(item, None, f"after {item.attempts} attempt(s): {message}; {why}")

    # ------------------------------------------------------------------ shutdown
    def stop(
        self,
        before_close: Callable[[float], None] = lambda deadline: None,
        before_drain: Callable[[], None] = lambda: None,
    ) -> None:
        """Stop intake, drain the queue within ``drain_timeout``, set aside what is left. Idempotent.

        ``before_close(deadline)`` runs while the queue still takes items, with the ``time.monotonic()``
        deadline of the drain (an intake with its own buffer empties it into the queue there);
        ``before_drain`` runs once the queue is closed (the archiver undeclares a direct subscription
        there, whose callback a full queue may be blocking). A second caller (BOSS may call ``_teardown``
        and then signal the worker) waits for the first.
        """
        with self._stop_lock:
            if self._stopped:
                return
            deadline = time.monotonic() + self.options.drain_timeout
            before_close(deadline)
            self._queue.close()
            self.spool.wake()
            before_drain()
            self._rejects.close()  # intake has stopped: what still arrives is dead-lettered by its caller
            for thread in [*self._writers, self._reject_writer]:
                thread.join(max(0.0, deadline - time.monotonic()))
            if any(thread.is_alive() for thread in [*self._writers, self._reject_writer]):
                log.warning(
                    "event %s: queue not drained within drain_timeout=%.1f s; setting the rest aside",
                    self._event,
                    self.options.drain_timeout,
                )
                self._abort.set()
                for thread in [*self._writers, self._reject_writer]:
                    thread.join()
            self._spool_reader.join()
            if self._batch_writer is not None:
                self._batch_writer.close()
            self._settle_after_writers()
            reason = ArchiverError(f"not written within drain_timeout={self.options.drain_timeout} s at shutdown")
            for item in self._queue.drain():
                self._set_aside(item, reason)
            if len(self.spool):
                log.warning(
                    "event %s: %d item(s) wait in the spool %s and are archived at the next start",
                    self._event,
                    len(self.spool),
                    self.spool.directory,
                )
            self._stopped = True

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
                    self._accounting.archived(item.source, item.nbytes)
                    self.spool.done(item)

    @property
    def stopped(self) -> bool:
        """True once ``stop`` finished."""
        return self._stopped

    @property
    def helper_pids(self) -> list[int]:
        """Process ids of the helpers that publish small files (decision 0012); empty without them."""
        return self._batch_writer.pids if self._batch_writer is not None else []

    def queue_status(self) -> dict[str, Any]:
        """Fill of the queue and the spool."""
        items, nbytes = self._queue.depth()
        return {
            "items": items,
            "bytes": nbytes,
            "max_items": self.options.max_queue_items,
            "max_bytes": self.options.max_queue_bytes,
            "spooled": len(self.spool),
            "spilled_total": self._spilled,
            "quarantined": self._quarantined,
            "quarantine_dir": str(self.spool.quarantine),
            "spool_failing": self._spool_failing,
            "rejected_waiting": len(self._rejects),
        }


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
