"""One writer lane of a container sink: append, commit at the commit points, account only what was committed.

The file-per-item writer (``Writers._process``) is done with an item when ``store`` returns. Here an item
is only *appended* then: it is counted as archived, and its spool entry removed, when a commit reports it.
A commit happens once ``flush_frames`` items or ``flush_bytes`` bytes are pending, ``flush_seconds`` after
the oldest pending item (checked also while no item arrives), and at drain. An append that fails for the
item's own reason (another shape, a template that cannot render) dead-letters that item, the rest go on;
a failed commit releases the container, waits the pipeline's backoff and appends its items again (the
reopened container recovers its committed length and skips keys it holds), until ``max_retries``, then
dead-letters them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from ..errors import ArchiverError
from ..sinks.base import CommitFailure, ContainerSink, Settled
from .queueing import Item

if TYPE_CHECKING:
    from .writers import Writers

log = logging.getLogger("heros_archiver")

#: Longest wait for the next item, so that idle containers are closed and due commits made on time.
_TICK = 0.2


class ContainerWriter:
    """The loop of one lane's writer thread for a container sink (it alone calls ``sink``)."""

    def __init__(self, pipeline: Writers, lane: int, sink: ContainerSink) -> None:
        self._pipeline = pipeline
        self._lane = lane
        self._sink = sink
        #: failed commits waiting for their retry (see ``_settle``)
        self._failures: deque[CommitFailure] = deque()
        self._retrying = False

    def run(self) -> None:
        """Write until the queue is closed and empty (then commit and close everything), or the abort."""
        pipeline, sink = self._pipeline, self._sink
        queue, abort = pipeline._queue, pipeline._abort
        while not abort.is_set():
            self._settle(sink.expire(time.monotonic()))
            item = queue.get(self._lane, timeout=self._wait())
            if item is not None:
                self._append(item)
            if self._due():
                self._settle(sink.commit())
            elif item is None and queue.closed:
                break
        self._finish()

    def _wait(self) -> float:
        """Seconds to wait for an item: until the oldest pending one is due, at most ``_TICK``."""
        oldest = self._sink.oldest_pending
        if oldest is None:
            return _TICK
        return max(0.0, min(_TICK, oldest + self._sink.flush_seconds - time.monotonic()))

    def _due(self) -> bool:
        sink = self._sink
        oldest = sink.oldest_pending
        if oldest is None:
            return False
        # not "the queue is closed": at drain the items still queued are appended first and committed
        # together (``_finish``), not one commit each (for the Zarr sink, a partial shard rewritten per item)
        return (
            sink.pending >= sink.flush_frames
            or sink.pending_bytes >= sink.flush_bytes
            or time.monotonic() - oldest >= sink.flush_seconds
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
        pipeline = self._pipeline
        for item in settled.archived:
            pipeline._accounting.archived(item.source, item.nbytes)
            pipeline.spool.done(item)
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
        for item in failure.items:
            pipeline._accounting.add(item.source, "retried")
        log.warning(
            "event %s: commit of %d item(s) to %s failed (attempt %d of %d), appending them again in %.2f s: %s",
            pipeline._event,
            len(failure.items),
            failure.target,
            attempts,
            pipeline._max_retries() + 1,
            delay,
            error,
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

    def _finish(self) -> None:
        """Drain or abort: commit and close every container; what cannot be committed is retried (drain) or
        set aside (abort). Ends: each retry counts an attempt, and used-up items are dead-lettered."""
        while True:
            self._settle(self._sink.close())
            if self._sink.pending == 0:
                return
