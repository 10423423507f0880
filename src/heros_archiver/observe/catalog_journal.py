"""The catalog's journal: each commit's outcomes appended as lines, on the writer thread, before they count.

Writing SQLite on the writer thread would cost a transaction per commit; a queued listener would lose what it
holds when the process is killed after the spool entry of an item was removed. So the catalog's listener is
inline (``catalog.CatalogListener``): it appends the batch as lines to a file of its own, one ``write`` per
batch (serialised by orjson; libc's ``write``, keeping the GIL), before the pipeline acknowledges the batch, and
a process of the archiver's applies the file to SQLite (``catalog_process``, ``catalog_apply``). No fsync: the
page cache survives a SIGKILL, and a journal line is no more durable than the file it describes
(``fsync="none"`` by default); a power loss may lose the journal's tail.

One journal per archiver and process (its name: ``catalog_names``). Its lines:

* ``{...}``: the header (first line: archiver, event, pid, root, created, adopt) or a change of it (the
  archiver's name, its helper processes); ``{"closed": t}`` is the last line of a journal whose archiver
  stopped cleanly.
* ``[record, ...]``: one commit's outcomes (one orjson call per batch), each record ``["a", source, event,
  sequence, received, committed, path, member, index, count, nbytes, checksum, metadata]`` (archived: a record
  per location), ``["d", source, event, sequence, received, time, entry, error, metadata]`` (dead-lettered) or
  ``["x", source, event, sequence, received, time, why, metadata]`` (dropped). The metadata is an object, or,
  where orjson could not write it as it is (integers beyond 64 bits, keys that are no text), its JSON text as a
  string; ``catalog_apply`` stores either exactly as written here.
* ``[["i", source, event, sequence, received, time, path, metadata], ...]``: files about to be created (a
  helper's batch, ``sinks.batching``, or a file the writer thread writes), written before the first of them is.
  They are no items (the applier skips them): a helper finishes its batch after its archiver was killed, and a
  large file is committed only once the writeback window has it on the device, so files exist that no commit
  line names; the next start adopts them (``catalog_recovery``) with the source, sequence value, receive time
  and metadata (as in ``"a"`` records) their intent records give, so that a stream's sequence shows no false gap
  where they are and a query of the metadata finds them. (Journals of earlier versions have no metadata here.)
* ``[["c", source, event, sequence, received, time, path, member]]``: a container's member (an HDF5 stack, a
  Zarr array, a TIFF stack's pages, a Parquet file's rows) about to get its first commit, with its first item;
  skipped by the applier like an intent: after a kill, the next start reads back the frames of every member its
  run journaled (the catalog's rows, and these), so a container first committed just before the kill is found.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from ..saferepr import safe_repr, safe_str
from .catalog_names import JournalName, process_start
from .outcomes import Archived, DeadLettered, Outcome

__all__ = [
    "ContainerIntent",
    "FileIntent",
    "JournalWriter",
    "encode_container_intent",
    "encode_header",
    "encode_intents",
    "encode_metadata",
    "encode_outcomes",
]

#: A journal is continued in a new file once it holds this many bytes (applied files are removed).
SEGMENT_BYTES = 64 * 2**20
#: Nesting kept of metadata that orjson refuses as it is; deeper values are written as their repr.
_MAX_DEPTH = 64
_INT64 = range(-(2**63), 2**63)
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_LINE_OPTIONS = _OPTIONS | orjson.OPT_APPEND_NEWLINE
#: Journals made by this process so far (several archivers per process each have their own).
_instances = itertools.count(1)


# ------------------------------------------------------------------------------------------------ encoding
def _as_text(value: Any) -> Any:
    """orjson's fallback: numpy values it does not take as they are become numbers and lists, the rest text."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return safe_str(value)


def _plain(value: Any, depth: int) -> Any:
    """``value`` rewritten into what orjson takes: keys as text, integers beyond 64 bits as their digits,
    text without lone surrogates, sets and tuples as lists; nested deeper than ``_MAX_DEPTH``, its repr."""
    if depth > _MAX_DEPTH:
        return safe_repr(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if value in _INT64 else orjson.Fragment(str(int(value)).encode())
    if isinstance(value, Mapping):
        return {
            (_plain(key, depth + 1) if isinstance(key, str) else safe_str(key)): _plain(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item, depth + 1) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), depth + 1)
    if isinstance(value, np.generic):
        return _plain(value.item(), depth + 1)
    return _as_text(value)


