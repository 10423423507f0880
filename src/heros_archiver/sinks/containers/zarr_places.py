"""Where the objects of one Zarr store live: a directory under the archive root, or a prefix in an object store.

``ZarrAppendContainer`` writes whole objects (shards, column chunks, ``zarr.json``) and reads a few back; the
commit protocol (every object first, the frames' ``zarr.json`` last) is the same on both, because both give
what it needs: an object is replaced whole or not at all (a rename in a directory, a PUT in an object store),
and one writer holds an array at a time. What differs is only here:

- ``LocalPlace``: the store's directory, opened beneath the root's handle (``storage.confinement``), objects
  written by temporary + rename (``storage.atomic``) with the old version moved to the trash first
  (``zarr_trash``), an exclusive ``flock`` on the array's directory as the writer's lock (it dies with the
  process).
- ``ObjectPlace``: a key prefix of an ``storage.objectstore.ObjectStore``; the store is claimed by creating its
  root ``zarr.json`` conditionally (``If-None-Match: *``: exactly one of two racing archivers gets a name), an
  object written by one PUT (atomic: a reader gets the old or the new version, so no trash is needed), and the
  writer's lock is an object created conditionally under the location's ``.heros-archiver/locks/``, outside
  every store. A lock left by a killed writer on this host (its process gone) is taken over; one of another
  host is refused with ContainerBusyError naming its key, to be removed by hand once that writer is known dead
  (an object store has no lease that dies with a process).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from ...errors import InvalidTargetError, StorageError, TargetExistsError, storage_error
from ...formats.base import Content
from ...storage.atomic import unique_names, write_atomic
from ...storage.confinement import open_directory
from ...storage.temporaries import PROCESS_TOKEN, pid_running
from . import ContainerBusyError
from .zarr_shards import group_document
from .zarr_trash import keep_old_version

if TYPE_CHECKING:
    from ...storage.objectstore import ObjectStore

OnExists = Literal["error", "append", "unique"]
#: Where an object store's writer locks are, under the archive location's own area.
LOCKS_AREA = "locks"
#: The lock keys (with their stores' bucket) the containers of this process hold now: a lock of this process
#: not among them is one a container could not delete while the store was down, and is taken over.
_held_here: set[tuple[str, str]] = set()
_held_lock = threading.Lock()


class ZarrPlace(ABC):
    """The objects of one store, by key relative to the store (``cam/data/zarr.json``)."""

    #: the store's directory, or its key in the bucket (what routes and rollover names are made of)
    path: Path
    #: what the store is called in messages, reports and locations: its absolute path, or its ``s3://`` URL
    name: str

    @abstractmethod
    def claim(self, on_exists: OnExists) -> ZarrPlace:
        """The store per ``on_exists``: made exclusively (``error``: TargetExistsError when it exists;
        ``unique``: the first free name of ``name.zarr``, ``name-1.zarr``, ...) or taken as it is (``append``)."""

    @abstractmethod
    def lock(self, array_path: str) -> None:
        """Hold ``array_path`` for this writer until ``unlock``; ContainerBusyError while another holds it."""

    @abstractmethod
    def unlock(self) -> None:
        """Let the array go (idempotent)."""

    @abstractmethod
    def read(self, key: str) -> bytes | None:
        """The object ``key``, or None when there is none."""

    @abstractmethod
    def write(self, key: str, content: Content) -> None:
        """Put ``content`` at ``key`` whole, replacing what is there (a reader sees the old or the new)."""

    @abstractmethod
    def zarr_store(self) -> Any:
        """A read-only zarr-python store of these objects (to read back a partial shard and the item keys)."""


class LocalPlace(ZarrPlace):
    """A store's directory ``path``, every access beneath ``root`` (None: the path is trusted as it is)."""

    def __init__(self, path: Path, root: str | None, fsync: bool) -> None:
        self.path = path
        self.name = str(path)
        self._root = root
        self._fsync = fsync
        self._lock: int | None = None

    def claim(self, on_exists: OnExists) -> LocalPlace:
        if on_exists == "append":
            os.close(self._directory(self.path))
            return self
        parent = self._directory(self.path.parent)
        try:
            for candidate in unique_names(self.path) if on_exists == "unique" else [self.path]:
                try:
                    os.mkdir(candidate.name, 0o755, dir_fd=parent)
                except FileExistsError:
                    continue
                return LocalPlace(candidate, self._root, self._fsync)
        except OSError as exc:
            raise storage_error(exc.errno or errno.EIO, f"cannot make the Zarr store {self.path}: {exc}") from exc
        finally:
            os.close(parent)
        if on_exists == "error":
            raise TargetExistsError(f"{self.path} exists and on_exists='error' (expected no store there)")
        raise StorageError(errno.EEXIST, f"no free name for a store beside {self.path} (tried name-1 .. name-9999)")

    def _directory(self, path: Path) -> int:
        """A handle of ``path`` (made if missing) beneath the root, without following a symlink."""
        try:
            return open_directory(self._root, str(path))
        except OSError as exc:
            raise storage_error(exc.errno or errno.EIO, f"cannot open the directory {path}: {exc}") from exc

    def lock(self, array_path: str) -> None:
        """An exclusive ``flock`` on the array's directory (dies with the process)."""
        handle = self._directory(self.path / array_path)
        try:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=handle)
        finally:
            os.close(handle)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise ContainerBusyError(
                f"{self.path / array_path} is written by another archiver (expected no other writer; {exc})"
            ) from exc
        self._lock = fd

    def unlock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock)
            self._lock = None

    def read(self, key: str) -> bytes | None:
        target = self.path / key
        handle = self._directory(target.parent)
        try:
            fd = os.open(target.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=handle)
        except FileNotFoundError:
            return None
        finally:
            os.close(handle)
        with open(fd, "rb") as fh:
            return fh.read()

    def write(self, key: str, content: Content) -> None:
        """Temporary + rename beneath the root; a version already there is first linked into the trash, so
        that the rename frees nothing (``zarr_trash``)."""
        target = self.path / key
        if self._root is not None:
            handle = self._directory(target.parent)
            try:
                keep_old_version(self._root, handle, target.name)
            finally:
                os.close(handle)
        write_atomic(target, content, "overwrite", "file+directory" if self._fsync else "none", root=self._root)

    def zarr_store(self) -> Any:
        return str(self.path)


