"""JSON files for dict payloads, with numpy values, datetimes and other common types encoded, not dropped.

Encoding of values plain JSON has no type for (documented in the README):
numpy scalars and arrays -> numbers and (nested) lists; datetime/date/time -> ISO 8601 strings;
complex -> ``{"real": x, "imag": y}``; bytes -> ``{"base64": "..."}``; sets/tuples -> lists;
Path/UUID/Decimal/Enum -> strings (Enum: its value); NaN/inf -> null. Anything else is an error, never a silent drop.
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
from .base import Content

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE


def _encode_extra(value: Any) -> Any:
    """orjson's fallback for types it does not know natively."""
    if isinstance(value, np.ndarray):
        return value.tolist()  # non-contiguous or an unsupported dtype
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, complex):
        return {"real": value.real, "imag": value.imag}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (PurePath, uuid.UUID, decimal.Decimal)):
        return str(value)
    raise TypeError(f"no JSON encoding for {type(value).__name__}")


def encode_json(value: Any) -> bytes:
    """Encode ``value`` to JSON bytes; raise PayloadError naming the type that has no encoding."""
    try:
        return orjson.dumps(value, default=_encode_extra, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise PayloadError(f"expected JSON-encodable data, got a value that is not: {exc}") from exc


class JsonFormat:
    """Writes a dict payload as a JSON object."""

    suffix = ".json"

    def prepare(self, payload: Any, metadata: Mapping[str, Any]) -> Content:
        """Encode now, so that an unencodable payload fails before a file is created."""
        if not isinstance(payload, Mapping):
            raise PayloadError(f"expected a dict as JSON data, got {type(payload).__name__} {repr(payload)[:80]}")
        return [encode_json(payload)]
