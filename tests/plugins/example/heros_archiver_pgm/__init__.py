"""Example plugin of heros-archiver (its tests): binary PGM images (``P5``), one 2-D frame per file.

Another package's format, found by its entry point ``pgm`` in the group ``heros_archiver.formats``
(``heros_archiver_pgm-0.1.0.dist-info/entry_points.txt``); nothing of heros-archiver knows it. Only numpy
and the format interface are imported here, so that finding the format loads neither heros nor Zenoh.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from heros_archiver.errors import PayloadError
from heros_archiver.formats.base import Content

#: PGM's maximum gray value per dtype (a 16-bit PGM is big-endian)
MAXVAL = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


class PgmFormat:
    """A 2-D uint8 or uint16 array as a binary PGM file (ImageJ, GIMP and netpbm read it)."""

    def prepare(self, payload: Any) -> Content:
        """The PGM header and the pixels, rows first, big-endian."""
        array = np.asarray(payload) if not isinstance(payload, np.ndarray) else payload
        if array.ndim != 2 or array.dtype.newbyteorder("=") not in MAXVAL:
            raise PayloadError(
                f"PGM: expected a 2-D uint8 or uint16 array, got {type(payload).__name__} of shape "
                f"{array.shape} and dtype {array.dtype}"
            )
        maxval = MAXVAL[array.dtype.newbyteorder("=")]
        pixels = np.ascontiguousarray(array.astype(array.dtype.newbyteorder(">"), copy=False))
        header = f"P5\n{array.shape[1]} {array.shape[0]}\n{maxval}\n".encode("ascii")
        return [header, pixels.reshape(-1).view(np.uint8).data]
