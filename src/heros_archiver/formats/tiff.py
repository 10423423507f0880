"""TIFF files, one array per file (``TiffArchiver``): tifffile, Fiji and napari read them.

tifffile writes the file (imported when the format is made, never with the package): one page for a 2-D
array, one page per index of the leading axes for more, and its JSON ``shape`` description, from which
``tifffile.imread`` gives back the array's exact shape (0-D and 1-D too). The file has the array's own byte
order (a big-endian array makes a big-endian TIFF) and its dtype as TIFF's sample format; BigTIFF is chosen
by tifffile when the file would pass 4 GiB. A value that cannot be a TIFF page is refused before any file
exists: another dtype kind than bool, integers, floats and complex floats, or an array with an empty axis.
"""

from __future__ import annotations

import io
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import PayloadError
from ..extras import require_extra
from .base import Content
from .npy import as_array

#: dtype kinds TIFF has a sample format for (bool is written as 1-bit pages and read back as bool).
_KINDS = "buifc"


def load_tifffile() -> ModuleType:
    """tifffile, or a ConfigurationError that names the extra to install."""
    return require_extra("tiff", "tifffile")


class TiffFormat:
    """Writes one array per file as a TIFF (``tifffile.imread`` gives it back: dtype, shape, values)."""

    def __init__(self) -> None:
        self._tifffile = load_tifffile()

    def prepare(self, payload: Any) -> Content:
        """Validate the array, then encode the whole file in memory (a copy of the pixels: tifffile's way)."""
        array = as_array(payload)
        if array.dtype.kind not in _KINDS or array.dtype.fields is not None:
            raise PayloadError(
                f"expected an array TIFF can hold (bool, integers, floats, complex floats), got dtype {array.dtype} "
                f"of shape {array.shape}"
            )
        if 0 in array.shape:
            raise PayloadError(
                f"expected an array without an empty axis (a TIFF page has a width and a height of at least 1), got "
                f"shape {array.shape} of dtype {array.dtype}"
            )
        if array.dtype.kind == "b" and array.ndim < 2 and array.size < 2:
            raise PayloadError(
                f"expected a bool array of two or more values, or of two or more axes (a bilevel TIFF image; "
                f"tifffile cannot write one value alone), got shape {array.shape}"
            )
        order = ">" if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not np.little_endian) else "<"
        buffer = io.BytesIO()
        # photometric only for 2-D and more: tifffile fails on 0-D and 1-D arrays given one (2026.3)
        options: dict[str, Any] = {"photometric": "minisblack"} if array.ndim >= 2 else {}
        try:
            self._tifffile.imwrite(buffer, array, byteorder=order, **options)
        except (ValueError, TypeError, IndexError) as exc:  # IndexError: tifffile 2026.3 on some shapes
            raise PayloadError(
                f"tifffile cannot write an array of dtype {array.dtype} and shape {array.shape}: {exc}"
            ) from exc
        return [buffer.getbuffer()]
