"""Atomic, no-clobber file creation.

Where the file system has anonymous files (Linux ``O_TMPFILE``: ext4, XFS, btrfs, tmpfs), a file is
written as an unnamed inode in its target directory, flushed (and fsynced if asked), then given its final
name with ``linkat``, which fails atomically when the name is taken: no name exists before the content
is complete, and a crash leaves nothing behind (the kernel frees the inode). Elsewhere, and for
``on_exists="overwrite"``, it is written under a temporary name and published in one rename; after a
crash only those temporaries can be incomplete, and ``remove_stale_temporaries`` removes the ones of
dead processes at start. Either way two writers can never overwrite each other under ``"error"`` and
``"unique"``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigurationError, StorageError, TargetExistsError
from .formats.base import Content
from .writeback import WritebackWindow

OnExists = Literal["error", "overwrite", "unique"]
Fsync = Literal["none", "file", "file+directory"]
ON_EXISTS_CHOICES: tuple[str, ...] = ("error", "overwrite", "unique")
FSYNC_CHOICES: tuple[str, ...] = ("none", "file", "file+directory")

_TMP_PREFIX = ".~heros-archiver"
_TMP_NAME = re.compile(re.escape(_TMP_PREFIX) + r"\.(\d+)\.([0-9a-f]{8})\.[0-9a-f]+\.tmp$")
#: Tells this process's temporaries from those of an earlier process that had the same PID.
PROCESS_TOKEN = uuid.uuid4().hex[:8]
_tmp_counter = itertools.count()
_CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
)  # unique within the process; pid + token make it unique across processes
_MAX_UNIQUE = 10_000


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ConfigurationError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigurationError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def check_integer(name: str, value: object, expected: str, minimum: int, maximum: int | None = None) -> None:
    """Raise ConfigurationError unless ``value`` is an int (not a bool) from ``minimum`` to ``maximum``.

    ``expected`` words the range for the message, e.g. "a positive integer".
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        raise ConfigurationError(f"{name}: expected {expected}, got {value!r}")


def write_atomic(
    path: str | os.PathLike[str],
    content: Content,
    on_exists: OnExists = "error",
    fsync: Fsync = "none",
    window: WritebackWindow | None = None,
) -> str:
    """Create ``path`` holding ``content`` (buffers written in order); return the path written, as text.

    The path written differs from ``path`` only with ``on_exists="unique"``. With ``window``, a large file is
    handed to it after writing (writeback starts now, its pages leave the cache later).
    Raises TargetExistsError (policy ``error``) or StorageError (the file system refused).
    """
    target = os.fspath(path)  # text, not pathlib, on this per-file path: each Path operation costs ~1 us
    directory = os.path.dirname(target)
    try:
        if on_exists != "overwrite" and _LINK_ANONYMOUS is not None and directory not in _no_anonymous_files:
            final = _write_anonymous(directory, target, content, on_exists, fsync, window)
            if final is not None:
                return final
        return _write_named(directory, target, content, on_exists, fsync, window)
    except TargetExistsError:
        raise
    except OSError as exc:
        raise StorageError(exc.errno or errno.EIO, f"writing {target!r} failed: {exc.strerror or exc}") from exc


def _write_anonymous(
    directory: str, target: str, content: Content, on_exists: OnExists, fsync: Fsync, window: WritebackWindow | None
) -> str | None:
    """Write an unnamed file in ``directory``, then link it under ``target``; None: no anonymous files here.

    The descriptor stays open until the file has its name: closing an unnamed file frees it.
    """
    assert _LINK_ANONYMOUS is not None
    try:
        fd = _open_creating_directory(directory, _ANONYMOUS_FLAGS, directory)
    except OSError as exc:
        if exc.errno not in _NO_ANONYMOUS_FILES:
            raise
        _remember_no_anonymous_files(directory)
        return None
    try:
        nbytes = _write_all(fd, content)
        if fsync != "none":
            os.fsync(fd)
        for candidate in _candidate_names(target, on_exists):
            error = _LINK_ANONYMOUS(fd, candidate)
            if error == 0:
                break
            if error == errno.EEXIST:
                continue
            if error in _NO_ANONYMOUS_FILES:  # e.g. a file system that refuses links: write it the other way
                _remember_no_anonymous_files(directory)
                return None
            raise OSError(error, os.strerror(error), candidate)
        else:
            raise _taken(target, on_exists)
        if window is not None and window.wants(nbytes):  # published first: the window may wait for the disk
            window.hand_over(f"/proc/self/fd/{fd}", nbytes, candidate)
    finally:
        os.close(fd)
    if fsync == "file+directory":
        _fsync_directory(directory)
    return candidate


