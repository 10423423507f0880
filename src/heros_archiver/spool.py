"""The on-disk spool behind ``overflow="spill"``: items the queue has no room for, kept in arrival order.

Entries use the dead-letter format (a directory per item, published atomically), so plain numpy/json
can read them too. An entry stays on disk until its item was archived or dead-lettered, so a crash or
a SIGKILL loses nothing: the next start resumes the spool, and a file that was already written with the
same bytes counts as archived.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path

from .deadletter import DeadLetterStore
from .payload import estimate_nbytes
from .queueing import Item


class Spool:
    """FIFO of items on disk, with the entries not yet handed back to the queue tracked in memory."""

    def __init__(self, directory: Path, event: str, fsync: bool = False) -> None:
        self._store = DeadLetterStore(directory, fsync)  # fsync: entries durable before put returns
        self._event = event
        self._pending: deque[Path] = deque(self._store.entries())
        self._ready = threading.Condition()

    @property
    def store(self) -> DeadLetterStore:
        """The entry store underneath."""
        return self._store

    @property
    def directory(self) -> Path:
        """Where the entries are."""
        return self._store.directory

    def pending(self) -> list[Path]:
        """Entries not yet handed back to the queue, oldest first."""
        with self._ready:
            return list(self._pending)

    def __len__(self) -> int:
        """Entries written and not yet handed back to the queue."""
        return len(self._pending)

    def put(self, item: Item) -> None:
        """Write ``item`` at the end of the spool (raises OSError if the disk refuses)."""
        entry = self._store.put(
            source=item.source,
            event=self._event,
            payload=item.payload,
            metadata=item.metadata,
            error="",
            attempts=item.attempts,
        )
        with self._ready:
            self._pending.append(entry)
            self._ready.notify()

    def take(self, timeout: float) -> Item | None:
        """The oldest entry not yet handed back, loaded, or None after ``timeout`` without one."""
        with self._ready:
            if not self._pending:
                self._ready.wait(timeout)
            if not self._pending:
                return None
            entry = self._pending.popleft()
        stored = self._store.load(entry)
        item = Item(stored.source, stored.payload, stored.metadata, estimate_nbytes(stored.payload), stored.time)
        item.attempts = stored.attempts
        item.spool_entry = entry
        return item

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
        """The item was archived or dead-lettered: remove its entry."""
        if item.spool_entry is not None:
            self._store.remove(item.spool_entry)
