"""The catalog of an archive root: every archived item, where it went, its checksum and metadata (decision 0031).

``CatalogListener`` is what an archiver with an archive root adds to its listeners (``catalog=True``, the
default). At its construction, before the archiver writes anything, the journals of earlier runs that did not
stop cleanly are applied (``catalog_recovery``). Then:

* on the writer thread, after each commit and before the pipeline acknowledges it (removes the spool entries
  of its items), the batch's outcomes are appended to the archiver's journal (``catalog_journal``): one
  ``os.write`` of orjson lines, a few microseconds;
* a thread of the archiver applies the journal to SQLite (``catalog_apply``), every ``APPLY_INTERVAL`` seconds
  what has come since, in one transaction: readers see an item a fraction of a second after its commit;
* at close (after the pipeline's last outcome) the journal ends with its ``closed`` line, is applied whole
  and removed.

The schema and how to read it: ``catalog_schema``, ``catalog_reader``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import CatalogError
from ..saferepr import safe_str
from .catalog_apply import apply_journal
from .catalog_journal import JournalWriter, encode_outcomes, process_start
from .catalog_recovery import recover
from .catalog_schema import catalog_path, journal_directory, open_for_writing
from .listeners import Listener
from .outcomes import Outcome

__all__ = ["APPLY_INTERVAL", "CatalogListener"]

log = logging.getLogger("heros_archiver")

#: Seconds between two looks of the applier at the journal (what a reader of the catalog lags behind, at most
#: about this plus one transaction).
APPLY_INTERVAL = 0.1
#: Seconds between two log lines of an applier that keeps failing (the journal keeps what it could not apply).
ERROR_LOG_INTERVAL = 30.0
#: Seconds ``close`` waits for the last application of the journal (a catalog locked by another archiver).
CLOSE_TIMEOUT = 60.0
#: Niceness added to the applier's thread: SQLite's work runs mostly outside the GIL, on what the writers and
#: the intake leave of the CPU (the catalog lags further behind on a saturated machine, archiving does not slow).
APPLIER_NICE = 10


class CatalogListener(Listener):
    """Journals every outcome on the writer thread and applies the journal to the root's catalog on a thread.

    Args:
        root: the archive root (the catalog is ``<root>/.heros-archiver/catalog.sqlite``).
        event: the archiver's event (for its journal's header and its thread's name).
        label: returns the archiver's name in the catalog (``<HERO name or class>:<event>``), asked once more
            at the first outcome (a HERO's name may be set after its archiver's pipeline is made).
        adopt: for a file-per-item archiver, the ending of its files' names (``.npy``; ``""``: any), which a
            later start adopts after a kill (``catalog_recovery``); None for container archivers.
    """

    inline = True

    def __init__(self, root: Path, event: str, label: Callable[[], str], adopt: str | None = None) -> None:
        self.root = root
        self._label = label
        recover(root)
        self._archiver = label()
        header = {
            "archiver": self._archiver,
            "event": event,
            "root": str(root),
            "pid": os.getpid(),
            "adopt": None if adopt is None else {"suffix": adopt},
        }
        self._journal = JournalWriter(journal_directory(root), header)
        self._labelled = False
        self._applier = _Applier(root, self._journal, event)

    @property
    def name(self) -> str:
        return "catalog"

    @property
    def path(self) -> Path:
        """The catalog's file."""
        return catalog_path(self.root)

    def handle(self, outcomes: Sequence[Outcome]) -> None:
        if not self._labelled:
            self._labelled = True
            archiver = self._label()
            if archiver != self._archiver:
                self._archiver = archiver
                self._journal.set_header({"archiver": archiver})
        self._journal.append(encode_outcomes(outcomes))

    def note_helpers(self, pids: list[int]) -> None:
        """The helper processes that create this archiver's files (``sinks.publisher``): after a kill of the
        archiver they finish the batch they were given, so a later start waits for them before it adopts."""
        self._journal.set_header({"helpers": [[pid, process_start(pid)] for pid in pids]})

    def status(self) -> dict[str, Any]:
        """Where the catalog is, its journal, and how far behind it the catalog is (bytes), with its errors."""
        return {
            "path": str(self.path),
            "journal": str(self._journal.directory / self._journal.name),
            **self._applier.status(),
        }

    def close(self) -> None:
        """End the journal, apply it whole, and remove it (kept, for the next start, if that fails)."""
        self._journal.close()
        self._applier.stop()


