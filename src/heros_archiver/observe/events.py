"""The archiver's own HEROS events, made from the outcomes: ``archived``, ``failed`` and ``low_disk_space``
(decision 0032).

``EventsListener`` is a queued listener (``listeners``): the pipeline hands it each commit's outcomes and goes
on; it turns them into payloads on its own thread and hands them to an ``Emitter`` (the archiver, whose
``@event`` methods publish them over Zenoh). Nothing here knows heros: the archiver side says whether its HERO
is ready and what it is called.

Payloads are plain dicts (CBOR and JSON carry them), kept small: no metadata beyond the sequence value (the
catalog has the rest). Paths are given relative to the archive ``root`` (``/`` separators), with ``root`` given
once per event; a path outside the root, or of an archiver without one, is absolute.

``archived``, one per commit (or per file for file-per-item archivers), except that the commits of the 5 ms after
one, and all those waiting while the listener is behind, go together (``Listener.coalesce``, ``linger``); at most
``MAX_EVENT_ITEMS`` items each::

    {"archiver": "cam-archiver", "event": "acquisition_data", "root": "/data/run7", "count": 3,
     "items": [{"source": "cam", "event": "acquisition_data", "sequence": 7, "path": "img-0007.npy",
                "nbytes": 2097280, "checksum": "xxh3-128:...", "received": 1.76e9, "committed": 1.76e9}],
     "ranges": [{"source": "cam", "event": "acquisition_data", "path": "run.h5", "member": "cam/data",
                 "first": 0, "count": 2, "sequences": [8, 9], "checksums": ["xxh3-128:...", ...],
                 "nbytes": 4194304, "received": [1.76e9, 1.76e9], "committed": 1.76e9}]}

``items`` holds the files of their own (one entry per file: a split array's item has several) and the items a
sink gave no location (``path`` None); ``ranges`` the items inside containers, consecutive indices of one member
of one source grouped as Bluesky's StreamDatum does: ``sequences`` and ``checksums`` have one entry per item
(an item may span several indices), ``nbytes`` is the range's total, ``received`` its first and last item's.

``failed``, one per dead-lettered or dropped item::

    {"archiver": ..., "event": ..., "root": ..., "source": "cam", "item_event": "acquisition_data",
     "sequence": 12, "kind": "dead_lettered", "error": "PayloadError: ...", "entry": "/data/run7/.heros-archiver/
     dead-letter/...", "nbytes": 1234, "received": 1.76e9, "time": 1.76e9}

(``kind`` ``dropped`` has ``entry`` None and ``error`` saying why.) ``low_disk_space``: ``DiskSpaceWatch``'s
report with ``archiver`` and ``event``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from itertools import groupby
from pathlib import Path, PurePath
from typing import Any, Protocol

from .diskspace import DiskSpaceWatch
from .listeners import Listener
from .outcomes import Archived, DeadLettered, Outcome

__all__ = [
    "DISK_CHECK_INTERVAL",
    "MAX_EVENT_ITEMS",
    "Emitter",
    "EventsListener",
    "archived_payloads",
    "failed_payload",
    "root_text",
]

log = logging.getLogger("heros_archiver")

#: Items in one ``archived`` event at most (a longer commit is told in several): a commit of 10,000 readings
#: stays a few events of ~100 KiB, not one of a megabyte.
MAX_EVENT_ITEMS = 1000
#: Seconds between two looks at the free disk space.
DISK_CHECK_INTERVAL = 2.0
#: Seconds the listener waits, at the first outcome, for the archiver's HERO to be made (BOSS and
#: ``heros-archiver run`` make it after the archiver, which may already archive what its spool held).
READY_TIMEOUT = 60.0


class Emitter(Protocol):
    """Where the events go: the archiver's ``@event`` methods, once its HERO is made."""

    def ready(self) -> bool:
        """Whether events can be sent now."""

    def name(self) -> str:
        """The archiver's name, as events carry it."""

    def listened(self, event: str) -> bool:
        """Whether anything would receive ``event`` now (a subscriber, a callback): if not, it is not made."""

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        """Send ``payload`` as ``event`` (``archived``, ``failed``, ``low_disk_space``)."""


