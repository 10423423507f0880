"""Where an item ends when it is not written: the spool, the dead-letter store, or counted and logged as LOST.

The base of the pipeline's two sides (``submission``: intake, ``writers``: writing): both set items aside
the same way. It also declares the state the two sides share; ``core.Pipeline`` sets it up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ArchiverError, UnfaithfulError
from ..observe.listeners import ListenerHub
from ..observe.logs import log_fields
from ..observe.outcomes import Archived, DeadLettered, Dropped
from ..saferepr import safe_str
from ..sinks.base import ContainerSink, FileSink
from ..sinks.batching import BatchWriter
from ..state.deadletter import DeadLetterStore
from ..state.spool import Spool
from ..storage.writeback import WritebackWindow
from .accounting import Accounting
from .options import PipelineOptions
from .queueing import Item, LaneQueue, RejectQueue

log = logging.getLogger("heros_archiver")

#: Seconds between two LOST log lines (the first is always logged; the count says how many in between).
LOST_LOG_INTERVAL = 5.0

OutcomeT = TypeVar("OutcomeT", Archived, DeadLettered, Dropped)

#: store(item): writes one item or raises.
StoreFunction = Callable[[Item], None]


class SetAside:
    """Spool, dead-letter or lose an item, counted and logged; and the state the pipeline's parts share."""

    _event: str
    options: PipelineOptions
    _accounting: Accounting
    #: the listeners told of every item's outcome (``observe``)
    hub: ListenerHub
    #: the metadata key of the sequence value outcomes carry (None: none)
    _sequence_key: str | None
    dead_letters: DeadLetterStore
    spool: Spool
    _queue: LaneQueue
    _rejects: RejectQueue
    _abort: threading.Event
    _sink: FileSink
    _container_sinks: list[ContainerSink] | None
    _route: Callable[[Item], None] | None
    _max_retries: Callable[[], int]
    _writer_settings: Callable[[], dict[str, Any] | None]
    _batch_writer: BatchWriter | None
    _writeback: WritebackWindow | None
    _resumed: set[Path]
    #: intake: under ``_spool_lock``
    _spool_lock: threading.Lock
    _spilling: bool
    _spilled: int
    _quarantined: int
    _spool_failing: bool
    _spool_error_logged_at: float | None
    #: counters of the pipeline's own, under ``_count_lock``
    _count_lock: threading.Lock
    _drop_logged: int
    _lost_count: int
    _lost_logged_at: float
    _lost_unlogged: int
    _written_back: list[deque[tuple[Item, list[str]]]]
    _unsettled: list[int]

    def _set_aside(self, item: Item, error: ArchiverError) -> None:
        """An item not written now: it stays in (or goes to) the spool under ``spill``, else dead letters."""
        if item.spool_entry is not None:
            return  # still in the spool: archived at the next start
        if self.options.overflow == "spill":
            try:
                self.spool.put(item)
                return
            except (OSError, UnfaithfulError) as exc:
                log.error(
                    "%s (event %s): cannot spool at shutdown: %s",
                    item.source,
                    self._event,
                    exc,
                    extra=log_fields(item.source, item.event or self._event, self.spool.directory, exc),
                )
        self._dead_letter(item, error)

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
                    event=item.event or self._event,
                    payload=item.payload,
                    metadata=item.metadata,
                    error=message,
                    attempts=item.attempts,
                    writer=self._writer_settings(),
                    nbytes=item.nbytes,
                    received=item.received,
                    described=described,
                    context=item.context,
                    sequence=item.sequence(self._sequence_key),
                )
            except OSError as exc:  # storage (StorageError is one): worth retrying
                if persist and attempt == 1:
                    log.error(
                        "%s (event %s): the dead-letter store %s cannot be written (%s); retrying, queue held back",
                        item.source,
                        self._event,
                        self.dead_letters.directory,
                        exc,
                        extra=log_fields(item.source, item.event or self._event, self.dead_letters.directory, exc),
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
                    extra=log_fields(item.source, item.event or self._event, error=exc),
                )
                described = True
                continue
            if written.lost:
                self._lost(item, message, f"only a description is kept in {written.path}: {written.lost}")
                return
            self._accounting.add(item.source, "dead_lettered")
            if self.hub.active:
                self.hub.publish([self._outcome(DeadLettered, item, entry=str(written.path), error=message)])
            log.error(
                "%s (event %s): %s; kept in the dead-letter store as %s after %d attempt(s)",
                item.source,
                item.event or self._event,
                message,
                written.path,
                item.attempts,
                extra=log_fields(item.source, item.event or self._event, written.path, message),
            )
            return

    def _archived(self, items: list[Item]) -> None:
        """Count ``items`` (one commit's, or one file's) as archived and tell the listeners where they went."""
        self._accounting.archived_items(items)
        if self.hub.active:  # one outcome per item of a commit: made here, not through ``_outcome`` (2x slower)
            now, event, key = time.time(), self._event, self._sequence_key
            outcomes = [
                Archived(
                    source=item.source,
                    event=item.event or event,
                    sequence=item.sequence(key),
                    metadata=item.metadata,
                    received=item.received,
                    nbytes=item.nbytes,
                    locations=item.locations,
                    committed=now,
                )
                for item in items
            ]
            self.hub.publish(outcomes)

    def _outcome(self, kind: type[OutcomeT], item: Item, **fields: Any) -> OutcomeT:
        """The outcome ``kind`` of ``item``, with what every outcome holds and ``fields``."""
        return kind(
            source=item.source,
            event=item.event or self._event,
            sequence=item.sequence(self._sequence_key),
            metadata=item.metadata,
            received=item.received,
            nbytes=item.nbytes,
            **fields,
        )

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: half the delay fixed, half random."""
        delay = min(self.options.retry_max_delay, self.options.retry_delay * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    def _lost(self, item: Item, message: str, why: str) -> None:
        """An item that could not be kept in a form that can be archived later: counted and logged as LOST."""
        self._lose(item, None, f"after {item.attempts} attempt(s): {message}; {why}")

    def _lose(self, item: Item, reason: str | None, message: str) -> None:
        """Count ``item`` as dropped (and under ``reason``, if given) and log it as LOST (the first always, then
        at most every ``LOST_LOG_INTERVAL`` seconds with the count since)."""
        self._accounting.lost(item.source, reason)
        if self.hub.active:
            self.hub.publish([self._outcome(Dropped, item, why=message)])
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
            extra=log_fields(item.source, item.event or self._event, error=message),
        )
