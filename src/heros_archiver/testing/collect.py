"""A listener that keeps every outcome it is told, for tests that check what became of each item."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..observe.listeners import Listener
from ..observe.outcomes import Archived, Outcome


class CollectOutcomes(Listener):
    """Keeps every outcome in the order told, and the names of the threads it was told on.

    Inline by default: told on the writer thread, so none is still queued when ``close()`` returns and a
    test can read :attr:`outcomes` right after closing the archiver. ``inline=False`` makes it a queued
    listener (its own lane and thread), for tests of the hub itself.
    """

    def __init__(self, inline: bool = True) -> None:
        self.outcomes: list[Outcome] = []
        self.threads: set[str] = set()
        self.closed = False
        self._inline = inline

    @property
    def inline(self) -> bool:  # type: ignore[override]
        return self._inline

    @property
    def archived(self) -> list[Archived]:
        """The outcomes of the items archived."""
        return [outcome for outcome in self.outcomes if isinstance(outcome, Archived)]

    def handle(self, outcomes: Sequence[Outcome]) -> None:
        self.threads.add(threading.current_thread().name)
        self.outcomes.extend(outcomes)

    def close(self) -> None:
        self.closed = True
