"""One Parquet file being written, with the journal that makes its rows durable, and the recovery from journals.

Parquet writes its footer only when a file is closed: until then the file cannot be read, and after a
crash it never can. So every committed batch of rows is first appended to a **journal** (an Arrow IPC
stream, append-only, one per open file) and flushed to the kernel (and fsynced with ``fsync``): that write
is the commit point, after which the rows count as archived. The same rows are buffered and written to
the Parquet file, one row group every ``row_group_rows`` rows or ``row_group_seconds``, whichever first,
into an unnamed file (``O_TMPFILE``) in the target directory, opened beneath the archive root
(``storage.confinement``). ``close`` writes the footer and links the file under its final name, which fails
atomically if the name exists (elsewhere: a named temporary and ``renameat2(RENAME_NOREPLACE)``): no reader
ever sees a half-written Parquet file, no existing file is replaced (a taken name moves the file to the next
free part name, with a warning), and then the journal is removed. After SIGKILL the unnamed file is gone
with the process, and ``recover_journals`` (called at start) rebuilds each journal's file from the batches it
holds, whole (a batch cut short by the kill was never acknowledged), and publishes it.

The journals live in ``<root>/.heros-archiver/parquet-journal/``, not beside their files, so a start finds
them without walking the archive (the lesson of the named temporaries, decision 0014); each names its
target in its schema's metadata. A named temporary (file systems without unnamed files) is named like every
named temporary of the package and recorded (``storage.temporaries``), so a start removes stale ones.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ...errors import PathConfinementError, StorageError, storage_error
from ...observe.logs import log_fields
from ...state.statedir import STATE_DIR_NAME
from ...storage.atomic import _ANONYMOUS_FLAGS, _LINK_ANONYMOUS, _NO_ANONYMOUS_FILES, _link_or_rename_noreplace
from ...storage.confinement import open_directory
from ...storage.temporaries import PROCESS_TOKEN, TMP_PREFIX, owner_alive, record_directory

log = logging.getLogger("heros_archiver")

__all__ = [
    "JOURNAL_SUBDIR",
    "ROWS",
    "ParquetFile",
    "RecoveredFile",
    "RowSpan",
    "journal_target",
    "key_spans",
    "part_path",
    "recover_journals",
]

#: Where the journals of open files are, relative to the archive root.
JOURNAL_SUBDIR = f"{STATE_DIR_NAME}/parquet-journal"
#: The member of a Parquet file its items' locations name (``observe.outcomes.Location``): its rows.
ROWS = "rows"
#: The schema metadata key naming a journal's target file (relative to the root).
_TARGET_KEY = b"heros_archiver.target"
_counter = itertools.count()
_MAX_PARTS = 100_000


def part_path(path: Path, part: int) -> Path:
    """Rollover part ``part`` of ``path``: the path itself, then ``name-1.parquet``, ``name-2.parquet``, ..."""
    return path if part == 0 else path.with_name(f"{path.stem}-{part}{path.suffix}")


def _relative(root: str, path: Path) -> str:
    text = str(path)
    prefix = root.rstrip("/") + "/"
    if not text.startswith(prefix):
        raise PathConfinementError(f"{path} is not under the archive root {root}")
    return text[len(prefix) :]


def _open_beneath(root: str, directory: Path) -> int:
    try:
        return open_directory(root, str(directory))
    except PathConfinementError:
        raise
    except OSError as exc:
        raise storage_error(exc.errno or errno.EIO, f"cannot make the directory {directory}: {exc}") from exc


def _create(handle: int, name: str, what: Path) -> BinaryIO:
    """A new file ``name`` in directory ``handle`` (never an existing one, never through a symlink)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o644, dir_fd=handle)
    except OSError as exc:
        raise storage_error(exc.errno or errno.EIO, f"cannot create {what}: {exc}") from exc
    return open(fd, "wb", buffering=0)


def _new_data_file(root: str, handle: int, final: Path, durable: bool) -> tuple[BinaryIO, str | None]:
    """The file a Parquet file is written to before it is published, in directory ``handle`` beside ``final``:
    an unnamed file (``O_TMPFILE``, nothing left after a crash) where the file system has them, else a named
    temporary, recorded first so that a start removes it if this process dies (``storage.temporaries``).
    Returns the file and the temporary's name (None: unnamed)."""
    if _LINK_ANONYMOUS is not None:
        try:
            return open(os.open(".", _ANONYMOUS_FLAGS, 0o644, dir_fd=handle), "wb", buffering=0), None
        except OSError as exc:
            if exc.errno not in _NO_ANONYMOUS_FILES:
                raise storage_error(exc.errno or errno.EIO, f"cannot create a file beside {final}: {exc}") from exc
    record_directory(root, str(final.parent), durable=durable)
    tmp = f"{TMP_PREFIX}.{os.getpid()}.{PROCESS_TOKEN}.{next(_counter)}.tmp"
    return _create(handle, tmp, final.with_name(tmp)), tmp


