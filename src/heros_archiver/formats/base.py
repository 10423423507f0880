"""The small interface every file format implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, Protocol

#: Writes an already-validated payload into an open binary file.
Writer = Callable[[BinaryIO], None]


class FileFormat(Protocol):
    """A format validates a payload up front (so bad input fails before any file exists) and writes it."""

    #: The file name extension this format produces, e.g. ``.npy``.
    suffix: str

    def prepare(self, payload: Any, metadata: Mapping[str, Any]) -> tuple[Writer, int]:
        """Check ``payload`` and return a writer for it and the number of payload bytes it will write.

        Raises PayloadError when the payload is not of a type this format stores.
        """
        ...
