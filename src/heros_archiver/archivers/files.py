"""Archivers that write one file per event (or per index, when splitting), named by a path template."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ConfigurationError
from ..naming.templates import PathTemplate, derive_root
from ..observe.catalog_recovery import Adoption
from ..pipeline.queueing import Item
from ..sinks.batching import BatchWriter
from ..sinks.writer import FileWriter, WriterSettings
from ..state.statedir import DEAD_LETTER_SUBDIR, STATE_DIR_NAME
from ..storage.atomic import Fsync, OnExists, remove_stale_temporaries
from ..storage.writeback import WritebackWindow
from ..transport.intake import FRAME_FIFO_SAMPLES
from .base import HERODataArchiver
from .object_root import DEFAULT_STALE_UPLOADS_AFTER, ObjectRoot, ObjectRootOptions, open_object_root
from .options import DEFAULT_WRITEBACK_WINDOW, FileOptions

log = logging.getLogger("heros_archiver")


class FileArchiver(HERODataArchiver):
    """Base of the template-named file archivers: naming, confinement and atomic writing.

    Args:
        save_template: Jinja2 template of the file path; sees the merged metadata, ``source_name``
            and (when splitting) ``_split_index``.
        file_format: the name of a registered format: ``npy``, ``json``, or one an installed plugin adds
            (entry-point group ``heros_archiver.formats``; ``heros-archiver formats`` lists them).
        root: archive root every file must stay under (default: derived from the template, see
            ``heros_archiver.naming``); or an object store, ``s3://bucket/prefix`` (the template then renders
            keys under the prefix, or starts with that URL itself; see "Object storage" in the README).
        on_exists: when the target exists: ``error`` (default; keep the file, dead-letter the item),
            ``overwrite``, or ``unique`` (add ``-1``, ``-2``, ... before the extension).
        fsync: durability: ``none`` (default; page cache), ``file``, or ``file+directory``.
        writeback_window: bytes of large files (1 MiB and more) that may be between "written" and "on
            disk, dropped from the page cache" (default 32 MiB; 0 leaves the page cache to the kernel).
            Keeps the cache small and reused, so latency stays flat over long runs (decision 0009).
        split_data_array: (npy) one file per index along axis 0.
        merge_metadata: (json) add the merged metadata under the key ``metadata``.
        helper_process: create small files (under 1 MiB, one per item) from a helper process per writer,
            so that naming and encoding the next items overlap with the kernel's work of creating these
            on another core: 1.3-1.4x more small events per second end to end, ~1.8x without Zenoh
            (decision 0012). Default: the class's ``DEFAULT_HELPER_PROCESS`` (on for JSON; off for arrays,
            whose frames of 1 MiB and more the writer writes itself in any case). Same guarantees either way.
            Not used for an ``s3://`` root (objects are sent by the writer).
        storage_options: (``s3://`` root) how to reach the store: ``endpoint``, ``region``, ``access_key``,
            ``secret_key``, ``session_token``, ``profile``, ``allow_http``; each one not given follows the AWS
            conventions (environment, then ``~/.aws`` profile; ``storage.objectstore``).
        state_dir: (``s3://`` root) the local directory whose ``.heros-archiver/`` holds spool, dead letters
            and catalog (default ``$XDG_STATE_HOME/heros-archiver/s3/<bucket>/<prefix>``; ``state.object_state``).
        stale_uploads_after: (``s3://`` root) at start, abort the multipart uploads under the prefix begun
            more than this many seconds ago (a killed writer's; default 3600).
    """

    #: ``helper_process`` when not given
    DEFAULT_HELPER_PROCESS = False

    name_template: PathTemplate
    root: Path
    sink_options: FileOptions

    def __init__(
        self,
        save_template: str,
        file_format: str,
        *args: Any,
        root: str | None = None,
        on_exists: OnExists = "error",
        fsync: Fsync = "none",
        writeback_window: int = DEFAULT_WRITEBACK_WINDOW,
        split_data_array: bool = False,
        merge_metadata: bool = False,
        helper_process: bool | None = None,
        storage_options: dict[str, Any] | None = None,
        state_dir: str | None = None,
        stale_uploads_after: float = DEFAULT_STALE_UPLOADS_AFTER,
        **kwargs: Any,
    ) -> None:
        self.sink_options = FileOptions(
            save_template,
            file_format,
            root,
            on_exists,
            fsync,
            writeback_window,
            bool(split_data_array),
            bool(merge_metadata),
            self.DEFAULT_HELPER_PROCESS if helper_process is None else helper_process,
            ObjectRootOptions(storage_options, state_dir, stale_uploads_after),
        )
        self._init_files(self.sink_options, *args, **kwargs)

    def _init_files(self, files: FileOptions, *args: Any, **kwargs: Any) -> None:
        """Start the archiver on ``files``, what the per-file writer is made from; a subclass with options of
        its own (``TiffArchiver``) keeps those as ``sink_options`` and passes their file part here."""
        self._files = files
        self._settings = WriterSettings(
            files.file_format, files.save_template, "", files.on_exists, files.fsync,
            files.split_data_array, files.merge_metadata,
        )  # fmt: skip
        HERODataArchiver.__init__(self, *args, **kwargs)

    def _setup_storage(self) -> None:
        """Compile the template (a syntax error fails here, at start), refuse a state directory that is a
        symlink, and clean the stale temporaries the records of dead processes point to (no walk). An
        ``s3://`` root is connected and checked first (``object_root.open_object_root``); ``root`` is then
        the local state directory, where spool, dead letters and catalog are."""
        files = self._files
        #: the object-store root (None: a local root)
        self.object_root: ObjectRoot | None = None
        if files.object_root is not None:
            self.object_root = open_object_root(files.object_root, files.objects, files.on_exists)
            self._settings.root = files.object_root
            self._writer = FileWriter(self._settings, 0, self.object_root.store)
            self.name_template = self._writer.template
            self.root = self.object_root.state_dir
            if check_root(self.root):
                clean_stale_temporaries(self.root)
            return
        root = Path(files.root) if files.root else derive_root(files.save_template, self.metadata)
        self._settings.root = str(root)
        self._writer = FileWriter(self._settings, files.writeback_window)
        self.name_template = self._writer.template
        self.root = self._writer.root
        if check_root(self.root):
            clean_stale_temporaries(self.root)

    def _default_dead_letter_dir(self) -> Path:
        return self.root / DEAD_LETTER_SUBDIR

    def _state_is_durable(self) -> bool:
        """Spool and dead-letter entries are fsynced whenever the files are (``fsync`` other than ``none``)."""
        return self._settings.fsync != "none"

    def _catalog_adoption(self) -> Adoption | None:
        """The files by the ending of their names (``.npy``; ``""`` when the template's end is an expression),
        if this archiver reports where it writes (a subclass's own ``_store`` does not)."""
        if type(self)._store is not FileArchiver._store or self.object_root is not None:
            return None  # an object store has no files linked but not journaled to adopt
        tail = re.split(r"}}|%}", self._files.save_template)[-1]
        return Adoption(suffix=PurePosixPath("name" + tail).suffix if "{" not in tail else "")

    def _writeback_tracker(self) -> WritebackWindow:
        return self._writer.window

    def _batch_writer_factory(self) -> Callable[[int], BatchWriter] | None:
        """Helpers for the small files, unless turned off or a subclass writes its items its own way
        (``_store`` or ``_store_item``: the reference API promises that ``_store`` is called)."""
        if not self._files.helper_process or self._writes_its_own_way() or self.object_root is not None:
            return None
        return self._make_batch_writer

    def _writes_its_own_way(self) -> bool:
        """Whether a subclass overrides ``_store`` or ``_store_item``: then its items go through them, one by one."""
        return type(self)._store is not FileArchiver._store or type(self)._store_item is not FileArchiver._store_item

    def _make_batch_writer(self, lanes: int) -> BatchWriter:
        """The lanes' helpers, whose files the catalog (made before the pipeline) journals as intents first."""
        writer = BatchWriter(self._writer, lanes)
        if self._intents is not None:
            writer.intend = self._intents.files
        return writer

    def _stop(self, *_boss: Any) -> None:
        """Drain as every archiver does, then finish the files still on their way to disk."""
        super()._stop(*_boss)
        self._writer.close()

    def stats(self) -> dict[str, Any]:
        """As HERODataArchiver.stats, plus ``writeback_errors``: files the device failed to write back."""
        snapshot = super().stats()
        snapshot["writeback_errors"] = self._writer.window.errors
        return snapshot

    def _writer_settings(self) -> dict[str, Any] | None:
        return self._settings.to_dict()

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        """Write the file(s) of one payload, named from the default metadata merged with ``metadata``."""
        self._writer.write(source_name, payload, {**self.metadata, **metadata})

    def _store_item(self, item: Item) -> None:
        """As ``_store``; an item resumed from an earlier run's spool is not written twice.

        A subclass that overrides ``_store`` gets its ``_store`` called, as the reference API promises.
        """
        if type(self)._store is not FileArchiver._store:
            super()._store_item(item)
            return
        # item.metadata was merged with the default metadata when the event arrived (feed)
        planned, item.planned = item.planned, None  # planned ahead (once: a retry plans again)
        if self._pipeline.hub.locating:
            before = None if self._intents is None or planned is not None else self._intents.of(item)
            item.locations = self._writer.write_located(
                item.source, item.payload, item.metadata, item.resumed, before, planned
            )
        else:
            self._writer.write(item.source, item.payload, item.metadata, resumed=item.resumed, planned=planned)

    def _plan_ahead(self) -> Callable[[list[Item]], None] | None:
        """With a catalog, the writer names and encodes the files of the items waiting in its lane ahead and
        journals their intent records in one write (decision 0045), not one per file; not for a subclass that
        writes its own way."""
        return None if self._writes_its_own_way() or self._intents is None else self._plan_items

    def _plan_items(self, items: list[Item]) -> None:
        """``Item.planned`` for each of ``items`` not planned yet, and their intent records, journaled together.
        An item that cannot be planned is left as it is: its write plans it again and reports why."""
        intents: list[tuple[Item, str]] = []
        for item in items:
            if item.planned is not None:
                continue
            try:
                planned = self._writer.plan_text(item.source, item.payload, item.metadata)
            except Exception:  # noqa: BLE001 - planned again by its write, which dead-letters or retries it
                continue
            item.planned = planned
            intents.extend((item, path) for path, _ in planned)
        if intents and self._intents is not None:
            self._intents.files(intents)

    @property
    def on_exists(self) -> OnExists:
        """What happens when a target file exists (``error``, ``overwrite``, ``unique``)."""
        return self._settings.on_exists

    @property
    def fsync(self) -> Fsync:
        """Durability of each write (``none``, ``file``, ``file+directory``)."""
        return self._settings.fsync


def check_root(root: Path) -> bool:
    """Whether paths are confined under ``root``: not when it is ``/`` (warned); otherwise the archiver's own
    directory under it must be a directory, not a symlink (pointing anywhere) nor a file."""
    if root == Path(root.anchor):
        log.warning("archive root is %s: paths are not confined; pass root=... to confine them", root)
        return False
    state = root / STATE_DIR_NAME
    if state.is_symlink():
        raise ConfigurationError(
            f"{state} is a symbolic link (to {os.readlink(state)!r}); expected the archiver's own directory "
            f"(dead letters, spool, records of temporaries) under the archive root {root}: replace the link "
            "by a directory, or archive under another root"
        )
    if state.exists() and not state.is_dir():
        raise ConfigurationError(f"{state}: expected the archiver's own directory under {root}, found a file")
    return True


def clean_stale_temporaries(root: Path) -> None:
    """Remove the temporaries that the records of dead processes point to (no walk of the archive), and say so."""
    removed = remove_stale_temporaries(root)
    if removed:
        log.warning("removed %d stale temporary file(s) under %s left by an earlier run", removed, root)


class ArrayArchiver(FileArchiver):
    """Save array payloads as ``.npy`` files (``np.load`` reads them).

    Args:
        save_template: Jinja2 template of the file path (see FileArchiver).
        split_data_array: write one file per index along axis 0; the template gets ``_split_index``.
    """

    INTAKE_FIFO_SAMPLES = FRAME_FIFO_SAMPLES  # when ``intake_buffer`` is given

    def __init__(self, save_template: str, split_data_array: bool = False, *args: Any, **kwargs: Any) -> None:
        FileArchiver.__init__(self, save_template, "npy", *args, split_data_array=split_data_array, **kwargs)

    @property
    def split_data_array(self) -> bool:
        """Write one file per index along axis 0."""
        return self._settings.split_data_array

    @split_data_array.setter
    def split_data_array(self, value: bool) -> None:
        self._settings.split_data_array = bool(value)


class JsonArchiver(FileArchiver):
    """Save dict payloads as ``.json`` files.

    Small events come in bursts, so by default Zenoh may hold up to 1,024 of them for this archiver
    (``intake_buffer``, decision 0011); pass ``intake_buffer=0`` for large dicts.

    Args:
        save_template: Jinja2 template of the file path (see FileArchiver).
        merge_metadata: also write the merged metadata, under the key ``metadata``.
    """

    DEFAULT_INTAKE_BUFFER = 1024
    DEFAULT_HELPER_PROCESS = True

    def __init__(self, save_template: str, merge_metadata: bool = False, *args: Any, **kwargs: Any) -> None:
        FileArchiver.__init__(self, save_template, "json", *args, merge_metadata=merge_metadata, **kwargs)

    @property
    def merge_metadata(self) -> bool:
        """Add the merged metadata to the JSON document under the key ``metadata``."""
        return self._settings.merge_metadata

    @merge_metadata.setter
    def merge_metadata(self, value: bool) -> None:
        self._settings.merge_metadata = bool(value)
