"""At an archiver's start, before it writes anything: what earlier runs' journals hold goes into the catalog.

A run that stopped cleanly applied its journal and removed it. A journal of a process that no longer runs is
a run that was killed (or lost its catalog's lock at the end): what it holds beyond its applied offset is
applied now, and the journal removed. Journals of live processes (other archivers sharing the root) are left
to their own archivers.

The kill window: a file-per-item archiver links its file, then journals it, microseconds later; a kill in
between leaves a file under the root that no journal names. So after a killed run of such an archiver (its
journal has no ``closed`` line and says which files it writes: ``adopt``), the files under the root that are
newer than that run's last journaled commit minus ``ADOPT_MARGIN``, end as its files do, and are not in the
catalog are *adopted* (once the run's helper processes, which finish the batch they were given, have exited):
cataloged with the checksum of the file as it is; with the source, event, sequence value, receive time and
metadata of its intent record when the run journaled one for it (``catalog_journal``: every file has one),
else with the source of the run's last journaled item (``?`` if it journaled none), no sequence value and
metadata ``{}``. A
``ZarrArchiver`` publishes a whole array (a directory) per item: after its kill, the arrays (a ``zarr.json`` of
an array node, changed since then, in a group directory) that the catalog does not name are adopted the same
way, as the store (the topmost group directory above the array) and the array's key in it, with the checksum of
its values read back (``readers.ContainerReader``). The walk happens only then (after a kill), skips the
archiver's own folder and temporaries, and looks at the files only of directories changed since then.

An HDF5, Zarr-append or TIFF-stack archiver's kill window is a commit made and not yet journaled: for such a killed run
(``Adoption.frames``), every stack or array its journal named is opened read-only, and the frames beyond the
last cataloged one, up to its committed length (what a reopen trusts), are cataloged as read back, with the
source, sequence value, receive time and metadata the container keeps beside each frame (``readers``). A
Zarr-append archiver's arrays in a bucket (an ``s3://`` root, whose state directory the catalog is in) are read
from the store the state directory records, with the credentials of this environment. A
ParquetArchiver's is the same: rows flushed to the file's own journal and not yet in the catalog's; the
restarting ParquetArchiver rebuilt and published the file before its catalog starts (another kind of archiver
starting first rebuilds it here: ``_rebuild_parquet_files``), so the items of the rows
beyond the last cataloged one (consecutive rows of one ``item_key``) are cataloged from the file, with their
source, sequence value and receive time (no metadata: the file keeps none). A container member (stack, array,
Parquet file) the run first committed to in that window is named by the intent record its sink journaled
before that first commit (``catalog_journal``'s ``"c"`` records): read back from index 0 the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import xxhash

from ..errors import ArchiverError, ItemUnreadableError
from ..state.object_state import open_recorded_store
from ..state.statedir import STATE_DIR_NAME
from ..storage.objectstore import ObjectLocation, ObjectStore, is_object_url
from ..storage.temporaries import is_temporary
from .catalog_apply import INTENT_LINES, Applied, apply_journal, metadata_text, relative_to_root
from .catalog_backend import AdoptedRow, CatalogBackend, CatalogTarget
from .catalog_names import JournalName, owner_alive
from .catalog_schema import journal_directory
from .outcomes import CHECKSUM_ALGORITHM
from .readers import ContainerReader, ItemReading
from .verify_containers import PARQUET_ROWS

__all__ = ["ADOPT_MARGIN", "Adoption", "recover"]

log = logging.getLogger("heros_archiver")

#: Seconds before a killed run's last journaled commit from which its files not in the catalog are adopted:
#: a large file counts as archived only once the writeback window has it on the device, and the JSON helper
#: links a batch of files before the writer journals them, so a file may be linked well before the last
#: commit journaled before it.
ADOPT_MARGIN = 60.0
#: Seconds a start waits for the helper processes of a killed run to finish the batch they were given (they
#: exit once they see their archiver gone), before it looks for the files to adopt.
HELPER_WAIT = 10.0
_READ_BYTES = 8 * 2**20
#: A ``zarr.json`` larger than this is no document of an array or group of ours (read no further)
_MAX_DOCUMENT = 1 << 20


@dataclass(frozen=True)
class Adoption:
    """What a later start adopts of an archiver's that was killed (its journal's header ``adopt``): files whose
    names end in ``suffix`` (``""``: any; None: no files), and with ``zarr_arrays`` the arrays a ZarrArchiver
    published."""

    suffix: str | None = None
    zarr_arrays: bool = False
    #: the frames (or Parquet rows) an HDF5, Zarr-append, TIFF-stack or Parquet archiver committed beyond what its
    #: journal says (``_adopt_frames``)
    frames: bool = False

    @classmethod
    def from_header(cls, value: object) -> Adoption | None:
        """The header's ``adopt`` (``{"suffix": ".npy"}`` in journals written before the other fields)."""
        if not isinstance(value, dict):
            return None
        suffix = value.get("suffix")
        return cls(suffix if isinstance(suffix, str) else None, value.get("zarr_arrays") is True,
                   value.get("frames") is True)  # fmt: skip