def _prefix(root: str | None) -> str | None:
    """``root`` as the text every path under it starts with (a trailing ``/``)."""
    if root is None:
        return None
    return root if root.endswith("/") else f"{root}/"


def _relative(path: str | None, prefix: str | None) -> str | None:
    """``path`` relative to the root of ``prefix`` (``_prefix``), or as it is (absolute) when outside it or
    without a root. Lexical, as the sinks made the paths from the root (a third of the cost of pathlib's)."""
    if path is None:
        return None
    if os.sep != "/":
        path = path.replace(os.sep, "/")
    if prefix is not None and path.startswith(prefix):
        return path[len(prefix) :]
    return path


def _entries(outcomes: Sequence[Archived], prefix: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``items`` and ``ranges`` of ``outcomes`` (see the module docstring), paths relative to ``prefix``."""
    items: list[dict[str, Any]] = []
    ranges: list[dict[str, Any]] = []
    for outcome in outcomes:
        if not outcome.locations:
            items.append(_file_entry(outcome, None, outcome.nbytes, None, prefix))
        for location in outcome.locations:
            if location.member is None or location.index is None:
                items.append(_file_entry(outcome, location.path, location.nbytes, location.checksum, prefix))
                continue
            path = _relative(location.path, prefix)
            last = ranges[-1] if ranges else None
            if (
                last is not None
                and (last["source"], last["event"], last["path"], last["member"])
                == (outcome.source, outcome.event, path, location.member)
                and last["first"] + last["count"] == location.index
            ):
                last["count"] += location.count
                last["sequences"].append(outcome.sequence)
                last["checksums"].append(location.checksum)
                last["nbytes"] += location.nbytes
                last["received"][1] = outcome.received
                last["committed"] = max(last["committed"], outcome.committed)
                continue
            ranges.append(
                {
                    "source": outcome.source,
                    "event": outcome.event,
                    "path": path,
                    "member": location.member,
                    "first": location.index,
                    "count": location.count,
                    "sequences": [outcome.sequence],
                    "checksums": [location.checksum],
                    "nbytes": location.nbytes,
                    "received": [outcome.received, outcome.received],
                    "committed": outcome.committed,
                }
            )
    return items, ranges


def _file_entry(
    outcome: Archived, path: str | None, nbytes: int, checksum: str | None, prefix: str | None
) -> dict[str, Any]:
    return {
        "source": outcome.source,
        "event": outcome.event,
        "sequence": outcome.sequence,
        "path": _relative(path, prefix),
        "nbytes": nbytes,
        "checksum": checksum,
        "received": outcome.received,
        "committed": outcome.committed,
    }


def archived_payloads(
    outcomes: Sequence[Archived], archiver: str, event: str, root: str | None
) -> Iterator[dict[str, Any]]:
    """The ``archived`` events of one commit's outcomes, ``MAX_EVENT_ITEMS`` items each at most; ``root``: the
    archive root as text with ``/`` separators (``root_text``), or None."""
    prefix = _prefix(root)
    for start in range(0, len(outcomes), MAX_EVENT_ITEMS):
        chunk = outcomes[start : start + MAX_EVENT_ITEMS]
        items, ranges = _entries(chunk, prefix)
        yield {
            "archiver": archiver,
            "event": event,
            "root": root,
            "count": len(chunk),
            "items": items,
            "ranges": ranges,
        }


def root_text(root: Path | None) -> str | None:
    """The archive root as events carry it: text with ``/`` separators (None: the archiver has none)."""
    return None if root is None else PurePath(os.path.abspath(root)).as_posix()


def failed_payload(outcome: Outcome, archiver: str, event: str, root: str | None) -> dict[str, Any]:
    """The ``failed`` event of one dead-lettered or dropped item (``root``: as for ``archived_payloads``)."""
    dead = isinstance(outcome, DeadLettered)
    return {
        "archiver": archiver,
        "event": event,
        "root": root,
        "source": outcome.source,
        "item_event": outcome.event,
        "sequence": outcome.sequence,
        "kind": "dead_lettered" if dead else "dropped",
        "error": outcome.error if isinstance(outcome, DeadLettered) else getattr(outcome, "why", ""),
        "entry": outcome.entry if isinstance(outcome, DeadLettered) else None,
        "nbytes": outcome.nbytes,
        "received": outcome.received,
        "time": getattr(outcome, "time", time.time()),
    }


class EventsListener(Listener):
    """Sends ``archived`` and ``failed`` for the outcomes it is told of, and ``low_disk_space`` from a timer of
    its own (``disk``; None: no such check), through ``emitter``; see the module docstring."""

    #: one ``archived`` event for the commits waiting together, not one each (``Listener.coalesce``), gathered
    #: for 5 ms after the first: events come at most that much later, and a stream of small files costs one
    #: wake-up and one message per 5 ms instead of per file
    coalesce = True
    linger = 0.005

    def __init__(
        self,
        emitter: Emitter,
        event: str,
        root: Path | None,
        disk: DiskSpaceWatch | None = None,
        interval: float = DISK_CHECK_INTERVAL,
    ) -> None:
        self._emitter = emitter
        self._event = event
        self._root = root_text(root)
        self._disk = disk
        self._interval = interval
        self._ready = False
        #: the first wait for the HERO ended without it: later outcomes do not wait again
        self._gave_up = False
        #: outcomes not told because the HERO was not made (logged once)
        self.unsent = 0
        #: outcomes not made into events because nothing listened to them then (decision 0046)
        self.unheard = 0
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None
        if disk is not None:
            self._watcher = threading.Thread(target=self._watch, name=f"heros-archiver-disk-{event}", daemon=True)
            self._watcher.start()

    @property
    def name(self) -> str:
        return "events"

    def counts(self) -> dict[str, int]:
        return {"unheard": self.unheard, "unsent": self.unsent}

    def handle(self, outcomes: Sequence[Outcome]) -> None:
        if not self._wait_ready(READY_TIMEOUT):
            self.unsent += len(outcomes)
            if self.unsent == len(outcomes):
                log.error(
                    "event %s: the archiver's HERO was not made within %.0f s; its archived/failed events are not sent",
                    self._event,
                    READY_TIMEOUT,
                )
            return
        name = self._emitter.name()
        for archived, run in groupby(outcomes, key=lambda outcome: isinstance(outcome, Archived)):
            batch = list(run)
            if not self._emitter.listened("archived" if archived else "failed"):
                self.unheard += len(batch)
            elif archived:
                for payload in archived_payloads(batch, name, self._event, self._root):  # type: ignore[arg-type]
                    self._emitter.emit("archived", payload)
            else:
                for outcome in batch:
                    self._emitter.emit("failed", failed_payload(outcome, name, self._event, self._root))

    def close(self) -> None:
        self._closing.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(self._interval + 1.0)

    def _wait_ready(self, timeout: float) -> bool:
        """Whether the HERO is made, waiting up to ``timeout`` for it (until it first was, or a wait ended
        without it: then not again)."""
        if self._ready:
            return True
        if self._gave_up:
            timeout = 0.0
        deadline = time.monotonic() + timeout
        while not self._emitter.ready():
            if time.monotonic() > deadline or self._closing.wait(0.01):
                self._gave_up = self._gave_up or timeout > 0
                return False
        self._ready = True
        return True

    def _watch(self) -> None:
        """Every ``interval`` seconds, once the HERO is made, a look at the free space; a fall below the threshold
        is sent as ``low_disk_space``."""
        assert self._disk is not None
        while not self._closing.wait(self._interval):
            if not self._wait_ready(0.0):
                continue
            report = self._disk.check()
            if report is None:
                continue
            payload = {"archiver": self._emitter.name(), "event": self._event, **report}
            try:
                self._emitter.emit("low_disk_space", payload)
            except Exception as exc:  # noqa: BLE001 - the watch must outlive a failed send (logged, goes on)
                log.error("event %s: sending low_disk_space failed: %s: %s", self._event, type(exc).__name__, exc)
