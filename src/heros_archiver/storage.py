"""Atomic, no-clobber file creation.

A file is written under a temporary name in its target directory, flushed (and fsynced if asked),
then published under its final name in one step. ``on_exists="error"`` publishes with a hard link,
which fails atomically when the name is taken, so two writers can never overwrite each other. After
a crash only temporaries can be incomplete; ``remove_stale_temporaries`` removes those of dead
processes at start.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal

from .errors import ConfigurationError, StorageError, TargetExistsError

OnExists = Literal["error", "overwrite", "unique"]
Fsync = Literal["none", "file", "file+directory"]
ON_EXISTS_CHOICES: tuple[str, ...] = ("error", "overwrite", "unique")
FSYNC_CHOICES: tuple[str, ...] = ("none", "file", "file+directory")

_TMP_PREFIX = ".~heros-archiver"
_TMP_NAME = re.compile(re.escape(_TMP_PREFIX) + r"\.(\d+)\.([0-9a-f]{8})\.[0-9a-f]{32}\.tmp$")
#: Tells this process's temporaries from those of an earlier process that had the same PID.
_PROCESS_TOKEN = uuid.uuid4().hex[:8]
_MAX_UNIQUE = 10_000


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ConfigurationError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigurationError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def write_atomic(
    path: Path,
    write: Callable[[BinaryIO], None],
    on_exists: OnExists = "error",
    fsync: Fsync = "none",
) -> Path:
    """Create ``path`` with the bytes ``write`` puts into the file object it is given.

    Returns the path actually written (differs from ``path`` only with ``on_exists="unique"``).
    Raises TargetExistsError (policy ``error``) or StorageError (the file system refused).
    """
    tmp = path.parent / f"{_TMP_PREFIX}.{os.getpid()}.{_PROCESS_TOKEN}.{uuid.uuid4().hex}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            if fsync != "none":
                os.fsync(fh.fileno())
        final = _publish(tmp, path, on_exists)
        if fsync == "file+directory":
            _fsync_directory(path.parent)
        return final
    except TargetExistsError:
        raise
    except OSError as exc:
        raise StorageError(exc.errno or errno.EIO, f"writing {str(path)!r} failed: {exc.strerror or exc}") from exc
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # the directory became unusable; the stale temporary is removed at the next start


def _publish(tmp: Path, path: Path, on_exists: OnExists) -> Path:
    if on_exists == "overwrite":
        os.replace(tmp, path)
        return path
    candidates = [path] if on_exists == "error" else _unique_names(path)
    for candidate in candidates:
        try:
            os.link(tmp, candidate)
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
    if on_exists == "error":
        raise TargetExistsError(f"{str(path)!r} exists and on_exists='error' keeps it; the new item was not written")
    raise TargetExistsError(f"{str(path)!r}: no free unique name among {_MAX_UNIQUE} suffixes")


def _unique_names(path: Path) -> list[Path]:
    """``name.npy``, ``name-1.npy``, ``name-2.npy``, ... (the suffix goes before the extension)."""
    stem, suffix = path.stem, path.suffix
    return [path] + [path.with_name(f"{stem}-{i}{suffix}") for i in range(1, _MAX_UNIQUE)]


def _fsync_directory(directory: Path) -> None:
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
            if match is None or _owner_alive(int(match.group(1)), match.group(2)):
                continue
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except OSError:
                pass
    return removed


def _owner_alive(pid: int, token: str) -> bool:
    if pid == os.getpid():
        return token == _PROCESS_TOKEN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