def _open_creating_directory(path: str, flags: int, directory: str) -> int:
    """``os.open(path, flags)``, creating ``directory`` first if it is missing (the only case that needs mkdir)."""
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        return os.open(path, flags, 0o644)


def _remember_no_anonymous_files(directory: str) -> None:
    if len(_no_anonymous_files) > 10_000:
        _no_anonymous_files.clear()
    _no_anonymous_files.add(directory)


def _write_named(
    directory: str, target: str, content: Content, on_exists: OnExists, fsync: Fsync, window: WritebackWindow | None
) -> str:
    """Write under a temporary name in ``directory``, then publish it as ``target`` in one step."""
    tmp = f"{directory}/{_TMP_PREFIX}.{os.getpid()}.{PROCESS_TOKEN}.{next(_tmp_counter)}.tmp"
    published = False
    reader: int | None = None  # for the writeback window, opened before the temporary's name goes away
    try:
        fd = _open_creating_directory(tmp, _CREATE_FLAGS, directory)
        try:
            nbytes = _write_all(fd, content)
            if fsync != "none":
                os.fsync(fd)
            if window is not None and window.wants(nbytes):
                reader = window.open_reader(tmp, target)
        finally:
            os.close(fd)  # closed for writing before it is published, as close-after-write watchers expect
        final = _publish(tmp, target, on_exists)
        published = True  # the temporary now has its final name
        if reader is not None and window is not None:  # published first: the window may wait for the disk
            window.take(reader, nbytes, final)
            reader = None
        if fsync == "file+directory":
            _fsync_directory(directory)
        return final
    finally:
        if reader is not None:
            os.close(reader)
        if not published:
            # FileNotFoundError: never created; other errors: the directory became unusable, and the
            # stale temporary is removed at the next start
            with contextlib.suppress(OSError):
                os.unlink(tmp)


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


