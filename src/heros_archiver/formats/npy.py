"""NumPy ``.npy`` files: arrays of any numeric or boolean dtype and shape, no pickled objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from ..errors import PayloadError
from .base import Writer


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
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


class NpyFormat:
    """Writes one array per file in NumPy's ``.npy`` format (``np.load`` reads it back)."""

    suffix = ".npy"

    def prepare(self, payload: Any, metadata: Mapping[str, Any]) -> tuple[Writer, int]:
        """Validate the array; the writer streams it without an intermediate copy."""
        array = as_array(payload)

        def write(fh: BinaryIO) -> None:
            np.lib.format.write_array(fh, array, allow_pickle=False)

        return write, int(array.nbytes)
