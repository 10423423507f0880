"""NumPy ``.npy`` files: arrays of any numeric or boolean dtype and shape, no pickled objects."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import PayloadError
from ..saferepr import safe_repr
from .base import Content


def as_array(payload: Any) -> np.ndarray:
    """The payload as an ndarray without copying arrays; lists and scalars of numbers are converted.

    Raises PayloadError for anything that would need pickling (dicts, strings mixed with numbers, objects).
    """
    if isinstance(payload, np.ndarray):
        array = payload
    elif isinstance(payload, (Mapping, str, bytes)) or payload is None:
        raise PayloadError(f"expected a numpy array (or a list of numbers), got {_describe(payload)}")
    else:
        try:
            array = np.asarray(payload)
        except (ValueError, TypeError) as exc:
            raise PayloadError(f"expected a numpy array, got {_describe(payload)} ({exc})") from exc
    if array.dtype.hasobject:
        raise PayloadError(
            f"expected a numpy array of a numeric or bool dtype, got dtype {array.dtype} from {_describe(payload)}"
        )
    return array


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {safe_repr(value, 80)}"


class NpyFormat:
    """Writes one array per file in NumPy's ``.npy`` format (``np.load`` reads it back)."""

    def prepare(self, payload: Any) -> Content:
        """Validate the array; the content is the ``.npy`` header and a view of the array's memory."""
        array = as_array(payload)
        if not array.flags.c_contiguous:  # never a 0-d array: np.ascontiguousarray would make it 1-d
            array = np.ascontiguousarray(array)
        header = io.BytesIO()
        try:
            np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
        except ValueError:  # a header too long for format 1.0 (huge structured dtypes): let numpy choose
            np.lib.format.write_array(header, array, allow_pickle=False)
            return [header.getvalue()]
        return [header.getvalue(), array.reshape(-1).view(np.uint8).data]
