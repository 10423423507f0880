"""JSON files for dict payloads, with numpy values, datetimes and other common types encoded, not dropped.

Encoding of values plain JSON has no type for (documented in the README):
numpy scalars and arrays -> numbers and (nested) lists; datetime/date/time -> ISO 8601 strings;
complex -> ``{"real": x, "imag": y}``; bytes -> ``{"base64": "..."}``; sets/tuples -> lists;
Path/UUID/Decimal/Enum -> strings (Enum: its value); NaN/inf -> null; integers of any size -> their exact digits.
Anything else is an error, never a silent drop.
"""

from __future__ import annotations

import base64
import decimal
import enum
import uuid
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
import orjson

from ..errors import PayloadError
from ..saferepr import safe_repr
from .base import Content

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE


def _encode_extra(value: Any) -> Any:
    """orjson's fallback for types it does not know natively."""
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:  # orjson writes only C-contiguous arrays: a copy is written as they are
            return np.ascontiguousarray(value)  # (not as .tolist(), which writes float32 values as float64 ones)
        return value.tolist()  # a dtype orjson does not write
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, complex):
        return {"real": value.real, "imag": value.imag}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        return _in_written_order(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (PurePath, uuid.UUID, decimal.Decimal)):
        return str(value)
    raise TypeError(f"no JSON encoding for {type(value).__name__}")


#: orjson writes integers of at most 64 bits; JSON itself (and CBOR, and Python) has no such limit.
_INTEGER_RANGE = range(-(2**63), 2**64)


def _in_written_order(items: set[Any] | frozenset[Any]) -> list[Any]:
    """A set as the list it is written as (sorted by repr: the same set gives the same file)."""
    return sorted(items, key=repr)


def encode_json(value: Any) -> bytes:
    """Encode ``value`` to JSON bytes; raise PayloadError naming the type that has no encoding."""
    try:
        return orjson.dumps(value, default=_encode_extra, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        # an integer orjson cannot write (write it as its digits), or a contiguous big-endian array, which
        # orjson refuses instead of handing it to ``_encode_extra``
        if "64-bit" in str(exc) or "native-endianness" in str(exc):
            try:
                return orjson.dumps(_rewritten_for_orjson(value), default=_encode_extra, option=_OPTIONS)
            except orjson.JSONEncodeError as again:
                exc = again
        raise PayloadError(f"expected JSON-encodable data, got a value that is not: {exc}") from exc


def _rewritten_for_orjson(value: Any) -> Any:
    """``value`` with every integer beyond 64 bits replaced by its JSON text (an ``orjson.Fragment``) and
    every array of non-native byte order by a native copy (the same numbers).

    Only for the rare payload that has one, so the common path stays a single ``orjson.dumps``. Walks
    what may hold such a value: containers, and what ``_encode_extra`` turns into containers.
    """
    if isinstance(value, int):
        return value if value in _INTEGER_RANGE else orjson.Fragment(str(int(value)).encode())
    if isinstance(value, Mapping):
        return {
            (str(key) if isinstance(key, int) and key not in _INTEGER_RANGE else key): _rewritten_for_orjson(v)
            for key, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_rewritten_for_orjson(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return [_rewritten_for_orjson(item) for item in _in_written_order(value)]
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        return _rewritten_for_orjson(value.tolist())
    if isinstance(value, np.ndarray) and not value.dtype.isnative:
        return value.astype(value.dtype.newbyteorder("="))
    return value


class JsonFormat:
    """Writes a dict payload as a JSON object."""

    suffix = ".json"

    def prepare(self, payload: Any, metadata: Mapping[str, Any]) -> Content:
        """Encode now, so that an unencodable payload fails before a file is created."""
        if not isinstance(payload, Mapping):
            raise PayloadError(f"expected a dict as JSON data, got {type(payload).__name__} {safe_repr(payload, 80)}")
        return [encode_json(payload)]
