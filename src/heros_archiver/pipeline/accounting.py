"""Counters per source and in total, and gap detection on a sequence number in the metadata.

Every received item ends in exactly one of archived / dead_lettered / dropped / quarantined (its spool
entry could not be read back and was moved aside); ``in_flight`` is what is still queued or being
written, so ``received == archived + dead_lettered + dropped + quarantined + in_flight``.
``lost_spool_full`` and ``lost_reject_backlog`` say why some of the dropped were lost without a policy
asking for it (a full queue while the spool could not be written; a backlog of rejected items too long);
``dropped_paused`` counts those dropped by choice while paused (``pause(drop=True)``).
``acquisitions`` counts the acquisitions whose end a camera announced (``acquisition_stopped``) and whose
file was checked against the frames it said it emitted; ``acquisition_gaps`` those whose file held fewer,
``acquisition_missing`` how many fewer in all. They are apart from ``gaps``/``missing`` (found from the
sequence numbers), which may see the same missing frames: a frame missing at the end of an acquisition
only shows here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..observe.logs import log_fields

if TYPE_CHECKING:
    from .queueing import Item

log = logging.getLogger("heros_archiver")

COUNTERS = (
    "received",
    "archived",
    "retried",
    "dead_lettered",
    "dropped",
    "quarantined",
    "lost_spool_full",
    "lost_reject_backlog",
    "dropped_paused",
    "bytes",
    "gaps",
    "missing",
    "duplicates",
    "acquisitions",
    "acquisition_gaps",
    "acquisition_missing",
)

#: The counters an item ends in (exactly one of them); ``in_flight`` is ``received`` minus their sum.
SETTLED = ("archived", "dead_lettered", "dropped", "quarantined")


@dataclass
class SourceCounters:
    """What happened to the items of one source."""

    received: int = 0
    archived: int = 0
    retried: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    quarantined: int = 0
    lost_spool_full: int = 0
    lost_reject_backlog: int = 0
    dropped_paused: int = 0
    bytes: int = 0
    gaps: int = 0
    missing: int = 0
    duplicates: int = 0
    acquisitions: int = 0
    acquisition_gaps: int = 0
    acquisition_missing: int = 0
    last_sequence: int | None = None
    missing_ranges: list[tuple[int, int]] = field(default_factory=list)


class Accounting:
    """Thread-safe counters; ``snapshot`` gives plain dicts that CBOR/JSON can carry."""

    #: Only the most recent missing ranges are kept per source (the counts stay exact).
    MAX_RANGES = 100

    def __init__(self, event_name: str, sequence_key: str | None = None) -> None:
        self._event_name = event_name
        self._sequence_key = sequence_key
        self._sources: dict[str, SourceCounters] = {}
        #: per source, the error of its last failed attempt that was retried, and when (``time.time()``)
        self._last_retry: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _of(self, source: str) -> SourceCounters:
        counters = self._sources.get(source)
        if counters is None:
            counters = self._sources[source] = SourceCounters()
        return counters

    def add(self, source: str, counter: str, amount: int = 1) -> None:
        """Add ``amount`` to ``counter`` (one of COUNTERS) of ``source``."""
        with self._lock:
            counters = self._of(source)
            setattr(counters, counter, getattr(counters, counter) + amount)

    def retried(self, source: str, error: str) -> None:
        """Count one retry of an item of ``source`` after ``error`` (``ErrorType: message``), kept as its last
        retried error for the status (``observe.status``): retries are rare, so this costs nothing per item."""
        with self._lock:
            self._of(source).retried += 1
            self._last_retry[source] = (error, time.time())

    def last_retries(self) -> dict[str, tuple[str, float]]:
        """Per source, the last error that was retried and its time (sources without a retry are left out)."""
        with self._lock:
            return dict(self._last_retry)

    def lost(self, source: str, reason: str | None) -> None:
        """Count one item of ``source`` dropped without a policy asking for it: ``dropped`` and ``reason``
        (``lost_spool_full``, ``lost_reject_backlog``, or None for no counter of its own) together, so no
        snapshot sees one without the other. ``dropped_paused``, dropped by choice while paused, is counted here
        for the same reason."""
        with self._lock:
            counters = self._of(source)
            counters.dropped += 1
            if reason is not None:
                setattr(counters, reason, getattr(counters, reason) + 1)

    def archived_items(self, items: Iterable[Item]) -> None:
        """Count ``items`` (one commit's) as archived, with their bytes: one lock for all of them."""
        with self._lock:
            source, counters = None, None
            for item in items:
                if item.source != source or counters is None:
                    source, counters = item.source, self._of(item.source)
                counters.archived += 1
                counters.bytes += item.nbytes

    def restart_sequence(self, source: str) -> None:
        """``source`` starts counting its sequence again (a camera's ``frame`` restarts at 0 at every arm):
        its next value is neither a gap nor a repeat."""
        with self._lock:
            self._of(source).last_sequence = None

    def acquisition_checked(self, source: str, expected: int | None, held: int) -> None:
        """One acquisition of ``source`` ended: its file holds ``held`` frames, the camera said it emitted
        ``expected`` (None: it did not say); a shortfall counts as an acquisition gap."""
        with self._lock:
            counters = self._of(source)
            counters.acquisitions += 1
            if expected is not None and held < expected:
                counters.acquisition_gaps += 1
                counters.acquisition_missing += expected - held

    def received(self, source: str, metadata: dict[str, Any]) -> None:
        """Count a received item and check its sequence number, if a ``sequence_key`` is set."""
        gap: tuple[int, int] | None = None
        duplicate: int | None = None
        with self._lock:
            counters = self._of(source)
            counters.received += 1
            if self._sequence_key is None:
                return
            value = metadata.get(self._sequence_key)
            if isinstance(value, bool) or not isinstance(value, int):
                return
            last = counters.last_sequence
            if last is not None and value > last + 1:
                gap = (last + 1, value - 1)
                counters.gaps += 1
                counters.missing += value - 1 - last
                counters.missing_ranges = [*counters.missing_ranges, gap][-self.MAX_RANGES :]
            elif last is not None and value <= last:
                counters.duplicates += 1
                duplicate = value
            if last is None or value > last:
                counters.last_sequence = value
        if gap is not None:
            first, end = gap
            span = f"{first}" if first == end else f"{first}-{end}"
            log.warning(
                "%s %s never arrived from %s (event %s): gap in %r",
                self._sequence_key,
                span,
                source,
                self._event_name,
                self._sequence_key,
                extra=log_fields(source, self._event_name, error=f"{self._sequence_key} {span} never arrived"),
            )
        if duplicate is not None:
            log.warning(
                "%s %d from %s (event %s) arrived again or out of order",
                self._sequence_key,
                duplicate,
                source,
                self._event_name,
                extra=log_fields(source, self._event_name, error=f"{self._sequence_key} {duplicate} arrived again"),
            )

    def snapshot(self) -> dict[str, Any]:
        """Per-source counters and their totals, with ``in_flight``: received and not yet settled."""
        with self._lock:
            sources = {name: asdict(c) for name, c in self._sources.items()}
        for counters in sources.values():
            counters["missing_ranges"] = [list(r) for r in counters["missing_ranges"]]
        total = {name: sum(c[name] for c in sources.values()) for name in COUNTERS}
        for counters in (*sources.values(), total):  # in the queue, being written, or waiting for a commit
            counters["in_flight"] = counters["received"] - sum(counters[name] for name in SETTLED)
        return {"sources": sources, "total": total}
