"""Replaying the dead letters of a ``ZarrAppendArchiver``: each frame appended again to the store and array it was for.

A ``ZarrAppendArchiver`` records its settings with every dead letter (``ZarrAppendWriterSettings``,
``kind: "zarr-append"``). Replay renders the store from ``store_template`` (``--template`` corrects it) and the
array from ``array_template`` (``--array-template``), and appends the frame through a ``ZarrAppendSink`` made
from the archiver's own options, with ``on_exists="append"`` (``replay_containers``): a frame whose key the array
holds already is not written again, each frame is committed (its shard written, then the array's shape
advanced) before its entry leaves. The shard size a new array gets is the archiver's (from the recorded
``frames_per_shard``, else ``flush_frames`` and the frame's size). zarr is imported only when an entry needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..errors import ReplayError
from ..naming.keys import confine_key
from ..sinks.base import ContainerSink
from ..storage.objectstore import is_object_url
from .records import NONE, SettingsRecord
from .replay_containers import ContainerReplay, Target

if TYPE_CHECKING:
    from ..archivers.object_root import ObjectRoot
    from ..archivers.options import ZarrAppendOptions
    from .deadletter import DeadLetter

#: The ``kind`` a ZarrAppendArchiver's writer settings carry.
ZARR_APPEND_KIND = "zarr-append"


@dataclass
class ZarrAppendWriterSettings(SettingsRecord):
    """What decides where and how a ZarrAppendArchiver appends a frame (recorded in its dead-letter entries)."""

    KIND: ClassVar[str] = ZARR_APPEND_KIND
    LABEL: ClassVar[str] = "zarr-append writer settings"
    FIELD_TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "kind": (str,), "store_template": (str,), "array_template": (str,), "root": (str,), "compression": (str,),
        "frames_per_chunk": (int,), "frames_per_shard": (int, NONE), "flush_frames": (int,), "on_exists": (str,),
        "fsync": (str,), "max_frames": (int, NONE), "sequence_key": (str, NONE),
    }  # fmt: skip

    kind: str
    store_template: str
    array_template: str
    root: str
    compression: str
    frames_per_chunk: int
    frames_per_shard: int | None
    flush_frames: int
    on_exists: str
    fsync: str
    max_frames: int | None
    sequence_key: str | None


class ZarrAppendReplay(ContainerReplay[ZarrAppendWriterSettings]):
    """Appends dead-lettered frames through a ``ZarrAppendSink`` per kind of settings (``ContainerReplay``).

    Args:
        template: a corrected ``store_template`` for every entry of this kind (None: the recorded one).
        member_template: a corrected ``array_template`` (None: the recorded one).
    """

    def __init__(
        self, template: str | None = None, member_template: str | None = None, objects: ObjectRoot | None = None
    ) -> None:
        super().__init__(template, member_template)
        self._objects = objects

    def _options(self, settings: ZarrAppendWriterSettings) -> ZarrAppendOptions:
        from ..archivers.options import ZarrAppendOptions

        if is_object_url(settings.root) and self._objects is None:
            raise ReplayError(
                f"dead letter of a ZarrAppendArchiver writing to {settings.root}: expected the state directory of "
                "that object-store root (it records the store), got a local archive root"
            )
        return ZarrAppendOptions(
            settings.store_template, settings.array_template, compression=settings.compression,
            frames_per_chunk=settings.frames_per_chunk, frames_per_shard=settings.frames_per_shard,
            flush_frames=settings.flush_frames, max_frames=settings.max_frames, on_exists="append",
            root=settings.root, fsync=settings.fsync,
        )  # fmt: skip

    def _template_root(self, settings: ZarrAppendWriterSettings) -> str:
        return os.sep if is_object_url(settings.root) else settings.root  # keys are confined by naming.keys

    def _route(self, item: DeadLetter, target: Target[ZarrAppendWriterSettings]) -> str:
        """The store's key, for an object-store root, rendered and confined as the archiver does."""
        if self._objects is None or not is_object_url(target.settings.root):
            return super()._route(item, target)
        location = self._objects.location
        rendered = target.files.render_text(self._context(item, target))
        return confine_key(rendered, location.url(), location.prefix, target.files.source)

    def _template_sources(self, settings: ZarrAppendWriterSettings) -> tuple[str, str | None]:
        return settings.store_template, settings.array_template

    def _make_sink(self, target: Target[ZarrAppendWriterSettings]) -> ContainerSink:
        from ..sinks.zarr_append import ZarrAppendSink

        objects = self._objects if is_object_url(target.settings.root) else None
        settings = target.options.sink_settings(target.settings.root, target.settings.sequence_key, objects)
        return ZarrAppendSink(settings, self._member_of(target))
