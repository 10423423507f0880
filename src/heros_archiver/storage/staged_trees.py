"""Publish a directory tree (a Zarr array: ``zarr.json`` and its chunk objects) under its final name in one step.

A Zarr array is a directory of objects, and a reader takes whatever is there: an array whose chunks are
still being written reads as fill values, silently. So the tree is built complete in a staging directory
of the archiver's own (``<root>/.heros-archiver/staging/``, never inside a Zarr group, where a reader
listing the group would meet it), under a temporary name that says which process made it, and then given
its final name with ``renameat2(RENAME_NOREPLACE)`` from the staging directory's handle to the target
directory's handle (opened beneath the root, as every write is: ``confinement``): a reader sees the whole
array or none, and an existing array is never replaced unless ``on_exists="overwrite"`` asks for it
(``RENAME_EXCHANGE``, then the old tree is removed). A killed writer leaves only its temporary in the
staging directory, removed at the next start (``remove_stale_staging``) without walking the archive.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import ArchiverError, InvalidTargetError, TargetExistsError, storage_error
from ..state.statedir import STAGING_SUBDIR
from .atomic import OnExists, _libc_function, _write_all, unique_names
from .confinement import fsync_directory, open_directory
from .temporaries import PROCESS_TOKEN, TMP_PREFIX, is_temporary, owner_alive
from .writeback import MAX_FILES, WritebackWindow

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TREE = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_counter = itertools.count()

#: Makes the objects of a tree anew at each call: (key relative to the tree, bytes valid until the next object)
Objects = Callable[[], Iterable[tuple[str, bytes | memoryview]]]
#: Objects of a large tree this small are not worth the window's system calls (zarr.json, tiny chunks); of a
#: tree of many chunks at most the window's ``MAX_FILES`` are kept open for it (descriptors are limited).
_MIN_WINDOW_OBJECT = 64 << 10


def _load_renameat2() -> Callable[[int, str, int, str, int], int] | None:
    function = _libc_function(
        "renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    )
    if function is None:
        return None

    def call(source_dir: int, source: str, target_dir: int, target: str, flags: int) -> int:
        if function(source_dir, os.fsencode(source), target_dir, os.fsencode(target), flags) == 0:
            return 0
        return ctypes.get_errno()

    return call


_RENAMEAT2 = _load_renameat2()


def staging_directory(root: str) -> str:
    """The staging directory of the archive root ``root``."""
    return f"{root.rstrip('/')}/{STAGING_SUBDIR}"


def publish_tree(
    root: str,
    confine_root: str | None,
    target: str,
    directories: list[str],
    objects: Objects,
    nbytes: int,
    on_exists: OnExists,
    fsync: str,
    window: WritebackWindow | None = None,
    resumed: bool = False,
) -> str | None:
    """Create the directory ``target`` holding ``objects`` (relative keys; ``directories`` are the subdirectories
    they need, parents first), all at once; return the path published, or None when ``target`` (or, resumed
    under ``unique``, one of its ``-N`` names) already holds exactly these objects (nothing new).

    ``confine_root``: the root the target's directory is opened beneath (None: trusted, a root of ``/``).
    ``nbytes``: about how large the tree is. With ``window``, the objects of a tree of 1 MiB and more (the file
    archivers' threshold, applied to the array: its chunks are smaller files) are handed to it after
    publishing, all but the small ones: without the window, every chunk written needs fresh page-cache memory,
    ~1 ms per 256 KiB chunk on the VM measured (decision 0009), with it 0.1 ms.
    Raises TargetExistsError (``error``/``unique`` and the name is taken), InvalidTargetError (the staging
    directory is on another file system than the target) or StorageError.
    """
    parent, name = os.path.split(target)
    new_entries: list[int] | None = [] if fsync == "file+directory" else None
    stage = parent_fd = -1
    tmp = f"{TMP_PREFIX}.{os.getpid()}.{PROCESS_TOKEN}.{next(_counter)}.tmp"
    built = published = False
    handed: list[tuple[int, int, str]] = []  # (fd, bytes, object key) for the writeback window
    try:
        stage = open_directory(confine_root, staging_directory(root))
        parent_fd = open_directory(confine_root, parent, new_entries)
        if resumed and on_exists == "unique" and _identical_unique_name(parent_fd, name, objects):
            return None
        os.mkdir(tmp, 0o755, dir_fd=stage)
        built = True
        keep = window is not None and window.wants(nbytes)
        _build(stage, tmp, directories, objects, fsync, handed if keep else None)
        final = _publish(stage, tmp, parent_fd, name, objects, on_exists)
        if final is None:
            return None
        published = True
        if new_entries is not None:
            for entry in (parent_fd, *new_entries):
                fsync_directory(entry)
        path = f"{parent}/{final}"
        if window is not None:
            while handed:
                fd, nbytes, key = handed.pop()
                window.take(fd, nbytes, f"{path}/{key}")
        return path
    except ArchiverError:  # TargetExistsError, InvalidTargetError: already worded, and already permanent or not
        raise
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise storage_error(
            exc.errno or errno.EIO, f"writing the Zarr array {target!r} failed: {exc.strerror or exc}{where}"
        ) from exc
    finally:
        for fd, _nbytes, _key in handed:
            os.close(fd)
        if built and not published:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp, dir_fd=stage)
        for handle in (stage, parent_fd, *(new_entries or ())):
            if handle >= 0:
                os.close(handle)


def _build(
    stage: int,
    tmp: str,
    directories: list[str],
    objects: Objects,
    fsync: str,
    handed: list[tuple[int, int, str]] | None,
) -> None:
    """Write the tree in the temporary directory ``tmp`` of the staging directory ``stage``."""
    tree = os.open(tmp, _TREE, dir_fd=stage)
    try:
        for directory in directories:
            os.mkdir(directory, 0o755, dir_fd=tree)
        for key, data in objects():
            fd = os.open(key, _CREATE, 0o644, dir_fd=tree)
            try:
                nbytes = _write_all(fd, [data])
                if fsync != "none":
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            if handed is not None and nbytes >= _MIN_WINDOW_OBJECT and len(handed) < MAX_FILES:
                handed.append((fd, nbytes, key))  # closed by the window, or by publish_tree
            else:
                os.close(fd)
        if fsync == "file+directory":
            for directory in (".", *directories):
                handle = os.open(directory, _TREE, dir_fd=tree)
                try:
                    fsync_directory(handle)
                finally:
                    os.close(handle)
    finally:
        os.close(tree)


def _publish(stage: int, tmp: str, parent_fd: int, name: str, objects: Objects, on_exists: OnExists) -> str | None:
    """Move ``tmp`` to ``name`` in ``parent_fd`` under the policy; the name used, or None (identical, kept)."""
    candidates = [name] if on_exists != "unique" else [p.name for p in unique_names(Path(name))]
    for candidate in candidates:
        error = _rename(stage, tmp, parent_fd, candidate, _RENAME_NOREPLACE)
        if error == 0:
            return candidate
        if error == errno.EXDEV:
            raise InvalidTargetError(
                errno.EXDEV,
                f"the Zarr array {name!r} is on another file system than the archive root's staging directory; "
                "pass a root= on the store's file system",
            )
        if error not in (errno.EEXIST, errno.ENOTEMPTY):
            raise OSError(error, os.strerror(error), name)
        if on_exists == "overwrite":
            if not is_array(parent_fd, candidate):
                raise TargetExistsError(
                    f"{name!r} exists and is no Zarr array (a group, or not Zarr at all): on_exists='overwrite' "
                    "replaces only arrays; it is kept and the new array was not written"
                )
            error = _rename(stage, tmp, parent_fd, candidate, _RENAME_EXCHANGE)
            if error == 0:  # the old tree now has the temporary's name
                with contextlib.suppress(OSError):
                    shutil.rmtree(tmp, dir_fd=stage)
                return candidate
            raise OSError(error, os.strerror(error), name)
        if on_exists == "error":
            found = compare_tree(parent_fd, candidate, objects)
            if found == "same":
                return None
            if found == "part" and _rename(stage, tmp, parent_fd, candidate, _RENAME_EXCHANGE) == 0:
                with contextlib.suppress(OSError):  # the incomplete copy, now under the temporary's name
                    shutil.rmtree(tmp, dir_fd=stage)
                return candidate
            raise TargetExistsError(f"{name!r} exists and on_exists='error' keeps it; the new array was not written")
    raise TargetExistsError(f"{name!r}: no free unique name among {len(candidates)} suffixes")


def _rename(source_dir: int, source: str, target_dir: int, target: str, flags: int) -> int:
    """``renameat2`` (0 or an errno); where the C library or file system lacks it, a check then a rename (not
    atomic against a concurrent writer of the same name, but never replacing a tree seen to exist)."""
    if _RENAMEAT2 is not None:
        error = _RENAMEAT2(source_dir, source, target_dir, target, flags)
        if error not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            return error
    if flags == _RENAME_EXCHANGE:
        return errno.ENOTSUP
    try:
        os.lstat(target, dir_fd=target_dir)
        return errno.EEXIST
    except FileNotFoundError:
        pass
    try:
        os.rename(source, target, src_dir_fd=source_dir, dst_dir_fd=target_dir)
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


def _identical_unique_name(parent_fd: int, name: str, objects: Objects) -> bool:
    for candidate in unique_names(Path(name)):
        try:
            os.lstat(candidate.name, dir_fd=parent_fd)
        except FileNotFoundError:
            return False
        if holds_tree(parent_fd, candidate.name, objects):
            return True
    return False


def is_array(parent_fd: int, name: str) -> bool:
    """True when ``name`` in ``parent_fd`` is a directory (not a symlink) whose ``zarr.json`` is an array's."""
    try:
        fd = os.open(f"{name}/zarr.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        if not stat.S_ISDIR(os.lstat(name, dir_fd=parent_fd).st_mode):
            os.close(fd)
            return False
    except OSError:
        return False
    with open(fd, "rb") as handle:
        try:
            document = json.loads(handle.read(1 << 20))
        except ValueError:
            return False
    return isinstance(document, dict) and document.get("node_type") == "array"


def holds_tree(parent_fd: int, name: str, objects: Objects) -> bool:
    """True when the directory ``name`` in ``parent_fd`` holds exactly ``objects``: the same keys, the same bytes,
    nothing else, no symlink (so that an item written before a crash is not written, or refused, again)."""
    return compare_tree(parent_fd, name, objects) == "same"


def compare_tree(parent_fd: int, name: str, objects: Objects) -> str:
    """``same``: ``name`` holds exactly ``objects``; ``part``: the same ``zarr.json`` and some of the chunks, each
    identical, the others missing (what the writeback window leaves of this very item when the device failed
    one chunk: it removes that file and the item is written again); ``other`` for anything else."""
    try:
        found = {
            os.path.normpath(os.path.join(path, file))
            for path, _dirs, files, _fd in os.fwalk(name, dir_fd=parent_fd, follow_symlinks=False)
            for file in files
        }
    except OSError:
        return "other"
    expected = set()
    for key, data in objects():
        path = os.path.normpath(os.path.join(name, key))
        expected.add(path)
        if path not in found and key != "zarr.json":
            continue
        try:
            fd = os.open(f"{name}/{key}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except OSError:
            return "other"
        with open(fd, "rb") as handle:
            if handle.read(memoryview(data).nbytes + 1) != data:
                return "other"
    if found == expected:
        return "same"
    return "part" if found < expected else "other"


def remove_stale_staging(root: str, confine_root: str | None) -> int:
    """Remove the trees left in the staging directory by processes that no longer run; return how many."""
    try:
        stage = open_directory(confine_root, staging_directory(root), create=False)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    try:
        listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=stage)
        try:
            names = os.listdir(listing)
        finally:
            os.close(listing)
        for name in names:
            if not is_temporary(name):
                continue
            pid, token = name[len(TMP_PREFIX) + 1 :].split(".")[:2]
            if owner_alive(int(pid), token):
                continue
            with contextlib.suppress(OSError):
                shutil.rmtree(name, dir_fd=stage)
                removed += 1
    finally:
        os.close(stage)
    return removed
