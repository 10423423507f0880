"""The archiving pipeline: a bounded queue, writer threads, retries, spool and dead letters; no network.

``HERODataArchiver`` feeds it from Zenoh; the pipeline calls ``store(item)`` for
every item, retries transient failures with exponential backoff and jitter, and sets aside (spool or
dead-letter store) what cannot be written, so that every item it accepted is accounted for.

The pipeline is made of ``options`` (what it may buffer), ``submission`` (intake), ``writers`` (writing),
``setaside`` (spool, dead letters, losses) and ``control`` (pause, resume, flush, rollover); ``Pipeline`` puts
them together and stops them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from ..errors import ArchiverError, ConfigurationError
from ..observe.listeners import Listener, ListenerHub
from ..observe.logs import log_fields
from ..sinks.base import ContainerSink, FileSink, Sink
from ..sinks.batching import BatchWriter
from ..state.deadletter import DeadLetterStore
from ..state.spool import Spool
from ..storage.writeback import WritebackWindow
from .accounting import Accounting
from .control import WriterControl
from .options import PipelineOptions
from .queueing import Item, LaneQueue, RejectQueue
from .setaside import LOST_LOG_INTERVAL, StoreFunction, log
from .submission import Submission
from .writers import Writers

SinkT = TypeVar("SinkT", bound=Sink)

#: Rejected items (bad payloads, undecodable bytes) waiting for their dead-letter entry: at most this many ...
REJECT_MAX_ITEMS = 1000
#: ... and this many bytes; a flood beyond that is counted as lost instead of holding the receive thread.
REJECT_MAX_BYTES = 16 * 2**20


class Pipeline(Submission, Writers):
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
        sink_wrapper: given every sink made here (the file sink, each lane's container sink), returns the sink
            to use instead, of the same kind: fault wrappers in tests (``heros_archiver.testing.faults``),
            instrumentation. With it the batch writer is not used, so that every item reaches the wrapper.
        sequence_key: the metadata key whose value outcomes carry as the item's sequence value.
        listeners: told of every item's outcome (``observe.listeners``); with any, the sinks report where
            each item went (``Item.locations``), which costs a checksum per item.
        plan_ahead: names and encodes the files of the items a file writer took and sees waiting, before
            ``store`` writes them (``FileSink.plan_ahead``: one intent record write for many files).
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
        sink_wrapper: Callable[[Sink], Sink] | None = None,
        sequence_key: str | None = None,
        listeners: Sequence[Listener] = (),
        plan_ahead: Callable[[list[Item]], None] | None = None,
    ) -> None:
        self._event = event
        self.hub = ListenerHub(event)
        for listener in listeners:  # before any thread: the items resumed from the spool are told too
            self.hub.add(listener)
        self._sequence_key = sequence_key
        self._sink = _wrapped(FileSink(store, plan_ahead), sink_wrapper)
        #: one container sink per lane, made here so that a sink that cannot be made fails the constructor
        self._container_sinks = (
            [_wrapped(container_sink(), sink_wrapper) for _ in range(options.writers)] if container_sink else None
        )
        if sink_wrapper is not None:
            batch_writer = None  # its helper processes would write items the wrapper never sees
        for sink in self._container_sinks or ():
            if sink.capabilities.single_writer and route is None:
                raise ConfigurationError(
                    f"event {event}: expected a route for the items of {type(sink).__name__}, whose containers "
                    "must each have one writer, got none (the archiver must set Item.route)"
                )
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
        self._control = WriterControl(options.writers)
        self._writeback = writeback
        #: per lane, items whose writeback finished, with the device's errors, waiting for their writer
        self._written_back: list[deque[tuple[Item, list[str]]]] = [deque() for _ in range(options.writers)]
        #: per lane, items written whose files are still on their way to the device (under _count_lock)
        self._unsettled = [0] * options.writers
        for entry_store in (dead_letters, spool.store):
            if removed := entry_store.remove_stale_temporaries():
                log.warning("removed %d half-written entries of a crashed run from %s", removed, entry_store.directory)
        self._batch_writer = batch_writer(options.writers) if batch_writer is not None else None
        if self.hub.locating:
            for sink in [*(self._container_sinks or ()), *([self._batch_writer] if self._batch_writer else [])]:
                sink.locate = True
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
                    extra=log_fields(event=self._event),
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
                    extra=log_fields(event=self._event, path=self.spool.directory),
                )
            self.hub.close(max(1.0, deadline - time.monotonic()))
            self._stopped = True

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
            "oldest_age": self._queue.oldest_age(),
            "spooled": len(self.spool),
            "spilled_total": self._spilled,
            "quarantined": self._quarantined,
            "quarantine_dir": str(self.spool.quarantine),
            "spool_failing": self._spool_failing,
            "rejected_waiting": len(self._rejects),
        }


def _wrapped(sink: SinkT, wrapper: Callable[[Sink], Sink] | None) -> SinkT:
    """``wrapper(sink)`` (or ``sink`` without a wrapper), checked to be the same kind of sink."""
    if wrapper is None:
        return sink
    kind = FileSink if isinstance(sink, FileSink) else ContainerSink
    wrapped = wrapper(sink)
    if not isinstance(wrapped, kind):
        raise ConfigurationError(
            f"sink_wrapper: expected a {kind.__name__} around the {type(sink).__name__} it was given, "
            f"got {type(wrapped).__name__}"
        )
    return cast(SinkT, wrapped)
