"""Readings as table rows: the Arrow type of a value, the schema a file's first rows fix, rows waiting for a batch.

A reading is a dict of values; each key is a column. The first rows of a file fix its schema (key -> Arrow
type, exactly as the values arrived: a numpy ``float32`` is a ``float32`` column, a Python float a
``float64`` one); a later value fits only a column of exactly its type, or is None (a null). A key the
schema lacks or a value of another type is a ``SchemaMismatchError`` naming the key and both types, never a
cast: the sink then follows its ``on_schema_change`` policy (a new file with the wider schema, or the dead
letters). A value Parquet has no column for (an integer beyond 64 bits, a complex number) is a
``PayloadError`` of its own.

Imports pyarrow: reached only through the Parquet sink, which the Parquet archiver imports when it is made.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ...errors import PayloadError
from ...saferepr import safe_repr
from .arrow_arrays import to_array

__all__ = ["OWN_COLUMNS", "RowBuffer", "SchemaMismatchError", "schema_of", "value_type", "widened"]

#: The columns every row gets from the archiver: who sent it, its sequence value (``sequence_key``; null without
#: one), when it arrived, and the item key that de-duplicates readings resumed from the spool after a crash.
OWN_COLUMNS: tuple[pa.Field, ...] = (
    pa.field("source_name", pa.string(), nullable=False),
    pa.field("sequence", pa.int64()),
    pa.field("received", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("item_key", pa.binary(16), nullable=False),
)
_OWN_NAMES = frozenset(field.name for field in OWN_COLUMNS)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Python types whose column type does not depend on the value (checked first: most readings are these).
_FIXED_TYPES: dict[type, pa.DataType] = {
    float: pa.float64(),
    bool: pa.bool_(),
    str: pa.string(),
    bytes: pa.binary(),
}


class SchemaMismatchError(PayloadError):
    """A reading does not fit the schema its file's first rows fixed: a new key, or a value of another type.

    ``key``, ``expected`` (the column's type, None for a new key) and ``got`` (the value's type) say which;
    the sink starts a new file with the wider schema, or dead-letters the reading with this message.
    """

    def __init__(self, *, key: str, expected: pa.DataType | None, got: pa.DataType, source: str, path: str) -> None:
        self.key, self.expected, self.got = key, expected, got
        if expected is None:
            problem = f"has a new key {key!r} (type {got}) that the schema of {path} lacks"
        else:
            problem = f"has key {key!r} of type {got}, where the schema of {path} has {expected}"
        super().__init__(f"a reading from {source!r} {problem} (fixed by the file's first rows)")


def value_type(value: Any, key: str = "?") -> pa.DataType:
    """The Arrow type of a column that holds ``value`` as it is (None: the null type); PayloadError if none does."""
    kind = type(value)
    fixed = _FIXED_TYPES.get(kind)
    if fixed is not None:
        return fixed
    if value is None:
        return pa.null()
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return pa.int64()
        raise PayloadError(f"key {key!r}: the integer {safe_repr(value, 60)} does not fit a 64-bit column")
    if isinstance(value, np.generic) and not isinstance(value, str | bytes):
        try:
            return pa.from_numpy_dtype(value.dtype)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, TypeError) as exc:
            raise PayloadError(f"key {key!r}: Parquet has no column for a numpy {value.dtype} value") from exc
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):  # int subclasses (IntEnum): as the integers they are
        return value_type(int(value), key)
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, bytes):
        return pa.binary()
    if isinstance(value, dt.datetime):
        return pa.timestamp("us", tz="UTC") if value.tzinfo is not None else pa.timestamp("us")
    try:  # lists, nested dicts, dates: what Arrow makes of it
        return pa.array([value]).type
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
        raise PayloadError(
            f"key {key!r}: Parquet has no column for {type(value).__name__} {safe_repr(value, 80)} ({exc})"
        ) from exc


def _check_key(key: Any, source: str) -> str:
    if not isinstance(key, str):
        raise PayloadError(f"a reading from {source!r} has a key {safe_repr(key, 60)}; expected text (column names)")
    if key in _OWN_NAMES:
        raise PayloadError(
            f"a reading from {source!r} has the key {key!r}, one of the archiver's own columns "
            f"({', '.join(sorted(_OWN_NAMES))}); rename it at the sender"
        )
    return key


def schema_of(
    rows: Sequence[Mapping[str, Any]], source: str, base: Mapping[str, pa.DataType] | None = None
) -> pa.Schema:
    """The schema the first rows of a file fix: the archiver's own columns, then every key in order of first
    appearance, typed by its first value that is not None (``base`` types first, e.g. the datasource fields)."""
    types: dict[str, pa.DataType] = dict(base or {})
    for row in rows:
        for key, value in row.items():
            name = _check_key(key, source)
            if name not in types or types[name] == pa.null():
                types[name] = value_type(value, name)
    return pa.schema([*OWN_COLUMNS, *(pa.field(name, kind) for name, kind in types.items())])


def widened(schema: pa.Schema, rows: Sequence[Mapping[str, Any]], source: str) -> pa.Schema:
    """``schema`` with the keys of ``rows`` it lacks added and the types of those whose type differs taken from
    the rows: the schema of the file a mismatching reading starts (nothing converted, no column dropped)."""
    own = len(OWN_COLUMNS)
    types = {field.name: field.type for field in list(schema)[own:]}
    for row in rows:
        for key, value in row.items():
            name = _check_key(key, source)
            if value is not None or name not in types:
                types[name] = value_type(value, name)
    return pa.schema([*OWN_COLUMNS, *(pa.field(name, kind) for name, kind in types.items())])


class RowBuffer:
    """Rows of one file waiting to be written as one record batch, checked against its schema as they come."""

    def __init__(self, schema: pa.Schema, path: str) -> None:
        self.schema = schema
        self._path = path
        own = len(OWN_COLUMNS)
        self._names = [field.name for field in list(schema)[own:]]
        self._types = {field.name: field.type for field in list(schema)[own:]}
        #: per column, the Python type its values had so far (a value of that type fits without asking Arrow)
        self._seen: dict[str, type] = {}
        self._clear()

    def _clear(self) -> None:
        self._columns: dict[str, list[Any]] = {name: [] for name in self._names}
        self._sources: list[str] = []
        self._sequences: list[int | None] = []
        self._received: list[float] = []
        self._keys: list[bytes] = []

    def __len__(self) -> int:
        return len(self._sources)

    def check(self, rows: Sequence[Mapping[str, Any]], source: str) -> None:
        """Raise SchemaMismatchError (or PayloadError) unless every row fits; changes nothing."""
        types, seen = self._types, self._seen
        for row in rows:
            for key, value in row.items():
                if value is None:
                    if key not in types:
                        raise SchemaMismatchError(
                            key=_check_key(key, source), expected=None, got=pa.null(), source=source, path=self._path
                        )
                    continue
                if seen.get(key) is type(value):
                    continue
                expected = types.get(key)
                got = value_type(value, _check_key(key, source))
                if expected is None or got != expected:
                    raise SchemaMismatchError(key=key, expected=expected, got=got, source=source, path=self._path)
                if type(value) in _FIXED_TYPES or isinstance(value, np.generic):
                    seen[key] = type(value)

    def add(
        self, rows: Sequence[Mapping[str, Any]], source: str, sequence: int | None, received: float, key: bytes
    ) -> None:
        """Append ``rows`` (already checked) of one item."""
        for row in rows:
            for name, column in self._columns.items():
                column.append(row.get(name))
            self._sources.append(source)
            self._sequences.append(sequence)
            self._received.append(received)
            self._keys.append(key)

    def take(self) -> pa.RecordBatch:
        """The waiting rows as one record batch of the schema; the buffer is empty afterwards (arrays made by
        ``to_array``, not ``pa.array``, which would import pandas)."""
        micros = (np.asarray(self._received, dtype=np.float64) * 1e6).round().astype(np.int64)
        arrays = [
            to_array(self._sources, pa.string()),
            to_array(self._sequences, pa.int64()),
            pa.Array.from_buffers(pa.timestamp("us", tz="UTC"), len(micros), [None, pa.py_buffer(micros)]),
            to_array(self._keys, pa.binary(16)),
            *(to_array(self._columns[name], self._types[name]) for name in self._names),
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        self._clear()
        return batch

    def discard(self) -> None:
        """Forget the waiting rows (their items are handed back to be appended again)."""
        self._clear()
