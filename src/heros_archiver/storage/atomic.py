"""Atomic, no-clobber file creation, confined to the archive root by directory handles.

Every write first opens its target directory beneath a handle of the archive root (``confinement.py``:
no symlink below the root is followed, nothing checked by name is used later), then creates and names
the file relative to that handle. Where the file system has anonymous files (Linux ``O_TMPFILE``: ext4,
XFS, btrfs, tmpfs), a file is written as an unnamed inode in its target directory, flushed (and fsynced
if asked), then given its final name with ``linkat``, which fails atomically when the name is taken: no
name exists before the content is complete, and a crash leaves nothing behind (the kernel frees the
inode). Elsewhere, and for ``on_exists="overwrite"``, it is written under a temporary name and published
in one rename; after a crash only those temporaries can be incomplete, and ``remove_stale_temporaries``
removes the ones of dead processes at start, found from their records (``temporaries.py``). Either way
two writers can never overwrite each other under ``"error"`` and ``"unique"``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from ..errors import TargetExistsError, storage_error
from ..formats.base import Content
from .confinement import fsync_directory, open_directory
from .temporaries import PROCESS_TOKEN as PROCESS_TOKEN  # re-exported: the dead-letter store and tests use them
from .temporaries import TMP_PREFIX, record_directory
from .temporaries import is_temporary as is_temporary
from .temporaries import owner_alive as owner_alive
from .temporaries import remove_stale_temporaries as remove_stale_temporaries
from .writeback import WritebackWindow

OnExists = Literal["error", "overwrite", "unique"]
Fsync = Literal["none", "file", "file+directory"]
ON_EXISTS_CHOICES: tuple[str, ...] = ("error", "overwrite", "unique")
FSYNC_CHOICES: tuple[str, ...] = ("none", "file", "file+directory")

_tmp_counter = itertools.count()
_CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
)  # unique within the process; pid + token make it unique across processes
_MAX_UNIQUE = 10_000


def write_atomic(
    path: str | os.PathLike[str],
    content: Content,
    on_exists: OnExists = "error",
    fsync: Fsync = "none",
    window: WritebackWindow | None = None,
    root: str | None = None,
) -> str:
    """Create ``path`` holding ``content`` (buffers written in order); return the path written, as text.

    ``root``: the archive root; ``path``'s directory is opened beneath it without following symlinks, and
    made if missing (``confinement.open_directory``). None: the caller trusts ``path``'s directory, which
    is opened by its path. The path written differs from ``path`` only with ``on_exists="unique"``. With
    ``window``, a large file is handed to it after writing (writeback starts now, its pages leave the
    cache later). Raises TargetExistsError (policy ``error``), PathConfinementError (a symlink below the
    root) or StorageError (the file system refused; permanent when the path itself is the cause).
    """
    written = _write(os.fspath(path), content, on_exists, fsync, window, root, keep_identical=False)
    assert written is not None
    return written


def write_unless_present(
    path: str,
    content: Content,
    on_exists: OnExists,
    fsync: Fsync,
    window: WritebackWindow | None = None,
    root: str | None = None,
    resumed: bool = False,
) -> str | None:
    """``write_atomic``, except that a target already holding exactly ``content`` counts as written.

    Returns the path written, or None when the identical file was there (nothing new to undo), so that
    replaying an item, resuming after a crash or rewriting a lost helper's batch never duplicates a file.
    With ``on_exists="unique"`` that needs ``resumed`` (the item may have been written before, under any
    of its ``-N`` names): otherwise two events with identical bytes are two files, as that policy promises.
    """
    return _write(path, content, on_exists, fsync, window, root, keep_identical=True, resumed=resumed)


def remove_file(path: str, root: str | None) -> None:
    """Remove ``path`` (a file this process wrote), resolving its directory beneath ``root`` as writes do."""
    directory, name = os.path.split(path)
    handle = open_directory(root, directory, create=False)
    try:
        os.unlink(name, dir_fd=handle)
    finally:
        os.close(handle)


def _write(
    target: str,
    content: Content,
    on_exists: OnExists,
    fsync: Fsync,
    window: WritebackWindow | None,
    root: str | None,
    keep_identical: bool,
    resumed: bool = False,
) -> str | None:
    directory, name = os.path.split(target)
    #: with file+directory: every directory that got a new entry here (the file's, and those above new ones)
    new_entries: list[int] | None = [] if fsync == "file+directory" else None
    handle = -1
    try:
        handle = open_directory(root, directory, new_entries)
        if keep_identical and resumed and on_exists == "unique" and _identical_unique_name(handle, name, content):
            return None
        try:
            final = _write_in(handle, directory, name, content, on_exists, fsync, window, root)
        except TargetExistsError:
            if keep_identical and _holds_content(handle, name, content):
                return None
            raise
        if new_entries is not None:
            for entry in (handle, *new_entries):
                fsync_directory(entry)
        return final
    except TargetExistsError:
        raise
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and exc.filename != target else ""
        raise storage_error(exc.errno or errno.EIO, f"writing {target!r} failed: {exc.strerror or exc}{where}") from exc
    finally:
        if handle >= 0:
            os.close(handle)
        for entry in new_entries or ():
            os.close(entry)


def _write_in(
    handle: int,
    directory: str,
    name: str,
    content: Content,
    on_exists: OnExists,
    fsync: Fsync,
    window: WritebackWindow | None,
    root: str | None,
) -> str:
    """Write ``name`` in the directory open as ``handle``: unnamed then linked where possible, else named."""
    if on_exists != "overwrite" and _LINK_ANONYMOUS is not None and directory not in _no_anonymous_files:
        final = _write_anonymous(handle, directory, name, content, on_exists, fsync, window)
        if final is not None:
            return final
    return _write_named(handle, directory, name, content, on_exists, fsync, window, root)


def _write_anonymous(
    handle: int,
    directory: str,
    name: str,
    content: Content,
    on_exists: OnExists,
    fsync: Fsync,
    window: WritebackWindow | None,
) -> str | None:
    """Write an unnamed file in the directory ``handle``, then link it as ``name``; None: no anonymous files here.

    The descriptor stays open until the file has its name: closing an unnamed file frees it.
    """
    assert _LINK_ANONYMOUS is not None
    try:
        fd = os.open(".", _ANONYMOUS_FLAGS, 0o644, dir_fd=handle)
    except OSError as exc:
        if exc.errno not in _NO_ANONYMOUS_FILES:
            raise
        _remember_no_anonymous_files(directory)
        return None
    try:
        nbytes = _write_all(fd, content)
        if fsync != "none":
            os.fsync(fd)
        for candidate in _candidate_names(name, on_exists):
            error = _LINK_ANONYMOUS(fd, handle, candidate)
            if error == 0:
                break
            if error == errno.EEXIST:
                continue
            if error in _NO_ANONYMOUS_FILES:  # e.g. a file system that refuses links: write it the other way
                _remember_no_anonymous_files(directory)
                return None
            raise OSError(error, os.strerror(error), _joined(directory, candidate))
        else:
            raise _taken(_joined(directory, name), on_exists)
        final = _joined(directory, candidate)
        if window is not None and window.wants(nbytes):  # published first: the window may wait for the disk
            window.hand_over(f"/proc/self/fd/{fd}", nbytes, final)
    finally:
        os.close(fd)
    return final


def _joined(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _remember_no_anonymous_files(directory: str) -> None:
    if len(_no_anonymous_files) > 10_000:
        _no_anonymous_files.clear()
    _no_anonymous_files.add(directory)


def _write_named(
    handle: int,
    directory: str,
    name: str,
    content: Content,
    on_exists: OnExists,
    fsync: Fsync,
    window: WritebackWindow | None,
    root: str | None,
) -> str:
    """Write under a temporary name in the directory ``handle``, then publish it as ``name`` in one step."""
    if root is not None:
        record_directory(root, directory, durable=fsync != "none")  # before the temporary: found after a crash
    tmp = f"{TMP_PREFIX}.{os.getpid()}.{PROCESS_TOKEN}.{next(_tmp_counter)}.tmp"
    target = _joined(directory, name)
    published = False
    reader: int | None = None  # for the writeback window, opened before the temporary's name goes away
    try:
        fd = os.open(tmp, _CREATE_FLAGS | os.O_NOFOLLOW, 0o644, dir_fd=handle)
        try:
            nbytes = _write_all(fd, content)
            if fsync != "none":
                os.fsync(fd)
            if window is not None and window.wants(nbytes):
                reader = window.open_reader(f"/proc/self/fd/{fd}", target)
        finally:
            os.close(fd)  # closed for writing before it is published, as close-after-write watchers expect
        final = _joined(directory, _publish(handle, tmp, name, on_exists, target))
        published = True  # the temporary now has its final name
        if reader is not None and window is not None:  # published first: the window may wait for the disk
            window.take(reader, nbytes, final)
            reader = None
        return final
    finally:
        if reader is not None:
            os.close(reader)
        if not published:
            # FileNotFoundError: never created; other errors: the directory became unusable, and the
            # stale temporary is removed at the next start
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=handle)


def _write_all(fd: int, content: Content) -> int:
    """Write every buffer of ``content`` in order, continuing where the kernel wrote less; return the size.

    One ``write`` per buffer, not ``writev``: measured here, ``os.writev`` of a 2 MiB array took
    ~5 ms where two ``os.write`` calls took ~0.4 ms on the project's test machine.
    """
    total = 0
    for chunk in content:
        view = memoryview(chunk).cast("B")
        total += view.nbytes
        while view:
            view = view[os.write(fd, view) :]
    return total


def _publish(handle: int, tmp: str, name: str, on_exists: OnExists, target: str) -> str:
    """Give ``tmp`` its final name in the directory ``handle``; return that name."""
    if on_exists == "overwrite":
        os.replace(tmp, name, src_dir_fd=handle, dst_dir_fd=handle)
        return name
    for candidate in _candidate_names(name, on_exists):
        try:
            _link_or_rename_noreplace(handle, tmp, candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # No hard links here (FAT, some network file systems): check, then rename. Not atomic
            # against a concurrent writer of the same name, but never replaces a file seen to exist.
            if _exists(handle, candidate):
                continue
            os.rename(tmp, candidate, src_dir_fd=handle, dst_dir_fd=handle)
            return candidate
    raise _taken(target, on_exists)


def _exists(handle: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=handle)
    except FileNotFoundError:
        return False
    return True


def _candidate_names(name: str, on_exists: OnExists) -> Iterable[str]:
    """The names a new file may take, in order: ``name`` alone under ``error``, its ``-N`` variants too under
    ``unique``."""
    return [name] if on_exists == "error" else (path.name for path in unique_names(Path(name)))


def _taken(path: str, on_exists: OnExists) -> TargetExistsError:
    """The error for a target whose name (or, with ``unique``, every suffixed name) is taken."""
    if on_exists == "error":
        return TargetExistsError(f"{path!r} exists and on_exists='error' keeps it; the new item was not written")
    return TargetExistsError(f"{path!r}: no free unique name among {_MAX_UNIQUE} suffixes")


_AT_FDCWD, _RENAME_NOREPLACE_FLAG, _AT_SYMLINK_FOLLOW, _AT_EMPTY_PATH = -100, 1, 0x400, 0x1000


def _libc_function(name: str, argtypes: list[Any]) -> Any:
    """``name`` from the C library (Linux only), returning int and setting errno; None where it is missing."""
    if sys.platform != "linux":
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


def _load_renameat2() -> Callable[[int, str, str], int] | None:
    """``renameat2(dir, ..., dir, ..., RENAME_NOREPLACE)`` as ``call(dir_fd, source, target) -> 0 or errno``."""
    function = _libc_function(
        "renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    )
    if function is None:
        return None

    def rename_noreplace_call(dir_fd: int, source: str, target: str) -> int:
        if function(dir_fd, os.fsencode(source), dir_fd, os.fsencode(target), _RENAME_NOREPLACE_FLAG) == 0:
            return 0
        return ctypes.get_errno()

    return rename_noreplace_call


def _load_link_anonymous(linkat: Callable[..., int] | None = None) -> Callable[[int, int, str], int] | None:
    """``call(fd, dir_fd, name) -> 0 or errno`` naming the unnamed file open as ``fd`` in directory ``dir_fd``.

    ``linkat(fd, "", dir_fd, name, AT_EMPTY_PATH)`` names the file directly; it needs CAP_DAC_READ_SEARCH,
    or Linux 6.10+ for a file the caller opened, and answers ENOENT otherwise. Then ``linkat`` of
    ``/proc/self/fd/N`` with ``AT_SYMLINK_FOLLOW`` (the unprivileged form, ~4-12 us more per file for
    the walk through /proc) is used from the first time it works where the direct form did not. Either
    fails with EEXIST when the name exists, like any link. ``linkat``: the C function (default: libc's).
    None without O_TMPFILE, /proc or linkat.
    """
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    function = linkat or _libc_function(
        "linkat", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    )
    if function is None:
        return None
    direct = True

    def link_through_proc(fd: int, dir_fd: int, name: bytes) -> int:
        if function(_AT_FDCWD, b"/proc/self/fd/%d" % fd, dir_fd, name, _AT_SYMLINK_FOLLOW) == 0:
            return 0
        return ctypes.get_errno()

    def link_anonymous_call(fd: int, dir_fd: int, name: str) -> int:
        nonlocal direct
        encoded = os.fsencode(name)
        if not direct:
            return link_through_proc(fd, dir_fd, encoded)
        if function(fd, b"", dir_fd, encoded, _AT_EMPTY_PATH) == 0:
            return 0
        error = ctypes.get_errno()
        if error != errno.ENOENT:
            return error
        error = link_through_proc(fd, dir_fd, encoded)  # no privilege for the direct form
        if error == 0:
            direct = False
        return error

    return link_anonymous_call


_RENAME_NOREPLACE = _load_renameat2()
_LINK_ANONYMOUS = _load_link_anonymous()
_ANONYMOUS_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
#: What a file system (or a kernel before 3.11) without unnamed files, or without links to them, answers.
_NO_ANONYMOUS_FILES = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL, errno.EPERM, errno.EMLINK}
)
#: Directories where that answer came: written with a named temporary from then on (a choice of method,
#: not of where: every write still opens its directory beneath the root).
_no_anonymous_files: set[str] = set()


def _link_or_rename_noreplace(handle: int, tmp: str, name: str) -> None:
    """Give ``tmp`` the name ``name`` (both in directory ``handle``) unless that name exists (FileExistsError).

    ``renameat2(RENAME_NOREPLACE)`` does it in one call; where the file system or C library lacks it,
    a hard link (which also fails atomically if the name exists) followed by removing ``tmp``.
    """
    if _RENAME_NOREPLACE is not None:
        error = _RENAME_NOREPLACE(handle, tmp, name)
        if error == 0:
            return
        if error not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(error, os.strerror(error), name)
    os.link(tmp, name, src_dir_fd=handle, dst_dir_fd=handle, follow_symlinks=False)
    os.unlink(tmp, dir_fd=handle)


def unique_names(path: Path) -> Iterator[Path]:
    """``name.npy``, ``name-1.npy``, ``name-2.npy``, ... (the suffix goes before the extension)."""
    yield path
    stem, suffix = path.stem, path.suffix
    for i in range(1, _MAX_UNIQUE):
        yield path.with_name(f"{stem}-{i}{suffix}")


def _identical_unique_name(handle: int, name: str, content: Content) -> bool:
    """True when ``name`` or one of its ``-N`` variants (up to the first free name) holds ``content``."""
    for candidate in _candidate_names(name, "unique"):
        if not _exists(handle, candidate):
            return False
        if _holds_content(handle, candidate, content):
            return True
    return False


def _holds_content(handle: int, name: str, content: Content) -> bool:
    """True when ``name`` in directory ``handle`` is a file holding exactly ``content`` (not a symlink)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=handle)
    except OSError:
        return False
    with open(fd, "rb") as fh:
        try:
            if os.fstat(fh.fileno()).st_size != sum(memoryview(chunk).nbytes for chunk in content):
                return False
            return all(fh.read(memoryview(chunk).nbytes) == chunk for chunk in content)
        except OSError:
            return False


def write_new_file(path: Path, content: Content) -> None:
    """Create ``path`` (which must not exist) with ``content``; for files inside a private temporary directory."""
    fd = os.open(path, _CREATE_FLAGS, 0o644)
    try:
        _write_all(fd, content)
    finally:
        os.close(fd)
