"""Re-drive dead-lettered items through the naming and writing they were meant for.

An item that is archived leaves the store; one that fails again stays, with the new error reported.
Running it twice never duplicates a file: the writer treats a target holding the same bytes as written.
Entries of the container archivers (their writer settings name a ``kind``: ``"hdf5"``, ``"zarr-append"``,
``"tiff-stack"``, ``"parquet"``) are appended again to the container their template names, through the
archiver's own sink, committed before the entry leaves, where an item the container holds already is known by
its item key (``replay_containers`` and one module per kind); those of a ``ZarrArchiver`` (``kind: "zarr"``)
become their array again through the archiver's writer (``replay_zarr``), those of a ``PostgresArchiver``
(``kind: "postgres"``) their record, arrays first (``replay_postgres``).

An entry is a file anyone with access to the store may have edited or planted, so nothing in it decides
*where* replay writes: every file goes under the archive root the store belongs to (implied by the store's
place, ``ROOT/.heros-archiver/dead-letter``, or given by the operator), through the same confinement as
the archiver, and an entry that records another root is refused. For an archiver of an ``s3://`` root, ROOT
is its local state directory, whose record (``state.object_state``) names the object location and store
replay writes to. One entry that cannot be read or used,
for whatever reason, is that entry's failure and never stops the others.

What is archived goes into the root's catalog (``replay_catalog``) before its entry leaves the store.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ReplayError
from ..naming.templates import PathTemplate
from ..observe.outcomes import Location
from ..sinks.writer import FileWriter, WriterSettings
from .deadletter import DeadLetter, DeadLetterStore
from .object_state import open_recorded_store
from .records import SettingsRecord
from .replay_catalog import Placed, ReplayCatalog
from .replay_hdf5 import HDF5_KIND, Hdf5Replay, Hdf5WriterSettings
from .replay_parquet import PARQUET_KIND, ParquetReplay, ParquetWriterSettings
from .replay_postgres import POSTGRES_KIND, PostgresReplay, PostgresWriterSettings
from .replay_tiff import TIFF_STACK_KIND, TiffStackReplay, TiffStackWriterSettings
from .replay_zarr import ZARR_KIND, ZarrReplay, ZarrWriterSettings
from .replay_zarr_append import ZARR_APPEND_KIND, ZarrAppendReplay, ZarrAppendWriterSettings
from .statedir import DEAD_LETTER_SUBDIR

#: Where an archiver keeps its dead letters under its root, as path parts.
STORE_SUBDIR = DEAD_LETTER_SUBDIR.parts


@dataclass
class ReplayOutcome:
    """What happened to one dead-letter entry."""

    entry: Path
    source: str
    ok: bool
    #: the files written (an ``s3://`` root's objects as their URLs, text)
    paths: Sequence[Path | str] = field(default_factory=list)
    error: str = ""
    #: where the item went, as the catalog records it (empty for a dry run, or a writer that says none)
    locations: Sequence[Location] = ()


class KindReplay(Protocol):
    """How the entries of one ``kind`` of writer settings are replayed (``Hdf5Replay``, ``ZarrReplay``, ...)."""

    def plan(self, item: DeadLetter, settings: Any) -> list[Path | str]:
        """Where the item would go; nothing written."""

    def write(self, item: DeadLetter, settings: Any) -> Placed:
        """Write (and commit) the item; where it went."""

    def close(self) -> None:
        """Finish (every item was written or committed already)."""


#: The archivers' kinds of writer settings (file archivers' name none): the record each reads back as.
KINDS: dict[str, type[SettingsRecord]] = {
    HDF5_KIND: Hdf5WriterSettings,
    ZARR_KIND: ZarrWriterSettings,
    ZARR_APPEND_KIND: ZarrAppendWriterSettings,
    TIFF_STACK_KIND: TiffStackWriterSettings,
    PARQUET_KIND: ParquetWriterSettings,
    POSTGRES_KIND: PostgresWriterSettings,
}


def archive_root(directory: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """The archive root replay may write under: ``root`` if given, else the one the store's place implies.

    A store at ``ROOT/.heros-archiver/dead-letter`` (the archiver's default) belongs to ``ROOT``. A store
    elsewhere (``dead_letter_dir=...``) says nothing about its root, so the operator must name it; so must
    they when the implied root is the whole file system, where confinement would confine nothing.
    """
    if root is not None:
        return Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    store = Path(os.path.abspath(os.fspath(directory)))
    if store.parts[-len(STORE_SUBDIR) :] != STORE_SUBDIR:
        raise ReplayError(
            f"{directory}: expected a dead-letter store at ROOT/{'/'.join(STORE_SUBDIR)}, which names the archive "
            "root its entries may write under; this one is elsewhere: pass --root ROOT (root=...) to name it"
        )
    implied = store.parents[len(STORE_SUBDIR) - 1]
    if implied == Path(implied.anchor):
        raise ReplayError(
            f"{directory}: the implied archive root is {str(implied)!r}, the whole file system, which confines "
            f"nothing; pass --root {implied} (root=...) to confirm it"
        )
    return implied


def replay(
    directory: str | Path,
    template: str | None = None,
    dry_run: bool = False,
    root: str | os.PathLike[str] | None = None,
    dataset_template: str | None = None,
    array_template: str | None = None,
    catalog_url: str | None = None,
) -> list[ReplayOutcome]:
    """Replay every entry of the dead-letter store at ``directory``, oldest first.

    Args:
        directory: the dead-letter directory (e.g. ``<root>/.heros-archiver/dead-letter``).
        template: a corrected ``save_template`` (for the entries of an Hdf5Archiver or ParquetArchiver:
            ``file_template``, of a ZarrArchiver or ZarrAppendArchiver: ``store_template``) to use instead of the
            recorded one (confined as well).
        dry_run: only render and check; write nothing, remove nothing.
        root: the archive root to write under (default: implied by ``directory``, see ``archive_root``).
        dataset_template: a corrected ``dataset_template`` for an Hdf5Archiver's entries (other entries have
            none and ignore it).
        array_template: a corrected ``array_path_template`` for a ZarrArchiver's entries, ``array_template``
            for a ZarrAppendArchiver's (others ignore it).
        catalog_url: the shared PostgreSQL catalog the archivers wrote (``catalog_url=``), which the archived
            items go into (default: the root's own catalog, if it has one).

    Raises:
        ReplayError: no archive root is known for ``directory`` (before any entry is touched).
        ConfigurationError: ``template``, ``dataset_template`` or ``array_template`` is not a valid template
            (idem).
    """
    trusted_root = archive_root(directory, root)
    objects = open_recorded_store(trusted_root)
    for corrected in (template, dataset_template, array_template):
        if corrected is not None:
            PathTemplate(corrected, trusted_root)  # the operator's typo is one error, not one per entry
    kinds: dict[str, KindReplay] = {
        HDF5_KIND: Hdf5Replay(template, dataset_template),
        ZARR_KIND: ZarrReplay(template, array_template),
        ZARR_APPEND_KIND: ZarrAppendReplay(
            template, array_template, objects=objects.root(trusted_root) if objects else None
        ),
        TIFF_STACK_KIND: TiffStackReplay(template),
        PARQUET_KIND: ParquetReplay(template),
        POSTGRES_KIND: PostgresReplay(),
    }
    store = DeadLetterStore(directory)
    catalog = ReplayCatalog(trusted_root, catalog_url)
    writers: dict[tuple[object, ...], FileWriter] = {}
    outcomes = []
    try:
        for entry in _candidates(store):
            source = "?"
            try:
                item = _load(store, entry)
                source = item.source
                kind = _entry_kind(item.writer)
                if kind is not None:
                    placed = _replay_kind(
                        kinds[kind], KINDS[kind], item, objects.url if objects else trusted_root, dry_run
                    )
                else:
                    settings = _trusted_settings(item, objects.url if objects else trusted_root, template)
                    key = tuple(settings.to_dict().values())
                    writer = writers.get(key) or writers.setdefault(
                        key, FileWriter(settings, store=objects.store if objects else None)
                    )
                    placed = _replay_files(writer, item, dry_run, as_text=objects is not None)
                if not dry_run:
                    catalog.record(item, placed.locations)  # before the entry goes: a kill leaves the entry
                    store.remove(entry)
            except Exception as exc:  # noqa: BLE001 - whatever an entry holds, it is this entry's failure only
                outcomes.append(ReplayOutcome(entry, source, False, error=f"{type(exc).__name__}: {exc}"))
                continue
            outcomes.append(ReplayOutcome(entry, source, True, placed.paths, locations=placed.locations))
    finally:
        for writer in writers.values():
            writer.close()
        for replayer in kinds.values():
            replayer.close()
        catalog.close()
    return outcomes


def _replay_files(writer: FileWriter, item: DeadLetter, dry_run: bool, as_text: bool) -> Placed:
    """One entry of a file archiver: planned, or written (a file holding the same bytes counts as written).
    ``as_text``: the paths are ``s3://`` URLs, kept as text (a Path folds their ``//``)."""
    if dry_run:
        return Placed(_paths([path for path, _ in writer.plan_text(item.source, item.payload, item.metadata)], as_text))
    locations = writer.write_located(item.source, item.payload, item.metadata, resumed=True)
    return Placed(_paths([location.path for location in locations], as_text), locations)


def _paths(texts: list[str], as_text: bool) -> list[Path | str]:
    return list(texts) if as_text else [Path(text) for text in texts]


def _entry_kind(writer: dict[str, Any] | None) -> str | None:
    """The ``kind`` of an archiver's settings (``KINDS``), None for a file archiver's (no kind); ReplayError
    for a kind this replay does not know."""
    if writer is None or "kind" not in writer:
        return None
    if writer["kind"] not in KINDS:
        raise ReplayError(
            f"writer settings of kind {writer['kind']!r}: this replay knows {', '.join(map(repr, KINDS))} and the "
            "file archivers' settings (no kind); replay it with the release that wrote it"
        )
    return str(writer["kind"])


def _replay_kind(
    kind: KindReplay, record: type[SettingsRecord], item: DeadLetter, trusted_root: Path | str, dry_run: bool
) -> Placed:
    """One entry of an archiver with a ``kind``: its settings read strictly, the root the trusted one (a
    directory, or the ``s3://`` URL its state directory records); planned, or written (and committed)."""
    settings = record.from_dict(item.writer)
    _check_recorded_root(item, settings.root, trusted_root)
    settings.root = str(trusted_root)
    return Placed(kind.plan(item, settings)) if dry_run else kind.write(item, settings)


def _candidates(store: DeadLetterStore) -> list[Path]:
    """The store's entries and, to be reported and refused, the symbolic links planted among them (the store
    itself passes over links: they are no entries of its own)."""
    links = [path for path in store.directory.iterdir() if path.is_symlink()] if store.directory.is_dir() else []
    return sorted([*store.entries(), *links])


def _load(store: DeadLetterStore, entry: Path) -> DeadLetter:
    """Read one entry and check the parts replay uses (the store reads; what it returns came from a file)."""
    if entry.is_symlink():
        raise ReplayError(f"{entry}: is a symbolic link to {os.readlink(entry)!r}, expected an entry directory")
    item = store.load(entry)
    if not isinstance(item.source, str):
        raise ReplayError(f"{entry}: field 'source': expected str, got {type(item.source).__name__}")
    if not isinstance(item.metadata, dict):
        raise ReplayError(f"{entry}: field 'metadata': expected a JSON object, got {type(item.metadata).__name__}")
    if item.writer is None:
        raise ReplayError(f"{entry}: stored by an archiver with its own _store; re-feed it with that code")
    return item


def _trusted_settings(item: DeadLetter, trusted_root: Path | str, template: str | None) -> WriterSettings:
    """The entry's writer settings, checked, with the root replaced by the trusted one (a directory, or the
    ``s3://`` URL its state directory records)."""
    settings = WriterSettings.from_dict(item.writer)
    _check_recorded_root(item, settings.root, trusted_root)
    settings.root = str(trusted_root)
    if template is not None:
        settings.save_template = template
    return settings


def _check_recorded_root(item: DeadLetter, recorded: str, trusted_root: Path | str) -> None:
    """An entry that records another archive root than the store's is refused (it may have been edited)."""
    same = recorded == trusted_root if isinstance(trusted_root, str) else _same_directory(recorded, trusted_root)
    if not same:
        raise ReplayError(
            f"{item.path}: recorded archive root {recorded!r} is not the archive root of this store, "
            f"{str(trusted_root)!r}; refused (replay writes only under the root its store belongs to)"
        )


def _same_directory(recorded: str, trusted: Path) -> bool:
    """True when ``recorded`` (absolute) names ``trusted``, as text after normalising or through symlinks."""
    if not os.path.isabs(recorded):
        return False
    return os.path.normpath(recorded) == str(trusted) or os.path.realpath(recorded) == os.path.realpath(trusted)
