"""The live status of an archiver: what ``heros-archiver status`` shows and the metrics endpoint serves.

Most of it the archiver knows already (its counters, its queue, its spool). What it does not know is kept
here by a queued listener (``StatusListener``), off the writer threads: per source the archive rate over the
last ``RATE_WINDOW`` seconds, from the commit times of the outcomes, and the last failure (a dead letter or a
drop; the last retried error comes from the accounting). ``StatusListener.report`` puts it all into one
JSON-able dict: the archiver's ``status()`` (a remote capability under BOSS and ``heros-archiver run``).
Decision 0033.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .listeners import Listener
from .outcomes import Archived, DeadLettered, Outcome

__all__ = ["FAILED", "RATE_WINDOW", "RateWindow", "StatusListener", "disk_usage"]

#: Seconds over which the archive rate is measured.
RATE_WINDOW = 10
#: The counters whose sum a status calls ``failed``: items that were received and will not be archived.
FAILED = ("dead_lettered", "dropped", "quarantined")
#: The per-source counters a status carries (of ``pipeline.accounting.COUNTERS``).
SOURCE_COUNTERS = ("received", "archived", "retried", "dead_lettered", "dropped", "quarantined", "bytes")
SEQUENCE_COUNTERS = ("gaps", "missing", "duplicates")


class RateWindow:
    """Items and bytes committed per whole second, for the last ``seconds`` seconds (one bucket per second, so
    its size does not depend on the rate)."""

    def __init__(self, seconds: int = RATE_WINDOW) -> None:
        self.seconds = seconds
        #: [second, items, bytes], oldest first
        self._buckets: deque[list[int]] = deque()

    def add(self, when: float, nbytes: int) -> None:
        """One item of ``nbytes`` committed at ``when`` (``time.time()``)."""
        second = int(when)
        buckets = self._buckets
        if buckets and second <= buckets[-1][0]:  # this second's, or (another lane's commit) a little late
            bucket = buckets[-1]
            bucket[1] += 1
            bucket[2] += nbytes
            return
        buckets.append([second, 1, nbytes])
        while buckets[0][0] <= second - self.seconds:
            buckets.popleft()

    def rates(self, now: float, since: float | None = None) -> tuple[float, float]:
        """(items/s, bytes/s) from the start of the oldest second in the window (or ``since``, if later: the
        listener started then) to ``now``."""
        first = int(now) - self.seconds + 1
        items = nbytes = 0
        for second, count, size in self._buckets:
            if second >= first:
                items += count
                nbytes += size
        start = first if since is None else max(first, since)
        span = max(now - start, 1.0)
        return items / span, nbytes / span


class _SourceStatus:
    """What the listener keeps of one source."""

    def __init__(self) -> None:
        self.rate = RateWindow()
        #: (kind, error or why, time) of the last item dead-lettered or dropped
        self.last_failure: tuple[str, str, float] | None = None


class StatusListener(Listener):
    """Keeps the archive rate and the last failure per source, from the outcomes (queued, so never on a
    writer's thread); ``report`` gives the whole status."""

    wants_locations = False
    #: the status may be a quarter of a second late; waking once per item would cost ~4 us of CPU per item
    gather_seconds = 0.25

    def __init__(self) -> None:
        #: ``time.time()`` the archiver was made (its uptime starts there)
        self.started = time.time()
        self._sources: dict[str, _SourceStatus] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "status"

    def handle(self, outcomes: Sequence[Outcome]) -> None:
        with self._lock:
            for outcome in outcomes:
                source = self._sources.get(outcome.source)
                if source is None:
                    source = self._sources[outcome.source] = _SourceStatus()
                if isinstance(outcome, Archived):
                    source.rate.add(outcome.committed, outcome.nbytes)
                elif isinstance(outcome, DeadLettered):
                    source.last_failure = ("dead_lettered", outcome.error, outcome.time)
                else:
                    source.last_failure = ("dropped", outcome.why, outcome.time)

    def report(
        self,
        identity: Mapping[str, Any],
        stats: Mapping[str, Any],
        retries: Mapping[str, tuple[str, float]],
        listeners: Mapping[str, Mapping[str, int]],
        storage: Path | None,
        paused: bool | None,
    ) -> dict[str, Any]:
        """The status (plain types only: it travels as CBOR and is printed as JSON).

        Args:
            identity: who the archiver is: name, class, event, selector, root.
            stats: the archiver's ``stats()``.
            retries: the accounting's ``last_retries()``.
            listeners: the hub's ``stats()``.
            storage: where its files go (the disk whose free space is reported; None: unknown).
            paused: whether it is paused (None: it cannot be).
        """
        now = time.time()
        with self._lock:
            rates = {name: s.rate.rates(now, self.started) for name, s in self._sources.items()}
            failures = {name: s.last_failure for name, s in self._sources.items() if s.last_failure is not None}
        sources: dict[str, dict[str, Any]] = {}
        intake = stats["queue"].get("intake_by_source", {})
        for name, counters in stats["sources"].items():
            items_rate, bytes_rate = rates.get(name, (0.0, 0.0))
            waiting = intake.get(name, {"samples": 0, "bytes": 0})
            sources[name] = {
                **_counters(counters),
                "in_flight": int(counters["in_flight"]),
                "intake_waiting": waiting["samples"],
                "intake_waiting_bytes": waiting["bytes"],
                "items_per_second": items_rate,
                "bytes_per_second": bytes_rate,
                "last_error": _last_error(failures.get(name), retries.get(name)),
            }
        total = {
            **_counters(stats["total"]),
            "in_flight": stats["total"]["in_flight"],
            "items_per_second": sum(s["items_per_second"] for s in sources.values()),
            "bytes_per_second": sum(s["bytes_per_second"] for s in sources.values()),
        }
        return {
            "archiver": {**identity, "pid": os.getpid(), "host": socket.gethostname()},
            "time": now,
            "uptime": now - self.started,
            "paused": paused,
            "sources": sources,
            "total": total,
            "queue": dict(stats["queue"]),
            "disk": disk_usage(storage),
            "listeners": {name: dict(counts) for name, counts in listeners.items()},
        }


def _counters(counters: Mapping[str, Any]) -> dict[str, int]:
    """The counters of one source (or the total) a status carries, with ``failed`` (see ``FAILED``)."""
    result = {name: int(counters[name]) for name in (*SOURCE_COUNTERS, *SEQUENCE_COUNTERS)}
    result["failed"] = sum(result[name] for name in FAILED)
    return result


def _last_error(failure: tuple[str, str, float] | None, retry: tuple[str, float] | None) -> dict[str, Any] | None:
    """The later of the last failure and the last retried error, as ``{kind, error, time}``."""
    candidates: list[dict[str, Any]] = []
    if failure is not None:
        candidates.append({"kind": failure[0], "error": failure[1], "time": failure[2]})
    if retry is not None:
        candidates.append({"kind": "retried", "error": retry[0], "time": retry[1]})
    return max(candidates, key=lambda entry: entry["time"], default=None)


def disk_usage(path: Path | None) -> dict[str, Any] | None:
    """Free and total bytes of the file system that holds ``path`` (its nearest existing parent: an archive
    root is made on the first write); None when there is no path or it cannot be read."""
    if path is None:
        return None
    probe = Path(path)
    while True:
        try:
            fs = os.statvfs(probe)
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe == probe.parent:
                return None
            probe = probe.parent
        except OSError:
            return None
    return {"path": str(path), "free_bytes": fs.f_bavail * fs.f_frsize, "total_bytes": fs.f_blocks * fs.f_frsize}
