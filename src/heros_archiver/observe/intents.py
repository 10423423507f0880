"""What an archiver journals before it makes something, so that a kill in between still leaves a trace.

The catalog's journal gets an item's commit line after its file, array or container commit exists (decision
0031); a SIGKILL in between leaves something on storage that no commit line names. ``Intents`` hands the
catalog (``CatalogListener.intend`` / ``intend_container``) an intent record first (decision 0041): for every
file or array about to be made, its item's source, event, sequence value, receive time, path and metadata; for every
container member about to get its first commit, its path and member. The next start's recovery
(``catalog_recovery``) adopts what it finds with those values. Every call is cheap and never raises.
"""

from __future__ import annotations

from collections.abc import Callable

from ..pipeline.queueing import Item
from ..sinks.base import ContainerSink
from .catalog import CatalogListener

__all__ = ["Intents"]


class Intents:
    """The intent records of one archiver: its catalog, the metadata key of its sequence values, its event."""

    def __init__(self, catalog: CatalogListener, sequence_key: str | None, event: str) -> None:
        self._catalog = catalog
        self._sequence_key = sequence_key
        self._event = event

    def files(self, planned: list[tuple[Item, str]]) -> None:
        """The files (arrays) about to be made, ``(item, path)`` each (a helper's batch: ``BatchWriter.intend``)."""
        key, event = self._sequence_key, self._event
        self._catalog.intend([(item.source, item.event or event, item.sequence(key), item.received, path, item.metadata)
                              for item, path in planned])  # fmt: skip

    def of(self, item: Item) -> Callable[[list[str]], None]:
        """What a writer tells the paths of ``item``'s files (arrays) before it makes them (``before``)."""
        return lambda paths: self.files([(item, path) for path in paths])

    def container(self, item: Item, path: str, member: str) -> None:
        """``member`` of the container ``path`` gets its first commit, ``item`` its first (``ContainerSink.intend``)."""
        sequence = item.sequence(self._sequence_key)
        self._catalog.intend_container((item.source, item.event or self._event, sequence, item.received, path), member)

    def sinks(self, factory: Callable[[], ContainerSink]) -> Callable[[], ContainerSink]:
        """``factory``, whose sinks journal each new container member (``container``)."""

        def make() -> ContainerSink:
            sink = factory()
            sink.intend = self.container
            return sink

        return make
