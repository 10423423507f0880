"""Named temporaries: their names, the record of where a process makes them, and the clean-up at start.

Unnamed files (``O_TMPFILE``) leave nothing behind after a crash; named temporaries (file systems
without unnamed files, and ``on_exists="overwrite"``) do. Finding those by walking the archive made the
start of an archiver grow with the archive (minutes on millions of files, holding BOSS). Instead, before
its first named temporary in a directory, a process appends that directory (relative to the root) to
its own record, ``<root>/.heros-archiver/temporaries/<pid>.<token>``; at start only the directories in
the records of processes that no longer run are looked at, and those records are then removed. One
record per process: no two processes ever write, or compact, the same file. Temporaries left by versions
before these records (0014) are not found; see the README.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import uuid

from ..errors import PathConfinementError
from ..state.statedir import RECORDS_SUBDIR
from .confinement import open_directory

log = logging.getLogger("heros_archiver")

#: The directory under the archive root that holds the archiver's own state (dead letters, spool, records).
RECORDS_DIR = str(RECORDS_SUBDIR)
TMP_PREFIX = ".~heros-archiver"
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"\.(\d+)\.([0-9a-f]{8})\.[0-9a-f]+\.tmp$")
_RECORD_NAME = re.compile(r"(\d+)\.([0-9a-f]{8})$")
#: Tells this process's temporaries from those of an earlier process that had the same PID.
PROCESS_TOKEN = uuid.uuid4().hex[:8]
#: (root, directory) pairs this process has recorded: nothing about confinement, only "already in the record".
_recorded: set[tuple[str, str]] = set()
_recorded_lock = threading.Lock()
_MAX_RECORDED = 100_000


def is_temporary(name: str) -> bool:
    """True for the names ``write_atomic`` gives its temporaries."""
    return _TMP_NAME.match(name) is not None


def owner_alive(pid: int, token: str) -> bool:
    """True if the process that made a temporary (``pid`` with ``token``) may still be using it."""
    if pid == os.getpid():
        return token == PROCESS_TOKEN
    return pid_running(pid)


def pid_running(pid: int) -> bool:
    """True while a process ``pid`` exists (one of another user's included): the pid may have been reused."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record_directory(root: str, directory: str, durable: bool) -> None:
    """Note in this process's record that it makes named temporaries in ``directory`` (under ``root``).

    Called before the first temporary there; ``durable`` fsyncs the record (when the write is fsynced).
    """
    key = (root, directory)
    if key in _recorded:
        return
    relative = directory[len(root.rstrip("/")) + 1 :] if directory != root else ""
    records = open_directory(root, f"{root.rstrip('/')}/{RECORDS_DIR}")
    try:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(f"{os.getpid()}.{PROCESS_TOKEN}", flags, 0o644, dir_fd=records)
        try:
            os.write(fd, (json.dumps(relative) + "\n").encode())  # one short write: a crash leaves whole lines
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.close(records)
    with _recorded_lock:
        if len(_recorded) >= _MAX_RECORDED:
            _recorded.clear()  # recorded again when next used: a repeated line is harmless
        _recorded.add(key)


def remove_stale_temporaries(root: str | os.PathLike[str]) -> int:
    """Delete the temporaries left in the recorded directories by processes that no longer run; return how many.

    Looks only where the records of dead processes point, never at the rest of the archive, then
    removes those records. Temporaries of live processes (another archiver sharing the root) stay.
    """
    root_text = os.path.abspath(os.fspath(root))
    try:
        records = open_directory(root_text, f"{root_text.rstrip('/')}/{RECORDS_DIR}", create=False)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    try:
        for name in _list(records):
            match = _RECORD_NAME.match(name)
            if match is None or owner_alive(int(match.group(1)), match.group(2)):
                continue
            for relative in _read_record(records, name):
                removed += _remove_in(root_text, relative)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=records)
    finally:
        os.close(records)
    return removed


def _list(handle: int) -> list[str]:
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=handle)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _read_record(records: int, name: str) -> set[str]:
    """The directories one record names (a line cut short by a crash, or not ours, is skipped)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=records)
    except OSError:
        return set()
    with open(fd, "rb") as fh:
        lines = fh.read().splitlines()
    directories: set[str] = set()
    for line in lines:
        with contextlib.suppress(ValueError):
            relative = json.loads(line)
            if isinstance(relative, str):
                directories.add(relative)
    return directories


def _remove_in(root: str, relative: str) -> int:
    """Remove the temporaries of dead processes in one recorded directory, opened beneath the root."""
    directory = f"{root.rstrip('/')}/{relative}" if relative else root
    try:
        handle = open_directory(root, directory, create=False)
    except (OSError, PathConfinementError) as exc:  # gone, or no longer a directory of ours: nothing to clean
        log.debug("stale temporaries: skipping %s: %s", directory, exc)
        return 0
    removed = 0
    try:
        for name in _list(handle):
            match = _TMP_NAME.match(name)
            if match is None or owner_alive(int(match.group(1)), match.group(2)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=handle)
                removed += 1
    finally:
        os.close(handle)
    return removed
