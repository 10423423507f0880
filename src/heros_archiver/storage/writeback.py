"""Push large files to disk as they are written and drop them from the page cache once they are there.

Left to the kernel, an archiver streaming frames fills the page cache with dirty pages until the dirty
limits are reached (gigabytes), and every new file needs fresh page-cache memory. On the virtual
machines this project runs on, first-touched memory costs ~10 us per 4 KiB page, so writing a 2 MiB
frame took ~5 ms instead of ~0.5 ms once the cache had grown, and p99 latency drifted over a long run
(decision 0009). The window starts writeback of each large file as soon as it is written
(``sync_file_range(WRITE)``) and, once more than ``max_bytes`` are in flight, waits for the oldest to
reach the disk and drops its now clean pages (``POSIX_FADV_DONTNEED``): the cache stays small, its
pages are reused, and a write error of the device is reported instead of being lost in the background.

An item counts as archived only once its files are on the device: the pipeline writes each item inside
``tracking(ticket)``, the files taken meanwhile join the ticket, and the ticket settles (``on_settled``)
once the last of them was finished; a file whose writeback failed is removed, so that its item can be
written again.

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
from collections.abc import Callable, Iterator

from ..observe.logs import log_fields

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


class Ticket:
    """The files of one item handed to a window, and what the device said about them.

    Settled once the write that made them is over (``WritebackWindow.release``) and every one was finished:
    ``on_settled(ticket)`` is then called, from whichever thread finished the last file, unless ``release``
    found nothing in flight (the caller settles at once) or the ticket was cancelled (the write failed).
    """

    __slots__ = ("_cancelled", "_open", "errors", "on_settled")

    def __init__(self, on_settled: Callable[[Ticket], None]) -> None:
        self.on_settled = on_settled
        #: what the device reported for each file that failed (empty: every file is on the device)
        self.errors: list[str] = []
        self._open = 1  # the write itself, until released, plus each file in flight
        self._cancelled = False


_InFlight = tuple[int, int, str, Ticket | None]  # (fd, bytes, path for messages, ticket of its item)


class WritebackWindow:
    """At most ``max_bytes`` of large, written files between "written" and "on disk, out of the cache".

    For a file ``wants`` accepts, ``take`` gets a descriptor of its own (the writer's is closed as usual,
    so the file is closed for writing before it is published, as watchers reacting to close-after-write
    expect) and owns it from then on. Thread-safe; ``close`` finishes every file still in flight.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.enabled = max_bytes > 0 and _SYNC_FILE_RANGE is not None
        self.errors = 0  # under _lock, as every counter of the window
        self._files: deque[_InFlight] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._local = threading.local()  # .ticket: the ticket of the item this thread writes now

    @contextlib.contextmanager
    def tracking(self, ticket: Ticket) -> Iterator[None]:
        """Files this thread hands over during the block join ``ticket``."""
        self._local.ticket = ticket
        try:
            yield
        finally:
            self._local.ticket = None

    def release(self, ticket: Ticket, cancel: bool = False) -> bool:
        """The write of ``ticket``'s item is over (``cancel``: it failed, its outcome is no longer wanted).
        True when nothing of it is in flight any more: then the caller settles it, and ``on_settled`` is not
        called."""
        with self._lock:
            ticket._open -= 1
            ticket._cancelled = ticket._cancelled or cancel
            return ticket._open == 0

    @property
    def in_flight(self) -> int:
        """Files between "written" and "on the device"."""
        return len(self._files)

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
        ticket: Ticket | None = getattr(self._local, "ticket", None)
        done: list[_InFlight] = []
        with self._lock:
            if ticket is not None:
                ticket._open += 1
            self._files.append((fd, nbytes, path, ticket))
            self._bytes += nbytes
            while (self._bytes > self.max_bytes or len(self._files) > MAX_FILES) and len(self._files) > 1:
                oldest = self._files.popleft()
                self._bytes -= oldest[1]
                done.append(oldest)
        for oldest_fd, _nbytes, oldest_path, oldest_ticket in done:
            self._finish(oldest_fd, oldest_path, oldest_ticket)

    def flush(self) -> None:
        """Finish every file in flight now (a writer with nothing to do, so that its items settle)."""
        with self._lock:
            pending = list(self._files)
            self._files.clear()
            self._bytes = 0
        for fd, _nbytes, path, ticket in pending:
            self._finish(fd, path, ticket)

    def close(self) -> None:
        """Finish every file still in flight (at shutdown)."""
        self.flush()

    def _wait_on_device(self, fd: int, path: str) -> int:
        """Wait until the pages of ``fd`` (``path``) are on the device; 0, or the errno the device reported
        (the seam where a test substitutes the device's answer)."""
        assert _SYNC_FILE_RANGE is not None
        return _SYNC_FILE_RANGE(fd, _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER)

    def _finish(self, fd: int, path: str, ticket: Ticket | None) -> None:
        """Wait until ``fd``'s pages are on the device, drop them from the cache, close it, tell its ticket.

        On a device error the file may be incomplete on disk: with a ticket, its item is written again, so
        the file is removed first (only if ``path`` still names this very file).
        """
        message = None
        try:
            error = self._wait_on_device(fd, path)
            if error:
                removed = ticket is not None and _remove_if_same(fd, path)
                message = f"{path}: the device reported an error while writing this file back ({os.strerror(error)})"
                with self._lock:
                    self.errors += 1
                log.error(
                    "%s; %s",
                    message,
                    "removed, its item is written again" if removed else "it may be incomplete on disk",
                    extra=log_fields(path=path, error=os.strerror(error)),
                )
            else:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
            if ticket is not None:
                self._file_done(ticket, message)

    def _file_done(self, ticket: Ticket, error: str | None) -> None:
        with self._lock:
            if error is not None:
                ticket.errors.append(error)
            ticket._open -= 1
            settled = ticket._open == 0 and not ticket._cancelled
        if settled:
            ticket.on_settled(ticket)


def _remove_if_same(fd: int, path: str) -> bool:
    """Remove ``path`` if it is the file open as ``fd``; True when removed."""
    try:
        opened, named = os.fstat(fd), os.lstat(path)
        if (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
            return False
        os.unlink(path)
    except OSError:
        return False
    return True
