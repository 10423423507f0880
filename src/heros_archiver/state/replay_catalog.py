"""What a replay archives goes into the archive root's catalog, as an archiver's own commits do.

Without this a replayed file is on disk but in no catalog: ``ls`` does not show it and ``verify`` calls it an
orphan, the day after an operator did everything right. So each entry that a replay archives is journaled,
with where it went (the writer's or sink's locations: the file, or the member and index of a container), its
checksum and metadata, its source, event, sequence value and receive time as the entry kept them, *before* the
entry leaves the store: a replay killed in between leaves the entry, and the next replay finds the item
written already (an identical file, a key the container holds) and journals it again, which the catalog keeps
as one row. The journal and its applier are the archivers' own (``observe.catalog``). The item is written as
the archiver that dead-lettered it (the catalog's ``failures`` row of its entry says which), so that the
archiver's sequence has no gap where the replayed item is; an entry the catalog does not know is written as
``heros-archiver-replay``.

A root has a catalog when an archiver kept one there (``catalog.sqlite`` under ``.heros-archiver/``) or when the
operator names a shared one (``catalog_url``); a root with neither (``catalog=False``) gets none from a replay.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..observe.catalog import CatalogListener
from ..observe.catalog_apply import relative_to_root
from ..observe.catalog_backend import CatalogTarget
from ..observe.catalog_reader import CatalogReader
from ..observe.catalog_recovery import recover
from ..observe.catalog_schema import catalog_path
from ..observe.outcomes import Archived, Location
from .deadletter import DeadLetter

__all__ = ["REPLAY_ARCHIVER", "Placed", "ReplayCatalog"]

#: Who wrote a replayed item, in the catalog (as an archiver's HERO name).
REPLAY_ARCHIVER = "heros-archiver-replay"


@dataclass
class Placed:
    """Where a replayed entry went: the paths replay reports, and the locations the catalog records (none where
    the writer reports none, e.g. a PostgreSQL record)."""

    paths: list[Path | str]
    locations: tuple[Location, ...] = ()


class ReplayCatalog:
    """Journals the items a replay archived into the catalog of ``root``, opened at the first one; ``close`` at
    the end applies the journals. ``catalog_url``: a shared PostgreSQL catalog instead of the root's own."""

    def __init__(self, root: Path, catalog_url: str | None = None) -> None:
        self._root = root
        self._url = catalog_url
        self._target = None if catalog_url is None and not catalog_path(root).exists() else CatalogTarget(catalog_url)
        #: the archiver (``name:event``) that dead-lettered each entry, by the entry as the catalog names it
        self._dead_letterers: dict[str, str] | None = None
        #: one journal per archiver written as
        self._listeners: dict[str, CatalogListener] = {}

    def record(self, item: DeadLetter, locations: Sequence[Location]) -> None:
        """Journal ``item`` as archived at ``locations`` (nothing without a catalog or without locations)."""
        if self._target is None or not locations:
            return
        archiver = self._archiver_of(item)
        listener = self._listeners.get(archiver)
        if listener is None:
            name, _, event = archiver.rpartition(":")
            listener = CatalogListener(self._root, event, lambda: name, None, self._target)
            self._listeners[archiver] = listener
        outcome = Archived(
            source=item.source,
            event=item.event,
            sequence=item.sequence,
            metadata=item.metadata,
            received=item.received or item.time,
            nbytes=item.nbytes,
            locations=tuple(locations),
            committed=time.time(),
        )
        listener.handle([outcome])

    def _archiver_of(self, item: DeadLetter) -> str:
        """Who dead-lettered ``item`` (``name:event``), as the catalog's ``failures`` say, else the replay."""
        if self._dead_letterers is None:
            assert self._target is not None
            recover(self._root, self._target)  # the journals of a killed archiver hold its last failures
            with CatalogReader(self._root, url=self._url) as reader:
                self._dead_letterers = {
                    failure.entry: failure.archiver
                    for failure in reader.failures()
                    if failure.kind == "dead_lettered" and failure.entry
                }
        entry = relative_to_root(os.path.abspath(item.path), os.path.abspath(self._root))
        return self._dead_letterers.get(entry) or f"{REPLAY_ARCHIVER}:{item.event}"

    def close(self) -> None:
        """Apply what was journaled to the catalog and remove the journals."""
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
