"""Replaying the dead letters of an ``Hdf5Archiver``: each frame appended again to the file and stack it was for.

An ``Hdf5Archiver`` records its settings with every dead letter (``Hdf5WriterSettings``, ``kind: "hdf5"``), as
the file archivers record their ``WriterSettings``. Replay renders the file path from ``file_template`` (or
the operator's corrected one) under the trusted archive root, and the stack from ``dataset_template`` (or a
corrected one), and appends the frame through the archiver's own container sink: the same confinement, the
same item key, the same rollover. The file is appended to (``on_exists="append"``, whatever the archiver's
policy was: the frames of the store belong to the run that wrote it) or made if it is missing; a frame whose
key the file already holds (a replay run twice, or one cut short after its commit) is not written again.
Each frame is committed before its entry leaves the store. h5py is imported only when an entry needs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, ReplayError
from ..naming.templates import PathTemplate
from ..pipeline.queueing import Item
from ..sinks.writer import _refuse_reserved
from .deadletter import DeadLetter
from .records import NONE, strict_fields

if TYPE_CHECKING:
    from ..sinks.hdf5 import Hdf5Sink

#: The ``kind`` an Hdf5Archiver's writer settings carry (file archivers' settings have no ``kind``).
HDF5_KIND = "hdf5"


@dataclass
class Hdf5WriterSettings:
    """What decides where and how an Hdf5Archiver appends a frame (recorded in its dead-letter entries)."""

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

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Hdf5WriterSettings:
        """Inverse of ``to_dict``, strict (the dict comes from a file that may have been edited): every field,
        nothing else, each of its JSON type (``true`` is no number, ``1`` no boolean)."""
        return cls(**strict_fields(cls, data, "hdf5 writer settings", _FIELD_TYPES, HDF5_KIND))


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "file_template": (str,),
    "dataset_template": (str,),
    "root": (str,),
    "compression": (str,),
    "frames_per_chunk": (int, NONE),
    "on_exists": (str,),
    "fsync": (bool,),
    "max_frames": (int, NONE),
    "max_bytes": (int, NONE),
    "sequence_key": (str, NONE),
}


class Hdf5Replay:
    """Appends dead-lettered frames through one container sink per kind of settings; ``close`` at the end.

    Args:
        file_template: a corrected ``file_template`` for every HDF5 entry (None: the recorded one).
        dataset_template: a corrected ``dataset_template`` for every HDF5 entry (None: the recorded one).
    """

    def __init__(self, file_template: str | None = None, dataset_template: str | None = None) -> None:
        self._file_template = file_template
        self._dataset_template = dataset_template
        self._sinks: dict[tuple[Any, ...], tuple[Hdf5Sink, PathTemplate, PathTemplate]] = {}

    def plan(self, item: DeadLetter, settings: Hdf5WriterSettings) -> list[Path]:
        """The file the frame would be appended to (rendered and confined), the stack rendered; nothing written."""
        _, files, datasets = self._sink(settings)
        path, _ = self._target(item, files, datasets, settings)
        return [Path(path)]

    def write(self, item: DeadLetter, settings: Hdf5WriterSettings) -> list[Path]:
        """Append the frame and commit; returns the file the template rendered (a rollover part of it holds the
        frame when that one is full). Raises the append's or the commit's error: the entry then stays."""
        sink, files, datasets = self._sink(settings)
        path, _ = self._target(item, files, datasets, settings)
        frame = Item(item.source, item.payload, item.metadata, item.nbytes, item.received, route=path)
        settled = sink.append(frame)
        settled.add(sink.commit())
        for failure in settled.failed:
            raise failure.error
        if not any(done is frame for done in settled.archived):
            raise ReplayError(f"{item.path}: the frame was appended to {path} but no commit reported it")
        return [Path(path)]

    def close(self) -> None:
        """Close every file (each frame was committed already)."""
        for sink, _, _ in self._sinks.values():
            sink.close()
        self._sinks.clear()

    def _target(
        self, item: DeadLetter, files: PathTemplate, datasets: PathTemplate, settings: Hdf5WriterSettings
    ) -> tuple[str, str]:
        """The confined file path and the dataset of ``item``, rendered as the archiver renders them."""
        context = {**item.metadata, "source_name": item.source}
        path = files.render_confined(context)
        _refuse_reserved(path, settings.root, files.source)
        return path, datasets.render_text(context)

    def _sink(self, settings: Hdf5WriterSettings) -> tuple[Hdf5Sink, PathTemplate, PathTemplate]:
        key = tuple(settings.to_dict().values())
        if key in self._sinks:
            return self._sinks[key]
        from ..sinks.containers.hdf5 import COMPRESSIONS
        from ..sinks.hdf5 import Hdf5Sink, Hdf5SinkSettings

        if settings.compression not in COMPRESSIONS:
            raise ConfigurationError(
                f"hdf5 writer settings field 'compression': expected one of {sorted(COMPRESSIONS)}, "
                f"got {settings.compression!r}"
            )
        for name in ("frames_per_chunk", "max_frames", "max_bytes"):
            value = getattr(settings, name)
            if value is not None and value < 1:
                raise ConfigurationError(f"hdf5 writer settings field {name!r}: expected None or >= 1, got {value}")
        files = PathTemplate(self._file_template or settings.file_template, settings.root)
        datasets = PathTemplate(self._dataset_template or settings.dataset_template, settings.root)
        sink_settings = Hdf5SinkSettings(
            root=settings.root, compression=settings.compression, frames_per_chunk=settings.frames_per_chunk,
            on_exists="append", fsync=settings.fsync, flush_frames=1, flush_seconds=0.0, flush_bytes=1, flush_idle=None,
            max_frames=settings.max_frames, max_bytes=settings.max_bytes, idle_timeout=3600.0, max_open_files=4,
            sequence_key=settings.sequence_key,
        )  # fmt: skip
        sink = Hdf5Sink(sink_settings, lambda one: datasets.render_text({**one.metadata, "source_name": one.source}))
        self._sinks[key] = (sink, files, datasets)
        return self._sinks[key]
