"""Opening HDF5 files for one writer: the optional import, the writer lock, crash recovery, ``unique`` names.

Why each piece exists:

* **The import.** h5py and hdf5plugin are an extra (``pip install heros-archiver[hdf5]``); nothing imports
  them until a container is constructed, and a missing one is a ``ConfigurationError`` naming the extra.
* **The writer lock.** A SWMR writer releases HDF5's own file lock once SWMR starts (so that readers can
  open the file), so HDF5 does not stop a second writer. A second archiver that "recovered" a live file
  (cleared its status flags) would corrupt it. Each container therefore holds an open-file-description
  lock (``F_OFD_SETLK``, Linux) on the file while it is open: those do not interact with the ``flock``
  locks HDF5 and its readers take, and they vanish with the process, also after SIGKILL.
* **Crash recovery.** HDF5 marks a file open for (SWMR) write in its superblock and clears the mark at
  close. After a SIGKILL the mark stays, and every later open fails with "file is already open for write
  (may use <h5clear file> to clear file consistency flags)", except a SWMR reader's
  (``h5py.File(path, "r", libver="latest", swmr=True)``, which works on a crashed file as it does on a live
  one). ``clear_status_flags`` does what ``h5clear -s --increment=0`` does, through the library h5py
  loaded: open with the file-access property ``clear_status_flags`` (the one h5clear sets), then
  ``H5Fincrement_filesize(fid, 0)``, which sets the end-of-allocation to the file's real size. Without that
  second step, closing would truncate the file to the end-of-allocation stored at the last superblock write,
  and a file whose writer never flushed the whole file would lose data (measured: 2,655 bytes cut to 447).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

from ...errors import ConfigurationError, StorageError
from . import ContainerBusyError

#: What HDF5 says when a file's status flags mark it as still open for writing.
OPEN_FOR_WRITE = "already open for write"


def load_h5py() -> tuple[ModuleType, ModuleType]:
    """``(h5py, hdf5plugin)``, or a ConfigurationError that names the extra to install (xxhash, for the item
    keys, is checked here too)."""
    try:
        import h5py
        import hdf5plugin
        import xxhash  # noqa: F401 - containers.ItemKey.of
    except ImportError as exc:
        raise ConfigurationError(
            f"the HDF5 container needs h5py, hdf5plugin and xxhash, which are not all installed ({exc}); "
            "install the extra: pip install heros-archiver[hdf5]"
        ) from exc
    return h5py, hdf5plugin


class WriterLock:
    """An exclusive OFD lock on a file, held while one container writes it (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        # struct flock: l_type, l_whence (short each), l_start, l_len (off_t), l_pid (int), padding
        request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        try:
            fcntl.fcntl(self._fd, getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK), request)
        except OSError as exc:
            self.release()
            raise ContainerBusyError(
                f"{path} is open for writing by another archiver (expected no other writer; lock refused: {exc})"
            ) from exc

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _hdf5_function(name: str, argtypes: list[Any]) -> Any:
    """A function of the HDF5 library that h5py itself loaded (the same instance, whatever the build)."""
    h5py, _ = load_h5py()
    library = ctypes.CDLL(h5py.h5f.__file__)  # dlsym searches the extension's dependencies: libhdf5
    function = getattr(library, name)
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


def clear_status_flags(path: str | os.PathLike[str]) -> None:
    """Make a file left open for write by a killed writer openable again (``h5clear -s --increment=0``).

    Only for a file no live process writes. Data committed (flushed) before the kill stays as it was.
    A reader can also skip this and open the file read-only with ``swmr=True``.
    """
    h5py, _ = load_h5py()
    hid = ctypes.c_int64
    set_property = _hdf5_function("H5Pset", [hid, ctypes.c_char_p, ctypes.c_void_p])
    increment = _hdf5_function("H5Fincrement_filesize", [hid, ctypes.c_uint64])
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    clear = ctypes.c_bool(True)
    if set_property(fapl.id, b"clear_status_flags", ctypes.byref(clear)) < 0:
        raise StorageError(f"cannot clear the status flags of {path}: this HDF5 has no 'clear_status_flags'")
    try:
        fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, fapl=fapl)
    except OSError as exc:
        raise StorageError(f"cannot open {path} to clear its status flags (expected an HDF5 file): {exc}") from exc
    try:
        if increment(fid.id, 0) < 0:
            raise StorageError(f"cannot set the end of allocation of {path} to its size (H5Fincrement_filesize)")
    finally:
        fid.close()


def unique_path(path: Path) -> Path:
    """``path`` if free, else the first free ``stem-1.suffix``, ``stem-2.suffix``, ... beside it."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate
