"""Replaying the dead letters of an ``Hdf5Archiver``: each frame appended again to the file and stack it was for.

An ``Hdf5Archiver`` records its settings with every dead letter (``Hdf5WriterSettings``, ``kind: "hdf5"``), as
the file archivers record their ``WriterSettings``. Replay renders the file path from ``file_template`` (or
the operator's corrected one) under the trusted archive root, and the stack from ``dataset_template`` (or a
corrected one), and appends the frame through the archiver's own container sink: the same confinement, the
same item key, the same rollover. The file is appended to (``on_exists="append"``, whatever the archiver's
policy was: the frames of the store belong to the run that wrote it) or made if it is missing; a frame whose
key the file already holds (a replay run twice, or one cut short after its commit) is not written again.
Each frame is committed before its entry leaves the store (the steps all container kinds share are
``replay_containers.ContainerReplay``'s). h5py is imported only when an entry needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..sinks.base import ContainerSink
from .records import NONE, SettingsRecord
from .replay_containers import ContainerReplay, Target

if TYPE_CHECKING:
    from ..archivers.options import Hdf5Options

#: The ``kind`` an Hdf5Archiver's writer settings carry (file archivers' settings have no ``kind``).
HDF5_KIND = "hdf5"


@dataclass
class Hdf5WriterSettings(SettingsRecord):
    """What decides where and how an Hdf5Archiver appends a frame (recorded in its dead-letter entries)."""

    KIND: ClassVar[str] = HDF5_KIND
    LABEL: ClassVar[str] = "hdf5 writer settings"
    FIELD_TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "kind": (str,), "file_template": (str,), "dataset_template": (str,), "root": (str,), "compression": (str,),
        "frames_per_chunk": (int, NONE), "on_exists": (str,), "fsync": (bool,), "max_frames": (int, NONE),
        "max_bytes": (int, NONE), "sequence_key": (str, NONE),
    }  # fmt: skip

    kind: str
    file_template: str
    dataset_template: str
    root: str
    compression: str
    frames_per_chunk: int | None
    on_exists: str
    fsync: bool
    max_frames: int | None
    max_bytes: int | None
    sequence_key: str | None


class Hdf5Replay(ContainerReplay[Hdf5WriterSettings]):
    """Appends dead-lettered frames through an ``Hdf5Sink`` per kind of settings (``ContainerReplay``).

    Args:
        template: a corrected ``file_template`` for every HDF5 entry (None: the recorded one).
        member_template: a corrected ``dataset_template`` for every HDF5 entry (None: the recorded one).
    """

    def _options(self, settings: Hdf5WriterSettings) -> Hdf5Options:
        from ..archivers.options import Hdf5Options

        return Hdf5Options(
            settings.file_template, settings.dataset_template, compression=settings.compression,
            frames_per_chunk=settings.frames_per_chunk, max_frames=settings.max_frames,
            max_bytes=settings.max_bytes, on_exists="append", root=settings.root,
            fsync="file" if settings.fsync else "none",
        )  # fmt: skip

    def _template_sources(self, settings: Hdf5WriterSettings) -> tuple[str, str | None]:
        return settings.file_template, settings.dataset_template

    def _make_sink(self, target: Target[Hdf5WriterSettings]) -> ContainerSink:
        from ..sinks.hdf5 import Hdf5Sink

        settings = target.options.sink_settings(target.settings.root, target.settings.sequence_key)
        return Hdf5Sink(settings, self._member_of(target))
