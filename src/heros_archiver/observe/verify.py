"""Verify an archive against its catalog: every cataloged file and container item, the files no entry names, and
the gaps in every stream's sequence values (``heros-archiver verify``).

Files are read in large blocks by a pool of threads (xxh3-128 releases the GIL, so reading and hashing
overlap across threads and with the kernel's read-ahead), in commit order; a container is opened once and all
its cataloged items are read from it by one thread, the largest containers first, so that none is left to run
alone at the end; the walk of the root for orphans runs in the pool beside them.

Verify reads the catalog read-only, as one snapshot (``verify_catalog``), so it runs while an archiver writes:
items committed after the snapshot are not checked, and before anything is reported the catalog is read
again: a finding the archiver has since changed (an entry replaced, a file cataloged after the snapshot, a
gap filled by a later commit) is not reported, nor is an uncataloged file changed after verify started (its
entry may still be on its way), nor one that an archiver's journal names (journaled, not yet applied: an
applier behind its archiver on a busy machine).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import ArchiverError
from ..state.object_state import RecordedStore, open_recorded_store
from ..storage.objectstore import is_object_url
from .catalog_apply import journaled_paths
from .catalog_backend import CatalogBackend, open_reader
from .catalog_schema import journal_directory
from .problems import KINDS, NOTE_KINDS, Problem
from .sequences import sequence_ranges
from .verify_catalog import CatalogSnapshot, Entry, Stream
from .verify_containers import check_container, unpublished_parquet
from .verify_files import check_file, find_orphans
from .verify_objects import check_object, is_object_entry

__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_WORKERS", "Problem", "VerifyReport", "verify", "verify_root"]

#: Bytes read per system call (a buffer of this size per thread).
DEFAULT_BLOCK_SIZE = 4 << 20
#: Threads reading and hashing: more than the cores, since a cold read waits for the disk, not the CPU.
DEFAULT_WORKERS = 4
#: Tasks waiting in the pool per worker (bounds the futures held for archives of millions of files).
_QUEUED_PER_WORKER = 4
#: A file no entry names is an orphan only once it is this many seconds old and the catalog still does not name
#: it: an archiver links a file before its entry is written (the catalog listener runs behind the writer).
DEFAULT_SETTLE = 2.0
#: At most one progress report per this many seconds (and one at the end).
_PROGRESS_INTERVAL = 0.1

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``, called from verify's threads."""


@dataclass
class VerifyReport:
    """What verify checked and what it found."""

    root: str
    catalog: str
    #: wall-clock time verify read the catalog (items committed after it are not checked)
    started: float
    seconds: float = 0.0
    #: cataloged files, containers and items inside containers checked
    files: int = 0
    containers: int = 0
    items: int = 0
    #: bytes of the files and items whose checksum was recomputed
    bytes: int = 0
    #: entries without a checksum (Parquet rows, a sink that has none): their presence and size only are checked
    unchecked: int = 0
    #: items of Parquet files an archiver still writes (in its journal, the file not yet published): not checked
    pending: int = 0
    #: sequence streams (archiver, source, event) looked at for gaps
    streams: int = 0
    #: whether the root was walked for orphans
    orphans_checked: bool = True
    problems: list[Problem] = field(default_factory=list)
    #: findings shown but not failing (repeated sequence values)
    notes: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Problems and notes per kind, every kind present."""
        counts = dict.fromkeys((*KINDS, *NOTE_KINDS), 0)
        for problem in (*self.problems, *self.notes):
            counts[problem.kind] += 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        """Plain types, for ``--json``."""
        return {
            "root": self.root,
            "catalog": self.catalog,
            "ok": self.ok,
            "started": self.started,
            "seconds": self.seconds,
            "checked": {
                "files": self.files,
                "containers": self.containers,
                "items": self.items,
                "bytes": self.bytes,
                "unchecked": self.unchecked,
                "pending": self.pending,
                "streams": self.streams,
                "orphans": self.orphans_checked,
            },
            "counts": self.counts(),
            "problems": [problem.as_dict() for problem in self.problems],
            "notes": [note.as_dict() for note in self.notes],
        }


class _Progress:
    """Bytes done, told to the caller's callback at most every ``_PROGRESS_INTERVAL`` seconds."""

    def __init__(self, total: int, callback: Progress | None) -> None:
        self.total = total
        self.done = 0
        self._callback = callback
        self._lock = threading.Lock()
        self._last = 0.0

    def advance(self, count: int) -> None:
        with self._lock:
            self.done += count
            now = time.monotonic()
            if self._callback is not None and now - self._last >= _PROGRESS_INTERVAL:
                self._last = now
                self._callback(self.done, self.total)

    def finish(self) -> None:
        if self._callback is not None:
            self._callback(self.total, self.total)