class ObjectPlace(ZarrPlace):
    """A store at ``prefix`` (a key, e.g. ``runs/run-7.zarr``) in ``store``; its writer locks under
    ``locks_prefix`` (the archive location's ``.heros-archiver/locks/``)."""

    def __init__(self, store: ObjectStore, prefix: str, locks_prefix: str) -> None:
        self._store = store
        self.prefix = prefix.strip("/")
        self.path = Path(self.prefix)
        self.name = store.url(self.prefix)
        self._locks = locks_prefix.rstrip("/") + "/"
        self._held: str | None = None
        self._token = f"{socket.gethostname()}:{os.getpid()}:{PROCESS_TOKEN}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def claim(self, on_exists: OnExists) -> ObjectPlace:
        """``error`` and ``unique`` claim a name by creating its root ``zarr.json`` conditionally."""
        if on_exists == "append":
            return self
        for candidate in unique_names(Path(self.prefix)) if on_exists == "unique" else [Path(self.prefix)]:
            place = ObjectPlace(self._store, str(PurePosixPath(candidate)), self._locks)
            try:
                self._store.put_new(place._key("zarr.json"), [group_document()])
            except TargetExistsError:
                continue
            return place
        if on_exists == "error":
            raise TargetExistsError(f"{self.name} exists and on_exists='error' (expected no store there)")
        raise StorageError(errno.EEXIST, f"no free name for a store beside {self.name} (tried name-1 .. name-9999)")

    def lock(self, array_path: str) -> None:
        key = self._locks + f"{self.prefix}/{array_path}".replace("/", "%2F")
        record = json.dumps(
            {"holder": self._token, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        ).encode()
        for _ in range(2):
            try:
                self._store.put_new(key, record)
            except TargetExistsError:
                if not self._take_over_stale(key):
                    raise ContainerBusyError(
                        f"{self._store.url(self._key(array_path))} is written by another archiver (expected no "
                        f"other writer; its lock {self._store.url(key)} holds {self._describe(key)}; remove the lock "
                        "once that writer is known to be gone)"
                    ) from None
                continue
            self._held = key
            with _held_lock:
                _held_here.add((self._store.bucket, key))
            return
        raise ContainerBusyError(f"{self._store.url(key)}: the lock came back while taking it over")

    def _holder(self, key: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = json.loads(self._store.get(key))
        except InvalidTargetError:
            return None  # gone meanwhile
        except ValueError:
            return {}
        return found

    def _describe(self, key: str) -> str:
        holder = self._holder(key) or {}
        return f"host {holder.get('host')!r}, pid {holder.get('pid')!r}"

    def _take_over_stale(self, key: str) -> bool:
        """Remove the lock of a writer of this host whose process is gone; True when the key may be retried."""
        holder = self._holder(key)
        if holder is None:
            return True
        pid = holder.get("pid")
        if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
            return False  # another host's (or unreadable): its writer's liveness cannot be known from here
        if pid == os.getpid():
            with _held_lock:
                if (self._store.bucket, key) in _held_here:
                    return False  # another container of this process writes the array
        elif pid_running(pid):
            return False
        self._store.delete(key)  # a dead writer's, or ours that could not be deleted while the store was down
        return True

    def unlock(self) -> None:
        if self._held is not None:
            key, self._held = self._held, None
            with _held_lock:
                _held_here.discard((self._store.bucket, key))
            with contextlib.suppress(StorageError):  # the store is down: the next lock() of ours takes it over
                self._store.delete(key)

    def read(self, key: str) -> bytes | None:
        try:
            return self._store.get(self._key(key))
        except InvalidTargetError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def write(self, key: str, content: Content) -> None:
        self._store.put(self._key(key), content)

    def zarr_store(self) -> Any:
        return self._store.zarr_store(self.prefix)