def _dumps(value: Any, options: int) -> bytes:
    """orjson, and for what it refuses as it is the same value made plain; never raises."""
    try:
        return orjson.dumps(value, default=_as_text, option=options)
    except TypeError:  # orjson.JSONEncodeError: a big integer, a key that is no text, a surrogate, deep nesting
        pass
    try:
        return orjson.dumps(_plain(value, 0), default=_as_text, option=options)
    except Exception as exc:  # noqa: BLE001 - never fail on metadata: describe it instead
        return orjson.dumps({"_unencodable": safe_repr(value), "_error": safe_str(exc)}, option=options)


def encode_metadata(metadata: Mapping[str, Any]) -> bytes:
    """The metadata as JSON, whatever it holds (never raises)."""
    return _dumps(metadata, _OPTIONS)


def _sequence(value: int | None) -> int | None:
    """A sequence value SQLite can hold (64 bits), or None."""
    return value if value is None or value in _INT64 else None


def _careful(record: tuple[Any, ...]) -> orjson.Fragment:
    """One record of a batch orjson refused as it is: as it is if it was another record's fault, else with its
    head made plain and its metadata as JSON text (a string: the applier stores it as it is)."""
    try:
        return orjson.Fragment(orjson.dumps(record, default=_as_text, option=_OPTIONS))
    except TypeError:  # orjson.JSONEncodeError: see _dumps
        metadata = encode_metadata(record[-1]).decode()
        return orjson.Fragment(_dumps((*record[:-1], metadata), 0))


def _line(records: list[tuple[Any, ...]]) -> bytes:
    """``records`` (each ending with its metadata) as one journal line: one orjson call for all of them, or, when
    orjson refuses one (or more), each through ``_careful``."""
    try:
        return orjson.dumps(records, default=_as_text, option=_LINE_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError
        return orjson.dumps([_careful(record) for record in records], option=_LINE_OPTIONS)


def encode_outcomes(outcomes: Sequence[Outcome]) -> bytes:
    """The journal line of ``outcomes``: a JSON array of records, one per location of an archived item (none for
    one without a location: nothing to catalog) and one per failure, and a newline; empty without records. On
    the writer thread, for every commit: one orjson call for the whole batch (a third of one call per record)."""
    records: list[tuple[Any, ...]] = []
    for outcome in outcomes:
        sequence = _sequence(outcome.sequence)
        if isinstance(outcome, Archived):
            for location in outcome.locations:
                records.append((
                    "a", outcome.source, outcome.event, sequence, outcome.received, outcome.committed, location.path,
                    location.member, location.index, location.count, location.nbytes, location.checksum,
                    outcome.metadata,
                ))  # fmt: skip
        elif isinstance(outcome, DeadLettered):
            records.append(("d", outcome.source, outcome.event, sequence, outcome.received, outcome.time,
                            outcome.entry, outcome.error, outcome.metadata))  # fmt: skip
        else:
            records.append(("x", outcome.source, outcome.event, sequence, outcome.received, outcome.time,
                            outcome.why, outcome.metadata))  # fmt: skip
    return _line(records) if records else b""


#: A file about to be made: ``(source, event, sequence, received, path, metadata)`` (``encode_intents``).
FileIntent = tuple[str, str, int | None, float, str, Mapping[str, Any]]
#: A container member about to get its first commit, with its first item: ``(source, event, sequence, received,
#: path)`` (``encode_container_intent``).
ContainerIntent = tuple[str, str, int | None, float, str]


def encode_intents(intents: Sequence[FileIntent]) -> bytes:
    """The journal line of files about to be created (see the module docstring); empty without any. The metadata
    is written as in commit lines, JSON text where orjson cannot write it as it is."""
    if not intents:
        return b""
    now = time.time()
    return _line([("i", source, event, _sequence(sequence), received, now, path, metadata)
                  for source, event, sequence, received, path, metadata in intents])  # fmt: skip


def encode_container_intent(intent: ContainerIntent, member: str) -> bytes:
    """The journal line of ``member`` of a container about to get its first commit (see the module docstring)."""
    source, event, sequence, received, path = intent
    record = ("c", source, event, _sequence(sequence), received, time.time(), path, member)
    return orjson.dumps([record], default=_as_text, option=_LINE_OPTIONS)


def encode_header(fields: Mapping[str, Any]) -> bytes:
    """A header line (or a change of the header)."""
    return _dumps(fields, 0) + b"\n"


# ------------------------------------------------------------------------------------------------ writing
def _load_write() -> Callable[[int, bytes, int], int] | None:
    """libc's ``write`` called without releasing the GIL (``ctypes.PyDLL``), or None where there is none."""
    try:
        function = ctypes.PyDLL(None, use_errno=True).write
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    function.restype = ctypes.c_ssize_t
    return cast(Callable[[int, bytes, int], int], function)


_LIBC_WRITE = _load_write()


def _write_holding_gil(fd: int, data: bytes) -> int:
    """``os.write``, but keeping the GIL: a journal line takes a few microseconds to write, and a writer thread
    that gave up the GIL for it waited, behind a busy intake thread, up to the interpreter's switch interval
    (5 ms) to get it back (benchmarks: 1.5 ms per ``os.write`` against a spinning thread, 8 us this way)."""
    if _LIBC_WRITE is None:
        return os.write(fd, data)
    while True:
        count = _LIBC_WRITE(fd, data, len(data))
        if count >= 0:
            return count
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))