def _publish(handle: int, data: BinaryIO, tmp: str | None, final: Path) -> Path:
    """Give the written file (``tmp``, or the unnamed ``data``, in directory ``handle``) the name of ``final``,
    or of its first free later part: never a replacement. Returns the path it got."""
    base = Path(final.name)
    for part in range(_MAX_PARTS):
        name = part_path(base, part).name
        try:
            if tmp is not None:
                _link_or_rename_noreplace(handle, tmp, name)
            else:
                assert _LINK_ANONYMOUS is not None
                error = _LINK_ANONYMOUS(data.fileno(), handle, name)
                if error == errno.EEXIST:
                    continue
                if error:
                    raise OSError(error, os.strerror(error), str(final.with_name(name)))
        except FileExistsError:
            continue
        except OSError as exc:
            raise storage_error(exc.errno or errno.EIO, f"cannot publish {final}: {exc}") from exc
        published = final.with_name(name)
        if part:
            log.warning(
                "%s existed when its rows were published; they are in %s instead",
                final,
                published,
                extra=log_fields(path=published),
            )
        return published
    raise storage_error(errno.EEXIST, f"{final}: no free part name among {_MAX_PARTS}")


class ParquetFile:
    """One Parquet file of the archive being written: its journal, its temporary file and its row groups.

    Made at the first commit of a file with the schema its first rows fixed. ``write`` is the commit point;
    ``close`` publishes. After a failed write the file is ``abandon``-ed: its journal is kept, and
    ``recover_journals`` makes the file from it (at once if it can, else at the next start).
    """

    def __init__(
        self,
        root: str,
        final: Path,
        schema: pa.Schema,
        *,
        row_group_rows: int,
        row_group_seconds: float,
        compression: str,
        fsync: bool,
    ) -> None:
        self.root, self.final, self.fsync = root, final, fsync
        self.row_group_rows, self.row_group_seconds = row_group_rows, row_group_seconds
        self.rows = 0  # journaled (archived) rows
        self._last_group_bytes = 0
        self._buffered: list[pa.RecordBatch] = []
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._buffered_since: float | None = None
        self.closed = False
        schema = schema.with_metadata({_TARGET_KEY: _relative(root, final).encode()})
        self.schema = schema
        self._handles: list[int] = []
        self._dir = _open_beneath(root, final.parent)
        self._handles.append(self._dir)
        journals = _open_beneath(root, Path(root, JOURNAL_SUBDIR))
        self._handles.append(journals)
        self._journal_dir = journals
        self.journal_name = f"{os.getpid()}.{PROCESS_TOKEN}.{next(_counter)}.arrows"
        self._tmp: str | None = None
        self._files: list[BinaryIO] = []
        try:
            self._journal_file = _create(journals, self.journal_name, Path(root, JOURNAL_SUBDIR, self.journal_name))
            self._files.append(self._journal_file)
            self._journal = ipc.new_stream(self._journal_file, schema)
            self._durable(self._journal_file)
            self._data_file, self._tmp = _new_data_file(root, self._dir, final, fsync)
            self._files.append(self._data_file)
            self._writer = pq.ParquetWriter(self._data_file, schema, compression=compression)
        except (OSError, pa.ArrowException) as exc:
            self._release()
            self._remove_own()
            if isinstance(exc, StorageError):
                raise
            raise storage_error(getattr(exc, "errno", None) or errno.EIO, f"cannot start {final}: {exc}") from exc

    # ------------------------------------------------------------------ writing
    def write(self, batch: pa.RecordBatch) -> None:
        """Append ``batch`` to the journal and flush it (the commit point), then buffer it for a row group."""
        try:
            self._journal.write_batch(batch)
            self._durable(self._journal_file)
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(
                getattr(exc, "errno", None) or errno.EIO,
                f"cannot journal {batch.num_rows} row(s) of {self.final}: {exc}",
            ) from exc
        self.rows += batch.num_rows
        self._buffered.append(batch)
        self._buffered_rows += batch.num_rows
        self._buffered_bytes += batch.nbytes
        if self._buffered_since is None:
            self._buffered_since = time.monotonic()
        if self._buffered_rows >= self.row_group_rows:
            self.flush_row_group()

    def _durable(self, handle: BinaryIO) -> None:
        handle.flush()
        if self.fsync:
            os.fsync(handle.fileno())

    def row_group_due(self, now: float) -> bool:
        """True when the buffered rows waited ``row_group_seconds``."""
        return self._buffered_since is not None and now - self._buffered_since >= self.row_group_seconds

    def flush_row_group(self) -> None:
        """Write the buffered rows as row groups of at most ``row_group_rows`` rows (their rows are journaled)."""
        if not self._buffered:
            return
        table = pa.Table.from_batches(self._buffered, self.schema)
        try:
            self._writer.write_table(table, row_group_size=self.row_group_rows)
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(
                getattr(exc, "errno", None) or errno.EIO, f"cannot write a row group of {self.final}: {exc}"
            ) from exc
        self._buffered, self._buffered_rows, self._buffered_since, self._buffered_bytes = [], 0, None, 0
        self._last_group_bytes = table.nbytes

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the journaled rows waiting for their row group (Arrow, in memory)."""
        return self._buffered_bytes

    @property
    def nbytes(self) -> int:
        """Bytes of the file so far, roughly: what is on disk, the last row group (Parquet writes it out when
        the next one starts) and the buffered rows, both uncompressed."""
        try:
            written = os.fstat(self._data_file.fileno()).st_size
        except (OSError, ValueError):
            written = 0
        return written + self._last_group_bytes + self._buffered_bytes

    def close(self) -> Path:
        """Write the last row group and the footer, publish the file, remove the journal; the path it got."""
        try:
            self.flush_row_group()
            self._writer.close()
            self._durable(self._data_file)
            published = _publish(self._dir, self._data_file, self._tmp, self.final)
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(getattr(exc, "errno", None) or errno.EIO, f"cannot close {self.final}: {exc}") from exc
        self.closed = True
        with contextlib.suppress(OSError, pa.ArrowException):
            self._journal.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_name, dir_fd=self._journal_dir)
        self._release()
        return published

    def abandon(self) -> None:
        """Stop writing after a failure: the journal stays (its whole batches are the file's rows), the
        temporary goes. ``recover`` then makes the file from the journal."""
        self.closed = True
        for stream in (getattr(self, "_writer", None), getattr(self, "_journal", None)):
            with contextlib.suppress(Exception):  # what they still write goes nowhere: the temporary goes
                if stream is not None:
                    stream.close()
        self._release()
        self._remove_own(journal=False)

    def recover(self) -> RecoveredFile | None:
        """Make the file from this (abandoned) file's journal now; None (and the journal kept for the next
        start) if that fails too."""
        try:
            return _recover_one(self.root, Path(self.root, JOURNAL_SUBDIR, self.journal_name))
        except (OSError, pa.ArrowException, StorageError) as exc:
            log.error(
                "%s: rebuilding it from its journal failed (%s); tried again at drain and start",
                self.final,
                exc,
                extra=log_fields(path=self.final, error=exc),
            )
            return None

    # ------------------------------------------------------------------ descriptors
    def _journal_dir_handle(self) -> int:
        return _open_beneath(self.root, Path(self.root, JOURNAL_SUBDIR))

    def _release(self) -> None:
        for handle in self._files:
            with contextlib.suppress(OSError, ValueError):
                handle.close()
        self._files = []
        for fd in self._handles:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._handles = []

    def _remove_own(self, journal: bool = True) -> None:
        """Remove the named temporary (an unnamed file went with its descriptor) and, with ``journal``, the journal."""
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                handle = _open_beneath(self.root, self.final.parent)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._tmp, dir_fd=handle)
                os.close(handle)
        if journal:
            with contextlib.suppress(OSError):
                handle = self._journal_dir_handle()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.journal_name, dir_fd=handle)
                os.close(handle)


@dataclass(frozen=True, slots=True)
class RowSpan:
    """Where an item's rows are: ``count`` rows from row ``first`` of the published file ``path``."""

    path: str
    first: int
    count: int