def verify(
    root: str | os.PathLike[str],
    *,
    orphans: bool = True,
    workers: int | None = None,
    progress: Progress | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    settle: float = DEFAULT_SETTLE,
    url: str | None = None,
    host: str | None = None,
) -> VerifyReport:
    """Check the archive under ``root`` against its catalog (``<root>/.heros-archiver/catalog.sqlite``, or with
    ``url`` the rows of ``root`` and ``host`` in that shared PostgreSQL catalog; ``host`` None: any host).

    ``orphans=False`` skips the walk of the root for files no entry names; ``workers`` threads read (default
    ``DEFAULT_WORKERS``); ``progress(done_bytes, total_bytes)`` is called as files and items are read; a file no
    entry names is reported once it is ``settle`` seconds old (verify waits for that if it must). Raises
    ``CatalogError`` when it cannot start (no catalog, or one it cannot read); every problem of the archive
    itself is in the report."""
    with open_reader(root, url) as catalog:
        scope = None if url is None else (host, os.path.abspath(root))
        return verify_root(catalog, Path(root), scope, orphans=orphans, workers=workers, progress=progress,
                           block_size=block_size, settle=settle)  # fmt: skip


def verify_root(
    catalog: CatalogBackend,
    root: Path,
    scope: tuple[str | None, str] | None = None,
    *,
    orphans: bool = True,
    workers: int | None = None,
    progress: Progress | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    settle: float = DEFAULT_SETTLE,
) -> VerifyReport:
    """``verify`` of the files under ``root`` through an open ``catalog``: of its rows, those of ``scope`` (the
    host, None for any, and the root as the rows name it) in a shared catalog."""
    workers = DEFAULT_WORKERS if workers is None else workers
    if workers < 1 or block_size < 1:
        raise ValueError(f"workers and block_size must be at least 1, got {workers} and {block_size}")
    clock = time.monotonic()
    snapshot = CatalogSnapshot(catalog, *(scope or (None, None)))
    report = VerifyReport(str(root), snapshot.path, time.time(), orphans_checked=orphans)
    files, containers, streams = snapshot.read()
    found = _check(str(root.absolute()), files, containers, report, orphans, workers, progress, block_size)
    _second_look(snapshot, report, *found, settle, root)
    _sequences(snapshot, streams, report)
    report.problems.sort(key=lambda p: (KINDS.index(p.kind), p.path, p.member or "", p.index or 0, p.source or ""))
    report.seconds = time.monotonic() - clock
    return report


_Found = tuple[list[tuple[Entry, Problem]], list[tuple[str, float]]]


def _check(
    root: str,
    files: list[Entry],
    containers: dict[str, list[Entry]],
    report: VerifyReport,
    orphans: bool,
    workers: int,
    progress: Progress | None,
    block_size: int,
) -> _Found:
    """Run every check in the pool; the problems found with their entries, and the orphan candidates."""
    cataloged = frozenset((*(entry.path for entry in files), *containers))
    for path in unpublished_parquet(root, containers):
        report.pending += len(containers.pop(path))
    report.files, report.containers = len(files), len(containers)
    report.items = sum(len(entries) for entries in containers.values())
    checked = [entry for entry in (*files, *(e for es in containers.values() for e in es)) if entry.checksum]
    report.unchecked = report.files + report.items - len(checked)
    report.bytes = sum(entry.nbytes for entry in checked)
    meter = _Progress(report.bytes, progress)
    buffers = threading.local()

    def buffer() -> bytearray:
        if not hasattr(buffers, "block"):
            buffers.block = bytearray(block_size)
        block: bytearray = buffers.block
        return block

    on_objects = any(map(is_object_entry, files)) or any(map(is_object_url, containers))
    objects = _recorded_store(root) if on_objects else "no object store"

    def one_file(entry: Entry) -> list[tuple[Entry, Problem]]:
        if is_object_entry(entry):
            problem = check_object(objects, entry, meter.advance)
        else:
            problem = check_file(root, entry, buffer(), meter.advance)
        return [] if problem is None else [(entry, problem)]

    def one_container(path: str, entries: list[Entry]) -> list[tuple[Entry, Problem]]:
        return check_container(root, path, entries, meter.advance, objects)

    tasks: list[Callable[[], list[tuple[Entry, Problem]]]] = [
        partial(one_container, path, entries)
        for path, entries in sorted(containers.items(), key=lambda kv: -sum(e.nbytes for e in kv[1]))
    ]
    tasks += [partial(one_file, entry) for entry in files]  # in commit order: most often the order on disk
    problems: list[tuple[Entry, Problem]] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="heros-archiver-verify") as pool:
        walk = pool.submit(lambda: list(find_orphans(root, cataloged))) if orphans else None
        for result in _bounded(pool, tasks, workers * _QUEUED_PER_WORKER):
            problems.extend(result)
        candidates = walk.result() if walk is not None else []
    meter.finish()
    return problems, candidates


