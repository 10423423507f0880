"""DatasourceArchiver: the readings of HEROS datasources (``observable_data``) as rows of Parquet tables.

A datasource HERO (``heros.LocalDatasourceHERO``, ``PolledLocalDatasourceHERO``) publishes the event
``observable_data`` with a ``DatasourceReturnSet``: a tuple of ``DatasourceReturnValue`` dicts, which heros
serialises as a list of dicts (``heros.DatasourceObserver`` turns them back). This archiver subscribes to
that event of every HERO its selector matches (the whole realm by default) and writes one row per value,
with the fields as typed columns, into the tables of ``ParquetArchiver``. A BOSS config of three lines
archives a lab's sensors::

    {"_id": "sensor-archive", "classname": "heros_archiver.DatasourceArchiver",
     "arguments": {"file_template": "/data/sensors/date={{ date }}/{{ hour }}.parquet"}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import PayloadError
from ..pipeline.queueing import Item
from ..saferepr import safe_repr
from ..state.replay_parquet import DATASOURCE_ROWS
from .parquet import ParquetArchiver

#: The event every datasource HERO publishes its readings with.
DATASOURCE_EVENT = "observable_data"
#: The fields of a ``DatasourceReturnValue`` and the type of their columns (as the heros class documents them).
DATASOURCE_FIELDS: dict[str, str] = {
    "id": "string",
    "time": "float64",
    "value": "float64",
    "unit": "string",
    "raw_value": "float64",
    "raw_unit": "string",
    "inbound": "int64",
    "calibrated": "bool",
}
_NUMBER_FIELDS = ("value", "raw_value", "time")


class DatasourceArchiver(ParquetArchiver):
    """Archive ``observable_data`` of the datasource HEROs matching ``object_selector`` (default: all of the
    realm), one row per ``DatasourceReturnValue``: ``id``, ``time`` (seconds since the epoch, as the
    datasource stamped it), ``value``, ``unit``, ``raw_value``, ``raw_unit``, ``inbound``, ``calibrated``, and
    the archiver's ``source_name``, ``sequence``, ``received``, ``item_key``. Fields a datasource adds become
    columns too. Integer values are stored as the float64 they equal (refused if they are not exactly one);
    a value of another kind (text) follows ``on_schema_change``. Every other argument as ``ParquetArchiver``.
    """

    def __init__(
        self,
        file_template: str,
        object_selector: str = "*",
        *args: Any,
        event_name: str = DATASOURCE_EVENT,
        **kwargs: Any,
    ) -> None:
        ParquetArchiver.__init__(self, file_template, object_selector, event_name, *args, **kwargs)

    def feed(self, source_name: str, data: Any, retry_count: int = 0) -> None:
        """A return set arrives as a list of dicts, which is no ``(data, metadata)`` pair: it is the data."""
        if isinstance(data, list | tuple) and all(isinstance(value, Mapping) for value in data):
            data = (list(data), {})
        super().feed(source_name, data, retry_count)

    def _base_types(self) -> dict[str, Any]:
        return datasource_types()

    def _rows_of(self, item: Item) -> Sequence[Mapping[str, Any]]:
        return datasource_rows(item)

    def _replay_rows(self) -> str | None:
        """``"datasource"``: replay makes a row per value, as here (None for a subclass with rows of its own)."""
        cls = type(self)
        own = cls._rows_of is DatasourceArchiver._rows_of and cls._base_types is DatasourceArchiver._base_types
        return DATASOURCE_ROWS if own else None


def datasource_types() -> dict[str, Any]:
    """The Arrow types of the ``DatasourceReturnValue`` fields' columns, fixed before the first rows."""
    import pyarrow as pa

    return {name: pa.type_for_alias(kind) for name, kind in DATASOURCE_FIELDS.items()}


def datasource_rows(item: Item) -> Sequence[Mapping[str, Any]]:
    """The rows of a ``DatasourceArchiver`` item (a whole ``DatasourceReturnSet``): one per value."""
    values = item.payload
    if not isinstance(values, list) or not all(isinstance(value, Mapping) for value in values):
        raise PayloadError(
            f"item from {item.source!r}: expected a DatasourceReturnSet (a list of DatasourceReturnValue "
            f"dicts), got {type(values).__name__} {safe_repr(values, 80)}"
        )
    return [_row(value, item.source) for value in values]


def _row(value: Mapping[str, Any], source: str) -> dict[str, Any]:
    """One return value as a row: numbers of the float fields as floats (only when exactly equal)."""
    row = dict(value)
    for name in _NUMBER_FIELDS:
        number = row.get(name)
        if isinstance(number, int) and not isinstance(number, bool):
            try:
                as_float = float(number)
            except OverflowError:
                as_float = float("nan")
            if as_float != number:
                raise PayloadError(
                    f"a reading from {source!r}: field {name!r} is the integer {number}, which no float64 equals"
                )
            row[name] = as_float
    return row
