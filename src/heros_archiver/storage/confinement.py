"""Open the directory of a target under the archive root by handle: nothing is checked by name and used later.

A rendered path is checked lexically first (``naming.confine_text``: no ``..``, no absolute path
elsewhere); what the file system makes of it is only known when it is opened. So every write opens the
archive root, then the target's directory *relative to that handle*: with ``openat2`` and
``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`` (Linux 5.6+) in one call, or, where
the kernel lacks it, one component at a time with ``O_NOFOLLOW`` opens, each relative to its parent's
handle. Missing directories are created with ``mkdirat`` on their parent's handle. The file is then
created and named relative to the directory's handle, so a symlink planted or a directory renamed
between two steps cannot move the write out: each step starts from a handle, never from a name checked
earlier. Nothing is cached between writes: a cached handle of a directory moved out of the root since
would write out of it.

Symlinks below the root are refused whichever way they point (decision 0014): it is the same rule with
and without ``openat2``, and a file is where its rendered path says. The root itself is trusted
configuration and is opened by its path, following symlinks, as are the target directories of a write
without a root (``root=None``: the caller trusts the directory, e.g. an archive root of ``/``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import sys
from collections.abc import Callable

from ..errors import PathConfinementError

_DIRECTORY_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_WALK_FLAGS = _DIRECTORY_FLAGS | os.O_NOFOLLOW
_RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x02, 0x04, 0x08
#: openat2's number where the kernel has one table for new system calls (every architecture but alpha)
_OPENAT2_NUMBER = 437
_OPENAT2_MACHINES = frozenset({"x86_64", "aarch64", "arm64", "armv7l", "armv8l", "riscv64", "ppc64le", "s390x"})
_AT_FDCWD = -100


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_openat2() -> Callable[[int, str], int] | None:
    """``call(dir_fd, relative) -> fd or -errno``: openat2 of a directory beneath ``dir_fd``; None without it."""
    if sys.platform != "linux" or platform.machine() not in _OPENAT2_MACHINES:
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    how = _OpenHow(_DIRECTORY_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    how_address, how_size = ctypes.addressof(how), ctypes.sizeof(how)

    def openat2_call(dir_fd: int, relative: str) -> int:
        fd = int(syscall(_OPENAT2_NUMBER, dir_fd, os.fsencode(relative), how_address, how_size))
        return fd if fd >= 0 else -ctypes.get_errno()

    openat2_call.how = how  # type: ignore[attr-defined]  # keeps the structure alive with the function
    probe = openat2_call(_AT_FDCWD, ".")
    if probe < 0:  # ENOSYS (kernel before 5.6), EPERM (a seccomp filter): walk instead
        return None
    os.close(probe)
    return openat2_call


#: None where the kernel has no openat2: every directory is then walked component by component.
_OPENAT2 = _load_openat2()


def open_directory(root: str | None, directory: str, new_entries: list[int] | None = None, create: bool = True) -> int:
    """An ``O_PATH`` handle of ``directory``, resolved beneath the handle of ``root`` without following symlinks.

    ``directory`` is ``root`` or lies under it (text, normalised, as ``confine_text`` returns it). With
    ``create``, missing directories are made (the root by its path, the rest relative to their parent's
    handle); ``new_entries`` then gets a handle of every directory that got a new entry (the parents of
    the directories made), for ``fsync``; the caller closes them. Raises PathConfinementError for a
    symlink (or ``..``) below the root, FileNotFoundError without ``create``, OSError otherwise (e.g.
    ENOTDIR: a component is a file).
    """
    if root is None:
        return _open_trusted(directory or ".", new_entries, create)
    if directory == root:
        relative = ""
    elif directory.startswith(root.rstrip("/") + "/"):
        relative = directory[len(root.rstrip("/")) + 1 :]
    else:
        raise PathConfinementError(f"directory {directory!r} is not under the archive root {root!r}")
    root_fd = _open_trusted(root, new_entries, create)
    if not relative:
        return root_fd
    try:
        if _OPENAT2 is not None:
            fd = _OPENAT2(root_fd, relative)
            if fd >= 0:
                return fd
            if -fd not in (errno.ENOENT, errno.ELOOP, errno.EXDEV, errno.EAGAIN):
                raise OSError(-fd, os.strerror(-fd), directory)
            # missing (create it), a symlink or ".." (the walk names it), or a rename raced the lookup
        return _walk(root_fd, root, relative, new_entries, create)
    finally:
        os.close(root_fd)


def _walk(root_fd: int, root: str, relative: str, new_entries: list[int] | None, create: bool) -> int:
    """Open ``relative`` beneath ``root_fd`` one component at a time, never following a symlink."""
    parent = root_fd
    where = root
    try:
        for component in relative.split("/"):
            if component in ("", "."):
                continue
            where = f"{where}/{component}"
            if component == "..":
                raise PathConfinementError(f"{where!r}: '..' below the archive root {root!r} is not followed")
            child = _open_component(parent, component, where, root, new_entries, create)
            if parent != root_fd:
                os.close(parent)
            parent = child
        return parent if parent != root_fd else os.dup(root_fd)
    except BaseException:
        if parent != root_fd:
            os.close(parent)
        raise


def _open_component(
    parent: int, component: str, where: str, root: str, new_entries: list[int] | None, create: bool
) -> int:
    for _attempt in range(2):
        try:
            return os.open(component, _WALK_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(component, 0o777, dir_fd=parent)
            except FileExistsError:
                continue  # made meanwhile by another writer (or it is a dangling symlink: the open says)
            except OSError as exc:  # e.g. ENAMETOOLONG, ENOSPC: named by the path, not the bare component
                raise OSError(exc.errno, exc.strerror, where) from exc
            if new_entries is not None:
                new_entries.append(os.dup(parent))
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_symlink(parent, component):
                raise PathConfinementError(
                    f"{where!r} is a symbolic link (to {_link_target(parent, component)!r}); the archiver follows "
                    f"no symlink below the archive root {root!r}"
                ) from exc
            raise OSError(exc.errno, exc.strerror, where) from exc
    return os.open(component, _WALK_FLAGS, dir_fd=parent)


def _is_symlink(parent: int, component: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(component, dir_fd=parent).st_mode)
    except OSError:
        return False


def _link_target(parent: int, component: str) -> str:
    try:
        return os.readlink(component, dir_fd=parent)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def _open_trusted(path: str, new_entries: list[int] | None, create: bool) -> int:
    """Open a directory the caller trusts by its path (following symlinks), making it and its parents if asked."""
    try:
        return os.open(path, _DIRECTORY_FLAGS)
    except FileNotFoundError:
        if not create:
            raise
    _make_trusted(os.path.abspath(path), new_entries)
    return os.open(path, _DIRECTORY_FLAGS)


def _make_trusted(path: str, new_entries: list[int] | None) -> None:
    parent = os.path.dirname(path)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    except FileNotFoundError:
        if parent == path:
            raise
        _make_trusted(parent, new_entries)
        try:
            os.mkdir(path)
        except FileExistsError:
            return
    if new_entries is not None:
        new_entries.append(os.open(parent, _DIRECTORY_FLAGS))


def fsync_directory(handle: int) -> None:
    """fsync the directory open as ``handle`` (an ``O_PATH`` handle cannot be fsynced itself)."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=handle)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