class JournalWriter:
    """Appends lines to this archiver's journal: whole batches, one ``os.write`` each (any thread).

    Made with its header line at once, so that a kill before the first commit still leaves a journal that
    says when the archiver started (what the recovery's adoption of files starts from).
    """

    def __init__(self, directory: Path, header: Mapping[str, Any], segment_bytes: int | None = None) -> None:
        self.directory = directory
        self._header = dict(header)
        self._segment_bytes = SEGMENT_BYTES if segment_bytes is None else segment_bytes
        self._lock = threading.Lock()
        pid = os.getpid()
        self._name = JournalName(pid, process_start(pid), next(_instances), 1)
        #: bytes in the current segment
        self.written = 0
        #: a write failed part-way: the next batch starts on a new line (the torn one is skipped when applied)
        self._torn = False
        self._closed = False
        self._fd = self._open(self._name)

    def _open(self, name: JournalName) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.directory / name.text, flags, 0o644)
        try:
            self._write(fd, encode_header({**self._header, "segment": name.segment, "created": time.time()}))
        except BaseException:
            os.close(fd)
            raise
        return fd

    @property
    def name(self) -> str:
        """The file name of the current segment."""
        return self._name.text

    @property
    def prefix(self) -> str:
        """The start of the names of all this journal's segments."""
        return self._name.prefix

    def append(self, data: bytes) -> None:
        """Append lines (whole, with their newlines). Raises OSError when the file system refuses them."""
        if not data:
            return
        with self._lock:
            if self._closed:
                raise OSError(f"journal {self.directory / self.name} is closed: {len(data)} byte(s) not journaled")
            if self._torn:
                data = b"\n" + data
                self._torn = False
            self._write(self._fd, data)
            if self.written >= self._segment_bytes:
                self._rotate()

    def set_header(self, fields: Mapping[str, Any]) -> None:
        """Change header fields (the archiver's name, once known): written as a line, and into later segments."""
        with self._lock:
            self._header.update(fields)
            if not self._closed:
                self._write(self._fd, encode_header(fields))

    def _write(self, fd: int, data: bytes) -> None:
        done = 0
        while done < len(data):
            try:
                count = _write_holding_gil(fd, data[done:] if done else data)
            except OSError:
                self._torn = done != 0
                raise
            self.written += count
            done += count

    def _rotate(self) -> None:
        """Go on in a new segment; the applier removes the old one once it is applied (``catalog_process``)."""
        name = JournalName(self._name.pid, self._name.start, self._name.instance, self._name.segment + 1)
        fd = self._open(name)  # written = the new header's bytes plus the old segment's: reset below
        os.close(self._fd)
        self._fd, self._name = fd, name
        self.written = os.fstat(fd).st_size

    def close(self) -> None:
        """End the journal with its ``closed`` line (a clean stop: no file to adopt) and close it. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):  # a journal without it is merely treated as a killed run's
                self._write(self._fd, encode_header({"closed": time.time()}))
            os.close(self._fd)
