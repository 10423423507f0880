"""Replaying the dead letters of a ``ZarrArchiver``: each payload written again as one array, as the archiver would.

A ``ZarrArchiver`` records its settings with every dead letter (``ZarrWriterSettings``, ``kind: "zarr"``), as
the file archivers record their ``WriterSettings``. Replay rebuilds the archiver's ``ZarrArrayWriter`` from
them under the trusted archive root, with the operator's corrected store or array template if given, so the
group is rendered and confined, the array staged and published in one rename and an existing array treated
by the recorded ``on_exists``, exactly as in the archiver. An identical array at the key (a replay run twice,
or one cut short after its rename) counts as written. zarr is imported only when an entry needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .deadletter import DeadLetter
from .records import SettingsRecord
from .replay_catalog import Placed

if TYPE_CHECKING:
    from ..sinks.zarr_arrays import ZarrArrayWriter

#: The ``kind`` a ZarrArchiver's writer settings carry (file archivers' settings have no ``kind``).
ZARR_KIND = "zarr"


@dataclass
class ZarrWriterSettings(SettingsRecord):
    """What decides where and how a ZarrArchiver writes an array (recorded in its dead-letter entries). Values
    are checked where they are used (``ZarrArrayWriter``: the choices, the level's range, the templates)."""

    KIND: ClassVar[str] = ZARR_KIND
    LABEL: ClassVar[str] = "zarr writer settings"
    FIELD_TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "kind": (str,), "store_template": (str,), "array_path_template": (str,), "root": (str,),
        "on_exists": (str,), "fsync": (str,), "compression": (str,), "compression_level": (int,), "chunks": (str,),
    }  # fmt: skip

    kind: str
    store_template: str
    array_path_template: str
    root: str
    on_exists: str
    fsync: str
    compression: str
    compression_level: int
    chunks: str


class ZarrReplay:
    """Writes dead-lettered arrays through one ``ZarrArrayWriter`` per kind of settings; ``close`` at the end.

    Args:
        store_template: a corrected ``store_template`` for every Zarr entry (None: the recorded one).
        array_path_template: a corrected ``array_path_template`` for every Zarr entry (None: the recorded one).
    """

    def __init__(self, store_template: str | None = None, array_path_template: str | None = None) -> None:
        self._store_template = store_template
        self._array_path_template = array_path_template
        self._writers: dict[tuple[Any, ...], ZarrArrayWriter] = {}

    def plan(self, item: DeadLetter, settings: ZarrWriterSettings) -> list[Path | str]:
        """The array the payload would become (group and key rendered and confined); nothing written."""
        _, array = self._writer(settings).target(item.source, item.metadata)
        return [Path(array)]

    def write(self, item: DeadLetter, settings: ZarrWriterSettings) -> Placed:
        """Write the array; returns its path (``key-N`` under ``on_exists="unique"``) and location. Raises the
        writer's error (an existing array under ``on_exists="error"``, a payload zarr cannot store, ...): the
        entry then stays."""
        locations = self._writer(settings).write_located(item.source, item.payload, item.metadata, resumed=True)
        return Placed([Path(location.path) / str(location.member) for location in locations], locations)

    def close(self) -> None:
        """Finish the writers (each array was published already)."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _writer(self, settings: ZarrWriterSettings) -> ZarrArrayWriter:
        key = tuple(settings.to_dict().values())
        if key not in self._writers:
            from ..sinks.zarr_arrays import ZarrArrayWriter

            self._writers[key] = ZarrArrayWriter(
                self._store_template or settings.store_template,
                self._array_path_template or settings.array_path_template,
                settings.root,
                settings.on_exists,  # type: ignore[arg-type]  # checked by the writer
                settings.fsync,  # type: ignore[arg-type]  # idem
                settings.compression,
                settings.compression_level,
                0,
                settings.chunks,
            )
        return self._writers[key]
