"""Decode the usual camera payload ``(ndarray, metadata)`` without copying the array's bytes.

heros serialises an event returning ``(frame, metadata)`` as the CBOR array ``[tag 4242 [shape, dtype,
data], {metadata}]``. Its generic decoder copies ``data`` out of the received buffer before wrapping it
in an array; for camera frames that is one full extra copy per frame. Here the header is read by hand
and the array is a read-only view into the received ``bytes`` (exactly what heros returns, minus the
copy); the small metadata map goes through heros' own decoder. Anything else returns None, and the
caller falls back to heros' decoder, so the result is always the same as heros'.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from heros import serdes

_NDARRAY_TAG = serdes.ndarray_tag
_MIN_SIZE = 1 << 16  # below this, the generic decoder is as fast and nothing is worth saving


def _head(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, position after the head) of the CBOR data item at ``pos``."""
    initial = buf[pos]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, pos + 1
    if info > 27:
        raise ValueError("indefinite length or reserved additional information")
    width = 1 << (info - 24)
    end = pos + 1 + width
    if end > len(buf):
        raise ValueError("truncated")
    return major, int.from_bytes(buf[pos + 1 : end], "big"), end


def decode_frame_event(buf: bytes) -> tuple[np.ndarray, Any] | None:
    """``(array, metadata)`` decoded from ``buf`` if it has the camera-event shape, else None."""
    if len(buf) < _MIN_SIZE:
        return None
    try:
        major, count, pos = _head(buf, 0)
        if major != 4 or count != 2:
            return None
        major, tag, pos = _head(buf, pos)
        if major != 6 or tag != _NDARRAY_TAG:
            return None
        major, count, pos = _head(buf, pos)
        if major != 4 or count != 3:
            return None
        major, ndim, pos = _head(buf, pos)
        if major != 4:
            return None
        shape = []
        for _ in range(ndim):
            major, size, pos = _head(buf, pos)
            if major != 0:
                return None
            shape.append(size)
        major, length, pos = _head(buf, pos)
        if major != 2:
            return None
        dtype = np.dtype(buf[pos : pos + length].decode())
        pos += length
        major, nbytes, pos = _head(buf, pos)
        if major != 2 or pos + nbytes > len(buf) or dtype.hasobject:
            return None
        array = np.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize if dtype.itemsize else 0, offset=pos)
        array = array.reshape(shape)
        metadata = serdes.deserialize(buf[pos + nbytes :])
    except (ValueError, TypeError, IndexError, UnicodeDecodeError):
        return None
    except Exception:  # noqa: BLE001 - any surprise: let heros' decoder handle (and report) it
        return None
    return array, metadata
