"""ZarrArchiver: the reference's one-array-per-event Zarr archiver, as a drop-in, atomic and without clobbering.

Same constructor and layout as ``herostools.actor.ZarrArchiver``: ``store_template`` renders a Zarr v3 group,
``array_path_template`` the key of the event's array in it, so a BOSS config written for the reference works
after changing only ``classname``, and the store opens with ``zarr.open_group`` as the reference's does. It is
a file-per-item sink (the pipeline's retries, spool, dead letters and writeback window, as for ``.npy``
files); the array is written by ``sinks.zarr_arrays.ZarrArrayWriter`` (decision 0022).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..naming.templates import derive_root
from ..observe.catalog_recovery import Adoption
from ..pipeline.queueing import Item
from ..state.replay_zarr import ZARR_KIND, ZarrWriterSettings
from ..state.statedir import DEAD_LETTER_SUBDIR
from ..storage.atomic import Fsync, OnExists
from ..storage.staged_trees import remove_stale_staging
from ..storage.writeback import WritebackWindow
from .base import HERODataArchiver
from .files import check_root
from .options import DEFAULT_WRITEBACK_WINDOW, ZarrOptions

log = logging.getLogger("heros_archiver")


class ZarrArchiver(HERODataArchiver):
    """Store each array payload as one Zarr v3 array, at a templated key in a templated group.

    Args:
        store_template: Jinja2 template of the group's path (the store), e.g. ``{{ file_path }}/run.zarr``;
            sees the merged metadata and ``source_name``; strict sandbox; confined to the archive root.
        array_path_template: Jinja2 template of the array's key in the group, e.g. ``{{ '%06d' % frame }}``
            (``a/b/name`` makes the groups ``a`` and ``a/b``); confined to the group.
        root: archive root (default: derived from ``store_template`` as for the file archivers).
        on_exists: an array already at the key: ``error`` (default; keep it, dead-letter the item),
            ``overwrite`` (replace it in one step: the reference's behaviour), ``unique`` (``key-1``, ...).
        fsync: ``none`` (default; page cache), ``file`` (every object), ``file+directory`` (and directories).
        compression: ``zstd`` (default: zarr's default codecs, as the reference writes) or ``none``.
        compression_level: zstd level (default 0, zarr's; negative levels are faster).
        chunks: ``auto`` (default: the chunks zarr guesses, as in the reference's arrays; a 2 MiB frame becomes
            8 chunk files in 5 directories) or ``array`` (one chunk per array: 2 files in 3 directories, faster
            on a local disk; zarr reads either the same).
        writeback_window: bytes of arrays between "written" and "on disk, out of the page cache" (default
            32 MiB; 0 leaves the page cache to the kernel; decision 0009).
    """

    def __init__(
        self,
        store_template: str,
        array_path_template: str,
        *args: Any,
        root: str | None = None,
        on_exists: OnExists = "error",
        fsync: Fsync = "none",
        compression: str = "zstd",
        compression_level: int = 0,
        writeback_window: int = DEFAULT_WRITEBACK_WINDOW,
        chunks: str = "auto",
        **kwargs: Any,
    ) -> None:
        self.sink_options = ZarrOptions(
            store_template, array_path_template, root, on_exists, fsync, compression, compression_level,
            writeback_window, chunks,
        )  # fmt: skip
        HERODataArchiver.__init__(self, *args, **kwargs)

    def _setup_storage(self) -> None:
        """Import zarr (a missing extra fails here), compile both templates, check the state directory and
        remove the arrays that killed writers left half-built in the staging directory."""
        from ..sinks.zarr_arrays import ZarrArrayWriter

        options = self.sink_options
        root = Path(options.root) if options.root else derive_root(options.store_template, self.metadata)
        self._writer = ZarrArrayWriter(
            options.store_template,
            options.array_path_template,
            str(root),
            options.on_exists,
            options.fsync,
            options.compression,
            options.compression_level,
            options.writeback_window,
            options.chunks,
        )
        self.root = self._writer.root
        self.name_template = self._writer.store
        confine_root = self._writer.confine_root  # None exactly when the root is / (check_root warns then)
        if not check_root(self.root) or confine_root is None:
            return
        removed = remove_stale_staging(str(self.root), confine_root)
        if removed:
            log.warning("removed %d half-built Zarr array(s) left by an earlier run under %s", removed, self.root)

    def _default_dead_letter_dir(self) -> Path:
        return self.root / DEAD_LETTER_SUBDIR

    def _state_is_durable(self) -> bool:
        return self._writer.fsync != "none"

    def _writer_settings(self) -> dict[str, Any] | None:
        """Recorded with each dead letter, so that ``heros-archiver replay`` writes its array as this archiver
        would (None for a subclass with its own ``_store``: its code re-feeds them)."""
        if type(self)._store is not ZarrArchiver._store:
            return None
        writer, options = self._writer, self.sink_options
        return ZarrWriterSettings(
            kind=ZARR_KIND, store_template=writer.store.source, array_path_template=writer.key.source,
            root=str(self.root), on_exists=writer.on_exists, fsync=writer.fsync, compression=options.compression,
            compression_level=options.compression_level, chunks=options.chunks,
        ).to_dict()  # fmt: skip

    def _catalog_adoption(self) -> Adoption | None:
        """The arrays published and not yet journaled when a kill came (each is a directory, published whole),
        if this archiver reports where it writes (a subclass's own ``_store`` does not)."""
        return Adoption(zarr_arrays=True) if type(self)._store is ZarrArchiver._store else None

    def _writeback_tracker(self) -> WritebackWindow:
        return self._writer.window

    def _stop(self, *_boss: Any) -> None:
        """Drain as every archiver does, then finish the arrays still on their way to disk."""
        super()._stop(*_boss)
        self._writer.close()

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        """Write the array of one payload, named from the default metadata merged with ``metadata``."""
        self._writer.write(source_name, payload, {**self.metadata, **metadata})

    def _store_item(self, item: Item) -> None:
        """As ``_store``; an item resumed from an earlier run's spool is not written twice. A subclass that
        overrides ``_store`` gets its ``_store`` called, as the reference API promises."""
        if type(self)._store is not ZarrArchiver._store:
            super()._store_item(item)
            return
        if self._pipeline.hub.locating:
            before = None if self._intents is None else self._intents.of(item)
            item.locations = self._writer.write_located(item.source, item.payload, item.metadata, item.resumed, before)
        else:
            self._writer.write(item.source, item.payload, item.metadata, resumed=item.resumed)

    @property
    def on_exists(self) -> OnExists:
        """What happens when an array exists at the key (``error``, ``overwrite``, ``unique``)."""
        return self._writer.on_exists

    @property
    def fsync(self) -> Fsync:
        """Durability of each array (``none``, ``file``, ``file+directory``)."""
        return self._writer.fsync
