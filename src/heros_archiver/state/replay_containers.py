"""Replaying the dead letters of the container archivers: each item appended again to the container it was for.

``Hdf5Archiver``, ``ZarrAppendArchiver``, ``TiffArchiver(stack=True)`` and ``ParquetArchiver`` (with
``DatasourceArchiver``) append many items to one file or store. Each records its settings with every dead
letter (a ``records.SettingsRecord`` of its own ``kind``); replaying one entry takes the same steps for all:

1. the record's values are checked by the archiver's own options class (``archivers.options``: the same
   refusals, worded the same), with ``on_exists="append"`` whatever the archiver's policy was (the store's
   items belong to the run that wrote them; a container that is not there yet is made);
2. the container's path is rendered from the recorded template (or the operator's corrected one) with what
   the archiver's templates saw (the metadata, ``source_name``; a kind adds its own) and confined under the
   trusted root, exactly as the archiver routes an item;
3. the item is appended through the archiver's own sink class, built from the same options, and committed
   at once: the entry leaves the store only after its commit reported it. An item whose key the container
   holds already (a replay run twice, or cut short after its commit) is reported by the sink as archived
   without a second copy; the paths returned are where the sink says the item is.

Each kind says only what differs (``ContainerReplay``'s abstract methods): its options, its templates, its
sink. The container's library is imported only when an entry needs it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..errors import ConfigurationError, ReplayError
from ..naming.templates import PathTemplate
from ..pipeline.queueing import Item
from ..sinks.base import ContainerSink
from ..sinks.writer import _refuse_reserved
from ..storage.objectstore import is_object_url
from .deadletter import DeadLetter
from .records import SettingsRecord
from .replay_catalog import Placed

S = TypeVar("S", bound=SettingsRecord)


@dataclass
class Target(Generic[S]):
    """What one kind of settings replays through: the checked options, both templates compiled, the sink (made
    at the first write: a dry run makes none)."""

    settings: S
    options: Any
    files: PathTemplate
    member: PathTemplate | None
    sink: ContainerSink | None = None


class ContainerReplay(ABC, Generic[S]):
    """Appends dead-lettered items through one container sink per kind of settings; ``close`` at the end.

    Args:
        template: a corrected file (or store) template for every entry of this kind (None: the recorded one).
        member_template: a corrected template of the stack or array inside the container (None: the recorded
            one; kinds without one ignore it).
    """

    def __init__(self, template: str | None = None, member_template: str | None = None) -> None:
        self._template = template
        self._member_template = member_template
        self._targets: dict[str, Target[S]] = {}

    # ------------------------------------------------------------------ what each kind says
    @abstractmethod
    def _options(self, settings: S) -> Any:
        """The archiver's options object made from ``settings`` (its checks refuse bad values), appending."""

    @abstractmethod
    def _template_sources(self, settings: S) -> tuple[str, str | None]:
        """The recorded file template and member template (None: the kind has none)."""

    @abstractmethod
    def _make_sink(self, target: Target[S]) -> ContainerSink:
        """The archiver's container sink for ``target`` (made at the first write)."""

    def _template_root(self, settings: S) -> str:
        """The root the templates render under (the recorded, trusted one; a kind writing keys says its own)."""
        return settings.root

    def _context(self, item: Item | DeadLetter, target: Target[S]) -> dict[str, Any]:
        """What the templates see: the metadata that arrived (merged with the default metadata) and the source."""
        return {**item.metadata, "source_name": item.source}

    def _route(self, item: DeadLetter, target: Target[S]) -> str:
        """The confined container path of ``item``, rendered as the archiver renders its route."""
        path = target.files.render_confined(self._context(item, target))
        _refuse_reserved(path, target.settings.root, target.files.source)
        return path

    def _member_of(self, target: Target[S]) -> Callable[[Item], str]:
        """Renders an item's member (stack, array) inside its container, for a sink that asks for it."""
        member = target.member
        if member is None:
            raise ReplayError(f"{type(self).__name__}: this kind of container has no member template")
        return lambda one: member.render_text(self._context(one, target))

    # ------------------------------------------------------------------ the steps
    def plan(self, item: DeadLetter, settings: S) -> list[Path | str]:
        """The container the item would be appended to (rendered and confined; its member rendered too);
        nothing written."""
        target = self._target(settings)
        path = self._route(item, target)
        if target.member is not None:
            target.member.render_text(self._context(item, target))
        return [_place(path)]

    def write(self, item: DeadLetter, settings: S) -> Placed:
        """Append the item and commit; returns where the sink says it is (a rollover part when the rendered
        one is full), with its locations in the container. Raises the append's or the commit's error: the
        entry then stays."""
        target = self._target(settings)
        one = self._item(item, self._route(item, target))
        return self._append(target, one, item)

    def _append(self, target: Target[S], one: Item, item: DeadLetter) -> Placed:
        """``one`` (made from ``item``) appended through ``target``'s sink and committed; where it went."""
        if target.sink is None:
            target.sink = self._make_sink(target)
            target.sink.locate = True  # the sink says where each item went (a rollover part, a Parquet part)
        settled = target.sink.append(one)
        settled.add(target.sink.commit())
        for failure in settled.failed:
            raise failure.error
        if not any(done is one for done in settled.archived):
            raise ReplayError(f"{item.path}: the item was appended to {one.route} but no commit reported it")
        where = {_place(location.path) for location in one.locations}
        return Placed(sorted(where, key=str) if where else [_place(str(one.route))], tuple(one.locations))

    def close(self) -> None:
        """Close every container (each item was committed already; a Parquet file is published here)."""
        for target in self._targets.values():
            if target.sink is not None:
                target.sink.close()
        self._targets.clear()

    def _item(self, item: DeadLetter, route: str, event: str | None = None) -> Item:
        """The entry as the item the sink gets: what arrived, its receive time and context, marked as one an
        earlier run may have written (so a sink that compares keys only for those does). ``event``: a marker's
        (None: the archiver's own event, as in the archiver)."""
        return Item(
            item.source, item.payload, item.metadata, item.nbytes, item.received, resumed=True, route=route,
            event=event, context=item.context,
        )  # fmt: skip

    def _target(self, settings: S) -> Target[S]:
        key = json.dumps(settings.to_dict(), sort_keys=True)  # as read from JSON: it dumps again
        target = self._targets.get(key)
        if target is None:
            try:
                options = self._options(settings)
            except ConfigurationError as exc:  # say which record the value came from
                raise ConfigurationError(f"{settings.LABEL}: {exc}") from exc
            files, member = self._template_sources(settings)
            corrected = self._member_template if member is not None else None
            root = self._template_root(settings)
            target = Target(
                settings,
                options,
                PathTemplate(self._template or files, root),
                None if member is None else PathTemplate(corrected or member, root),
            )
            self._targets[key] = target
        return target


def _place(text: str) -> Path | str:
    """Where an item went as replay reports it: a Path, or an ``s3://`` URL as text (a Path folds its ``//``)."""
    return text if is_object_url(text) else Path(text)