@dataclass
class _KilledRun:
    """A journal (all its segments) of a run that did not stop cleanly, and which of its files to adopt."""

    archiver: str
    event: str
    source: str
    adopt: Adoption
    since: float
    #: its helper processes, as ``[pid, start]``
    helpers: list[list[int]]
    #: when the oldest segment of its journal still there was made
    started: float = 0.0
    #: its journal's segments still there (their intent records: ``_intents``)
    segments: tuple[Path, ...] = ()


def recover(root: Path, target: CatalogTarget) -> None:
    """Apply the journals of processes that no longer run to ``target``'s catalog, adopt a killed file archiver's
    unjournaled files, remove those journals. Raises CatalogError when the catalog cannot be opened or written."""
    with target.open_writer(root) as catalog:
        _recover(catalog, root)


def _recover(catalog: CatalogBackend, root: Path) -> None:
    directory = journal_directory(root)
    names = sorted(
        (name for name in map(JournalName.parse, os.listdir(directory)) if name is not None),
        key=lambda name: (name.journal, name.segment),
    )
    dead = [name for name in names if not name.alive()]
    last: dict[tuple[int, int, int], Applied] = {}
    times: dict[tuple[int, int, int], float] = {}
    #: per journal, when its oldest segment still there was made (the containers its run wrote since)
    firsts: dict[tuple[int, int, int], float] = {}
    for name in dead:
        applied = apply_journal(catalog, directory / name.text, str(root), dead=True)
        if applied is None:
            continue  # another archiver's start removed it meanwhile
        last[name.journal] = applied
        created = float(applied.state.header.get("created") or 0.0)
        when = applied.state.last or created
        times[name.journal] = max(times.get(name.journal, 0.0), when)
        firsts[name.journal] = min(firsts.get(name.journal, created), created)
    if dead:
        log.warning("catalog %s: applied the journals of %d run(s) that did not stop cleanly", root, len(last))
    killed = [
        _KilledRun(
            applied.state.archiver,
            str(applied.state.header.get("event", "?")),
            applied.state.source or "?",
            adoption,
            times[journal] - ADOPT_MARGIN,
            list(applied.state.header.get("helpers") or []),
            firsts[journal],
            tuple(directory / name.text for name in dead if name.journal == journal),
        )
        for journal, applied in last.items()
        if not applied.state.closed and (adoption := Adoption.from_header(applied.state.header.get("adopt")))
    ]
    if killed:
        for name in names:  # the files of live archivers sharing the root are theirs, not the killed run's
            if name not in dead:
                apply_journal(catalog, directory / name.text, str(root))
        _wait_for_helpers(root, [helper for run in killed for helper in run.helpers])
        frames = _adopt_frames(catalog, root, [run for run in killed if run.adopt.frames])
        if frames:
            log.warning(
                "catalog %s: adopted %d frame(s) a killed run committed to its containers but did not journal (read "
                "back with their source, sequence value, receive time and metadata)",
                root,
                frames,
            )
        file_runs = [run for run in killed if not run.adopt.frames]
        adopted = _adopt(catalog, root, file_runs) if file_runs else 0
        if adopted:
            log.warning(
                "catalog %s: adopted %d file(s) a killed run linked but did not journal (with their intent records' "
                "source, sequence value and metadata where it journaled one, checksum of the file as found)",
                root,
                adopted,
            )
    for name in dead:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name.text)
    present = set(os.listdir(directory))
    catalog.forget_journals([name for name in catalog.journal_names() if name not in present])


def _wait_for_helpers(root: Path, helpers: list[list[int]]) -> None:
    """Until the killed runs' helper processes have exited (within ``HELPER_WAIT``)."""
    deadline = time.monotonic() + HELPER_WAIT
    while any(owner_alive(pid, start) for pid, start in helpers):
        if time.monotonic() > deadline:
            log.warning("catalog %s: helper processes of a killed run still run; adopting its files anyway", root)
            return
        time.sleep(0.02)


