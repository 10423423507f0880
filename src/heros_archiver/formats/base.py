"""The small interface every file format implements, ours and plugins' alike.

A format is registered by entry point (group ``heros_archiver.formats``, decision 0025): a class whose
instances this Protocol describes, made without arguments once per writer. Its module should import only
what finding it needs; a heavy library is imported in ``__init__`` with ``heros_archiver.extras.require_extra``
so that a missing one fails when the archiver is made, naming the extra to install.
"""

from __future__ import annotations

from typing import Any, Protocol

#: The bytes of one file, as buffers written in order: no joined copy of large arrays.
Content = list[bytes | memoryview]


class FileFormat(Protocol):
    """A format validates a payload up front (so bad input fails before any file exists) and encodes it.

    The file's name comes from the template alone (its extension too), and the content from the payload
    alone: the metadata goes into the name, or into the payload first (``merge_metadata``).
    """

    def prepare(self, payload: Any) -> Content:
        """Check ``payload`` and return the file's content.

        Raises PayloadError when the payload is not of a type this format stores.
        """
        ...
