"""Old versions of replaced store objects, freed by a background thread instead of by the commit.

A commit of the Zarr append container replaces a dozen small objects (each array's ``zarr.json``, the
columns' last chunks, a partial shard) by rename. Renaming over an existing file frees the old file's
blocks inside the ``rename`` call, and on ext4 mounted with ``discard`` and no journal (this project's VM)
that free issues a synchronous discard: measured 0.4-0.7 ms median per replace, with a tail that brought the
mean to ~7 ms, against 0.02 ms for a rename to a new name (60 of each, interleaved, 32 MiB of dirty data
written between them). At 25 replaces a commit that was most of a commit's time, and the writer fell behind
the camera. So before an object is replaced, its current version gets a second name (a hard link) in
``<root>/.heros-archiver/trash/``; the rename then frees nothing, and one daemon thread per process unlinks
the trash entries behind the writer. A reader never sees the trash (it is outside every store); what a
crash leaves there is only old versions, removed at the next start (``empty``). Where a hard link cannot
be made (another file system, no links), the replace simply frees the old version itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading

from ...state.statedir import STATE_DIR_NAME
from ...storage.confinement import open_directory
from ...storage.temporaries import PROCESS_TOKEN

log = logging.getLogger("heros_archiver")

TRASH_DIR_NAME = "trash"
_counter = itertools.count()
_queue: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
_started = threading.Lock()
_thread: threading.Thread | None = None


def trash_directory(root: str) -> str:
    """Where the old versions of objects under ``root`` wait to be freed."""
    return f"{root.rstrip('/')}/{STATE_DIR_NAME}/{TRASH_DIR_NAME}"


def keep_old_version(root: str | None, directory_handle: int, name: str) -> None:
    """Give ``name`` (in the directory open as ``directory_handle``) a second name in the trash, so that
    replacing it frees nothing now; queue that name for the background thread. No-op when ``name`` does not
    exist yet, without a root, or when the link fails (then the replace frees the old version itself)."""
    if root is None:
        return
    trash = trash_directory(root)
    entry = f"{os.getpid()}.{PROCESS_TOKEN}.{next(_counter)}"
    try:
        handle = open_directory(root, trash)
    except OSError:
        return
    try:
        os.link(name, entry, src_dir_fd=directory_handle, dst_dir_fd=handle, follow_symlinks=False)
    except OSError:
        return  # not there yet (the first version), or no hard links here
    finally:
        os.close(handle)
    _start()
    _queue.put((root, entry))


def empty(root: str) -> int:
    """Unlink every entry of ``root``'s trash (at start: what a killed run left); how many were removed."""
    try:
        handle = open_directory(root, trash_directory(root), create=False)
    except OSError:
        return 0
    removed = 0
    try:
        listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=handle)
        try:
            names = os.listdir(listing)
        finally:
            os.close(listing)
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=handle)
                removed += 1
    finally:
        os.close(handle)
    return removed


def _start() -> None:
    global _thread
    with _started:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_free_forever, name="heros-archiver-zarr-trash", daemon=True)
            _thread.start()


def _free_forever() -> None:
    """Unlink the queued trash entries one by one (each may take milliseconds: the discard happens here)."""
    while True:
        root, entry = _queue.get()
        try:
            handle = open_directory(root, trash_directory(root), create=False)
        except OSError as exc:
            log.debug("zarr trash: cannot open the trash of %s: %s", root, exc)
            continue
        try:
            os.unlink(entry, dir_fd=handle)
        except OSError as exc:
            log.debug("zarr trash: cannot remove %s: %s", entry, exc)
        finally:
            os.close(handle)
