"""Verify's file checks: one cataloged file against its size and checksum, and the files no entry names.

A file is read in large blocks into a buffer its thread keeps (no allocation per block), the kernel told the
reads are sequential, and hashed with xxh3-128 as it was written (``outcomes.checksum``), which releases the
GIL: the threads of a pool read and hash files side by side. A size check comes first: a shorter file is
truncated and a longer one modified without reading a byte.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath

import xxhash

from ..state.statedir import STATE_DIR_NAME
from ..storage.atomic import is_temporary
from .outcomes import CHECKSUM_ALGORITHM
from .problems import Problem
from .verify_catalog import Entry

__all__ = ["check_file", "confined", "find_orphans"]

_PREFIX = f"{CHECKSUM_ALGORITHM}:"


def confined(root: str, relative: str) -> str | None:
    """The absolute path of a catalog path under ``root``, or None when it would leave the root (absolute, ``..``)."""
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or ".." in parts:
        return None
    return os.path.join(root, *parts)


def check_file(root: str, entry: Entry, buffer: bytearray, advance: Callable[[int], None]) -> Problem | None:
    """The problem of one cataloged file (None: it is as cataloged); ``advance(n)`` is told of bytes read.

    An entry without an xxh3-128 checksum is checked for its size only."""
    path = confined(root, entry.path)
    if path is None:
        return Problem("unreadable", entry.path, "a path under the root", f"{entry.path!r} leaves it")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no wait
    except FileNotFoundError:
        return Problem("missing", entry.path, f"a file of {entry.nbytes} bytes", "no file")
    except OSError as exc:
        if os.path.islink(path):
            return Problem("modified", entry.path, f"a file of {entry.nbytes} bytes", "a symbolic link")
        return Problem("unreadable", entry.path, f"a file of {entry.nbytes} bytes", f"{type(exc).__name__}: {exc}")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Problem("modified", entry.path, f"a file of {entry.nbytes} bytes", "not a regular file")
        size_problem = _size_problem(entry, info.st_size)
        if size_problem is not None or entry.checksum is None or not entry.checksum.startswith(_PREFIX):
            return size_problem
        try:
            digest, read = _hash(fd, buffer, advance)
        except OSError as exc:
            return Problem("unreadable", entry.path, entry.checksum, f"{type(exc).__name__}: {exc}")
    finally:
        os.close(fd)
    if read != entry.nbytes:  # it changed while it was read
        return _size_problem(entry, read)
    found = f"{_PREFIX}{digest}"
    if found != entry.checksum:
        return Problem("modified", entry.path, entry.checksum, found)
    return None


def _size_problem(entry: Entry, size: int) -> Problem | None:
    if size < entry.nbytes:
        return Problem("truncated", entry.path, f"{entry.nbytes} bytes", f"{size} bytes")
    if size > entry.nbytes:
        return Problem("modified", entry.path, f"{entry.nbytes} bytes", f"{size} bytes")
    return None


def _hash(fd: int, buffer: bytearray, advance: Callable[[int], None]) -> tuple[str, int]:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    hasher = xxhash.xxh3_128()
    view = memoryview(buffer)
    total = 0
    while True:
        count = os.readv(fd, [view])
        if count == 0:
            return hasher.hexdigest(), total
        hasher.update(view[:count])
        total += count
        advance(count)


def find_orphans(root: str, cataloged: frozenset[str]) -> Iterator[tuple[str, float]]:
    """Every file under ``root`` that is not in ``cataloged`` (relative paths) nor inside a cataloged path (a
    directory store), with its ``st_ctime``.

    Skipped: every ``.heros-archiver`` directory (the archiver's own state, and that of an archive nested in
    this one) and the archiver's named temporaries. Symbolic links are not followed; a link no entry names is
    an orphan like a file."""
    stack = [""]
    while stack:
        directory = stack.pop()
        try:
            scan = os.scandir(os.path.join(root, directory) if directory else root)
        except FileNotFoundError:  # removed while we walked
            continue
        with scan:
            for item in scan:
                relative = f"{directory}/{item.name}" if directory else item.name
                if relative in cataloged:
                    continue
                if item.is_dir(follow_symlinks=False):
                    if item.name != STATE_DIR_NAME:
                        stack.append(relative)
                elif not is_temporary(item.name):
                    try:
                        yield relative, item.stat(follow_symlinks=False).st_ctime
                    except FileNotFoundError:
                        continue
