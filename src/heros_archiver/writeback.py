"""Push large files to disk as they are written and drop them from the page cache once they are there.

Left to the kernel, an archiver streaming frames fills the page cache with dirty pages until the dirty
limits are reached (gigabytes), and every new file needs fresh page-cache memory. On the virtual
machines this project runs on, first-touched memory costs ~10 us per 4 KiB page, so writing a 2 MiB
frame took ~5 ms instead of ~0.5 ms once the cache had grown, and p99 latency drifted over a long run
(decision 0009). The window starts writeback of each large file as soon as it is written
(``sync_file_range(WRITE)``) and, once more than ``max_bytes`` are in flight, waits for the oldest to
reach the disk and drops its now clean pages (``POSIX_FADV_DONTNEED``): the cache stays small, its
pages are reused, and a write error of the device is reported instead of being lost in the background.

This is not durability (no metadata commit, no fsync): ``fsync="file"`` is.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger("heros_archiver")

#: Files smaller than this go their normal way: for them the page cache is no cost worth two syscalls.
MIN_FILE_BYTES = 1 << 20
#: At most this many files in flight whatever the byte bound, so the window cannot exhaust descriptors.
MAX_FILES = 64

_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


def _load_sync_file_range() -> Callable[[int, int], int] | None:
    """``sync_file_range(fd, 0, 0, flags)`` from the C library (Linux only); returns 0 or an errno."""
    if sys.platform != "linux" or not hasattr(os, "posix_fadvise"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def call(fd: int, flags: int) -> int:
        return 0 if function(fd, 0, 0, flags) == 0 else ctypes.get_errno()

    return call


_SYNC_FILE_RANGE = _load_sync_file_range()


class WritebackWindow:
    """At most ``max_bytes`` of large, written files between "written" and "on disk, out of the cache".

    For a file ``wants`` accepts, ``take`` gets a descriptor of its own (the writer's is closed as usual,
    so the file is closed for writing before it is published, as watchers reacting to close-after-write
    expect) and owns it from then on. Thread-safe; ``close`` finishes every file still in flight.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.enabled = max_bytes > 0 and _SYNC_FILE_RANGE is not None
        self.errors = 0
        self._files: deque[tuple[int, int, str]] = deque()  # (fd, bytes, path for messages)
        self._bytes = 0
        self._lock = threading.Lock()

    def wants(self, nbytes: int) -> bool:
        """True for a file large enough to go through the window while it is on."""
        return self.enabled and nbytes >= MIN_FILE_BYTES

    def hand_over(self, path: str, nbytes: int, name: str) -> None:
        """Open ``path`` read-only and ``take`` it; if it cannot be opened the file simply stays unmanaged."""
        fd = self.open_reader(path, name)
        if fd is not None:
            self.take(fd, nbytes, name)

    def open_reader(self, path: str, name: str) -> int | None:
        """A read-only descriptor of ``path`` to ``take`` later, or None (logged) if it cannot be opened."""
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:  # e.g. out of descriptors: the file is written all the same
            log.debug("writeback window skips %s: %s", name, exc)
            return None

    def take(self, fd: int, nbytes: int, path: str) -> None:
        """Start writeback of ``fd`` (any open mode) and own it: it is closed here or by a later call."""
        if _SYNC_FILE_RANGE is None:
            os.close(fd)
            return
        error = _SYNC_FILE_RANGE(fd, _SYNC_FILE_RANGE_WRITE)
        if error:
            # e.g. a file system without it: leave the page cache to the kernel from now on
            log.warning("sync_file_range on %s failed (%s); writeback left to the kernel", path, os.strerror(error))
            self.enabled = False
            os.close(fd)
            return
        done: list[tuple[int, int, str]] = []
        with self._lock:
            self._files.append((fd, nbytes, path))
            self._bytes += nbytes
            while (self._bytes > self.max_bytes or len(self._files) > MAX_FILES) and len(self._files) > 1:
                oldest = self._files.popleft()
                self._bytes -= oldest[1]
                done.append(oldest)
        for oldest_fd, _nbytes, oldest_path in done:
            self._finish(oldest_fd, oldest_path)

    def close(self) -> None:
        """Finish every file still in flight (at shutdown)."""
        with self._lock:
            pending = list(self._files)
            self._files.clear()
            self._bytes = 0
        for fd, _nbytes, path in pending:
            self._finish(fd, path)

    def _finish(self, fd: int, path: str) -> None:
        """Wait until ``fd``'s pages are on the device, drop them from the cache, close it."""
        try:
            assert _SYNC_FILE_RANGE is not None
            flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
            error = _SYNC_FILE_RANGE(fd, flags)
            if error:
                self.errors += 1
                log.error(
                    "%s: the device reported an error while writing this archived file (%s); "
                    "it may be incomplete on disk",
                    path,
                    os.strerror(error),
                )
            else:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
