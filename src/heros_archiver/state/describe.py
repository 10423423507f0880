"""Readable descriptions of values for the archiver's own ``entry.json`` files, built so that they cannot fail.

A dead-letter entry is written for items that already failed, often because of something odd in them:
a value JSON cannot carry, a key that is a tuple, a structure so deep that ``repr`` raises
``RecursionError``. Describing such an item must not fail in turn (a writer that cannot write an entry
holds back its whole queue), so every function here catches what the value throws and describes that.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..formats.json import encode_json
from ..saferepr import safe_repr, type_name


def describe(value: Any) -> dict[str, str]:
    """What a value JSON cannot carry is written as: its type and a truncated repr."""
    return {"unencodable": type_name(value), "repr": safe_repr(value)}


def summary(value: Any) -> dict[str, Any]:
    """Type, and for an array its dtype and shape: cheap enough for every spooled frame (no repr)."""
    doc: dict[str, Any] = {"type": type_name(value)}
    if isinstance(value, np.ndarray):
        doc.update(dtype=value.dtype.str, shape=list(value.shape))
    return doc


def readable(value: Any) -> Any:
    """``value`` as the archiver's JSON encoding writes it (numbers, lists, ISO dates), or its description."""
    try:
        return json.loads(encode_json(value))  # json, not orjson: it reads integers of any size
    except Exception:  # noqa: BLE001 - PayloadError, RecursionError, MemoryError...: described instead
        return describe(value)


def readable_metadata(metadata: Mapping[Any, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metadata for ``entry.json``, value by value: one value JSON cannot carry is described, the others stay.

    Returns the values under text keys, and the items whose key is not text (an int, a tuple, bytes:
    CBOR carries them) as ``{"key": repr, "key_type": ..., "value": ...}``, so that no two keys can
    collide once written (``1`` and ``"1"``).
    """
    values: dict[str, Any] = {}
    other: list[dict[str, Any]] = []
    for key, value in metadata.items():
        if type(key) is str:
            values[key] = readable(value)
        else:
            other.append({"key": safe_repr(key), "key_type": type_name(key), "value": readable(value)})
    return values, other
