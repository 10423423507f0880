"""Zenoh's shared-memory files that a process killed by a test leaves in ``/dev/shm``.

A Zenoh session (with its shared-memory transport on, Zenoh's default) creates ``/dev/shm/<number>.zenoh`` and
holds a shared ``flock`` on it while it lives; it unlinks the file at a clean exit (an ``atexit`` hook), so a
process stopped by SIGKILL, or by a signal Python does not handle, leaves it behind: a CI run of the crash and
subprocess tests left ~400 of them. A file no live process holds can be locked exclusively; such a file is
garbage. ``remove_stale_segments`` unlinks those a test made, so that no test leaves files outside its
temporary directory; files that were there before, and files still held (a process still running), are left.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

__all__ = ["SHM_DIRECTORY", "remove_stale_segments", "zenoh_segments"]

SHM_DIRECTORY = Path("/dev/shm")
#: A file younger than this may belong to a session that created it and has not locked it yet: left alone.
MIN_AGE = 1.0


def zenoh_segments(directory: Path = SHM_DIRECTORY) -> set[str]:
    """The names of Zenoh's shared-memory files in ``directory`` now (none where it does not exist)."""
    try:
        return {name for name in os.listdir(directory) if name.endswith(".zenoh")}
    except OSError:
        return set()


def remove_stale_segments(known: set[str], directory: Path = SHM_DIRECTORY, min_age: float = MIN_AGE) -> list[str]:
    """Unlink the Zenoh files in ``directory`` that are not in ``known`` (there before), at least ``min_age``
    seconds old, and held by no process (an exclusive ``flock`` is granted at once); returns their names."""
    removed = []
    now = time.time()
    for name in sorted(zenoh_segments(directory) - known):
        path = directory / name
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime < min_age:
                continue
            if _held(path):
                continue
            path.unlink()
            removed.append(name)
    return removed


def _held(path: Path) -> bool:
    """Whether a live process holds a lock on ``path`` (a Zenoh session keeps a shared one on its file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
