"""JSON files for dict payloads, with numpy values, datetimes and other common types encoded, not dropped.

Encoding of values plain JSON has no type for (documented in the README):
numpy scalars and arrays -> numbers and (nested) lists; datetime/date/time -> ISO 8601 strings;
complex -> ``{"real": x, "imag": y}``; bytes -> ``{"base64": "..."}``; sets/tuples -> lists;
Path/UUID/Decimal/Enum -> strings (Enum: its value); NaN/inf -> null; integers of any size -> their exact digits.
Anything else is an error, never a silent drop. Keys that are not strings are written as their JSON text
(``1`` -> ``"1"``, ``None`` -> ``"null"``); two keys of one object that would be written alike are an
error too, since a reader would keep only one of their values.
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

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
#: Only for payloads with a key that is not a string, once their keys were checked not to collide.
_OPTIONS_NON_STR_KEYS = _OPTIONS | orjson.OPT_NON_STR_KEYS
#: What orjson says of a dict key that is not a string when OPT_NON_STR_KEYS is off.
_NON_STR_KEY_MESSAGE = "Dict key must be str"


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
    """Encode ``value`` to JSON bytes; raise PayloadError naming the type that has no encoding.

    The common payload (string keys only) takes one ``orjson.dumps``. One with other keys is first
    checked for keys that would be written alike (``1`` and ``"1"``): orjson would write both, and every
    JSON reader keeps only the last.
    """
    try:
        try:
            return _dumps(value, _OPTIONS)
        except orjson.JSONEncodeError as exc:
            if _NON_STR_KEY_MESSAGE not in str(exc):
                raise
        _check_written_keys_distinct(value)
        return _dumps(value, _OPTIONS_NON_STR_KEYS)
    except PayloadError:
        raise
    except orjson.JSONEncodeError as exc:  # orjson's error is TypeError itself: also what _encode_extra raises
        raise PayloadError(f"expected JSON-encodable data, got a value that is not: {exc}") from exc


def _dumps(value: Any, options: int) -> bytes:
    """``orjson.dumps`` with our fallback encodings, and integers beyond 64 bits written as their digits."""
    try:
        return orjson.dumps(value, default=_encode_extra, option=options)
    except orjson.JSONEncodeError as exc:
        # an integer orjson cannot write (write it as its digits), or a contiguous big-endian array, which
        # orjson refuses instead of handing it to ``_encode_extra``
        if "64-bit" not in str(exc) and "native-endianness" not in str(exc):
            raise
        _check_written_keys_distinct(value)  # big integer keys become strings, which may meet a string key
        return orjson.dumps(_rewritten_for_orjson(value), default=_encode_extra, option=options)


def _check_written_keys_distinct(value: Any) -> None:
    """Raise PayloadError if an object inside ``value`` has two keys that JSON would write as one name.

    Iterative, so that a deeply nested payload cannot exhaust the stack (orjson refuses more than 254
    levels in any case).
    """
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, Mapping):
            written: dict[str, Any] = {}
            for key in node:
                name = _written_key(key)
                if name in written:
                    raise PayloadError(
                        f"expected object keys that stay distinct in JSON, got {safe_repr(written[name], 80)} and "
                        f"{safe_repr(key, 80)}, "
                        f"both written as {safe_repr(name, 80)} (a reader would keep only one of the two values)"
                    )
                written[name] = key
            pending.extend(node.values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            pending.extend(node)
        elif isinstance(node, np.ndarray) and node.dtype.hasobject:
            pending.extend(node.ravel().tolist())


def _written_key(key: Any) -> str:
    """The object member name orjson writes for dict key ``key`` (with OPT_NON_STR_KEYS)."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool) and key not in _INTEGER_RANGE:
        return str(key)  # as _rewritten_for_orjson writes it
    try:
        encoded = orjson.dumps({key: None}, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        raise PayloadError(
            "expected a JSON object key (str, number, bool, None, date/time, UUID, enum), got "
            f"{safe_repr(key, 80)}: {exc}"
        ) from exc
    (name,) = orjson.loads(encoded)
    return str(name)


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

    def prepare(self, payload: Any) -> Content:
        """Encode now, so that an unencodable payload fails before a file is created."""
        if not isinstance(payload, Mapping):
            raise PayloadError(f"expected a dict as JSON data, got {type(payload).__name__} {safe_repr(payload, 80)}")
        return [encode_json(payload)]
