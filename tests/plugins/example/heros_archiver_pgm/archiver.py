"""The example plugin's sink: an archiver of PGM files, registered as ``pgm`` in ``heros_archiver.sinks``."""

from __future__ import annotations

from typing import Any

from heros_archiver import FileArchiver


class PgmArchiver(FileArchiver):
    """Save 2-D frames as ``.pgm`` files (FileArchiver with the plugin's format)."""

    def __init__(self, save_template: str, *args: Any, **kwargs: Any) -> None:
        FileArchiver.__init__(self, save_template, "pgm", *args, **kwargs)