def _adopt(catalog: CatalogBackend, root: Path, killed: list[_KilledRun]) -> int:
    """Catalog the files (and ZarrArchiver arrays) of ``killed`` runs found under ``root`` and not in the catalog;
    how many."""
    since = min(run.since for run in killed)
    runs = sorted(killed, key=lambda run: run.since, reverse=True)
    intents = {id(run): _intents(run.segments, str(root)).files for run in killed}
    found: list[_Found] = []
    with ContainerReader(root) as reader:
        for path, stat in _changed_files(str(root), since):
            when = max(stat.st_mtime, stat.st_ctime)
            candidates = [r for r in runs if when >= r.since]
            array_run = next((r for r in candidates if r.adopt.zarr_arrays), None)
            if array_run is not None and os.path.basename(path) == "zarr.json":
                array = _array(catalog, reader, root, path)
                if array is not None:
                    store, member, reading = array
                    intent_path = relative_to_root(os.path.dirname(path), str(root))
                    found.append(_Found(array_run, store, member, reading.nbytes or 0, reading.checksum, when,
                                        intent_path))  # fmt: skip
                continue
            run = next((r for r in candidates if r.adopt.suffix is not None and path.endswith(r.adopt.suffix)), None)
            relative = relative_to_root(path, str(root))
            if run is None or catalog.has_path(relative):
                continue
            try:
                digest = _file_checksum(path)
            except OSError as exc:
                log.warning("catalog %s: cannot read %s to adopt it: %s", root, path, exc)
                continue
            found.append(_Found(run, relative, None, stat.st_size, digest, when, relative))
    rows: list[AdoptedRow] = []
    #: what was adopted with what its intent record says of it (full item rows)
    intended: list[tuple[Any, ...]] = []
    for adopted, intent in _with_intents(found, intents):
        run = adopted.run
        if intent is None:
            rows.append((run.archiver, run.source, run.event, adopted.path, adopted.member, adopted.nbytes,
                         adopted.digest, adopted.when))  # fmt: skip
        else:
            source, event, sequence, received, metadata = intent
            intended.append((run.archiver, source, event, sequence, adopted.path, adopted.member, None, 1,
                             adopted.nbytes, adopted.digest, metadata, received, adopted.when))  # fmt: skip
    catalog.adopt(rows)
    if intended:
        with catalog.transaction():
            catalog.add(intended, [])
    return len(rows) + len(intended)


#: What an intent record tells of the item planned for a file: source, event, sequence value, receive time and
#: metadata as JSON text (``_Intents``).
_Intent = tuple[str, str, int | None, float, str]


@dataclass(frozen=True)
class _Found:
    """A file (or array) of a killed run to adopt: ``path`` (or store) and ``member`` as cataloged, and the path
    its intent record would name (``intent_path``)."""

    run: _KilledRun
    path: str
    member: str | None
    nbytes: int
    digest: str | None
    when: float
    intent_path: str


_UNIQUE_SUFFIX = re.compile(r"^(?P<stem>.+)-(?P<number>[1-9][0-9]*)(?P<suffix>\.[^./]*)?$")


def _planned(path: str) -> tuple[str, int]:
    """The path an item planned for a file ``on_exists="unique"`` may have given another name (``name-3.npy``:
    ``name.npy``, 3; ``storage.atomic.unique_names``), and that number (0: the name as it is)."""
    folder, _, name = path.rpartition("/")
    match = _UNIQUE_SUFFIX.match(name)
    if match is None:
        return path, 0
    planned = f"{match['stem']}{match['suffix'] or ''}"
    return (f"{folder}/{planned}" if folder else planned), int(match["number"])


def _with_intents(
    found: list[_Found], intents: dict[int, dict[str, list[_Intent]]]
) -> Iterator[tuple[_Found, _Intent | None]]:
    """Each found file with the intent record of the item it holds, or None. The intents of one planned path
    are given, in the order they were journaled, to the files adopted for it in the order of their names
    (``name``, ``name-1``, ...: the order ``on_exists="unique"`` gave them out), the last intents to the last
    files (files before those were journaled by the run; what has no intent left gets None). A file named as
    no intent is matched with the intents of the name it would have had without its ``-N``."""
    groups: dict[tuple[int, str], list[tuple[int, _Found]]] = {}
    for adopted in found:
        planned, number = adopted.intent_path, 0
        run_intents = intents[id(adopted.run)]
        if planned not in run_intents:
            candidate, candidate_number = _planned(planned)
            if candidate in run_intents:
                planned, number = candidate, candidate_number
        groups.setdefault((id(adopted.run), planned), []).append((number, adopted))
    for (run_id, planned), files in groups.items():
        recorded = intents[run_id].get(planned, [])
        files.sort(key=lambda numbered: numbered[0])
        offset = len(files) - len(recorded)  # > 0: more files than intents, the first ones get none
        for position, (_, adopted) in enumerate(files):
            yield adopted, (recorded[position - offset] if position >= offset else None)


