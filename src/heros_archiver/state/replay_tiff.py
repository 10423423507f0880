"""Replaying the dead letters of a ``TiffArchiver(stack=True)``: each frame appended again as a page of its stack.

A stack archiver records its settings with every dead letter (``TiffStackWriterSettings``, ``kind:
"tiff-stack"``). Replay renders the stack's path from ``save_template`` (``--template`` corrects it) and
appends the frame through the archiver's own sink (``TiffStackSink``, or ``TiffAcquisitionSink`` with
``acquisitions``) made from its options, with ``on_exists="append"`` (``replay_containers``): the stack is
reopened (a failed commit's partial pages cut off) or made, a frame whose key a page holds is not written
twice, and each frame's pages are linked (the commit) before its entry leaves.

With ``acquisitions=True`` every item of an entry knows its acquisition (source, number, start: kept in the
entry's context); the template is rendered, as in the archiver, with the acquisition and the default
metadata (recorded in the settings, its JSON values only), not the item's metadata. A template may render
the same path for several acquisitions (the archiver then wrote ``name-1.tif``, ``name-2.tif``, ... one per
acquisition). Replay appends a frame to the stack whose first page names its acquisition (the record's
``acquisition``), the last such part if it rolled over; an acquisition without a stack yet gets the next
free part, whose first page records it (with the configuration of its ``acquisition_started`` marker when
that entry is replayed first: entries go oldest first). A stop marker writes nothing (in the archiver it
closes the stack and counts its frames; replay commits every frame and closes every stack at the end): its
entry is replayed as done. A stack that fills up (``max_frames``, ``max_bytes``) rolls over to a part named
after the acquisition's part (``name-1-1.tif``), not to the next one of the series.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..pipeline.queueing import Item
from ..sinks.base import ContainerSink
from ..sinks.hdf5_acquisitions import START_EVENT, STOP_EVENT, Identity, identity_of
from ..sinks.routed import part_path
from .deadletter import DeadLetter
from .records import NONE, SettingsRecord
from .replay_catalog import Placed
from .replay_containers import ContainerReplay, Target

if TYPE_CHECKING:
    from ..archivers.options import TiffOptions

#: The ``kind`` a ``TiffArchiver(stack=True)``'s writer settings carry.
TIFF_STACK_KIND = "tiff-stack"


@dataclass
class TiffStackWriterSettings(SettingsRecord):
    """What decides where and how a TiffArchiver(stack=True) appends a frame (recorded in its dead letters)."""

    KIND: ClassVar[str] = TIFF_STACK_KIND
    LABEL: ClassVar[str] = "tiff-stack writer settings"
    FIELD_TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "kind": (str,), "save_template": (str,), "root": (str,), "on_exists": (str,), "fsync": (str,),
        "max_frames": (int, NONE), "max_bytes": (int, NONE), "writeback_window": (int,), "acquisitions": (bool,),
        "default_metadata": (dict, NONE), "sequence_key": (str, NONE),
    }  # fmt: skip

    kind: str
    save_template: str
    root: str
    on_exists: str
    fsync: str
    max_frames: int | None
    max_bytes: int | None
    writeback_window: int
    acquisitions: bool
    #: with acquisitions: the default metadata the templates see beside the acquisition (JSON values only)
    default_metadata: dict[str, Any] | None
    sequence_key: str | None


class TiffStackReplay(ContainerReplay[TiffStackWriterSettings]):
    """Appends dead-lettered frames as pages of their stacks (``ContainerReplay``; see the module docstring).

    Args:
        template: a corrected ``save_template`` for every stack entry (None: the recorded one).
    """

    def __init__(self, template: str | None = None) -> None:
        super().__init__(template)
        #: per rendered path and acquisition, the part of the acquisition's stack (chosen once per replay)
        self._parts: dict[tuple[str, Identity], str] = {}

    def _options(self, settings: TiffStackWriterSettings) -> TiffOptions:
        from ..archivers.options import TiffOptions

        return TiffOptions(
            settings.save_template, stack=True, on_exists="append", fsync=settings.fsync,
            max_frames=settings.max_frames, max_bytes=settings.max_bytes, writeback_window=settings.writeback_window,
            root=settings.root, acquisitions=settings.acquisitions,
        )  # fmt: skip

    def _template_sources(self, settings: TiffStackWriterSettings) -> tuple[str, str | None]:
        return settings.save_template, None

    def _context(self, item: Item | DeadLetter, target: Target[TiffStackWriterSettings]) -> dict[str, Any]:
        """With acquisitions, what the archiver's template saw for an item of an acquisition: the default
        metadata and the acquisition (``AcquisitionMarkers._acquisition_context``), not the item's metadata
        (a marker has none)."""
        if not target.options.acquisitions or item.context is None:
            return super()._context(item, target)
        return {**(target.settings.default_metadata or {}), **item.context, "source_name": item.source}

    def _make_sink(self, target: Target[TiffStackWriterSettings]) -> ContainerSink:
        from ..sinks.tiff_acquisitions import TiffAcquisitionSink
        from ..sinks.tiff_stack import TiffStackSink

        settings = target.options.stack_settings(target.settings.root, target.settings.sequence_key)
        return (TiffAcquisitionSink if target.options.acquisitions else TiffStackSink)(settings)

    def write(self, item: DeadLetter, settings: TiffStackWriterSettings) -> Placed:
        """As ``ContainerReplay.write``; with acquisitions, a start marker gives its configuration to the first
        page of a stack replay makes, and a stop marker writes nothing (see the module docstring)."""
        target = self._target(settings)
        if not target.options.acquisitions:
            return super().write(item, settings)
        route = self._route(item, target)
        if item.event == STOP_EVENT:
            return Placed([Path(route)])
        return self._append(target, self._item(item, route, START_EVENT if item.event == START_EVENT else None), item)

    def _route(self, item: DeadLetter, target: Target[TiffStackWriterSettings]) -> str:
        """The rendered stack, or with acquisitions the part that holds (or will hold) the item's acquisition."""
        route = super()._route(item, target)
        acquisition = identity_of(self._item(item, route)) if target.options.acquisitions else None
        if acquisition is None:
            return route
        key = (route, acquisition)
        if key not in self._parts:
            self._parts[key] = str(self._part_of(Path(route), acquisition, set(self._parts.values())))
        return self._parts[key]

    def _part_of(self, route: Path, acquisition: Identity, taken: set[str]) -> Path:
        """The last part of ``route``'s series whose first page names ``acquisition``, else the first free one
        (no file, or a stack without a page, and not chosen for another acquisition in this replay)."""
        found, part = None, 0
        while True:
            path = part_path(route, part)
            state = _OTHER if str(path) in taken else _state_of(path)
            if state == _FREE:
                return found or path
            if state == acquisition:
                found = path
            part += 1


#: ``_state_of`` a part: nothing there (or a stack made without a page yet), or not one to append to
_FREE, _OTHER = "free", "other"


def _state_of(path: Path) -> Identity | str:
    """The acquisition (source, number, start) the first page of the stack at ``path`` records; ``_FREE`` for
    no file or a stack without a page (made, and its writer killed before its first commit: appending to it
    continues it, as the archiver does); ``_OTHER`` for anything else (a stack of no acquisition, a file that
    is no stack of ours, a link, unreadable)."""
    from ..sinks.containers.tiff import read_records

    if path.is_symlink():
        return _OTHER
    try:
        records = read_records(path)
    except FileNotFoundError:
        return _FREE
    except (OSError, ValueError):  # NotAStackError is a ValueError
        return _OTHER
    if not records:
        return _FREE
    first: Any = records[0].get("acquisition")
    if not isinstance(first, dict):
        return _OTHER
    source, number, start = first.get("source"), first.get("number"), first.get("started")
    if not isinstance(source, str) or not isinstance(number, int) or not isinstance(start, str):
        return _OTHER
    return source, number, start
