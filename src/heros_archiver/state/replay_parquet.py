"""Replaying the dead letters of a ``ParquetArchiver`` or ``DatasourceArchiver``: their rows appended to their table.

Both record their settings with every dead letter (``ParquetWriterSettings``, ``kind: "parquet"``), with
``rows`` saying how an item becomes rows: ``"reading"`` (the payload dict is one row) or ``"datasource"`` (the
entry holds the whole ``DatasourceReturnSet`` that arrived, a row per value, with the datasource fields'
column types fixed). Replay renders the file from ``file_template`` (``--template`` corrects it) with what the
archiver's template saw (the metadata, ``source_name``, and ``received``, ``date``, ``hour`` from the receive
time the entry kept) and appends through a ``ParquetSink`` made from the archiver's options
(``replay_containers``), so the table layout is the archiver's: the same columns (``source_name``,
``sequence``, ``received``, ``item_key`` and the values'), compression and row groups.

A published Parquet file is never written again, so the rows go into the next free part of the series
(``name-N.parquet``, as the archiver continues after a restart), published when replay ends. Each entry
leaves the store once its rows are journaled (the archiver's commit point, decision 0027); a replay killed
before the publish leaves the journal, which the next replay of Parquet entries under that root (or the
next start of a Parquet archiver there) rebuilds into the file first, so that an entry it had journaled is
found by its key (journals of running processes are left alone, as at an archiver's start). An
item whose key a published part of its series holds (a replay run twice) writes no second row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..checks import check_choice
from ..pipeline.queueing import Item
from ..sinks.base import ContainerSink
from .deadletter import DeadLetter
from .records import NONE, SettingsRecord
from .replay_containers import ContainerReplay, Target

if TYPE_CHECKING:
    from ..archivers.options import ParquetOptions

#: The ``kind`` the writer settings of a ParquetArchiver (and DatasourceArchiver) carry.
PARQUET_KIND = "parquet"
#: ``rows`` of a ParquetArchiver: the payload dict is one row.
READING_ROWS = "reading"
#: ``rows`` of a DatasourceArchiver: the payload is a DatasourceReturnSet, a row per value.
DATASOURCE_ROWS = "datasource"


@dataclass
class ParquetWriterSettings(SettingsRecord):
    """What decides where and how a ParquetArchiver appends an item's rows (recorded in its dead letters)."""

    KIND: ClassVar[str] = PARQUET_KIND
    LABEL: ClassVar[str] = "parquet writer settings"
    FIELD_TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "kind": (str,), "file_template": (str,), "root": (str,), "rows": (str,), "on_schema_change": (str,),
        "row_group_rows": (int,), "max_rows": (int, NONE), "max_bytes": (int, NONE), "on_exists": (str,),
        "compression": (str,), "fsync": (str,), "sequence_key": (str, NONE),
    }  # fmt: skip

    kind: str
    file_template: str
    root: str
    rows: str
    on_schema_change: str
    row_group_rows: int
    max_rows: int | None
    max_bytes: int | None
    on_exists: str
    compression: str
    fsync: str
    sequence_key: str | None


class ParquetReplay(ContainerReplay[ParquetWriterSettings]):
    """Appends dead-lettered items' rows through a ``ParquetSink`` per kind of settings (``ContainerReplay``).

    Args:
        template: a corrected ``file_template`` for every Parquet entry (None: the recorded one).
    """

    def _options(self, settings: ParquetWriterSettings) -> ParquetOptions:
        from ..archivers.options import ParquetOptions

        check_choice("rows", settings.rows, (READING_ROWS, DATASOURCE_ROWS))
        return ParquetOptions(
            settings.file_template, on_schema_change=settings.on_schema_change,
            row_group_rows=settings.row_group_rows, max_rows=settings.max_rows, max_bytes=settings.max_bytes,
            on_exists="append", compression=settings.compression, root=settings.root, fsync=settings.fsync,
        )  # fmt: skip

    def _template_sources(self, settings: ParquetWriterSettings) -> tuple[str, str | None]:
        return settings.file_template, None

    def _context(self, item: Item | DeadLetter, target: Target[ParquetWriterSettings]) -> dict[str, Any]:
        from ..archivers.parquet import time_names

        received = dt.datetime.fromtimestamp(item.received, dt.UTC)
        return {**super()._context(item, target), **time_names(received)}

    def _make_sink(self, target: Target[ParquetWriterSettings]) -> ContainerSink:
        """The sink, after the files of journals that dead processes left under the root are rebuilt (their
        keys found, so that an item a killed replay journaled is not written twice)."""
        from ..sinks.containers.parquet import recovered_spans
        from ..sinks.parquet import ParquetSink

        root, rows = target.settings.root, target.settings.rows
        rows_of, base_types = _rows(rows)
        settings = target.options.sink_settings(root, target.settings.sequence_key, base_types())
        return ParquetSink(settings, rows_of, recovered_spans(root))


def _rows(
    rows: str,
) -> tuple[Callable[[Item], Sequence[Mapping[str, Any]]], Callable[[], Mapping[str, Any]]]:
    """How an item of ``rows`` becomes rows, and the column types fixed before the first: the archiver's own."""
    if rows == DATASOURCE_ROWS:
        from ..archivers.datasource import datasource_rows, datasource_types

        return datasource_rows, datasource_types
    from ..archivers.parquet import reading_rows

    return reading_rows, dict
