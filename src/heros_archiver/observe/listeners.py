"""Listeners of outcomes, and the hub that hands them over (decision 0030).

The pipeline publishes each batch of outcomes once (one commit's items, or one item) to the hub. A listener
is *inline* when it is cheap, never blocks and must see every outcome before the batch is acknowledged
(the catalog's journal): the hub calls it on the publishing thread. Every other listener (the events, the
status, the metrics) has a lane: a queue bounded in outcomes and a thread of its own, so that a slow listener
never slows archiving; a batch that does not fit in its lane is not queued for that listener, and counted
(``lagged``) and logged, so that falling behind is seen, never silent. A listener that raises is logged and
counted (``failed``); it never stops archiving nor the other listeners.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from typing import ClassVar

from ..saferepr import safe_str
from .outcomes import Outcome

__all__ = ["Listener", "ListenerHub"]

log = logging.getLogger("heros_archiver")

#: Seconds between two log lines of one listener falling behind (the counts stay exact).
LAG_LOG_INTERVAL = 5.0


class Listener(ABC):
    """Told of every outcome the pipeline publishes; see the module docstring."""

    #: called on the publishing (writer) thread: only for what is cheap, never blocks and must not lag
    inline: ClassVar[bool] = False
    #: a queued listener's lane holds at most this many outcomes; a batch beyond that is not queued for it
    max_queued: ClassVar[int] = 65_536
    #: reads ``Archived.locations``: while any listener does, sinks report where each item went, which costs a
    #: checksum per item; a listener that only counts (the status) sets it False
    wants_locations: ClassVar[bool] = True
    #: a queued listener that may be told a little late: its thread sleeps this many seconds after each round,
    #: so that outcomes gather and it wakes a few times a second instead of once per item (0: at once)
    gather_seconds: ClassVar[float] = 0.0
    #: a queued listener that is behind is handed every batch waiting in its lane at once, as one (the events
    #: send one message for many commits then, instead of one each: the cost per outcome falls under load)
    coalesce: ClassVar[bool] = False
    #: a coalescing listener waits this many seconds after a batch arrives before it takes what waits: a burst of
    #: single-item commits (a file each) wakes its thread once, not once per item
    linger: ClassVar[float] = 0.0

    @property
    def name(self) -> str:
        """How stats and log lines call this listener."""
        return type(self).__name__

    @abstractmethod
    def handle(self, outcomes: Sequence[Outcome]) -> None:
        """Take one batch of outcomes (in the order the pipeline settled them)."""

    def counts(self) -> dict[str, int]:
        """Counts of its own for the stats, beside the hub's (the events listener: outcomes nobody heard)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional: most listeners hold nothing
        """The last batch has been handed over (the archiver stops): release what the listener holds."""


class _Lane:
    """One queued listener: its batches, its thread and its counts."""

    def __init__(self, listener: Listener, event: str) -> None:
        self.listener = listener
        self.batches: deque[Sequence[Outcome]] = deque()
        self.queued = 0
        self.handled = 0
        self.lagged = 0
        self.failed = 0
        self.lag_logged_at = -LAG_LOG_INTERVAL
        self.closing = False
        #: set at close: a gathering listener's thread stops sleeping
        self.closed = threading.Event()
        self.condition = threading.Condition()
        self.thread = threading.Thread(
            target=self._run, name=f"heros-archiver-listener-{listener.name}-{event}", daemon=True
        )

    def offer(self, outcomes: Sequence[Outcome]) -> None:
        with self.condition:
            if self.queued + len(outcomes) > self.listener.max_queued and self.queued:
                self.lagged += len(outcomes)
                now = time.monotonic()
                if now - self.lag_logged_at >= LAG_LOG_INTERVAL:
                    self.lag_logged_at = now
                    log.warning(
                        "listener %s falls behind: %d outcome(s) queued (at most %d); %d not handed to it so far",
                        self.listener.name,
                        self.queued,
                        self.listener.max_queued,
                        self.lagged,
                    )
                return
            self.batches.append(outcomes)
            self.queued += len(outcomes)
            self.condition.notify()

    def _run(self) -> None:
        gather = self.listener.gather_seconds
        linger = self.listener.linger if self.listener.coalesce else 0.0
        while True:
            with self.condition:
                while not self.batches and not self.closing:
                    self.condition.wait()
                if not self.batches:
                    return
                closing = self.closing
            if linger and not closing:
                time.sleep(linger)  # the batches of a burst gather and are handed over as one (this thread alone takes)
            with self.condition:
                batches = list(self.batches)  # all that waits, in order: one wake-up for all of them
                self.batches.clear()
            if self.listener.coalesce and len(batches) > 1:
                batches = [[outcome for batch in batches for outcome in batch]]
            for batch in batches:
                _call(self.listener, batch, self)
            with self.condition:
                handled = sum(len(batch) for batch in batches)
                self.queued -= handled
                self.handled += handled
                self.condition.notify_all()
            if gather:
                self.closed.wait(gather)

    def close(self, deadline: float) -> None:
        with self.condition:
            self.closing = True
            self.condition.notify_all()
        self.closed.set()
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            log.warning("listener %s did not finish within the drain timeout", self.listener.name)


