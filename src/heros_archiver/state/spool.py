"""The on-disk spool behind ``overflow="spill"``: items the queue has no room for, kept in arrival order.

Entries use the dead-letter store's format without the readable payload copy: ``entry.json`` and the
faithful copy, so an item leaves the spool equal to the item that entered it (payload type, dtype, byte
order, shape, every metadata key and value with its type, its size as counted at arrival). An entry
stays on disk until its item was archived or dead-lettered, so a crash or a SIGKILL loses nothing: the
next start resumes the spool, and a file that was already written with the same bytes counts as archived.

An entry that cannot be read back (a payload file a power cut left empty, an edited ``entry.json``, a
format this version does not know) is moved to ``<spool>/quarantine/`` with an ``error.txt``, so it
stops nothing: the entries after it are archived, and it is not tried again at every start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..observe.logs import log_fields
from ..pipeline.queueing import Item
from ..saferepr import safe_str
from .deadletter import QUARANTINE_DIR, DeadLetterStore

log = logging.getLogger("heros_archiver")

ERROR_FILE = "error.txt"


@dataclass(frozen=True)
class Damaged:
    """A spool entry that could not be read back, and where it went."""

    entry: Path
    error: str
    #: the quarantine directory it was moved to (None: it could not be moved and stays, for the next start)
    moved_to: Path | None
    #: the item's source if this run spooled it (so it was counted as received), else None
    source: str | None


class Spool:
    """FIFO of items on disk, with the entries not yet handed back to the queue tracked in memory."""

    def __init__(self, directory: Path, event: str, fsync: bool = False) -> None:
        # fsync: entries durable before put returns
        self._store = DeadLetterStore(directory, fsync, readable_payload=False)
        self._event = event
        self._pending: deque[Path] = deque(self._store.entries())
        #: entries this run wrote, with their item's source, until the item is settled
        self._sources: dict[Path, str] = {}
        self._ready = threading.Condition()

    @property
    def store(self) -> DeadLetterStore:
        """The entry store underneath."""
        return self._store

    @property
    def directory(self) -> Path:
        """Where the entries are."""
        return self._store.directory

    @property
    def quarantine(self) -> Path:
        """Where entries that cannot be read back are moved (inside the spool: the same file system)."""
        return self.directory / QUARANTINE_DIR

    def pending(self) -> list[Path]:
        """Entries not yet handed back to the queue, oldest first."""
        with self._ready:
            return list(self._pending)

    def __len__(self) -> int:
        """Entries written and not yet handed back to the queue."""
        return len(self._pending)

    def put(self, item: Item) -> None:
        """Write ``item`` at the end of the spool.

        Raises OSError if the disk refuses, UnfaithfulError (before writing anything) if the item cannot
        be kept exactly as it is (a type outside the faithful encoding's whitelist).
        """
        written = self._store.write(
            source=item.source,
            event=item.event or self._event,
            payload=item.payload,
            metadata=item.metadata,
            error="",
            attempts=item.attempts,
            nbytes=item.nbytes,
            received=item.received,
            require_faithful=True,
            context=item.context,
        )
        with self._ready:
            self._sources[written.path] = item.source
            self._pending.append(written.path)
            self._ready.notify()

    def take(self, timeout: float) -> Item | Damaged | None:
        """The oldest entry not yet handed back, loaded; or, for one that cannot be read, that entry moved
        aside (``Damaged``); or None after ``timeout`` without one. Never raises for a bad entry."""
        with self._ready:
            if not self._pending:
                self._ready.wait(timeout)
            if not self._pending:
                return None
            entry = self._pending.popleft()
        try:
            stored = self._store.load(entry)  # raises ReplayError, and only that, for any damaged entry
        except Exception as exc:  # noqa: BLE001 - whatever the entry did, it is set aside and the spool goes on
            return self._quarantine_entry(entry, f"{type(exc).__name__}: {safe_str(exc)}")
        item = Item(stored.source, stored.payload, stored.metadata, stored.nbytes, stored.received)
        item.attempts = stored.attempts
        item.spool_entry = entry
        item.event = None if stored.event == self._event else stored.event
        item.context = stored.context
        return item

    def _quarantine_entry(self, entry: Path, error: str) -> Damaged:
        """Move a damaged entry into the quarantine with its error; if even that fails it stays where it is."""
        with self._ready:
            source = self._sources.pop(entry, None)
        target = self.quarantine / entry.name
        try:
            self.quarantine.mkdir(exist_ok=True)
            if target.exists():
                target = self.quarantine / f"{entry.name}-{uuid.uuid4().hex[:8]}"
            os.rename(entry, target)
            text = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} event {self._event}: {error}\n"
            (target / ERROR_FILE).write_text(text)
        except OSError as exc:
            if not target.exists():
                return Damaged(entry, f"{error}; could not be moved to {self.quarantine}: {exc}", None, source)
            log.warning(
                "spool entry moved to %s, but its %s could not be written: %s",
                target,
                ERROR_FILE,
                exc,
                extra=log_fields(source, self._event, target, exc),
            )
        return Damaged(entry, error, target, source)

    def wake(self) -> None:
        """Wake a ``take`` that is waiting (at shutdown)."""
        with self._ready:
            self._ready.notify_all()

    def give_back(self, item: Item) -> None:
        """Return an item the queue did not take to the front of the spool (it stays on disk)."""
        if item.spool_entry is not None:
            with self._ready:
                self._pending.appendleft(item.spool_entry)

    def done(self, item: Item) -> None:
        """The item was archived or dead-lettered: remove its entry (one that cannot be removed is archived
        again at the next start, which finds the same bytes already written)."""
        if item.spool_entry is None:
            return
        with self._ready:
            self._sources.pop(item.spool_entry, None)
        try:
            self._store.remove(item.spool_entry)
        except OSError as exc:
            log.error(
                "cannot remove the spool entry %s of an item already settled: %s",
                item.spool_entry,
                exc,
                extra=log_fields(item.source, item.event or self._event, item.spool_entry, exc),
            )