@dataclass
class _Intents:
    """A killed run's intent records (``catalog_journal``): per path of a file about to be made (relative to the
    root), in the order journaled, the source, event, sequence value, receive time and metadata (JSON text, as the
    catalog stores it; ``{}`` from a journal of a version that did not record it) of each item planned there (a
    template may name many items alike: ``on_exists`` then decides); and the container members it was about to
    commit to first, as ``(path, member)``."""

    files: dict[str, list[_Intent]]
    containers: set[tuple[str, str]]


def _intents(segments: tuple[Path, ...], root: str) -> _Intents:
    """The intent records of a killed run's journal segments; a line torn by the kill is skipped."""
    found = _Intents({}, set())
    for segment in segments:
        try:
            data = segment.read_bytes()
        except OSError:
            continue
        for line in data.splitlines():
            if not line.startswith(INTENT_LINES):
                continue
            try:
                for record in orjson.loads(line):
                    if record[0] == "i":
                        _, source, event, sequence, received, _, path, *metadata = record
                        text = metadata_text(metadata[0]) if metadata else "{}"
                        relative = relative_to_root(str(path), root)
                        found.files.setdefault(relative, []).append(
                            (str(source), str(event), sequence, float(received), text)
                        )
                    else:
                        found.containers.add((relative_to_root(str(record[6]), root), str(record[7])))
            except (ValueError, TypeError, IndexError):  # orjson's errors are ValueErrors; a record of another shape
                continue
    return found


def _adopt_frames(catalog: CatalogBackend, root: Path, killed: list[_KilledRun]) -> int:
    """Catalog the frames that ``killed`` HDF5, Zarr-append, TIFF-stack and Parquet runs committed after their
    last journaled ones (a commit made, the kill before its journal line): of each stack or array a run committed
    to since its journal began (its oldest segment still there), and each its intent records name as about to get
    its first commit, the frames from the index after its last cataloged one (0) up to the committed length, each
    read back (checksum) with what the container keeps beside it; how many."""
    rows: list[tuple[Any, ...]] = []
    runs_ends = []
    for run in killed:
        ends = {(path, member): end for path, member, end in catalog.container_ends(run.archiver, run.started)}
        for path, member in _intents(run.segments, str(root)).containers:  # first committed just before the kill
            if not catalog.has_path(path, member):
                ends.setdefault((path, member), 0)
        runs_ends.append((run, ends))
    _rebuild_parquet_files(root, [key for _, ends in runs_ends for key in ends])
    objects = _recorded_objects(root, [path for _, ends in runs_ends for path, _ in ends])
    with ContainerReader(root, objects=objects) as reader:
        for run, ends in runs_ends:
            for (path, member), end in ends.items():
                try:
                    when = _changed_at(root, path, member, objects)
                    if when is None and end == 0:
                        continue  # intended, and killed before its first commit made it
                    if when is None:
                        raise ItemUnreadableError("missing", path, member, end, "no such file or store")
                    for index, count in reader.spans(path, member, end):
                        rows.append(_frame_row(reader, run, path, member, index, count, when))
                except (ArchiverError, OSError, TypeError) as exc:  # unreadable: what verify reports of the catalog
                    log.warning("catalog %s: cannot read %s in %s to adopt its frames: %s", root, member, path, exc)
    if rows:
        with catalog.transaction():
            catalog.add(rows, [])
    return len(rows)


def _recorded_objects(root: Path, paths: list[str]) -> ObjectStore | None:
    """The object store this state directory records (``state.object_state``), opened when one of ``paths`` is an
    ``s3://`` URL (a Zarr-append archiver's arrays in a bucket); None otherwise, or with a warning when the record
    cannot be read (those containers' frames then stay uncataloged, each with a warning)."""
    if not any(map(is_object_url, paths)):
        return None
    try:
        recorded = open_recorded_store(root)
    except ArchiverError as exc:
        log.warning("catalog %s: cannot open the store a killed run wrote to, to adopt its frames: %s", root, exc)
        return None
    return None if recorded is None else recorded.store


