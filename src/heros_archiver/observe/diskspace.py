"""Is the archive's file system filling up? One ``statvfs``, a threshold, and hysteresis (decision 0032).

``DiskSpaceWatch.check`` is called every few seconds (by the events listener's timer, so it fires also while
nothing is archived). It reports once when the free space falls below the threshold, logged as a warning, and
again only after the free space rose back above it by a margin (``REARM``), so a file system hovering at the
threshold does not report at every check.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ..checks import check_integer
from ..errors import ConfigurationError

__all__ = ["DEFAULT_LOW_DISK_SPACE", "DiskSpaceWatch", "check_threshold", "threshold_bytes"]

log = logging.getLogger("heros_archiver")

#: Default ``low_disk_space``: report when less than 1 GiB is free.
DEFAULT_LOW_DISK_SPACE = 2**30
#: Once low, the free space must rise this much above the threshold before a new fall is reported again.
REARM = 1.05


def check_threshold(value: object) -> None:
    """``low_disk_space``: None (off), a number of free bytes >= 1, or a fraction of the file system in (0, 1)."""
    if value is None:
        return
    if isinstance(value, float) and 0 < value < 1:
        return
    if isinstance(value, int) and not isinstance(value, bool):
        check_integer("low_disk_space", value, "None, a number of free bytes >= 1, or a fraction in (0, 1)", 1)
        return
    raise ConfigurationError(
        f"low_disk_space: expected None, a number of free bytes >= 1, or a fraction of the file system in (0, 1), "
        f"got {value!r:.200}"
    )


def threshold_bytes(threshold: int | float, total: int) -> int:
    """The threshold in bytes: ``threshold`` itself, or that fraction of ``total``."""
    return int(threshold * total) if isinstance(threshold, float) else int(threshold)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (the root may not be made before the first write)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class DiskSpaceWatch:
    """The free space of the file system of ``path`` against ``threshold`` (bytes, or a fraction of its size)."""

    def __init__(self, path: Path, threshold: int | float) -> None:
        check_threshold(threshold)
        self.path = path
        self.threshold = threshold
        self.low = False

    def check(self) -> dict[str, Any] | None:
        """One look: the report (root, free, total, threshold in bytes, time) when the free space has just fallen
        below the threshold, else None. A file system that cannot be asked is logged at debug level and skipped."""
        try:
            stats = os.statvfs(_existing(self.path))
        except OSError as exc:
            log.debug("cannot ask the file system of %s for its free space: %s", self.path, exc)
            return None
        free, total = stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize
        limit = threshold_bytes(self.threshold, total)
        if free < limit:
            if self.low:
                return None
            self.low = True
            log.warning(
                "low disk space: %d MiB free of %d MiB on the file system of %s (threshold %d MiB)",
                free >> 20,
                total >> 20,
                self.path,
                limit >> 20,
            )
            return {"root": str(self.path), "free": free, "total": total, "threshold": limit, "time": time.time()}
        if self.low and free >= limit * REARM:
            self.low = False
            log.info("disk space: %d MiB free again on the file system of %s", free >> 20, self.path)
        return None
