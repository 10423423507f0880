"""One writer lane of a container sink: append, commit at the commit points, account only what was committed.

The file-per-item writer (``Writers._process``) is done with an item when ``store`` returns. Here an item
is only *appended* then: it is counted as archived, and its spool entry removed, when a commit reports it.
A commit happens once ``flush_frames`` items or ``flush_bytes`` bytes are pending (or half the queue's
bounds, which the pending items count against: ``LaneQueue.hold``), ``flush_seconds`` after the oldest
pending item, once no item has arrived for ``flush_idle`` seconds (checked also while no item arrives),
and at drain; a producer waiting for room gets the commit the sink can make without rewriting anything
(``ContainerSink.commit_for_room``: whole Zarr shards). Items are taken from the queue in batches, and after
a short batch the writer lets more gather for ``_LINGER`` seconds instead of waking for each one: an append
only keeps the item in memory, while waking a thread per item of 8 KiB cost as much as the rest of its path.
An append that fails for the item's own reason (another shape, a template that cannot render) dead-letters
that item, the rest go on; a failed commit releases the container, waits the pipeline's backoff and appends
its items again (the reopened container recovers its committed length and skips keys it holds), until
``max_retries``, then dead-letters them. Between two batches the writer answers the control requests
(``pipeline.control``): ``flush`` commits, ``rollover`` closes the parts written now, ``pause`` commits and
closes every container and the writer then takes nothing until the resume.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from ..errors import ArchiverError
from ..observe.logs import log_fields
from ..saferepr import safe_str
from ..sinks.base import CommitFailure, ContainerSink, Settled
from .control import RequestKind
from .queueing import Item

if TYPE_CHECKING:
    from .writers import Writers

log = logging.getLogger("heros_archiver")

#: Longest wait for the next item, so that idle containers are closed and due commits made on time.
_TICK = 0.2
#: Items taken from the queue at once (they count against its bounds until committed, wherever they are).
_BATCH_ITEMS = 256
#: After a batch of fewer than this many items, wait ``_LINGER`` seconds for more to gather.
_LINGER_ITEMS = 64
_LINGER = 0.002


class ContainerWriter:
    """The loop of one lane's writer thread for a container sink (it alone calls ``sink``)."""

    def __init__(self, pipeline: Writers, lane: int, sink: ContainerSink) -> None:
        self._pipeline = pipeline
        self._lane = lane
        self._sink = sink
        #: failed commits waiting for their retry (see ``_settle``)
        self._failures: deque[CommitFailure] = deque()
        self._retrying = False
        queue = pipeline._queue
        #: what is pending counts against the queue's bounds (``LaneQueue.hold``): commit by half of them at most
        self._flush_items = min(sink.flush_frames, max(1, queue.max_items // 2))
        self._flush_bytes = min(sink.flush_bytes, max(1, queue.max_bytes // 2))
        self._last_arrival = time.monotonic()

    def run(self) -> None:
        """Write until the queue is closed and empty (then commit and close everything), or the abort."""
        pipeline, sink, lane = self._pipeline, self._sink, self._lane
        queue, abort = pipeline._queue, pipeline._abort
        while not abort.is_set():
            pipeline._serve_requests(lane, self._request)
            if pipeline._holding(lane):
                continue
            self._settle(sink.expire(time.monotonic()))
            closed = queue.closed  # before taking: only a lane found empty after closing is done for good
            items = queue.get_many(lane, _BATCH_ITEMS, queue.max_bytes, self._wait(), hold=True)
            if items:
                self._last_arrival = time.monotonic()
            for index, item in enumerate(items):
                if abort.is_set():  # the drain timeout ended: the rest of the batch is set aside, not written
                    self._set_aside_taken(items[index:])
                    break
                self._append(item)
                if self._due(idle=False):
                    self._settle(sink.commit())
            if self._due(idle=not items):
                self._settle(sink.commit())
            elif sink.oldest_pending is not None and queue.room_wanted:  # once the whole batch is appended
                self._settle(sink.commit_for_room())
            queue.hold(lane, sink.pending, sink.pending_bytes, sink.oldest_pending)
            if not items and closed:
                break
            if 0 < len(items) < _LINGER_ITEMS:
                abort.wait(min(_LINGER, self._wait()))
        self._finish()

    def _request(self, kind: RequestKind) -> tuple[int, bool]:
        """Do a control request: commit (``flush``), close the parts written now (``rollover``), or commit and
        close everything (``pause``); returns the items that became archived, and False for a sink that has no
        parts to roll over."""
        sink = self._sink
        if kind == "flush":
            settled = sink.commit()
        elif kind == "rollover":
            rolled = sink.rollover()
            if rolled is None:
                return 0, False
            settled = rolled
        else:
            settled = sink.close()
        committed = len(settled.archived)
        self._settle(settled)
        self._pipeline._queue.hold(self._lane, sink.pending, sink.pending_bytes)
        return committed, True

    def _wait(self) -> float:
        """Seconds to wait for an item: until a commit of what is pending is due by time, at most ``_TICK``."""
        sink = self._sink
        oldest = sink.oldest_pending
        if oldest is None:
            return _TICK
        due = oldest + sink.flush_seconds
        if sink.flush_idle is not None:
            due = min(due, self._last_arrival + sink.flush_idle)
        return max(0.0, min(_TICK, due - time.monotonic()))

    def _due(self, idle: bool) -> bool:
        """Whether to commit now by size or time (``idle``: no item arrived in the last wait, so ``flush_idle``
        applies). A producer waiting for room is answered after a whole batch is appended, not here per item:
        the batch is held as a whole until then (``LaneQueue.get_many``), so a commit per item would free
        nothing more, and would rewrite a Zarr shard per frame (measured: 15 one-frame commits in a run of 500
        frames of 2 MiB); it gets ``commit_for_room``, which a Zarr sink limits to whole shards."""
        sink = self._sink
        oldest = sink.oldest_pending
        if oldest is None:
            return False
        # not "the queue is closed": at drain the items still queued are appended first and committed
        # together (``_finish``), not one commit each (for the Zarr sink, a partial shard rewritten per item)
        now = time.monotonic()
        return (
            sink.pending >= self._flush_items
            or sink.pending_bytes >= self._flush_bytes
            or now - oldest >= sink.flush_seconds
            or (idle and sink.flush_idle is not None and now - self._last_arrival >= sink.flush_idle)
        )

    def _append(self, item: Item) -> None:
        """Append ``item``, retrying what may pass with the pipeline's backoff; dead-letter it otherwise."""
        pipeline = self._pipeline
        while True:
            item.attempts += 1
            try:
                settled = self._sink.append(item)
            except Exception as exc:  # noqa: BLE001 - every failure is retried or dead-lettered, never raised
                if not pipeline._wait_for_retry(item, exc):  # dead-lettered (permanent, retries used up, abort)
                    pipeline.spool.done(item)
                    return
                continue
            self._settle(settled)
            return

    def _settle(self, settled: Settled) -> None:
        """Count the committed items as archived (and drop their spool entries); retry or dead-letter the
        items of the commits that failed. A retry appends again, which may settle more (and fail again):
        those wait in ``_failures`` for this loop, so retries never nest however many there are."""
        if not settled.archived and not settled.failed:
            return  # the usual outcome of an append
        pipeline = self._pipeline
        pipeline._archived(settled.archived)
        for item in settled.archived:
            pipeline.spool.done(item)
        for check in settled.checks:
            pipeline._accounting.acquisition_checked(check.source, check.expected, check.held)
        self._failures.extend(settled.failed)
        if self._retrying:
            return
        self._retrying = True
        try:
            while self._failures:
                self._retry_commit(self._failures.popleft())
        finally:
            self._retrying = False

    def _retry_commit(self, failure: CommitFailure) -> None:
        """One backoff for all the items of a failed commit, then append them again (or dead-letter them)."""
        pipeline = self._pipeline
        error = failure.error
        permanent = isinstance(error, ArchiverError) and error.permanent
        attempts = max(item.attempts for item in failure.items)
        if pipeline._abort.is_set():
            self._set_aside(failure)
            return
        if permanent or attempts > pipeline._max_retries():
            for item in failure.items:
                pipeline._dead_letter(item, error, persist=True)
                pipeline.spool.done(item)
            return
        delay = pipeline._backoff(attempts)
        problem = f"commit to {failure.target} failed: {type(error).__name__}: {safe_str(error)}"
        for item in failure.items:
            pipeline._accounting.retried(item.source, problem)
        sources = {item.source for item in failure.items}
        source = next(iter(sources)) if len(sources) == 1 else None
        log.warning(
            "event %s: commit of %d item(s) to %s failed (attempt %d of %d), appending them again in %.2f s: %s",
            pipeline._event,
            len(failure.items),
            failure.target,
            attempts,
            pipeline._max_retries() + 1,
            delay,
            error,
            extra=log_fields(source, pipeline._event, failure.target, error),
        )
        if pipeline._abort.wait(delay):
            self._set_aside(failure)
            return
        for item in failure.items:
            self._append(item)

    def _set_aside(self, failure: CommitFailure) -> None:
        """Shutdown cut the retries short: spooled items stay in the spool, the others are dead-lettered."""
        reason = ArchiverError(f"commit to {failure.target} failed and the drain timeout ended: {failure.error}")
        for item in failure.items:
            self._pipeline._set_aside(item, reason)

    def _set_aside_taken(self, items: list[Item]) -> None:
        """Items taken in a batch but not appended when the drain timeout ended: set aside as the queue's are."""
        reason = ArchiverError(f"not written within drain_timeout ({len(items)} item(s) taken, not yet appended)")
        for item in items:
            self._pipeline._set_aside(item, reason)

    def _finish(self) -> None:
        """Drain or abort: commit and close every container; what cannot be committed is retried (drain) or
        set aside (abort). Ends: each retry counts an attempt, and used-up items are dead-lettered. A close that
        reported a failed commit is followed by another: the retry's appends reopened containers (also when
        they found every item committed already, and nothing is pending), which must be closed too."""
        while True:
            settled = self._sink.close()
            self._settle(settled)
            if self._sink.pending == 0 and not settled.failed:
                self._pipeline._queue.hold(self._lane, 0, 0)
                return