def key_spans(path: str, keys: Sequence[bytes]) -> dict[bytes, RowSpan]:
    """Per item key of a file's ``item_key`` column (``keys``, in row order), where its rows are: the rows of
    one item are consecutive and share its key; a key found twice keeps its first rows."""
    spans: dict[bytes, RowSpan] = {}
    first = 0
    for row in range(1, len(keys) + 1):
        if row == len(keys) or keys[row] != keys[first]:
            spans.setdefault(keys[first], RowSpan(path, first, row - first))
            first = row
    return spans


@dataclass(frozen=True)
class RecoveredFile:
    """A file made from a journal: where it went, its rows and where each item's rows are in it (to
    de-duplicate resumed items, and tell where they went)."""

    target: Path
    path: Path
    rows: int
    spans: Mapping[bytes, RowSpan]


def _batches(reader: Any) -> Iterator[pa.RecordBatch]:
    """The whole batches of a journal; a batch cut short by a kill ends it (it was never acknowledged)."""
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError, EOFError) as exc:
            log.warning("journal ends in a batch cut short (not acknowledged, not archived): %s", exc)
            return


def _recover_one(root: str, journal: Path) -> RecoveredFile | None:
    """Rebuild and publish the file of one journal, then remove the journal; None for an empty one."""
    with pa.OSFile(str(journal), "rb") as source:
        try:
            reader = ipc.open_stream(source)
        except (pa.ArrowInvalid, OSError) as exc:  # killed before the schema was written: no rows in it
            log.warning("journal %s holds no schema (%s); removing it", journal, exc)
            journal.unlink()
            return None
        schema = reader.schema
        target_text = (schema.metadata or {}).get(_TARGET_KEY, b"").decode()
        target = Path(root, target_text)
        if not target_text or _relative(root, target) != target_text:
            raise PathConfinementError(f"journal {journal} names the target {target_text!r}, not a path under {root}")
        batches = list(_batches(reader))
    rows = sum(batch.num_rows for batch in batches)
    if rows == 0:
        journal.unlink()
        return None
    table = pa.Table.from_batches(batches, schema)
    directory = _open_beneath(root, target.parent)
    tmp: str | None = None
    try:
        handle, tmp = _new_data_file(root, directory, target, durable=True)
        with handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())  # the journal goes next: the rebuilt file must be on disk first
            published = _publish(directory, handle, tmp, target)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=directory)
        raise
    finally:
        os.close(directory)
    spans = key_spans(os.path.abspath(published), table.column("item_key").to_pylist())
    journal.unlink()
    return RecoveredFile(target, published, rows, spans)