def _publish(tmp: str, path: str, on_exists: OnExists) -> str:
    if on_exists == "overwrite":
        os.replace(tmp, path)
        return path
    for candidate in _candidate_names(path, on_exists):
        try:
            _link_or_rename_noreplace(tmp, candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # No hard links here (FAT, some network file systems): check, then rename. Not atomic
            # against a concurrent writer of the same name, but never replaces a file seen to exist.
            if os.path.lexists(candidate):
                continue
            os.rename(tmp, candidate)
            return candidate
    raise _taken(path, on_exists)


def _candidate_names(path: str, on_exists: OnExists) -> Iterable[str]:
    """The names a new file may take, in order: ``path`` alone under ``error``, its ``-N`` variants too under
    ``unique``."""
    return [path] if on_exists == "error" else map(str, unique_names(Path(path)))


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


def _load_renameat2() -> Callable[[str, str], int] | None:
    """``renameat2(..., RENAME_NOREPLACE)`` as ``call(source, target) -> 0 or errno``, or None."""
    function = _libc_function(
        "renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    )
    if function is None:
        return None

    def rename_noreplace_call(source: str, target: str) -> int:
        if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE_FLAG) == 0:
            return 0
        return ctypes.get_errno()

    return rename_noreplace_call


def _load_link_anonymous(linkat: Callable[..., int] | None = None) -> Callable[[int, str], int] | None:
    """``call(fd, target) -> 0 or errno`` naming the unnamed file open as ``fd``, or None without support.

    ``linkat(fd, "", ..., AT_EMPTY_PATH)`` names the file directly; it needs CAP_DAC_READ_SEARCH, or Linux
    6.10+ for a file the caller opened, and answers ENOENT otherwise. Then ``linkat`` of
    ``/proc/self/fd/N`` with ``AT_SYMLINK_FOLLOW`` (the unprivileged form, ~4-12 us more per file for
    the walk through /proc) is used from the first time it works where the direct form did not. Either
    fails with EEXIST when ``target`` exists, like any link. ``linkat``: the C function (default: libc's).
    """
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    function = linkat or _libc_function(
        "linkat", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    )
    if function is None:
        return None
    direct = True

    def link_through_proc(fd: int, target: bytes) -> int:
        if function(_AT_FDCWD, b"/proc/self/fd/%d" % fd, _AT_FDCWD, target, _AT_SYMLINK_FOLLOW) == 0:
            return 0
        return ctypes.get_errno()

    def link_anonymous_call(fd: int, target: str) -> int:
        nonlocal direct
        encoded = os.fsencode(target)
        if not direct:
            return link_through_proc(fd, encoded)
        if function(fd, b"", _AT_FDCWD, encoded, _AT_EMPTY_PATH) == 0:
            return 0
        error = ctypes.get_errno()
        if error != errno.ENOENT:
            return error
        error = link_through_proc(fd, encoded)  # no privilege for the direct form, or no such directory
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
#: Directories where that answer came: written with a named temporary from then on.
_no_anonymous_files: set[str] = set()


def _link_or_rename_noreplace(tmp: str, target: str) -> None:
    """Give ``tmp`` the name ``target`` unless that name exists (FileExistsError), in one atomic step.

    ``renameat2(RENAME_NOREPLACE)`` does it in one call; where the file system or C library lacks it,
    a hard link (which also fails atomically if the name exists) followed by removing ``tmp``.
    """
    if _RENAME_NOREPLACE is not None:
        error = _RENAME_NOREPLACE(tmp, target)
        if error == 0:
            return
        if error not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(error, os.strerror(error), target)
    os.link(tmp, target)
    os.unlink(tmp)


def unique_names(path: Path) -> Iterator[Path]:
    """``name.npy``, ``name-1.npy``, ``name-2.npy``, ... (the suffix goes before the extension)."""
    yield path
    stem, suffix = path.stem, path.suffix
    for i in range(1, _MAX_UNIQUE):
        yield path.with_name(f"{stem}-{i}{suffix}")


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temporary(name: str) -> bool:
    """True for the names ``write_atomic`` gives its temporaries."""
    return _TMP_NAME.match(name) is not None


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporaries under ``root`` left by processes that no longer run; return how many.

    Temporaries of live processes (another archiver sharing the root) are left alone.
    """
    removed = 0
    if not root.is_dir():
        return 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            match = _TMP_NAME.match(name)
            if match is None or owner_alive(int(match.group(1)), match.group(2)):
                continue
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except OSError:
                pass
    return removed


def write_unless_present(
    path: str, content: Content, on_exists: OnExists, fsync: Fsync, window: WritebackWindow | None = None
) -> str | None:
    """``write_atomic``, except that a target already holding exactly ``content`` counts as written.

    Returns the path written, or None when the identical file was there (nothing new to undo), so that
    replaying an item, resuming after a crash or rewriting a lost helper's batch never duplicates a file.
    """
    try:
        return write_atomic(path, content, on_exists, fsync, window)
    except TargetExistsError:
        if holds_content(path, content):
            return None
        raise


def holds_content(path: str | os.PathLike[str], content: Content) -> bool:
    """True when ``path`` holds exactly ``content`` (a target that does counts as written: no duplicate)."""
    try:
        if os.stat(path).st_size != sum(memoryview(chunk).nbytes for chunk in content):
            return False
        with open(path, "rb") as fh:
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


def owner_alive(pid: int, token: str) -> bool:
    """True if the process that made a temporary (``pid`` with ``token``) may still be using it."""
    if pid == os.getpid():
        return token == PROCESS_TOKEN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