class _Inline:
    """An inline listener's counts (same fields as a lane's, for stats)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.handled = 0
        self.failed = 0


def _call(listener: Listener, batch: Sequence[Outcome], counts: _Lane | _Inline) -> None:
    try:
        listener.handle(batch)
    except Exception as exc:  # noqa: BLE001 - a listener's failure must not stop archiving nor the others
        counts.failed += len(batch)
        log.error(
            "listener %s failed on %d outcome(s): %s: %s", listener.name, len(batch), type(exc).__name__, safe_str(exc)
        )


class ListenerHub:
    """Hands each published batch to every listener: inline ones at once, the others through their lanes."""

    def __init__(self, event: str) -> None:
        self._event = event
        self._inline: list[_Inline] = []
        self._lanes: list[_Lane] = []
        self._closed = False
        self._lock = threading.Lock()
        self._locating = False

    @property
    def active(self) -> bool:
        """Whether anyone listens (the pipeline makes no outcomes otherwise)."""
        return bool(self._inline or self._lanes)

    @property
    def locating(self) -> bool:
        """Whether a listener reads where items went (``Listener.wants_locations``): sinks report it then."""
        return self._locating  # asked for every item: kept, not looked up

    def add(self, listener: Listener) -> None:
        """Start telling ``listener`` (before the first outcome, or at any time after)."""
        with self._lock:
            self._locating = self._locating or listener.wants_locations
            if listener.inline:
                self._inline = [*self._inline, _Inline(listener)]
                return
            lane = _Lane(listener, self._event)
            lane.thread.start()
            self._lanes = [*self._lanes, lane]

    def publish(self, outcomes: Sequence[Outcome]) -> None:
        """Tell every listener of ``outcomes`` (any thread; never raises, never waits for a queued listener)."""
        if not outcomes or self._closed:
            return
        for inline in self._inline:
            _call(inline.listener, outcomes, inline)
            inline.handled += len(outcomes)
        for lane in self._lanes:
            lane.offer(outcomes)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per listener: outcomes handled, queued, not handed over for falling behind (lagged), failed."""
        result: dict[str, dict[str, int]] = {}
        for inline in self._inline:
            result[inline.listener.name] = {
                "handled": inline.handled,
                "queued": 0,
                "lagged": 0,
                "failed": inline.failed,
                **inline.listener.counts(),
            }
        for lane in self._lanes:
            with lane.condition:
                result[lane.listener.name] = {
                    "handled": lane.handled,
                    "queued": lane.queued,
                    "lagged": lane.lagged,
                    "failed": lane.failed,
                    **lane.listener.counts(),
                }
        return result

    def close(self, timeout: float = 10.0) -> None:
        """Hand over what is queued (within ``timeout`` seconds), then close every listener. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        for lane in self._lanes:
            lane.close(deadline)
        listeners = [counts.listener for counts in self._inline] + [lane.listener for lane in self._lanes]
        for listener in listeners:
            try:
                listener.close()
            except Exception as exc:  # noqa: BLE001 - one listener's failure must not keep the others open
                log.error("listener %s failed to close: %s", listener.name, safe_str(exc))
