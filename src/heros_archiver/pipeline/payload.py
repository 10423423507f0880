"""Take an event payload apart into data and metadata, and measure what it holds for the queue's byte bound."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import PayloadError
from ..saferepr import safe_repr


def split_event(data: Any) -> tuple[Any, dict[str, Any]]:
    """``(data, metadata)`` from an event payload.

    Accepted: a 2-sequence ``(data, metadata_dict)`` (the HEROS convention) and, as the reference
    archiver does, a plain dict, which serves as both the data and the metadata.
    """
    if isinstance(data, Mapping):
        return data, dict(data)
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise PayloadError(
                f"expected a payload (data, metadata dict), got a {type(data).__name__} of length {len(data)}"
            )
        if not isinstance(data[1], Mapping):
            raise PayloadError(
                "expected a payload (data, metadata dict), got metadata of type "
                f"{type(data[1]).__name__}: {safe_repr(data[1], 80)}"
            )
        return data[0], dict(data[1])
    raise PayloadError(f"expected a payload (data, metadata dict), got {type(data).__name__}: {safe_repr(data, 80)}")


_LEAF_TYPES = frozenset({str, int, float, bool, type(None)})
#: Containers walked for what they hold (a ``Mapping`` or ``__dict__`` of another type is walked too).
_SEQUENCES = (list, tuple, set, frozenset, deque)


def item_nbytes(payload: Any, metadata: dict[str, Any]) -> int:
    """What one queued item holds: its payload and its metadata, each object counted once.

    A frame's metadata is a separate small dict (counted on the fast path), and so is a dict payload (a
    reading, whose values its metadata shares: counted twice, a bound above what they hold); any other
    payload is walked together with its metadata, so that values they share count once.
    """
    if type(payload) is np.ndarray and not payload.dtype.hasobject:
        return _array_nbytes(payload) + estimate_nbytes(metadata)
    if type(payload) is dict:  # a reading: both dicts on the fast path, values they share counted twice (more,
        return estimate_nbytes(payload) + estimate_nbytes(metadata)  # never less: 2.4 us instead of the walk's 6)
    return estimate_nbytes((payload, metadata))


def estimate_nbytes(value: Any) -> int:
    """Memory ``value`` holds, at every depth, for the queue's byte bound: never less than what it really holds.

    Containers count with their own size (``sys.getsizeof``: a dict's table, a list's pointers) plus what
    they hold, arrays with their data, other objects with their ``__dict__``; an object reached twice counts
    once, so a cycle (possible in locally fed items) ends the walk instead of looping. Iterative, so no
    nesting depth can exhaust the stack. Runs on the receive path for every event: a frame and a dict of
    plain values (the usual metadata) take a fast path without the walk's bookkeeping.
    """
    kind = type(value)
    if kind in _LEAF_TYPES:
        return sys.getsizeof(value)
    if kind is np.ndarray and not value.dtype.hasobject:
        return _array_nbytes(value)
    if kind is dict:
        total = sys.getsizeof(value)
        nested: list[Any] = []
        for key, item in value.items():  # the leaf test inline: ~2x faster than a call per value
            if type(key) in _LEAF_TYPES:
                total += sys.getsizeof(key)
            else:
                nested.append(key)
            if type(item) in _LEAF_TYPES:
                total += sys.getsizeof(item)
            else:
                nested.append(item)
        return total + _walk(nested, {id(value)}) if nested else total
    return _walk([value], set())


def _walk(stack: list[Any], seen: set[int]) -> int:
    """Total size of the objects on ``stack`` and everything they hold that is not in ``seen`` (ids)."""
    getsizeof = sys.getsizeof
    total = 0
    while stack:
        obj = stack.pop()
        ident = id(obj)
        if ident in seen:
            continue
        seen.add(ident)
        kind = type(obj)
        if kind in _LEAF_TYPES:
            total += getsizeof(obj)
        elif kind is dict or isinstance(obj, Mapping):
            total += getsizeof(obj)
            for key, item in obj.items():
                stack.append(key)
                stack.append(item)
        elif isinstance(obj, _SEQUENCES):
            total += getsizeof(obj)
            stack.extend(obj)
        elif isinstance(obj, np.ndarray):
            total += _array_nbytes(obj)
            if obj.dtype.hasobject:  # the array holds references: what they point to is held too
                stack.extend(obj.ravel().tolist())
        elif isinstance(obj, memoryview):
            total += getsizeof(obj) + obj.nbytes
        else:  # bytes, str subclasses, numpy scalars, ...: their own size, and their attributes if any
            total += getsizeof(obj)
            attributes = getattr(obj, "__dict__", None)
            if type(attributes) is dict:
                stack.append(attributes)
    return total


def _array_nbytes(array: np.ndarray) -> int:
    """An array's header and data (``getsizeof`` counts the data only when the array owns it, not for a view)."""
    size = sys.getsizeof(array)
    return size if array.base is None else size + int(array.nbytes)
