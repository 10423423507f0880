"""ZarrAppendArchiver: the frames of a run appended to one sharded Zarr v3 array, readable at any moment.

Built on the container sink (``sinks.ContainerSink``, ``sinks.zarr_append.ZarrAppendSink``) and the Zarr
append container (``containers.zarr_append``), as ``Hdf5Archiver`` is on the HDF5 one: the store path is
rendered from ``store_template`` once, when the event arrives, and becomes the item's route, so every frame
of one store is written by one writer, in arrival order; frames count as archived only once a commit wrote
their shards and then advanced the array's shape (decision 0023).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..formats.zarr_v3 import load_zarr
from ..naming.keys import confine_key
from ..naming.templates import PathTemplate, derive_root
from ..observe.catalog_recovery import Adoption
from ..pipeline.queueing import Item
from ..sinks.base import ContainerSink
from ..sinks.containers.zarr_shards import DEFAULT_COMPRESSION
from ..sinks.containers.zarr_trash import empty as empty_trash
from ..sinks.writer import _refuse_reserved
from ..state.replay_zarr_append import ZARR_APPEND_KIND, ZarrAppendWriterSettings
from ..state.statedir import DEAD_LETTER_SUBDIR
from ..transport.intake import FRAME_FIFO_SAMPLES
from .base import HERODataArchiver
from .files import check_root, clean_stale_temporaries
from .object_root import DEFAULT_STALE_UPLOADS_AFTER, ObjectRoot, ObjectRootOptions, open_object_root
from .options import (
    DEFAULT_FLUSH_FRAMES,
    DEFAULT_FLUSH_IDLE,
    DEFAULT_FLUSH_SECONDS,
    DEFAULT_IDLE_TIMEOUT,
    STACK_INTAKE_BUFFER,
    ZarrAppendOptions,
)

log = logging.getLogger("heros_archiver")


class ZarrAppendArchiver(HERODataArchiver):
    """Append array payloads as frames of a sharded Zarr v3 array, one store per ``store_template`` path.

    Args:
        store_template: Jinja2 template of the store's directory (as ``save_template``: the merged metadata
            and ``source_name``; strict sandbox; confined to the archive root), e.g. one per run.
        array_template: Jinja2 template of the frames' array inside the store (at least ``group/name``;
            the per-frame metadata arrays go beside it in the group). Default ``{{ source_name }}/data``.
        compression: ``none`` (default, by measurement: docs/benchmarks.md), ``zstd`` or ``blosc-lz4``.
        frames_per_chunk: frames per inner chunk (what a reader decodes at once; default 1).
        frames_per_shard: frames per shard (the object on disk; default: as many as one default commit
            holds, ``min(flush_frames, 32 MiB / frame bytes)``, so a commit writes about one whole shard).
        flush_frames, flush_seconds: commit (frames become archived and visible to readers) every this many
            frames or seconds after the oldest waiting frame, whichever first, and at drain.
        flush_idle: also commit once no frame has arrived for this many seconds (default 0.05: the end of a
            burst is archived and visible at once, not ``flush_seconds`` later; None: never), as for HDF5.
        max_frames: roll over to ``name-1.zarr``, ``name-2.zarr``, ... once an array holds this many frames.
        idle_timeout: seconds after which an array nothing was appended to is committed and let go.
        on_exists: a store that exists at its first use: ``error`` (default; its frames are dead-lettered),
            ``append`` (continue each array after its committed frames, also after a crash; frames whose key
            it holds are not written again), ``unique`` (``name-1.zarr``, ...).
        root: archive root (default: derived from ``store_template`` as for the file archivers); or an
            object store, ``s3://bucket/prefix``: each store is then a key prefix under it (the template renders
            keys under the prefix, or starts with that URL), objects are PUT whole, the store is claimed and each
            array locked by conditional create, and spool, dead letters and catalog stay in a local
            ``state_dir`` (as for the file archivers: "Object storage" in the README).
        fsync: ``none`` (default: a commit survives the archiver's process being killed) or ``file`` (every
            object and directory of a commit fsynced: it survives a power loss too). An object store's PUT
            is durable when it answers: there ``none`` and ``file`` are alike.
        storage_options, state_dir, stale_uploads_after: (``s3://`` root) as for ``FileArchiver``.
    """

    sink_options: ZarrAppendOptions
    #: buffered: an append costs so little that trading the GIL with Zenoh's receive thread per frame was most
    #: of the work; behind a Zenoh FIFO of a few frames (decision 0044)
    DEFAULT_INTAKE_BUFFER = STACK_INTAKE_BUFFER
    INTAKE_FIFO_SAMPLES = FRAME_FIFO_SAMPLES

    def _catalog_adoption(self) -> Adoption | None:
        """The frames committed and not yet journaled when a kill came: a later start reads them back from their
        arrays, on a local root or in the bucket of an ``s3://`` one (``observe.catalog_recovery``)."""
        return Adoption(frames=True)

    def __init__(
        self,
        store_template: str,
        array_template: str = "{{ source_name }}/data",
        *args: Any,
        compression: str = DEFAULT_COMPRESSION,
        frames_per_chunk: int = 1,
        frames_per_shard: int | None = None,
        flush_frames: int = DEFAULT_FLUSH_FRAMES,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        max_frames: int | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        on_exists: str = "error",
        root: str | None = None,
        fsync: str = "none",
        flush_idle: float | None = DEFAULT_FLUSH_IDLE,
        storage_options: dict[str, Any] | None = None,
        state_dir: str | None = None,
        stale_uploads_after: float = DEFAULT_STALE_UPLOADS_AFTER,
        **kwargs: Any,
    ) -> None:
        self.sink_options = ZarrAppendOptions(
            store_template, array_template, compression, frames_per_chunk, frames_per_shard, flush_frames,
            flush_seconds, max_frames, idle_timeout, on_exists, root, fsync, flush_idle,
            ObjectRootOptions(storage_options, state_dir, stale_uploads_after),
        )  # fmt: skip
        load_zarr()  # a missing extra fails here, at start
        HERODataArchiver.__init__(self, *args, **kwargs)

    # ------------------------------------------------------------------ hooks of HERODataArchiver
    def _setup_storage(self) -> None:
        """Compile both templates under the root, check the state directory, and remove the temporaries a
        killed run left (a shard or zarr.json it was writing: never under a name Zarr reads). An ``s3://``
        root is connected and checked first (``object_root.open_object_root``; conditional create is needed
        under every ``on_exists``: it claims stores and locks arrays); ``root`` is then the state directory."""
        options = self.sink_options
        #: the object-store root (None: a local root)
        self.object_root: ObjectRoot | None = None
        if options.object_root is not None:
            self.object_root = open_object_root(options.object_root, options.objects, "error")
            self.root = self.object_root.state_dir
            self.name_template = PathTemplate(options.store_template, Path(os.sep))  # keys: naming.keys
            self._array = PathTemplate(options.array_template, self.root)
            check_root(self.root)
            return
        root = Path(options.root) if options.root else derive_root(options.store_template, self.metadata)
        self.name_template = PathTemplate(options.store_template, root)
        self.root = self.name_template.root
        self._array = PathTemplate(options.array_template, self.root)
        if not check_root(self.root):
            return
        clean_stale_temporaries(self.root)
        freed = empty_trash(str(self.root))
        if freed:
            log.info("freed %d old version(s) of Zarr objects an earlier run had replaced", freed)

    def _default_dead_letter_dir(self) -> Path:
        return self.root / DEAD_LETTER_SUBDIR

    def _state_is_durable(self) -> bool:
        return self.sink_options.fsync != "none"

    def _writer_settings(self) -> dict[str, Any]:
        """Recorded with each dead letter, so that ``heros-archiver replay`` appends it where it belongs."""
        options = self.sink_options
        return ZarrAppendWriterSettings(
            kind=ZARR_APPEND_KIND, store_template=self.name_template.source, array_template=self._array.source,
            root=options.object_root or str(self.root), compression=options.compression,
            frames_per_chunk=options.frames_per_chunk,
            frames_per_shard=options.frames_per_shard, flush_frames=options.flush_frames,
            on_exists=options.on_exists, fsync=options.fsync, max_frames=options.max_frames,
            sequence_key=self.options.sequence_key,
        ).to_dict()  # fmt: skip

    def _item_router(self) -> Callable[[Item], None]:
        return self._route

    def _route(self, item: Item) -> None:
        """Render and confine the item's store path (once, on receipt): it is the item's route to its writer."""
        context = {**item.metadata, "source_name": item.source}
        if self.object_root is not None:
            location = self.object_root.location
            rendered = self.name_template.render_text(context)
            item.route = confine_key(rendered, location.url(), location.prefix, self.sink_options.store_template)
            return
        path = self.name_template.render_confined(context)
        _refuse_reserved(path, str(self.root), self.sink_options.store_template)
        item.route = path

    def _array_of(self, item: Item) -> str:
        return self._array.render_text({**item.metadata, "source_name": item.source})

    def _container_sink_factory(self) -> Callable[[], ContainerSink]:
        from ..sinks.zarr_append import ZarrAppendSink

        settings = self.sink_options.sink_settings(str(self.root), self.options.sequence_key, self.object_root)
        return lambda: ZarrAppendSink(settings, self._array_of)

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        """Not used: items go to the container sink (the reference API's hook, kept for subclasses' sake)."""
        raise ConfigurationError(
            f"ZarrAppendArchiver writes items through its container sink, not _store (item from {source_name!r})"
        )