def recover_journals(root: str) -> list[RecoveredFile]:
    """Rebuild the files of the journals that processes no longer running left under ``root`` (at start)."""
    directory = Path(root, JOURNAL_SUBDIR)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    recovered = []
    for name in names:
        pid, _, rest = name.partition(".")
        token = rest.partition(".")[0]
        if not name.endswith(".arrows") or not pid.isdigit() or owner_alive(int(pid), token):
            continue
        try:
            found = _recover_one(root, directory / name)
        except (OSError, pa.ArrowException, StorageError, PathConfinementError) as exc:  # e.g. still no room
            log.error(
                "journal %s: rebuilding its file failed (%s); it is kept for the next start",
                name,
                exc,
                extra=log_fields(path=directory / name, error=exc),
            )
            continue
        if found is not None:
            log.warning("rebuilt %s (%d rows) from the journal an earlier run left", found.path, found.rows)
            recovered.append(found)
    return recovered


def recovered_spans(root: str) -> dict[str, dict[bytes, RowSpan]]:
    """``recover_journals(root)``, as what a sink needs of it: per route (the rebuilt file's path as rendered),
    where the rows of each item key of the rebuilt files are."""
    spans: dict[str, dict[bytes, RowSpan]] = {}
    for found in recover_journals(root):
        spans.setdefault(str(found.target), {}).update(found.spans)
    return spans


def journal_target(journal: str | os.PathLike[str]) -> str | None:
    """The file (relative to the archive root) a journal's rows are published as, or None when it names none
    (cut short before its schema, or removed meanwhile: its file was published). For verify: a cataloged
    Parquet file that is not on disk yet is pending, not missing, while a journal names it."""
    try:
        with pa.OSFile(os.fspath(journal), "rb") as source:
            schema = ipc.open_stream(source).schema
    except (pa.ArrowInvalid, OSError):
        return None
    target = (schema.metadata or {}).get(_TARGET_KEY, b"").decode()
    return target or None
