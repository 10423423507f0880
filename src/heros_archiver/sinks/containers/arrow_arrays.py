"""Python values to Arrow arrays through numpy buffers, without ``pyarrow.array`` for the kinds readings have.

Why not ``pa.array``: every call asks pyarrow's pandas shim whether the values are pandas objects, and its
first call imports pandas whenever it is installed (pyarrow 26 has no switch against it): ~45 MiB of a
Parquet archiver's resident memory that no reading needs (docs/benchmarks.md, "Session 26"). Numbers,
booleans, text, bytes and datetimes are what readings hold; each becomes one numpy array or one joined bytes
object handed to ``pa.Array.from_buffers``, which never asks. Any other type (lists, structs, dates,
decimals, numpy datetimes) goes to ``pa.array``: correct, and the pandas import then happens once, in the
archives that have such columns only.

The values are those a ``RowBuffer`` checked: each None or exactly of the column's kind; a value that does
not fit a buffer after all (a fixed-size binary of another width, a datetime with a time zone in a naive
column) is left to ``pa.array``, which raises what it always raised.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["to_array"]

_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)
_MICROSECOND = dt.timedelta(microseconds=1)
#: offsets of ``pa.string()`` / ``pa.binary()`` are int32: a batch with more text than this takes ``pa.array``
_MAX_OFFSET = 2**31 - 1


def to_array(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
    """``values`` (each None or of the column's kind) as an Arrow array of type ``kind``, nulls where None."""
    length, nulls = len(values), values.count(None)
    present = None if nulls == 0 else np.fromiter((value is not None for value in values), dtype=bool, count=length)
    given = values if present is None else [value for value in values if value is not None]
    if kind == pa.string() or kind == pa.binary():
        buffers = _text(given, present, kind)
    else:
        data = _fixed_width(given, kind)
        buffers = None if data is None else [_pack(data if present is None else _spread(data, present, kind), kind)]
    if buffers is None:
        return pa.array(values, kind)
    validity = None if present is None else pa.py_buffer(np.packbits(present, bitorder="little"))
    return pa.Array.from_buffers(kind, length, [validity, *buffers], null_count=nulls)


def _fixed_width(values: Sequence[Any], kind: pa.DataType) -> np.ndarray | bytes | None:
    """The data buffer of ``values`` (no nulls) packed one after the other, or None: not a kind done here."""
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return np.fromiter(values, dtype=kind.to_pandas_dtype(), count=len(values))
    if pa.types.is_boolean(kind):
        return np.asarray(values, dtype=bool)
    if pa.types.is_fixed_size_binary(kind):
        joined = b"".join(values)
        return joined if len(joined) == kind.byte_width * len(values) else None
    if pa.types.is_timestamp(kind) and kind.unit == "us":
        aware = kind.tz is not None
        if any((value.tzinfo is not None) != aware for value in values):
            return None
        epoch = _EPOCH_UTC if aware else _EPOCH_NAIVE
        return np.asarray([(value - epoch) // _MICROSECOND for value in values], dtype=np.int64)
    return None


def _spread(data: np.ndarray | bytes, present: np.ndarray, kind: pa.DataType) -> np.ndarray:
    """``data`` laid out over every slot, zeros under the nulls (Arrow leaves those bytes undefined)."""
    if isinstance(data, bytes):
        data = np.frombuffer(data, dtype=np.uint8).reshape(-1, kind.byte_width)
    slots = np.zeros((len(present), *data.shape[1:]), dtype=data.dtype)
    slots[present] = data
    return slots


def _pack(data: np.ndarray | bytes, kind: pa.DataType) -> pa.Buffer:
    """The Arrow buffer of a fixed-width data buffer: booleans as bits, the rest as they are."""
    if pa.types.is_boolean(kind):
        return pa.py_buffer(np.packbits(np.asarray(data, dtype=bool), bitorder="little"))
    return pa.py_buffer(data)


def _text(values: Sequence[Any], present: np.ndarray | None, kind: pa.DataType) -> list[pa.Buffer] | None:
    """The offsets and data buffers of text or bytes ``values`` (the present ones), or None beyond int32 offsets."""
    encoded = [value.encode() for value in values] if kind == pa.string() else [bytes(value) for value in values]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    if present is not None:
        lengths, given = np.zeros(len(present), dtype=np.int64), lengths
        lengths[present] = given
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > _MAX_OFFSET:
        return None
    return [pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))]
