"""Zenoh's shared-memory files that a process killed by a test leaves in ``/dev/shm``.

A Zenoh session (with its shared-memory transport on, Zenoh's default) creates ``/dev/shm/<number>.zenoh`` and
holds a shared ``flock`` on it while it lives; it unlinks the file at a clean exit (an ``atexit`` hook), so a
process stopped by SIGKILL, or by a signal Python does not handle, leaves it behind: a CI run of the crash and
subprocess tests left ~400 of them. A file no live process holds can be locked exclusively; such a file is
garbage. ``remove_stale_segments`` unlinks those a test made, so that no test leaves files outside its
temporary directory; files that were there before, and files still held (a process still running), are left.
A process that received frames through shared memory keeps the sender's files locked for its own lifetime
(eclipse-zenoh/zenoh#2787), so at the end of a test run the run's own process may be the last holder of files
whose senders are gone: ``own_locks_are_stale`` lets that last sweep remove them too.
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


def remove_stale_segments(
    known: set[str], directory: Path = SHM_DIRECTORY, min_age: float = MIN_AGE, own_locks_are_stale: bool = False
) -> list[str]:
    """Unlink the Zenoh files in ``directory`` that are not in ``known`` (there before), at least ``min_age``
    seconds old, and held by no process (an exclusive ``flock`` is granted at once), or, with
    ``own_locks_are_stale`` (this process has closed its sessions), by none but this one; returns their names."""
    removed = []
    now = time.time()
    locks = _locks() if own_locks_are_stale else None
    for name in sorted(zenoh_segments(directory) - known):
        path = directory / name
        with contextlib.suppress(OSError):
            status = path.stat()
            if now - status.st_mtime < min_age or not _stale(path, status, locks):
                continue
            path.unlink()
            removed.append(name)
    return removed


def _stale(path: Path, status: os.stat_result, locks: dict[str, set[int]] | None) -> bool:
    """Whether no process holds ``path``, or (``locks``: who holds what) only this one does."""
    if not _held(path):
        return True
    if locks is None:
        return False
    holders = locks.get(f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}")
    return holders == {os.getpid()}


def _locks() -> dict[str, set[int]]:
    """The processes that hold a ``flock`` on each file (``/proc/locks``), by ``MAJOR:MINOR:INODE`` (hex device
    numbers, as the kernel writes them); empty where it cannot be read (then only unheld files are stale)."""
    holders: dict[str, set[int]] = {}
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return holders
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4].isdigit():
            holders.setdefault(fields[5], set()).add(int(fields[4]))
    return holders


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
