"""Pause, resume, flush and rollover: what another thread (a remote call under BOSS) asks of the writers.

Only a lane's writer thread ever calls its sink (``sinks.base``), so a request is not carried out by the
caller: it is posted to every lane (``WriterControl.post``), each writer answers it between two items with
what it did (``Request.answer``), and the caller waits for the answers up to a timeout (decision 0032).

* ``pause``: the writers commit and close what they hold (container sinks) or finish the item in hand (file
  sinks), then take nothing more until ``resume``. What arrives meanwhile is spooled (``overflow="spill"``'s
  spool, on disk: kept across a restart), counted, and archived in order after ``resume``; with ``drop=True``
  it is dropped instead, counted as ``dropped_paused``. Items already queued when the pause began stay in the
  queue (within its bounds) and are archived first at ``resume``. A shutdown while paused drains the queue as
  usual; the spooled items are archived at the next start.
* ``flush``: every container with waiting items is committed now; ``rollover``: every container sink closes
  the parts it writes, so that the next item of each starts the next part (``name-1.ext``, ...).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ArchiverError, UnfaithfulError
from ..observe.outcomes import Dropped
from .queueing import Item
from .setaside import LOST_LOG_INTERVAL, SetAside, log

#: What a writer can be asked to do.
RequestKind = Literal["pause", "flush", "rollover"]
#: Longest wait of a paused writer (or the spool reader) before it looks again (a resume or a request wakes it).
IDLE_WAIT = 0.2


@dataclass
class Request:
    """One request to every writer lane, and what they answered."""

    kind: RequestKind
    #: lanes that have not answered yet
    waiting: set[int]
    #: items the answers committed (archived), in total
    committed: int = 0
    #: lanes whose sink cannot do it (a file-per-item sink asked to roll over)
    unsupported: int = 0


class WriterControl:
    """The pause flag and the requests waiting for each lane's writer, under one condition."""

    def __init__(self, lanes: int) -> None:
        self._lanes = lanes
        self._condition = threading.Condition()
        self._inbox: list[deque[Request]] = [deque() for _ in range(lanes)]
        #: read without the lock on every item (a bool's read is atomic); changed under it
        self.paused = False
        self.drop = False
        self.paused_since: float | None = None
        #: items the pauses spooled (counted under the pipeline's ``_spool_lock``) and dropped (``_count_lock``),
        #: in total, and the totals when the pause now (or last) began
        self.spilled = 0
        self.dropped = 0
        self.counts_at_pause = (0, 0)
        #: when a paused drop was last logged (``time.monotonic()``)
        self.drop_logged_at = -LOST_LOG_INTERVAL

    def set_paused(self, paused: bool, drop: bool = False) -> None:
        """Pause (or resume) and wake everyone waiting on the control."""
        with self._condition:
            if paused and not self.paused:
                self.paused_since = time.time()
                self.counts_at_pause = (self.spilled, self.dropped)
            elif not paused:
                self.paused_since = None
            self.paused, self.drop = paused, drop and paused
            self._condition.notify_all()

    def post(self, kind: RequestKind) -> Request:
        """Ask every lane's writer to do ``kind`` (each answers once)."""
        request = Request(kind, set(range(self._lanes)))
        with self._condition:
            for inbox in self._inbox:
                inbox.append(request)
            self._condition.notify_all()
        return request

    def has_requests(self, lane: int) -> bool:
        """Whether a request waits for ``lane``'s writer."""
        return bool(self._inbox[lane])

    def take(self, lane: int) -> list[Request]:
        """The requests waiting for ``lane``'s writer, oldest first (cheap when there are none)."""
        inbox = self._inbox[lane]
        if not inbox:
            return []
        with self._condition:
            taken = list(inbox)
            inbox.clear()
        return taken

    def answer(self, request: Request, lane: int, committed: int, supported: bool = True) -> None:
        """``lane``'s writer did ``request``: ``committed`` items became archived doing it."""
        with self._condition:
            request.committed += committed
            request.unsupported += 0 if supported else 1
            request.waiting.discard(lane)
            self._condition.notify_all()

    def wait(self, request: Request, timeout: float) -> bool:
        """Wait until every lane answered ``request`` (True), or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while request.waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    def idle(self, lane: int | None = None, timeout: float = IDLE_WAIT) -> None:
        """Wait while paused, up to ``timeout`` seconds; a resume, or a request for ``lane``'s writer (None: the
        spool reader, which answers none), ends the wait early."""
        with self._condition:
            if self.paused and (lane is None or not self._inbox[lane]):
                self._condition.wait(timeout)


class Control(SetAside):
    """The pipeline's side of the control requests: post them, wait, and take items in while paused."""

    _control: WriterControl
    #: ``Submission.reject``: a bad item to the dead-letter store, off the receive thread
    reject: Callable[[Item, ArchiverError], None]

    def pause(self, drop: bool = False, timeout: float = 2.0) -> dict[str, Any]:
        """Stop writing (see the module docstring); returns once every writer has stopped, or after ``timeout``."""
        with self._spool_lock:  # the receive path decides under this lock whether an item is spooled
            self._control.set_paused(True, drop)
        request = self._post("pause")
        done = self._control.wait(request, timeout)
        log.warning(
            "event %s: paused; items arriving now are %s until resume()",
            self._event,
            "DROPPED (pause(drop=True))" if drop else f"kept in the spool {self.spool.directory}",
        )
        return {"paused": True, "drop": drop, "committed": request.committed, "done": done}

    def resume(self) -> dict[str, Any]:
        """Archive again: first what was queued, then what the pause spooled, in order, then what arrives."""
        since = self._control.paused_since
        with self._spool_lock:
            was_paused = self._control.paused
            self._control.set_paused(False)
        self._queue.wake()
        self.spool.wake()
        if was_paused:
            spilled, dropped = self._control.counts_at_pause
            log.warning(
                "event %s: resumed; %d item(s) spooled and %d dropped during the pause, %d wait in the spool",
                self._event,
                self._control.spilled - spilled,
                self._control.dropped - dropped,
                len(self.spool),
            )
        return {
            "paused": False,
            "was_paused": was_paused,
            "paused_seconds": None if since is None else max(0.0, time.time() - since),
            "spooled": len(self.spool),
        }

    def flush(self, timeout: float = 2.0) -> dict[str, Any]:
        """Commit every container now; returns the items that commit archived, once every writer did it (or after
        ``timeout``: ``done`` False, the commits still happen)."""
        request = self._post("flush")
        done = self._control.wait(request, timeout)
        return {"committed": request.committed, "done": done}

    def rollover(self, timeout: float = 2.0) -> dict[str, Any]:
        """Close the parts the container sinks write, so that the next item of each starts the next part."""
        if self._container_sinks is None:
            return {
                "rolled_over": False,
                "committed": 0,
                "done": True,
                "why": "this archiver writes a file per item: every item starts a new file already",
            }
        request = self._post("rollover")
        done = self._control.wait(request, timeout)
        return {
            "rolled_over": request.unsupported == 0,
            "committed": request.committed,
            "done": done,
            "why": None if request.unsupported == 0 else "its container sink has no parts to roll over",
        }

    @property
    def paused(self) -> bool:
        """True between ``pause`` and ``resume``."""
        return self._control.paused

    def pause_status(self) -> dict[str, Any]:
        """Whether paused (and dropping), since when (unix time), and what the pauses spooled and dropped in total."""
        return {
            "paused": self._control.paused,
            "drop": self._control.drop,
            "since": self._control.paused_since,
            "spilled": self._control.spilled,
            "dropped": self._control.dropped,
        }

    def _post(self, kind: RequestKind) -> Request:
        request = self._control.post(kind)
        self._queue.wake()  # writers waiting for an item look at their requests at once
        return request

    # ------------------------------------------------------------------ the receive path while paused
    def _submit_paused(self, item: Item) -> None:
        """An item that arrived while paused: dropped (``pause(drop=True)``), or spooled to be archived after the
        resume. If the spool refuses it (a full disk), it waits in the queue while there is room, and is lost
        (counted, logged) when there is none: the receive thread is never held."""
        if self._queue.closed:
            self._set_aside(item, ArchiverError("arrived while the archiver was stopping"))
            return
        if self._control.drop:
            self._drop_paused(item)
            return
        error: BaseException
        with self._spool_lock:
            try:
                self.spool.put(item)
            except (OSError, UnfaithfulError) as exc:
                error = exc
            else:
                self._spilling = True  # what arrives after the resume follows the spool, so the order stays
                self._spilled += 1
                self._control.spilled += 1
                return
        if self._queue.put(item, block=False):
            return
        if isinstance(error, UnfaithfulError):
            self.reject(item, error)
            return
        self._lose(item, "lost_spool_full", f"paused, and the spool {self.spool.directory} failed: {error}")

    def _drop_paused(self, item: Item) -> None:
        """Counted as dropped (``dropped_paused``), told to listeners with why "paused", logged now and then."""
        self._accounting.lost(item.source, "dropped_paused")  # dropped and why, in one step
        if self.hub.active:
            self.hub.publish([self._outcome(Dropped, item, why="paused")])
        with self._count_lock:
            self._control.dropped += 1
            dropped = self._control.dropped
            now = time.monotonic()
            due = dropped == 1 or now - self._control.drop_logged_at >= LOST_LOG_INTERVAL
            if due:
                self._control.drop_logged_at = now
        if due:
            log.warning(
                "%s (event %s): paused with drop=True: item dropped (%d dropped during pauses so far)",
                item.source,
                self._event,
                dropped,
            )

    # ------------------------------------------------------------------ the writers' side
    def _serve_requests(self, lane: int, handle: Callable[[RequestKind], tuple[int, bool]]) -> None:
        """Answer the requests waiting for ``lane``: ``handle(kind)`` does one and returns (committed, supported)."""
        for request in self._control.take(lane):
            committed, supported = handle(request.kind)
            self._control.answer(request, lane, committed, supported)

    def _holding(self, lane: int) -> bool:
        """True while ``lane``'s writer must take nothing (paused and not stopping); waits a little first (or
        until a request for it comes), so a loop that asks again does not spin."""
        if not self._control.paused or self._queue.closed or self._abort.is_set():
            return False
        self._control.idle(lane)
        return self._control.paused and not self._queue.closed
