"""The catalog of an archive root: every archived item, where it went, its checksum and metadata (decision 0031).

``CatalogListener`` is what an archiver with an archive root adds to its listeners (``catalog=True``, the
default). At its construction, before the archiver writes anything, the journals of earlier runs that did not
stop cleanly are applied (``catalog_recovery``). Then:

* on the writer thread, after each commit and before the pipeline acknowledges it (removes the spool entries
  of its items), the batch's outcomes are appended to the archiver's journal (``catalog_journal``): one
  ``write`` of orjson lines, a few microseconds, the GIL kept;
* the archiver's applier process applies the journal to the catalog (``catalog_process``, ``catalog_apply``): the
  root's SQLite file, or with ``catalog_url`` a PostgreSQL database shared by many archivers (``catalog_backend``,
  decision 0037), once it stops growing and at least every second, in one transaction: readers see an item
  ~0.1-1 s after its commit;
* at close (after the pipeline's last outcome) the journal ends with its ``closed`` line, the applier stops,
  and the rest is applied here and the journal removed.

The schema and how to read it: ``catalog_schema``, ``catalog_reader``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import CatalogError
from ..saferepr import safe_str
from .catalog_backend import CatalogTarget
from .catalog_journal import (
    ContainerIntent,
    FileIntent,
    JournalWriter,
    encode_container_intent,
    encode_intents,
    encode_outcomes,
)
from .catalog_names import process_start
from .catalog_process import NICE, STOP, apply_segments, target_environment
from .catalog_recovery import Adoption, recover
from .catalog_schema import catalog_path, journal_directory
from .listeners import Listener
from .outcomes import Outcome

__all__ = ["CatalogListener"]

log = logging.getLogger("heros_archiver")

#: Seconds between two looks at whether the applier process still runs.
CHECK_INTERVAL = 5.0
#: Seconds between two log lines of intent records the journal refused (the count stays exact).
INTENT_LOG_INTERVAL = 5.0
#: Times a dead applier process is started again before the catalog waits for the archiver's stop.
MAX_RESTARTS = 5
#: Seconds ``close`` waits for the applier process to finish its transaction and exit.
STOP_TIMEOUT = 30.0


class CatalogListener(Listener):
    """Journals every outcome on the writer thread; its applier process puts the journal into the root's catalog.

    Args:
        root: the archive root (the catalog is ``<root>/.heros-archiver/catalog.sqlite`` without ``target``).
        event: the archiver's event (its journal's header, and the end of its name in the catalog).
        name: returns who writes the items (the HERO's name, or the class's), or None while that is not known yet
            (a HERO's name is given after its archiver's pipeline is made); asked again at each outcome until known.
        adopt: what a later start adopts after a kill of this archiver (``catalog_recovery.Adoption``): for a
            file-per-item archiver, its files by the ending of their names (``.npy``; ``""``: any), for a
            ZarrArchiver its arrays, for a container archiver the frames of its containers; None: nothing.
        target: where the catalog is (default: the root's SQLite file) and the host name it is written as.
    """

    inline = True

    def __init__(
        self,
        root: Path,
        event: str,
        name: Callable[[], str | None],
        adopt: Adoption | None = None,
        target: CatalogTarget | None = None,
    ) -> None:
        self.root = root
        self.target = CatalogTarget() if target is None else target
        self._event = event
        self._name = name
        try:
            journal_directory(root).mkdir(parents=True, exist_ok=True)
            recover(root, self.target)
        except OSError as exc:
            raise CatalogError(
                f"catalog {self.target.describe(root)}: the journals of earlier runs under {root} cannot be applied "
                f"({exc}); pass catalog=False to archive without a catalog"
            ) from exc
        known = name()
        self._named = known is not None
        header = {
            "archiver": f"{known or '?'}:{event}",
            "event": event,
            "root": str(root),
            "pid": os.getpid(),
            "host": self.target.host,
            "adopt": None if adopt is None else dataclasses.asdict(adopt),
        }
        try:
            self._journal = JournalWriter(journal_directory(root), header)
        except OSError as exc:
            raise CatalogError(
                f"catalog {catalog_path(root)}: cannot create the archiver's journal in {journal_directory(root)} "
                f"({exc}); pass catalog=False to archive without a catalog"
            ) from exc
        self._applier = _Applier(root, self._journal.prefix, self.target)
        #: intent records the journal refused (``intend``), and when that was last logged
        self.intents_lost = 0
        self._intent_logged_at = -INTENT_LOG_INTERVAL

    @property
    def name(self) -> str:
        return "catalog"

    @property
    def path(self) -> Path:
        """The root's SQLite catalog file (where the catalog is without ``catalog_url``)."""
        return catalog_path(self.root)

    def handle(self, outcomes: Sequence[Outcome]) -> None:
        if not self._named:
            known = self._name()
            if known is not None:
                self._named = True
                self._journal.set_header({"archiver": f"{known}:{self._event}"})
        self._journal.append(encode_outcomes(outcomes))
        self._applier.check()

    def intend_container(self, intent: ContainerIntent, member: str) -> None:
        """Journal that ``member`` of the container at the intent's path gets its first commit, with the intent's
        item (``catalog_journal``: ``"c"`` records); never raises, as ``intend``."""
        self._append_intents(encode_container_intent(intent, member), 1)

    def intend(self, intents: Sequence[FileIntent]) -> None:
        """Journal the files about to be made, ``(source, event, sequence, received, path, metadata)`` each
        (``catalog_journal.encode_intents``): what the next start adopts them with if this process is killed
        before their commit line. Never raises: the files are made all the same, and what could not be journaled
        is counted (``status()["intents_lost"]``) and logged (the first time, then at most every 5 s)."""
        self._append_intents(encode_intents(intents), len(intents))

    def _append_intents(self, line: bytes, count: int) -> None:
        try:
            self._journal.append(line)
        except Exception as exc:  # noqa: BLE001 - archiving goes on; only an adoption after a kill is poorer
            self.intents_lost += count
            now = time.monotonic()
            if now - self._intent_logged_at >= INTENT_LOG_INTERVAL:
                self._intent_logged_at = now
                log.warning(
                    "catalog journal %s: %d intent record(s) not written so far (a kill now leaves files that are "
                    "adopted without their sequence values): %s",
                    self._journal.name,
                    self.intents_lost,
                    safe_str(exc),
                )

    def note_helpers(self, pids: list[int]) -> None:
        """The helper processes that create this archiver's files (``sinks.publisher``): after a kill of the
        archiver they finish the batch they were given, so a later start waits for them before it adopts."""
        self._journal.set_header({"helpers": [[pid, process_start(pid)] for pid in pids]})

    def status(self) -> dict[str, Any]:
        """Where the catalog and the journal are, the journal's bytes so far, the applier process."""
        return {
            "path": self.target.describe(self.root),
            "host": self.target.host if self.target.shared else None,
            "journal": str(self._journal.directory / self._journal.name),
            "journal_bytes": self._journal.written,
            "intents_lost": self.intents_lost,
            **self._applier.status(),
        }

    def close(self) -> None:
        """End the journal, stop the applier, apply the rest and remove the journal."""
        self._journal.close()
        self._applier.stop()


class _Applier:
    """The archiver's side of its applier process (``catalog_process``): started with the archiver, restarted if
    it dies, told to stop at close, after which the rest of the journal is applied here."""

    def __init__(self, root: Path, prefix: str, target: CatalogTarget) -> None:
        self._root = root
        self._prefix = prefix
        self._target = target
        self.restarts = 0
        self._next_check = time.monotonic() + CHECK_INTERVAL
        self._process = self._start()

    def _start(self) -> subprocess.Popen[bytes] | None:
        package_parent = str(Path(__file__).resolve().parents[2])  # src/, above heros_archiver/observe/
        env = {
            **target_environment(self._target),
            "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
        }
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "heros_archiver.observe.catalog_process", str(self._root), self._prefix],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                env=env,
                process_group=0,  # a Ctrl-C or kill of the archiver's group must not reach it: the archiver ends it
            )
        except OSError as exc:
            log.error("catalog %s: cannot start the applier process (%s); the catalog is brought up to date at the "
                      "archiver's stop", self._root, exc)  # fmt: skip
            return None
        _lower_priority(process.pid)
        return process

    def check(self) -> None:
        """Restart the applier if it died (looked at every ``CHECK_INTERVAL`` seconds at most; any thread)."""
        now = time.monotonic()
        if now < self._next_check or self._process is None:
            return
        self._next_check = now + CHECK_INTERVAL
        code = self._process.poll()
        if code is None:
            return
        if self.restarts >= MAX_RESTARTS:
            log.error("catalog %s: the applier process exited (status %s) %d times; the catalog is brought up to "
                      "date at the archiver's stop", self._root, code, self.restarts + 1)  # fmt: skip
            self._process = None
            return
        log.warning("catalog %s: the applier process exited (status %s); starting it again", self._root, code)
        self.restarts += 1
        self._process = self._start()

    def status(self) -> dict[str, Any]:
        process = self._process
        return {
            "applier_pid": None if process is None else process.pid,
            "applier_running": process is not None and process.poll() is None,
            "applier_restarts": self.restarts,
        }

    def stop(self) -> None:
        """Stop the process (after its current transaction), then apply the rest of the journal here, at the
        archiver's priority, and remove the journal (kept, for the next start, if that fails)."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(OSError):  # it is gone already: its stdin is a broken pipe
                assert process.stdin is not None
                process.stdin.write(STOP + b"\n")
                process.stdin.close()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("catalog %s: the applier process (pid %d) did not stop within %.0f s; killing it",
                            self._root, process.pid, STOP_TIMEOUT)  # fmt: skip
                process.kill()
                process.wait()
        try:
            with self._target.open_writer(self._root) as catalog:
                apply_segments(catalog, self._root, self._prefix, final=True)
        except (OSError, CatalogError) as exc:
            log.error("catalog %s: cannot apply the journal at the stop (%s: %s); it is kept and applied at the "
                      "next start", self._root, type(exc).__name__, safe_str(exc))  # fmt: skip


def _lower_priority(pid: int) -> None:
    """Give the applier its nice value at once: its interpreter's start and imports (~0.13 s of CPU) would
    otherwise run at the archiver's priority, as the first events of a run arrive (decision 0046). The applier
    sets it again itself; a failure here only leaves that."""
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: a platform without setpriority
        if os.getpriority(os.PRIO_PROCESS, pid) < NICE:
            os.setpriority(os.PRIO_PROCESS, pid, NICE)