def _changed_at(root: Path, path: str, member: str, objects: ObjectStore | None) -> float | None:
    """When the container ``path`` last changed (in an object store: ``member``'s ``zarr.json``, its commit point),
    the time its adopted frames are cataloged as committed; None when it is not there."""
    if not is_object_url(path):
        try:
            return os.stat(os.path.join(root, path)).st_mtime
        except FileNotFoundError:
            return None
    if objects is None:
        raise ItemUnreadableError("unreadable", path, member, None, "an object-store URL: no store recorded here")
    info = objects.head(ObjectLocation.parse(path).key(f"{member}/zarr.json"))
    if info is None:
        return None
    return info.modified.timestamp() if info.modified is not None else time.time()


def _rebuild_parquet_files(root: Path, members: list[tuple[str, str]]) -> None:
    """Publish the Parquet files of killed runs that are still only journals (``sinks.containers.parquet``), so
    that their rows can be read back: a restarting ParquetArchiver has done so before its catalog starts, another
    kind of archiver starting first on the root has not. Needs pyarrow (the [parquet] extra); without it the rows
    stay uncataloged, with a warning."""
    if not any(member == PARQUET_ROWS and not os.path.exists(os.path.join(root, path)) for path, member in members):
        return
    try:
        from ..sinks.containers.parquet import recover_journals
    except ImportError as exc:
        log.warning("catalog %s: cannot rebuild a killed run's Parquet files to adopt their rows: %s", root, exc)
        return
    for found in recover_journals(str(root)):
        log.warning("catalog %s: rebuilt %s (%d rows) from the journal of a killed run", root, found.path, found.rows)


def _frame_row(
    reader: ContainerReader, run: _KilledRun, path: str, member: str, index: int, count: int, when: float
) -> tuple[Any, ...]:
    """The catalog row of the item at ``index`` (``count`` indices: a frame, or an item's Parquet rows) of
    ``member`` in ``path``, read back (``ITEM_COLUMNS`` without ``id``); rows have no bytes of their own (0)."""
    reading = reader.read(path, member, index, count)
    record = reader.frame_record(path, member, index)
    metadata = orjson.dumps(record.metadata, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    return (run.archiver, record.source, run.event, record.sequence, path, member, index, count, reading.nbytes or 0,
            reading.checksum, metadata, record.received, when)  # fmt: skip


def _array(
    catalog: CatalogBackend, reader: ContainerReader, root: Path, document: str
) -> tuple[str, str, ItemReading] | None:
    """The store (relative to the root), key and values read back of the array whose ``zarr.json`` is
    ``document``, if it is an array in a group that the catalog does not name yet: its store is the topmost group
    directory above it (below the root)."""
    array = os.path.dirname(document)
    if _node_type(document) != "array" or _node_type(os.path.join(os.path.dirname(array), "zarr.json")) != "group":
        return None
    store = os.path.dirname(array)
    while (
        os.path.dirname(store) != str(root) and _node_type(os.path.join(os.path.dirname(store), "zarr.json")) == "group"
    ):
        store = os.path.dirname(store)
    relative, member = relative_to_root(store, str(root)), os.path.relpath(array, store).replace(os.sep, "/")
    if catalog.has_path(relative, member):
        return None
    try:
        return relative, member, reader.read(relative, member)
    except ArchiverError as exc:  # a half-published or damaged array: not an item the run archived
        log.warning("catalog %s: cannot read the array %s in %s to adopt it: %s", root, member, store, exc)
        return None


def _node_type(document: str) -> str | None:
    """``node_type`` of a Zarr v3 ``zarr.json`` (None: none there, or not one)."""
    try:
        with open(document, "rb") as handle:
            value = json.loads(handle.read(_MAX_DOCUMENT))
    except (OSError, ValueError):
        return None
    node_type = value.get("node_type") if isinstance(value, dict) else None
    return node_type if isinstance(node_type, str) else None


def _changed_files(root: str, since: float) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files under ``root`` changed (or linked) at ``since`` or later, outside the archiver's own folder.

    Every directory is listed (a new file may be deep below an old directory), but only those whose entries
    changed since then have their files looked at: linking a file changes its directory's mtime.
    """
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            recent = os.stat(directory).st_mtime >= since
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not (directory == root and entry.name == STATE_DIR_NAME):
                    pending.append(entry.path)
            elif recent and entry.is_file(follow_symlinks=False) and not is_temporary(entry.name):
                try:
                    stat = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if max(stat.st_mtime, stat.st_ctime) >= since:
                    yield entry.path, stat


def _file_checksum(path: str) -> str:
    """The checksum of a file's bytes, as ``outcomes.checksum`` gives it for a file the archiver wrote."""
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_BYTES):
            hasher.update(chunk)
    return f"{CHECKSUM_ALGORITHM}:{hasher.hexdigest()}"