class _Applier:
    """The thread that applies one archiver's journal to the catalog."""

    def __init__(self, root: Path, journal: JournalWriter, event: str) -> None:
        self._root = root
        self._journal = journal
        self._stopping = threading.Event()
        #: bytes of each segment known to be applied (so that an idle look costs no transaction)
        self._applied: dict[str, int] = {}
        self.errors = 0
        self.last_error: str | None = None
        self._error_logged_at = -ERROR_LOG_INTERVAL
        self._thread = threading.Thread(target=self._run, name=f"heros-archiver-catalog-{event}", daemon=True)
        self._thread.start()

    def note_helpers(self, pids: list[int]) -> None:
        """The helper processes that create this archiver's files (``sinks.publisher``): after a kill of the
        archiver they finish the batch they were given, so a later start waits for them before it adopts."""
        self._journal.set_header({"helpers": [[pid, process_start(pid)] for pid in pids]})

    def status(self) -> dict[str, Any]:
        current = self._journal.name
        return {
            "lag_bytes": max(0, self._journal.written - self._applied.get(current, 0)),
            "errors": self.errors,
            "last_error": self.last_error,
        }

    def stop(self) -> None:
        """Stop the thread (after its current transaction), then apply the rest here: the thread is niced, and
        on a busy machine the last application would wait for the CPU behind everything else."""
        self._stopping.set()
        self._thread.join(CLOSE_TIMEOUT)
        if self._thread.is_alive():
            log.warning("catalog %s: the journal was not applied within %.0f s; the next start applies it",
                        self._root, CLOSE_TIMEOUT)  # fmt: skip
            return
        try:
            connection = open_for_writing(self._root)
            try:
                self._apply(connection, final=True)
            finally:
                connection.close()
        except (sqlite3.Error, OSError, CatalogError) as exc:
            self._failed(exc, True)

    def _run(self) -> None:
        _lower_priority(APPLIER_NICE)
        connection: sqlite3.Connection | None = None
        try:
            while not self._stopping.wait(APPLY_INTERVAL):
                try:
                    if connection is None:
                        connection = open_for_writing(self._root)
                    self._apply(connection, final=False)
                except (sqlite3.Error, OSError, CatalogError) as exc:
                    self._failed(exc, False)
        finally:
            if connection is not None:
                connection.close()

    def _apply(self, connection: sqlite3.Connection, final: bool) -> None:
        """Apply what is new in every segment; remove the segments the writer has left and that are applied
        (at the end: all of them)."""
        journal = self._journal
        segments = list(journal.segments)
        for name in segments:
            current = name == segments[-1]
            if current and not final and journal.written <= self._applied.get(name, 0):
                continue  # nothing new: no transaction
            applied = apply_journal(connection, journal.directory / name, str(self._root))
            if applied is None:
                continue
            self._applied[name] = applied.offset
            if applied.complete and (final or not current):
                (journal.directory / name).unlink(missing_ok=True)
                connection.execute("DELETE FROM journal_applied WHERE name = ?", (name,))
                journal.forget(name)
                self._applied.pop(name, None)

    def _failed(self, exc: BaseException, stopping: bool) -> None:
        """The catalog could not be written (locked too long, a full disk): the journal keeps it all; retried."""
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {safe_str(exc)}"
        now = time.monotonic()
        if stopping or now - self._error_logged_at >= ERROR_LOG_INTERVAL:
            self._error_logged_at = now
            log.error(
                "catalog %s: cannot apply the journal (%s); %s",
                self._root,
                self.last_error,
                "it is kept and applied at the next start" if stopping else "the journal keeps it, retrying",
            )


def _lower_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's niceness (Linux: per thread; elsewhere nothing)."""
    if not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except OSError as exc:
        log.debug("cannot lower the catalog thread's priority: %s", exc)