def _recorded_store(root: str) -> RecordedStore | str:
    """The object store the root (an ``s3://`` root's state directory) records, or why there is none."""
    try:
        objects = open_recorded_store(Path(root))
    except ArchiverError as exc:
        return f"the record of its object store cannot be used ({type(exc).__name__}: {exc})"
    return objects or "this root records no object store (.heros-archiver/object-store.json) to read it from"


def _bounded(
    pool: ThreadPoolExecutor, tasks: Iterable[Callable[[], list[tuple[Entry, Problem]]]], limit: int
) -> Iterable[list[tuple[Entry, Problem]]]:
    """The results of ``tasks`` run in ``pool``, at most ``limit`` of them submitted and not yet done."""
    pending: set[Future[list[tuple[Entry, Problem]]]] = set()
    for task in tasks:
        if len(pending) >= limit:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)
        pending.add(pool.submit(task))
    for future in pending:
        yield future.result()


def _sequences(snapshot: CatalogSnapshot, streams: list[Stream], report: VerifyReport) -> None:
    """The gaps of every stream that the catalog still shows now (a second look), and its repeats as notes."""
    report.streams = len(streams)
    for stream in streams:
        ranges = sequence_ranges(stream.values)
        if ranges is None:
            continue
        for first, last in ranges.gaps:
            now = snapshot.stream_now(stream.archiver, stream.source, stream.event, first, last)
            for gap_first, gap_last in _uncovered(first, last, () if now is None else now.values):
                missing = f"{gap_last - gap_first + 1} missing between {ranges.first} and {ranges.last}"
                failed = snapshot.failed(stream.archiver, stream.source, stream.event, gap_first, gap_last)
                why = "".join(f"; {count} {kind.replace('_', '-')}" for kind, count in failed.items())
                report.problems.append(
                    _stream_problem(
                        "gap",
                        stream,
                        gap_first,
                        gap_last,
                        f"sequence {_span(gap_first, gap_last)}",
                        f"none cataloged ({missing}{why})",
                    )
                )
        for first, last in ranges.repeats:
            span = _span(first, last)
            report.notes.append(
                _stream_problem("repeat", stream, first, last, f"sequence {span} once", "it more than once")
            )


def _stream_problem(kind: str, stream: Stream, first: int, last: int, expected: str, found: str) -> Problem:
    return Problem(
        kind,
        "",
        expected,
        found,
        archiver=stream.archiver,
        source=stream.source,
        event=stream.event,
        first=first,
        last=last,
    )


def _span(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first}-{last}"


def _second_look(
    snapshot: CatalogSnapshot,
    report: VerifyReport,
    problems: list[tuple[Entry, Problem]],
    candidates: list[tuple[str, float]],
    settle: float,
    root: Path,
) -> None:
    """Keep only what is still wrong now: entries unchanged in the catalog, and files it still does not name
    that were not changed after verify started, looked at once they are ``settle`` seconds old, and that no
    archiver's journal under ``root`` names either (an applier behind its archiver: cataloged soon)."""
    unchanged = snapshot.unchanged(entry for entry, _ in problems)
    report.problems.extend(problem for entry, problem in problems if entry.key in unchanged)
    old = [(path, changed) for path, changed in candidates if changed < report.started]
    if old:
        time.sleep(max(0.0, max(changed for _, changed in old) + settle - time.time()))
    named = snapshot.cataloged(path for path, _ in old)
    unnamed = {path for path, _ in old if path not in named}
    if unnamed:
        unnamed -= journaled_paths(journal_directory(root), str(root.absolute()), unnamed)
    report.problems.extend(
        Problem("orphan", path, "a cataloged file", "a file no entry names") for path, _ in old if path in unnamed
    )


def _uncovered(first: int, last: int, now: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges from ``first`` to ``last`` that hold none of the values of ``now`` (``(value, items)`` pairs in
    increasing order, all between ``first`` and ``last``)."""
    ranges: list[tuple[int, int]] = []
    start = first
    for value, _ in now:
        if value > start:
            ranges.append((start, value - 1))
        start = value + 1
    if start <= last:
        ranges.append((start, last))
    return ranges
