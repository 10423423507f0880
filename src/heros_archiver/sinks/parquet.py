"""The container sink of ``ParquetArchiver``: readings become rows of the file their route names.

One instance per writer lane; it alone writes the files of the items routed to it (``Item.route``: the
rendered, confined file path), so each file has one writer and gets its rows in arrival order. Per route
it keeps the file being filled (``_Open``: its schema, the rows not yet journaled, the ``ParquetFile``
once the first commit made it) and the series of its parts (``name.parquet``, ``name-1.parquet``, ...).

* ``append`` converts the item to rows (``rows_of``), checks them against the file's schema (the first
  rows fixed it; ``parquet_rows``) and buffers them. A reading that does not fit follows
  ``on_schema_change``: ``new_file`` closes the file and starts the next part with the wider schema,
  ``dead_letter`` raises the mismatch (a ``PayloadError``: the item is dead-lettered, naming the key and both
  types). A part is also closed once it has ``max_rows`` rows or ``max_bytes`` bytes.
* ``commit`` journals the buffered rows of every file (the commit point: those items are archived);
  row groups are written by the ``ParquetFile`` every ``row_group_rows`` rows, and by ``expire`` once rows
  waited ``row_group_seconds``. ``expire`` also closes (publishes) files unused for ``idle_timeout``.
* An item resumed from the spool (or appended again after a failed commit) whose key the series already
  holds (in a part published before it came, or in a file rebuilt from a journal at start) counts as
  archived without a second row.
* A failed journal write hands the commit's items back (appended again after the backoff, into the next
  part); a failed row-group write or publish, whose rows are already journaled, abandons the file and
  rebuilds it from its journal (now, or at the next start).
* With ``locate``, each item a commit archives gets its location: the file its rows are published as (the
  part's final name, absolute: the file is written under no name and published at close, but its readers only
  ever see that name), the member ``"rows"`` (``containers.parquet.ROWS``), the index of its first row in
  that file and its rows' count, ``nbytes`` the item's as the queue counted it and no checksum (a row has no
  raw bytes of its own: a reader checks the rows' ``item_key``). An item found already in the series by its
  key gets the rows it has there. Only if another process takes the part's name before it is published (the
  rows then go to the next free name, with a warning) does the location name the wrong file. An item of no
  readings writes no row and has no location.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StorageError, TargetExistsError
from ..observe.logs import log_fields
from ..observe.outcomes import Location
from ..pipeline.queueing import Item
from .base import CommitFailure, ContainerSink, Settled
from .containers import _hashable_json
from .containers.parquet import ROWS, ParquetFile, RecoveredFile, RowSpan, key_spans, part_path
from .containers.parquet_rows import RowBuffer, SchemaMismatchError, schema_of, widened

log = logging.getLogger("heros_archiver")

__all__ = ["ParquetSink", "ParquetSinkSettings", "RowsOf"]

#: Turns one item into its rows (the payload dict, or one row per datasource value); PayloadError if it cannot.
RowsOf = Callable[[Item], Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class ParquetSinkSettings:
    """How the sink writes (validated by ``ParquetArchiver``'s options)."""

    root: str
    on_exists: str
    on_schema_change: str
    compression: str
    fsync: bool
    flush_frames: int
    flush_seconds: float
    flush_bytes: int
    flush_idle: float | None
    row_group_rows: int
    row_group_seconds: float
    #: journaled rows all open files may buffer for their row groups together, bytes
    row_group_bytes: int
    max_rows: int | None
    max_bytes: int | None
    idle_timeout: float
    max_open_files: int
    sequence_key: str | None
    #: column types fixed before the first rows (the datasource fields), name -> Arrow type
    base_types: Mapping[str, pa.DataType] = field(default_factory=dict)


@dataclass
class _Series:
    """The parts of one route: the part being written (or next to be), and the keys of its published parts."""

    part: int = 0
    started: bool = False  # a part of this series was begun by this run (then later parts are ours to take)
    keys: dict[bytes, RowSpan] | None = None  # loaded when an item that may be a duplicate first comes


@dataclass
class _Open:
    path: Path
    schema: pa.Schema
    buffer: RowBuffer
    file: ParquetFile | None = None
    waiting: list[Item] = field(default_factory=list)
    #: with ``locate``: the rows of each waiting item, in order
    counts: list[int] = field(default_factory=list)
    rows: int = 0  # rows journaled and buffered
    pending_bytes: int = 0
    first_pending: float | None = None
    used: float = field(default_factory=time.monotonic)


def _sequence(item: Item, sequence_key: str | None) -> int | None:
    value = item.metadata.get(sequence_key) if sequence_key is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def item_key(item: Item, sequence_key: str | None) -> bytes:
    """16 bytes that are the same for the same item in any run (the spool gives back what arrived): its source,
    sequence value and content. Only readings resumed from the spool or appended again after a failed commit
    are compared with the keys of their series: live readings never were in a file, and two equal live
    readings without a sequence value (the same temperature twice) would be one key."""
    sequence = _sequence(item, sequence_key)
    digest = hashlib.sha256(f"{item.source}\0{sequence}\0".encode())
    digest.update(_hashable_json({"p": item.payload, "m": item.metadata}))
    return digest.digest()[:16]


class ParquetSink(ContainerSink):
    """See the module docstring."""

    def __init__(
        self,
        settings: ParquetSinkSettings,
        rows_of: RowsOf,
        recovered: Mapping[str, Mapping[bytes, RowSpan]] | None = None,
    ) -> None:
        self._settings = settings
        self._rows_of = rows_of
        self.flush_frames = settings.flush_frames
        self.flush_seconds = settings.flush_seconds
        self.flush_bytes = settings.flush_bytes
        self.flush_idle = settings.flush_idle
        self._series: dict[str, _Series] = {}
        self._open: OrderedDict[str, _Open] = OrderedDict()
        #: per route, the keys of the files rebuilt from journals at start (and after a failure), and their rows
        self._recovered: dict[str, dict[bytes, RowSpan]] = {route: dict(s) for route, s in (recovered or {}).items()}
        #: abandoned files whose rebuild from the journal failed too (a full disk): tried again at each close
        self._unrebuilt: list[tuple[str, ParquetFile]] = []
        self._expired_at = 0.0
        self._stale = False
        self._waiting = self._waiting_bytes = 0
        self._oldest: float | None = None

    # ------------------------------------------------------------------ the ContainerSink interface
    # The writer asks these before and after every item: kept as totals (appends add to them) and counted
    # again over the open files only after a commit or a close changed them (a walk over 50 files per item
    # was most of the archiver's CPU time with 50 datasources).
    def _totals(self) -> tuple[int, int, float | None]:
        if self._stale:
            times = [o.first_pending for o in self._open.values() if o.first_pending is not None]
            self._waiting = sum(len(o.waiting) for o in self._open.values())
            self._waiting_bytes = sum(o.pending_bytes for o in self._open.values())
            self._oldest = min(times) if times else None
            self._stale = False
        return self._waiting, self._waiting_bytes, self._oldest

    @property
    def pending(self) -> int:
        return self._totals()[0]

    @property
    def pending_bytes(self) -> int:
        return self._totals()[1]

    @property
    def oldest_pending(self) -> float | None:
        return self._totals()[2]

    def append(self, item: Item) -> Settled:
        settled = Settled()
        route = item.lane_key
        rows = self._rows_of(item)
        if item.key is None:
            item.key = item_key(item, self._settings.sequence_key)
        key: bytes = item.key
        sequence = _sequence(item, self._settings.sequence_key)
        if item.resumed or item.attempts > 1:
            held = self._held(route, key)
            if held is not None:
                if self.locate:
                    item.locations = (_location(held, item),)
                settled.archived.append(item)
                return settled
        if not rows:  # an empty set of readings: nothing to write, nothing lost
            settled.archived.append(item)
            return settled
        opened = self._open.get(route)
        if opened is not None and self._full(opened, len(rows)):
            settled.add(self._roll_over(route))
            opened = None
        if opened is None:
            opened = self._start(route, schema_of(rows, item.source, self._settings.base_types))
            settled.add(self._limit_open_files())
        try:
            opened.buffer.check(rows, item.source)
        except SchemaMismatchError as exc:
            if self._settings.on_schema_change == "dead_letter":
                raise
            log.warning(
                "%s; %s goes on in a new part with the wider schema",
                exc,
                opened.path,
                extra=log_fields(item.source, path=opened.path, error=exc),
            )
            schema = widened(opened.schema, rows, item.source)
            settled.add(self._roll_over(route))
            opened = self._start(route, schema)
            opened.buffer.check(rows, item.source)  # rows that disagree among themselves: the item's own fault
            settled.add(self._limit_open_files())
        self._open.move_to_end(route)
        opened.used = now = time.monotonic()
        opened.buffer.add(rows, item.source, sequence, item.received, key)
        opened.rows += len(rows)
        if opened.first_pending is None:
            opened.first_pending = now
        opened.waiting.append(item)
        if self.locate:
            opened.counts.append(len(rows))
        opened.pending_bytes += item.nbytes
        if not self._stale:
            self._waiting += 1
            self._waiting_bytes += item.nbytes
            if self._oldest is None:
                self._oldest = now
        return settled

    def commit(self) -> Settled:
        settled = Settled()
        for route in [r for r, o in self._open.items() if o.waiting]:
            settled.add(self._commit(route, bound=False))
        self._bound_buffers()
        return settled

    def expire(self, now: float) -> Settled:
        """Close idle files and write due row groups; the writer asks before every item, so at most every
        ``_EXPIRE_EVERY`` seconds (a walk over the open files per reading cost a tenth of the append)."""
        settled = Settled()
        if now - self._expired_at < _EXPIRE_EVERY:
            return settled
        self._expired_at = now
        for route, opened in list(self._open.items()):
            if now - opened.used >= self._settings.idle_timeout:
                settled.add(self._close(route))
            elif opened.file is not None and opened.file.row_group_due(now):
                self._flush_row_group(route)
        return settled

    def close(self) -> Settled:
        settled = Settled()
        for route in list(self._open):
            settled.add(self._close(route))
        for route, file in list(self._unrebuilt):  # their rows are archived: make them a file if there is room now
            recovered = file.recover()
            if recovered is not None:
                self._unrebuilt.remove((route, file))
                self._remember(route, recovered)
        return settled

    def rollover(self) -> Settled:
        """Commit and publish every open file: a published part is never reopened, so the next reading of each
        route starts its next part."""
        settled = Settled()
        for route in list(self._open):
            settled.add(self._close(route))
        return settled

    # ------------------------------------------------------------------ files
    def _start(self, route: str, schema: pa.Schema) -> _Open:
        """The next part of ``route``'s series, to be made with ``schema`` at its first commit."""
        series = self._series.setdefault(route, _Series())
        path = part_path(Path(route), series.part)
        if not series.started and self._settings.on_exists == "error" and path.exists():
            raise TargetExistsError(f"{str(path)!r} exists and on_exists='error' keeps it; the reading was not written")
        while path.exists():  # append, or parts this run published: the series goes on after them
            series.part += 1
            path = part_path(Path(route), series.part)
        series.started = True
        opened = _Open(path, schema, RowBuffer(schema, str(path)))
        self._open[route] = opened
        return opened

    def _held(self, route: str, key: bytes) -> RowSpan | None:
        """Where ``key``'s rows are when it is already in ``route``'s series (None: it is not): a file rebuilt
        from a journal, or a part published before the first such item came (read from disk once; nothing of
        this run's own rows is kept in memory, which a day of readings would fill)."""
        held = self._recovered.get(route, {}).get(key)
        if held is not None:
            return held
        series = self._series.setdefault(route, _Series())
        if series.keys is None:
            series.keys = _published_keys(Path(route))
        return series.keys.get(key)

    def _full(self, opened: _Open, rows: int) -> bool:
        settings = self._settings
        if settings.max_rows is not None and opened.rows + rows > settings.max_rows and opened.rows:
            return True
        if settings.max_bytes is None or opened.file is None:
            return False
        return opened.file.nbytes >= settings.max_bytes

    def _roll_over(self, route: str) -> Settled:
        """Close the part being written; the next one is started by the next reading (``_start``)."""
        return self._close(route)

    def _limit_open_files(self) -> Settled:
        settled = Settled()
        while len(self._open) > self._settings.max_open_files:
            settled.add(self._close(next(iter(self._open))))
        return settled

    def _commit(self, route: str, bound: bool = True) -> Settled:
        """Journal the buffered rows of ``route``'s file: its waiting items are archived then (``bound``: and
        keep the rows buffered for row groups within their bound)."""
        self._stale = True
        opened = self._open[route]
        settings = self._settings
        try:
            if opened.file is None:
                _check_space(opened.path, opened.pending_bytes)
                opened.file = ParquetFile(
                    settings.root, opened.path, opened.schema, row_group_rows=settings.row_group_rows,
                    row_group_seconds=settings.row_group_seconds, compression=settings.compression,
                    fsync=settings.fsync,
                )  # fmt: skip
            first = opened.file.rows
            if first == 0 and self.intend is not None and opened.waiting:
                self.intend(opened.waiting[0], os.path.abspath(opened.path), ROWS)
            opened.file.write(opened.buffer.take())
        except StorageError as exc:
            return self._failed(route, exc)
        archived, opened.waiting = opened.waiting, []
        if self.locate:
            self._locate(opened, archived, first)
        opened.pending_bytes = 0
        opened.first_pending = None
        if bound:
            self._bound_buffers()
        return Settled(archived=archived)

    def _locate(self, opened: _Open, archived: list[Item], first: int) -> None:
        """Set the locations of the items of a commit whose rows start at row ``first`` of ``opened``'s file."""
        path = os.path.abspath(opened.path)
        counts, opened.counts = opened.counts, []
        for item, count in zip(archived, counts, strict=True):
            item.locations = (_location(RowSpan(path, first, count), item),)
            first += count

    def _bound_buffers(self) -> None:
        """Write the largest buffered row groups early while all open files together buffer more than
        ``row_group_bytes`` (journaled rows waiting for their row group; memory outside the queue's bound)."""
        files = [(o.file.buffered_bytes, route) for route, o in self._open.items() if o.file is not None]
        total = sum(size for size, _ in files)
        for size, route in sorted(files, reverse=True):
            if total <= self._settings.row_group_bytes:
                return
            self._flush_row_group(route)
            total -= size

    def _failed(self, route: str, error: StorageError) -> Settled:
        """A journal write failed: the items of this commit go back (appended again after the backoff, into
        the next part); what the journal holds becomes a file now or at the next start."""
        self._stale = True
        opened = self._open.pop(route)
        opened.buffer.discard()
        if opened.file is not None:
            self._abandon(route, opened.file)
            self._series[route].part += 1
        return Settled(failed=[CommitFailure(str(opened.path), opened.waiting, error)])

    def _abandon(self, route: str, file: ParquetFile) -> None:
        """Stop writing ``file``; rebuild it from its journal (its rows are archived) now, or at the next start."""
        file.abandon()
        recovered = file.recover()
        if recovered is None:
            self._unrebuilt.append((route, file))
        else:
            self._remember(route, recovered)
            log.error(
                "%s was rebuilt from its journal as %s after a write failed",
                file.final,
                recovered.path,
                extra=log_fields(path=recovered.path),
            )

    def _remember(self, route: str, recovered: RecoveredFile) -> None:
        self._recovered.setdefault(route, {}).update(recovered.spans)

    def _flush_row_group(self, route: str) -> None:
        opened = self._open[route]
        assert opened.file is not None
        try:
            opened.file.flush_row_group()
        except StorageError as exc:
            log.error(
                "%s: %s; the file is rebuilt from its journal",
                opened.path,
                exc,
                extra=log_fields(path=opened.path, error=exc),
            )
            self._drop_file(route, opened)

    def _drop_file(self, route: str, opened: _Open) -> None:
        """The file of ``opened`` failed after its rows were journaled: rebuild it from the journal and go on
        in the next part (the rows not yet journaled stay buffered, in a fresh file of the same schema)."""
        assert opened.file is not None
        self._abandon(route, opened.file)
        series = self._series[route]
        series.part += 1
        opened.file = None
        opened.path = part_path(Path(route), series.part)
        opened.rows = len(opened.buffer)

    def _close(self, route: str) -> Settled:
        """Commit what waits, then publish the file."""
        opened = self._open.get(route)
        if opened is None:
            return Settled()
        settled = self._commit(route) if opened.waiting else Settled()
        if settled.failed:
            return settled
        del self._open[route]
        if opened.file is None:
            return settled
        try:
            published = opened.file.close()
        except StorageError as exc:
            log.error(
                "%s: %s; the file is rebuilt from its journal",
                opened.path,
                exc,
                extra=log_fields(path=opened.path, error=exc),
            )
            self._abandon(route, opened.file)
            return settled
        log.info("published %s (%d rows)", published, opened.file.rows)
        series = self._series.setdefault(route, _Series())
        series.part += 1  # a file closed for any reason (rollover, idle, the open-file limit) is never reopened
        series.keys = None  # the keys read from disk lack this part: read them again when a retried item comes
        return settled


#: Seconds between two walks of ``expire`` over the open files.
_EXPIRE_EVERY = 0.1
#: Free bytes a new file needs beyond the rows of its first commit (the journal's schema, Parquet's header).
SPACE_MARGIN = 256 << 10


def _check_space(path: Path, needed: int) -> None:
    """Refuse to start a file on a file system without room for its first commit (one statvfs)."""
    try:
        stats = os.statvfs(path.parent if path.parent.exists() else Path(path.anchor))
    except OSError:
        return
    free = stats.f_bavail * stats.f_frsize
    if free < needed + SPACE_MARGIN:
        raise StorageError(
            errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {path} needs about {needed + SPACE_MARGIN} bytes, {free} free"
        )


def _location(span: RowSpan, item: Item) -> Location:
    """The location of ``item``'s rows (see the module docstring)."""
    return Location(span.path, item.nbytes, None, ROWS, span.first, span.count)


def _published_keys(route: Path) -> dict[bytes, RowSpan]:
    """The item keys of the parts of ``route``'s series already on disk and where their rows are (read when a
    resumed item first comes)."""
    keys: dict[bytes, RowSpan] = {}
    for part in range(100_000):
        path = part_path(route, part)
        if not path.exists():
            break
        try:
            with pq.ParquetFile(path) as published:  # not pq.read_table: its dataset layer imports pandas
                column = published.read(columns=["item_key"]).column("item_key")
        except (OSError, pa.ArrowException, KeyError) as exc:
            log.warning(
                "%s: its item keys cannot be read (%s); resumed items are not compared with it",
                path,
                exc,
                extra=log_fields(path=path, error=exc),
            )
            continue
        for key, span in key_spans(os.path.abspath(path), column.to_pylist()).items():
            keys.setdefault(key, span)
    return keys
